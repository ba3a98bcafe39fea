"""Loads the detector once, when Django starts, and shares it between all requests (a Detector is thread-safe)."""

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from fastvit_detect import Detector
from fastvit_detect.httpapi import SERVER_MAX_PIXELS
from fastvit_detect.preprocess import server_formats


class DetectionConfig(AppConfig):
    name = "detection"
    detector: Detector

    def ready(self) -> None:
        # At start-up, not at the first request: a broken package stops the site at once, and no request pays
        # for loading the model.
        if not settings.FASTVIT_MODEL_DIR:
            raise ImproperlyConfigured("set FASTVIT_MODEL_DIR to a fastvit-detect model package directory")
        # A public page decodes what strangers send: the server's pixel cap and photo formats, not the library's
        # batch-job defaults (slow pure-Python decoders such as QOI or DDS get 415).
        self.detector = Detector.load(
            settings.FASTVIT_MODEL_DIR, variant=settings.FASTVIT_VARIANT, threads=settings.FASTVIT_THREADS,
            max_pixels=SERVER_MAX_PIXELS, max_bytes=settings.FASTVIT_MAX_UPLOAD_BYTES, formats=server_formats(),
        )
