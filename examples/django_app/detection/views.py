"""The seed project's page and API: ``POST /predict/`` with ``{"image": "<base64>"}`` -> ``{"result": "<label>"}``."""

from __future__ import annotations

import io
import logging

from django.apps import apps
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from fastvit_detect import FastVitDetectError
from fastvit_detect.errors import UploadTooLargeError
from fastvit_detect.httpapi import (
    INTERNAL_ERROR,
    error_body,
    http_status,
    seed_request_image,
)

log = logging.getLogger(__name__)


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "detection/index.html")


# Exempt from CSRF: the endpoint changes nothing and reads no session, so a forged request gains nothing, and
# the seed project's clients post JSON without a token.
@csrf_exempt
@require_POST
def predict(request: HttpRequest) -> JsonResponse:
    detector = apps.get_app_config("detection").detector
    try:
        label = detector.predict(image_from_request(request)).label
    except FastVitDetectError as exc:  # the same status codes and bodies as fastvit-detect's own server
        status = http_status(exc)
        if status == 500:  # the model failed (e.g. non-finite logits): never a verdict, never blamed on the client
            log.error("prediction failed: %s: %s", type(exc).__name__, exc)
            return JsonResponse(INTERNAL_ERROR, status=500)
        return JsonResponse(error_body(exc), status=status)
    return JsonResponse({"result": label})


def image_from_request(request: HttpRequest) -> io.BytesIO:
    try:
        body = request.body
    except RequestDataTooBig:
        raise UploadTooLargeError(
            f"request body exceeds {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes") from None
    return seed_request_image(body, settings.FASTVIT_MAX_UPLOAD_BYTES)
