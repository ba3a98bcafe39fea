"""Detector = model package + preprocessing + ONNX session + softmax over the labels."""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
from PIL import Image

from .backends import Backend, OnnxRuntimeOptions, OpenVinoOptions, Session, backend_for
from .choice import VariantChoice, choose_variant, unmet_cpu_requirement
from .errors import (
    BackendError,
    FastVitDetectError,
    IncompatibleModelError,
    InputError,
    InvalidOptionError,
    MissingExtraError,
    ModelOutputError,
)
from .faces import (
    Face,
    FaceDetector,
    FaceOptions,
    expects_faces,
    face_detector_variants,
    face_pixels,
)
from .hub import fetch
from .layout import Layout, check_layout_arguments, choose_layout, read_calibration
from .media import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageInput, decode_opened, describe_source
from .options import check_whole
from .package import ModelPackage, Variant
from .pool import SessionPool, ordered_pipeline
from .preprocess import Preprocessor
from .session import MAX_THREADS, physical_core_count
from .video import DEFAULT_FPS, DEFAULT_MAX_FRAMES

if TYPE_CHECKING:
    import onnxruntime as ort

    from .explain import Explanation
    from .timeline import FrameResult, VideoResult
    from .video import VideoInput, VideoLimits

__all__ = ["Detector", "FacesResult", "ImageResult", "Prediction", "VariantChoice", "choose_variant",
           "unmet_cpu_requirement"]

DEFAULT_BATCH_SIZE = 16
MAX_BATCH_SIZE = 4096  # one session call's images; more is an operator's typo, not a batch
MAX_PREFETCH = 64


@dataclass(frozen=True, eq=False)  # identity equality: logits is an array, whose == isn't a truth value
class Prediction:
    """The verdict on one image."""

    label: str
    score: float  # probability of ``label``
    probabilities: Mapping[str, float]
    logits: np.ndarray
    fake_probability: float | None  # None when the labels name neither "fake" nor "real"
    decided_by: str | None = None
    """For a detector that decides by faces (:attr:`Detector.faces_first`): "face" (a face's crop decided) or
    "whole-image" (no face found); None for a plain whole-image prediction."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the one record shape of a prediction in CLI output, scan files and server responses
        (``decided_by`` only where a detector decided by faces)."""
        record: dict[str, Any] = {
            "label": self.label,
            "score": self.score,
            "probabilities": dict(self.probabilities),
            "fake_probability": self.fake_probability,
            "logits": [float(value) for value in self.logits],
        }
        if self.decided_by is not None:
            record["decided_by"] = self.decided_by
        return record


ImageResult = Prediction | FastVitDetectError
"""One image's outcome with ``errors="return"``: its prediction, or the error that stands in its place (an
:class:`InputError` for a bad image, a :class:`ModelOutputError` when the model gave no usable answer)."""


def _check_errors(errors: object) -> None:
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")


def _chunks(items: Iterable[ImageInput], size: int) -> Iterator[list[ImageInput]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def fake_label_index(labels: Sequence[str]) -> tuple[int | None, int | None]:
    """Indices of the labels named fake and real, case-insensitively; None where absent."""
    lowered = [label.strip().lower() for label in labels]
    fake = lowered.index("fake") if "fake" in lowered else None
    real = lowered.index("real") if "real" in lowered else None
    return fake, real


def _model_image_size(config: Mapping[str, Any]) -> tuple[int, int] | None:
    """config.json's ``image_size`` (an int, or [height, width]) as (height, width); None when absent or odd."""
    size = config.get("image_size")
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size)
    if isinstance(size, list) and len(size) == 2 and all(isinstance(side, int) for side in size):
        return (size[0], size[1])
    return None


def _open(package: ModelPackage, name: str, verify: bool, threads: int | None,
          runtimes: tuple[OnnxRuntimeOptions, OpenVinoOptions]) -> tuple[Variant, Backend, Session]:
    """The variant's files checked, its backend and its all-cores session."""
    chosen = package.variant(name)
    if verify:  # first: a corrupt file is best reported as such
        package.verify(chosen)
    package.check_graph(chosen)
    backend = backend_for(chosen.runtime, *runtimes)
    return chosen, backend, backend.open(chosen.path, threads)


class Detector:
    """A loaded deepfake detector. Thread-safe: share one instance between request handlers.

    Two ways to use the cores: :meth:`predict` runs one image on ``session``, with every core; batch work
    (:meth:`predict_batch`, :meth:`predict_iter`, :meth:`classify_pixels`, so scan, eval and the server) runs on
    ``layout.workers`` sessions of ``layout.threads_per_worker`` threads each, opened at the first such call.
    """

    def __init__(self, package: ModelPackage, variant: Variant, session: Session, preprocessor: Preprocessor,
                 layout: Layout | None = None, backend: Backend | None = None,
                 choice: VariantChoice | None = None, faces: bool | str = "auto",
                 face_options: FaceOptions | None = None):
        """``backend`` opens the sessions of a layout of several workers; without one the layout is the given
        session alone. ``choice``: how the variant was chosen (shown by ``repr``, ``info`` and the server).
        ``faces``, ``face_options``: as :meth:`load`."""
        self.package = package
        self.variant = variant
        self.session = session
        self.preprocessor = preprocessor
        self.labels = package.labels
        self.choice = choice or VariantChoice(variant.name, "caller", "given")
        self._fake_index, self._real_index = fake_label_index(self.labels)
        session.check_compatible(preprocessor.output_size, len(self.labels), _model_image_size(package.config))
        if layout is None or backend is None:
            layout = Layout(1, session.threads, "caller", "one session")
        self.layout = layout
        self._backend = backend
        self._pool: SessionPool | None = None
        self._pool_lock = threading.Lock()
        self._face_detector: FaceDetector | None = None  # opened by the first call that needs faces
        self.face_options = face_options if face_options is not None else FaceOptions()
        if not isinstance(self.face_options, FaceOptions):
            raise InvalidOptionError(f"face_options must be a FaceOptions, got {type(face_options).__name__}")
        self.faces_first = decides_by_faces(package, faces)
        if self.faces_first:
            face_detector_variants(package)  # a package that lacks the detector fails here, not at the first image

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | ModelPackage,
        variant: str = "auto",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        verify: bool = True,
        jpeg_draft: bool = False,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        session_options: ort.SessionOptions | None = None,
        provider_options: Sequence[Mapping[str, Any]] | None = None,
        workers: int | None = None,
        threads_per_worker: int | None = None,
        formats: Sequence[str] | None = None,
        ov_config: Mapping[str, Any] | None = None,
        faces: bool | str = "auto",
        face_options: FaceOptions | None = None,
    ) -> Detector:
        """Open a model package (a directory, or a :class:`ModelPackage` already open) and start a session on one
        of its variants.

        ``variant``: "auto" (the fastest variant this machine runs, see :mod:`fastvit_detect.choice`), "fp32",
        "int8" (onnxruntime), "openvino-int8" (OpenVINO, with the ``openvino`` extra), ...
        ``threads``: the cores to use, default the physical cores: :meth:`predict` runs one session with that many
        intra-op threads. ``workers`` x ``threads_per_worker``: the layout of batch work, default chosen for
        ``threads`` (a calibration cached for this machine and variant, else the rule in
        :mod:`fastvit_detect.layout`); give one and the other follows from ``threads``. ``providers``:
        onnxruntime execution providers, default CPU. ``max_pixels``: decompression-bomb cap per image (None:
        Pillow's own limit only).
        ``max_bytes``: cap on an encoded image's size, checked before it is read (None: no cap).
        ``formats``: the image formats to open, e.g. ``fastvit_detect.preprocess.SERVER_FORMATS`` for images from
        strangers; others get ``UnsupportedInputError`` naming their format (None: every format Pillow opens but EPS).
        ``session_options``: onnxruntime SessionOptions replacing fastvit-detect's tuned defaults (``threads``, when
        given, still sets the intra-op threads); ``provider_options``: one dict per provider, as onnxruntime takes
        them (for users who tune onnxruntime themselves). ``ov_config``: OpenVINO properties overriding
        fastvit-detect's for an OpenVINO variant (as optimum-intel's ``ov_config``; ``{"CACHE_DIR": ""}`` turns the
        compiled-model cache off).
        ``verify``: check the configs (format 3 on) and the variant's graph and weights against the manifest's
        sizes and sha256.
        ``jpeg_draft``: decode large JPEGs at reduced scale (much faster for multi-megapixel photos; results then
        differ slightly from the HF reference, see docs/performance.md).
        ``faces``: whether :meth:`predict`, :meth:`predict_batch` and :meth:`predict_iter` decide by faces (each
        image's verdict is :meth:`predict_faces`'s): "auto" (default) when the manifest says the model expects face
        crops, True always (the package needs the face detector: ``MissingFaceDetectorError`` here otherwise),
        False never. ``face_options``: the detection and crop geometry those calls use (default
        :class:`~fastvit_detect.faces.FaceOptions`).
        """
        check_layout_arguments(workers, threads_per_worker)  # a typo fails before seconds of loading
        _check_faces_argument(faces)
        if threads is not None:
            check_whole("threads", threads, 1, MAX_THREADS)
        package = path if isinstance(path, ModelPackage) else ModelPackage.open(path)
        choice = choose_variant(package, variant)
        preprocessor = Preprocessor.from_hf(package.preprocessor_config, max_pixels=max_pixels, jpeg_draft=jpeg_draft,
                                            max_bytes=max_bytes, formats=formats)
        runtimes = (OnnxRuntimeOptions(providers, session_options, provider_options),
                    OpenVinoOptions(ov_config if ov_config is not None else {}))
        try:
            chosen, backend, session = _open(package, choice.name, verify, threads, runtimes)
        except (MissingExtraError, BackendError) as exc:
            if choice.fallback is None:
                raise
            warnings.warn(f"model package {package.root}: {exc}; running variant {choice.fallback!r} instead",
                          RuntimeWarning, stacklevel=2)
            choice = VariantChoice(choice.fallback, "fallback", f"{choice.name} couldn't be opened: {exc}")
            chosen, backend, session = _open(package, choice.name, verify, threads, runtimes)
        cores = threads if threads is not None else physical_core_count()
        calibrated = None
        if workers is None and threads_per_worker is None and chosen.sha256:
            calibrated = read_calibration(backend.layout_cache(chosen.sha256), cores)
        layout = choose_layout(cores, workers, threads_per_worker, calibrated, chosen.runtime)
        return cls(package, chosen, session, preprocessor, layout, backend, choice, faces, face_options)

    @property
    def pool(self) -> SessionPool:
        """The sessions of :attr:`layout`, opened at the first batch call (``predict`` never needs them)."""
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = self._open_pool()
        return self._pool

    def _open_pool(self) -> SessionPool:
        layout = self.layout
        reuse = self.session if self.session.threads == layout.threads_per_worker else None
        if self._backend is None or (layout.workers == 1 and reuse is not None):
            return SessionPool(layout, [self.session])
        return SessionPool.build(layout, self._backend, self.variant.path, first=reuse)

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        revision: str | None = None,
        variant: str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        force_download: bool = False,
        endpoint: str | None = None,
        **load_options: Any,
    ) -> Detector:
        """Load a model package from the Hugging Face Hub (needs the ``hub`` extra: ``pip install
        'fastvit-detect[hub]'``).

        Downloads the manifest and configs, chooses the variant as :meth:`load` does, then downloads that
        variant's graph and weights only, into the standard HF cache (``cache_dir``, default ``HF_HUB_CACHE``).
        Once cached it loads offline: ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``, and when the Hub can't be
        reached. ``revision``: a branch, tag or commit. ``token``: for private or gated repositories (default:
        ``HF_TOKEN`` or the saved login). ``force_download``: fetch the files again even if cached.
        ``endpoint``: another Hub (default ``HF_ENDPOINT``). ``load_options`` go to :meth:`load`; the files are
        verified against the manifest's sha256 as there. Failures raise :class:`~fastvit_detect.errors.HubError`
        subclasses (or, for a package that doesn't check out, the same errors as :meth:`load`).
        """
        def select(package: ModelPackage) -> list[Variant]:
            with warnings.catch_warnings():  # load() chooses again below, and warns there
                warnings.simplefilter("ignore")
                choice = choose_variant(package, variant)
            # auto's fallback too: should OpenVINO fail to compile its variant, the onnxruntime one is there to run
            chosen = [package.lookup(name) for name in (choice.name, choice.fallback) if name is not None]
            if decides_by_faces(package, load_options.get("faces", "auto")):
                chosen.extend(face_detector_variants(package).values())
            return chosen

        fetched = fetch(repo_id, revision=revision, select=select,
                        cache_dir=cache_dir, local_files_only=local_files_only, token=token,
                        force_download=force_download, endpoint=endpoint)
        with fetched.explain_checksum_errors():
            return cls.load(fetched.package, variant=variant, **load_options)

    def predict(self, image: ImageInput) -> Prediction:
        """Classify one image (path, bytes, binary file, PIL image or uint8 numpy array), with every core.

        With :attr:`faces_first`, the image is decided by its faces: :meth:`predict_faces`'s image-level
        prediction, its ``decided_by`` saying "face" or "whole-image" (no face found)."""
        if self.faces_first:
            (result,) = self._faces_chunk([image], "raise", self.session.run)
            return result  # type: ignore[return-value]  # "raise" returns predictions only
        (result,) = self._classify_chunk([image], "raise", self.session.run)
        return result  # type: ignore[return-value]  # "raise" returns predictions only

    @overload
    def predict_batch(
        self, images: Iterable[ImageInput], batch_size: int = ..., errors: Literal["raise"] = ...
    ) -> list[Prediction]: ...

    @overload
    def predict_batch(
        self, images: Iterable[ImageInput], batch_size: int = ..., *, errors: Literal["return"]
    ) -> list[ImageResult]: ...

    def predict_batch(
        self,
        images: Iterable[ImageInput],
        batch_size: int = DEFAULT_BATCH_SIZE,
        errors: Literal["raise", "return"] = "raise",
    ) -> list[Prediction] | list[ImageResult]:
        """Classify images in order, one session call per ``batch_size`` images.

        ``errors="raise"`` raises the first failed image's error; ``errors="return"`` puts the error in that
        image's place and classifies the rest. Either way one image's failure never changes another's result.
        With :attr:`faces_first`, each image is decided by its faces, as :meth:`predict` does, and the face crops of
        ``batch_size`` images go through the classifier together (in session calls of at most ``batch_size``
        crops, or of one image's faces where it has more).
        """
        check_whole("batch_size", batch_size, 1, MAX_BATCH_SIZE)
        _check_errors(errors)
        results: list[ImageResult] = []
        if self.faces_first:
            for chunk in _chunks(images, batch_size):
                results.extend(self._faces_chunk(chunk, errors, self.session.run, batch_size))
            return results
        workers = self.layout.workers
        if workers > 1:
            items = list(images)
            if len(items) >= workers:  # enough to give every worker a share; fewer run faster on all cores
                size = min(batch_size, math.ceil(len(items) / workers))
                return list(chain.from_iterable(self._pipeline(items, size, 1, errors)))
            images = items
        run = self.pool.run if workers == 1 else self.session.run
        for chunk in _chunks(images, batch_size):
            results.extend(self._classify_chunk(chunk, errors, run))
        return results

    def predict_iter(
        self,
        images: Iterable[ImageInput],
        batch_size: int = DEFAULT_BATCH_SIZE,
        prefetch: int = 1,
        errors: Literal["raise", "return"] = "raise",
    ) -> Generator[ImageResult, None, None]:
        """Stream results in input order, for collections too large to hold.

        ``errors`` as in :meth:`predict_batch`: ``"raise"`` (the default) raises a failed image's error when the
        stream reaches it, ``"return"`` yields the error in its place. While the model runs on one batch, a
        background thread decodes the next ``prefetch`` batches: Pillow releases the GIL while it decodes and
        resizes, so file reading overlaps inference. ``prefetch=0`` decodes in the calling thread. With a layout
        of several workers, that many batches run at once and decode threads keep ``prefetch`` more ready per
        worker; results still come in input order. With :attr:`faces_first`, images are decided by their faces
        as in :meth:`predict_batch`, decoded and detected in the calling thread (``prefetch`` doesn't apply).
        """
        # Checked here, not in the generator, so bad arguments fail at the call.
        check_whole("batch_size", batch_size, 1, MAX_BATCH_SIZE)
        check_whole("prefetch", prefetch, 0, MAX_PREFETCH)
        _check_errors(errors)
        return self._stream(images, batch_size, prefetch, errors)

    def _stream(
        self, images: Iterable[ImageInput], batch_size: int, prefetch: int, errors: str
    ) -> Generator[ImageResult, None, None]:
        if self.faces_first:
            for chunk in _chunks(images, batch_size):
                yield from self._faces_chunk(chunk, errors, self.session.run, batch_size)
            return
        if self.layout.workers > 1:
            for results in self._pipeline(images, batch_size, prefetch, errors):
                yield from results
            return
        run = self.pool.run
        if prefetch == 0:
            for chunk in _chunks(images, batch_size):
                yield from self._results(chunk, *self.preprocessor.batch_pixels(chunk), errors=errors, run=run)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastvit-decode") as decoder:
            pending: deque[tuple[list[ImageInput], Future[tuple[np.ndarray, list[InputError | None]]]]] = deque()
            for chunk in _chunks(images, batch_size):
                pending.append((chunk, decoder.submit(self.preprocessor.batch_pixels, chunk)))
                if len(pending) > prefetch:
                    chunk_done, decoded = pending.popleft()
                    yield from self._results(chunk_done, *decoded.result(), errors=errors, run=run)
            while pending:
                chunk_done, decoded = pending.popleft()
                yield from self._results(chunk_done, *decoded.result(), errors=errors, run=run)

    def _pipeline(self, images: Iterable[ImageInput], batch_size: int, prefetch: int,
                  errors: str) -> Generator[list[ImageResult], None, None]:
        """Batches decoded ahead and classified by every worker of the layout at once, in input order."""
        pool, workers = self.pool, self.layout.workers

        def classify(chunk: list[ImageInput], decoded: tuple[np.ndarray, list[InputError | None]]) -> list[
                ImageResult]:
            return self._classify_decoded(chunk, *decoded, errors=errors, run=pool.run)

        return ordered_pipeline(_chunks(images, batch_size), self.preprocessor.batch_pixels, classify,
                                workers=workers, decoders=workers, ahead=workers + prefetch)

    def _classify_chunk(self, chunk: Sequence[ImageInput], errors: str,
                        run: Callable[[np.ndarray], np.ndarray]) -> list[ImageResult]:
        return self._classify_decoded(chunk, *self.preprocessor.batch_pixels(chunk), errors=errors, run=run)

    def _classify_decoded(self, chunk: Sequence[ImageInput], pixels: np.ndarray,
                          failures: Sequence[InputError | None], errors: str,
                          run: Callable[[np.ndarray], np.ndarray]) -> list[ImageResult]:
        if errors == "raise":  # before the model runs: nothing to lose
            for failure in failures:
                if failure is not None:
                    raise failure
        return self._results(chunk, pixels, failures, errors, run)

    def _results(self, chunk: Sequence[ImageInput], pixels: np.ndarray, failures: Sequence[InputError | None],
                 errors: str, run: Callable[[np.ndarray], np.ndarray] | None = None) -> list[ImageResult]:
        results = self._classify_pixels(pixels, failures, [describe_source(image) for image in chunk],
                                        run or self.session.run)
        if errors == "raise":
            for result in results:
                if isinstance(result, FastVitDetectError):
                    raise result
        return results

    def classify_pixels(self, pixels: np.ndarray, failures: Sequence[FastVitDetectError | None] | None = None,
                        sources: Sequence[str] | None = None,
                        run: Callable[[np.ndarray], np.ndarray] | None = None) -> list[ImageResult]:
        """Classify a decoded uint8 NHWC batch; images with a failure keep it in their place.

        One session call for the whole batch, on a free worker of :attr:`layout`: up to ``layout.workers``
        threads may call this at once (the server's model threads do). Should that call fail, each image is run
        alone, so only the image that makes the model fail gets the error; an image whose logits aren't finite
        gets a :class:`ModelOutputError`, never a verdict. ``run``: the session call instead (normalised batch
        -> logits), e.g. one that waits for its turn.
        """
        return self._classify_pixels(pixels, failures, sources, run or self.pool.run)

    def _classify_pixels(self, pixels: np.ndarray, failures: Sequence[FastVitDetectError | None] | None,
                         sources: Sequence[str] | None, run: Callable[[np.ndarray], np.ndarray]) -> list[ImageResult]:
        failures = list(failures) if failures is not None else [None] * len(pixels)
        names = list(sources) if sources is not None else [f"image #{index + 1}" for index in range(len(pixels))]
        good = [index for index, failure in enumerate(failures) if failure is None]
        results: list[ImageResult | None] = list(failures)
        if good:
            batch = pixels if len(good) == len(failures) else pixels[good]
            for index, row in zip(good, self._logit_rows(batch, [names[index] for index in good], run)):
                results[index] = row if isinstance(row, FastVitDetectError) else self._prediction(row)
        return results  # type: ignore[return-value]

    def _logit_rows(self, pixels: np.ndarray, names: Sequence[str],
                    run: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray | ModelOutputError]:
        try:
            logits = self._checked_logits(run(self.preprocessor.normalize(pixels)), len(pixels))
        except ModelOutputError as exc:
            if len(pixels) == 1:
                return [ModelOutputError(f"{names[0]}: {exc}", names[0])]
            rows: list[np.ndarray | ModelOutputError] = []
            for index in range(len(pixels)):  # find the image that fails the batch; the others still get answers
                rows.extend(self._logit_rows(pixels[index:index + 1], names[index:index + 1], run))
            return rows
        finite = np.isfinite(logits).all(axis=1)
        return [row if ok else ModelOutputError(
                    f"{name}: the model returned non-finite logits {row.tolist()}; no verdict", name)
                for row, ok, name in zip(logits, finite, names)]

    def explain(
        self, image: ImageInput, method: str = "occlusion", target: str = "fake", *,
        face: str | int | Face | None = None, **options: Any
    ) -> Explanation:
        """Why the verdict: a heat map of the regions whose hiding lowers p(``target``) most.

        ``method``: "occlusion" (options ``grid``, ``baseline``) or "rise" (``samples``, ``grid``, ``baseline``,
        ``seed``); ``target``: a label, "predicted" (the verdict's label) or "fake"; ``batch_size``: masked copies
        per session call. See :mod:`fastvit_detect.explain` for the methods, their defaults and the geometry.
        ``face``: explain one face's crop instead of the whole image: "decisive" (the face that decides the image;
        the default when :attr:`faces_first`), a face's index in :meth:`predict_faces`'s ``faces``, or a
        :class:`~fastvit_detect.faces.Face`. The heat map is then the crop's, and ``crop_box`` places it on the
        photo (see :func:`fastvit_detect.explain.explain_face`).
        """
        from .explain import explain  # explain builds on this module: import it where it is used

        if face is None and self.faces_first:
            face = "decisive"
        return explain(self, image, method=method, target=target, face=face, **options)

    def run_logits(self, pixel_values: np.ndarray) -> np.ndarray:
        """Raw logits for an already preprocessed float32 NCHW batch, on the all-cores session."""
        return self._checked_logits(self.session.run(pixel_values), len(pixel_values))

    def _checked_logits(self, logits: np.ndarray, images: int) -> np.ndarray:
        if logits.ndim != 2 or logits.shape != (images, len(self.labels)):
            raise IncompatibleModelError(
                f"{self.variant.path}: model returned logits of shape {logits.shape} for {images} "
                f"image(s), expected ({images}, {len(self.labels)})"
            )
        return logits

    def _prediction(self, logits: np.ndarray) -> Prediction:
        (prediction,) = self._postprocess(logits[None, :])
        return prediction

    def _postprocess(self, logits: np.ndarray) -> list[Prediction]:
        probabilities = softmax(logits)
        predictions = []
        for row_logits, row in zip(logits, probabilities):
            best = int(row.argmax())
            predictions.append(
                Prediction(
                    label=self.labels[best],
                    score=float(row[best]),
                    probabilities={label: float(p) for label, p in zip(self.labels, row)},
                    logits=row_logits.copy(),
                    fake_probability=self._fake_probability(row),
                )
            )
        return predictions

    def _fake_probability(self, probabilities: np.ndarray) -> float | None:
        if self._fake_index is not None:
            return float(probabilities[self._fake_index])
        if self._real_index is not None and len(self.labels) == 2:
            return float(1.0 - probabilities[self._real_index])
        return None

    @property
    def runtime(self) -> str:
        """What runs the model: "onnxruntime" or "openvino"."""
        return self.session.runtime

    def __repr__(self) -> str:
        return (
            f"Detector({str(self.package.root)!r}, variant={self.variant.name!r}, labels={self.labels}, "
            f"threads={self.session.threads}, layout={self.layout.workers}x{self.layout.threads_per_worker}, "
            f"runtime={self.runtime!r}, providers={self.session.providers}, choice={self.choice.describe()!r})"
        )

    # --- faces first (see fastvit_detect.faces for the detector and the crop convention) ------------------------

    @property
    def face_detector(self) -> FaceDetector:
        """The package's face detector, opened (and its files verified against the manifest) at first use.

        Raises :class:`~fastvit_detect.errors.MissingFaceDetectorError` for a package exported without ``--faces``.
        """
        detector = self._face_detector
        if detector is None:
            from .faces import open_face_detector

            with self._pool_lock:
                detector = self._face_detector
                if detector is None:
                    detector = open_face_detector(self.package, threads=self.session.threads)
                    self._face_detector = detector
        return detector

    def _upright_image(self, image: ImageInput) -> Image.Image:
        """The image decoded as the classifier decodes it (caps, EXIF orientation, RGB), at full size."""
        return decode_opened(self.preprocessor.open(image))

    def detect_faces(self, image: ImageInput, *, min_face_size: int | None = None, max_faces: int | None = None,
                     max_side: int | Literal["default"] | None = "default") -> list[Face]:
        """The faces in ``image``, the most confident first, boxes in the upright original's pixels.

        ``min_face_size``: the smallest face searched for, in px of the detection copy, whose long side is at most
        ``max_side`` (None: the full image); ``max_faces``: at most this many. Each defaults to
        :attr:`face_options`'s. See :mod:`fastvit_detect.faces`.
        """
        options = self._face_options(None, min_face_size, max_faces, max_side)
        detector = self.face_detector  # a package without faces fails before the image is decoded
        return detector.detect(self._upright_image(image), options)

    def predict_faces(self, image: ImageInput, *, margin: float | None = None, min_face_size: int | None = None,
                      max_faces: int | None = None, max_side: int | Literal["default"] | None = "default",
                      no_face: Literal["whole-image", "none"] = "whole-image") -> FacesResult:
        """Find the faces, classify each face's crop, and decide the image by its faces.

        Each crop is a square of side ``(1 + margin)`` times the face box's longer side, about its centre, taken
        from the original image (black beyond the border); all of an image's crops go through the classifier in one
        batch. The image's verdict is the prediction of the face with the highest fake probability (for labels that
        name no fake class: the most confident face's). With no face found, ``no_face="whole-image"`` classifies the
        whole image as :meth:`predict` does; ``"none"`` leaves ``prediction`` None. Other options as
        :meth:`detect_faces`; each defaults to :attr:`face_options`'s.
        """
        _check_no_face(no_face)
        options = self._face_options(margin, min_face_size, max_faces, max_side)
        self.face_detector  # noqa: B018 - a package without faces fails before the image is decoded
        (result,) = self._faces_results([image], options, no_face, "raise", self.session.run, None)
        return result  # type: ignore[return-value]  # "raise" returns results only

    def predict_faces_iter(self, images: Iterable[ImageInput], batch_size: int = DEFAULT_BATCH_SIZE,
                           errors: Literal["raise", "return"] = "raise",
                           no_face: Literal["whole-image", "none"] = "whole-image"
                           ) -> Generator[FacesResult | FastVitDetectError, None, None]:
        """:meth:`predict_faces` for each image, streamed in input order, with :attr:`face_options`: the crops of
        ``batch_size`` images share session calls (at most ``batch_size`` crops a call, one image's faces never
        split). ``errors`` as in :meth:`predict_batch`."""
        check_whole("batch_size", batch_size, 1, MAX_BATCH_SIZE)
        _check_errors(errors)
        _check_no_face(no_face)
        self.face_detector  # noqa: B018 - a package without faces fails at the call, before any image is read
        return self._faces_stream(images, batch_size, errors, no_face)

    def _faces_stream(self, images: Iterable[ImageInput], batch_size: int, errors: str,
                      no_face: str) -> Generator[FacesResult | FastVitDetectError, None, None]:
        for chunk in _chunks(images, batch_size):
            yield from self._faces_results(chunk, self.face_options, no_face, errors, self.session.run, batch_size)

    def _face_options(self, margin: float | None, min_face_size: int | None, max_faces: int | None,
                      max_side: int | Literal["default"] | None) -> FaceOptions:
        """:attr:`face_options`, with the arguments given in place of its values (each checked)."""
        base = self.face_options
        return FaceOptions(base.min_face_size if min_face_size is None else min_face_size,
                           base.max_faces if max_faces is None else max_faces,
                           base.max_side if max_side == "default" else max_side,
                           base.margin if margin is None else margin)

    def face_pixels(self, image: ImageInput, options: FaceOptions | None = None,
                    whole_image: bool = False) -> tuple[list[Face], np.ndarray]:
        """The faces of ``image`` and the classifier's input for each: their crops (:func:`face_crop`) resized and
        cropped as :meth:`predict` prepares an image, N x H x W x 3 uint8. With no face, no rows, or
        (``whole_image``) one row: the whole image. The one way a face becomes the classifier's input, shared by
        :meth:`predict_faces`, the faces-first predictions and scans (see :func:`fastvit_detect.faces.face_pixels`)."""
        detector = self.face_detector  # a package without faces fails before the image is decoded
        return face_pixels(self._upright_image(image), detector, options or self.face_options,
                           self.preprocessor.to_pixels, self.preprocessor.output_size, whole_image)

    def _faces_results(self, images: Sequence[ImageInput], options: FaceOptions, no_face: str, errors: str,
                       run: Callable[[np.ndarray], np.ndarray], call_size: int | None
                       ) -> list[FacesResult | FastVitDetectError]:
        """Each image decided by its faces. The crops of all ``images`` (and the whole image of each image with no
        face, for ``no_face="whole-image"``) go through the classifier together, in session calls of at most
        ``call_size`` crops or one image's crops where it has more (None: one call for all)."""
        found: list[tuple[list[Face], np.ndarray] | FastVitDetectError] = []
        for image in images:
            try:
                found.append(self.face_pixels(image, options, whole_image=no_face == "whole-image"))
            except (InputError, ModelOutputError) as exc:
                if errors == "raise":
                    raise
                found.append(exc)
        rows = [item[1] for item in found if not isinstance(item, FastVitDetectError)]
        calls = _call_groups([len(pixels) for pixels in rows], call_size)
        predictions: list[ImageResult] = []
        for group in calls:
            predictions.extend(self._classify_pixels(np.concatenate([rows[index] for index in group]), None, None, run))
        results: list[FacesResult | FastVitDetectError] = []
        offset = 0
        for image, item in zip(images, found):
            if isinstance(item, FastVitDetectError):
                results.append(item)
                continue
            faces, pixels = item
            own, offset = predictions[offset:offset + len(pixels)], offset + len(pixels)
            failed = next((result for result in own if not isinstance(result, Prediction)), None)
            if failed is not None:
                source = describe_source(image)
                error = ModelOutputError(f"{source}: {'a face crop' if faces else 'the whole image'}: {failed}", source)
                if errors == "raise":
                    raise error
                results.append(error)
                continue
            whole_image = own[0] if own and not faces else None
            results.append(FacesResult.decide(list(zip(faces, own)), no_face, whole_image))  # type: ignore[arg-type]
        return results

    def _faces_chunk(self, images: Sequence[ImageInput], errors: str, run: Callable[[np.ndarray], np.ndarray],
                     call_size: int | None = None) -> list[ImageResult]:
        """Each image's prediction as :attr:`faces_first` decides it: the image-level prediction of its faces,
        marked with the path that decided."""
        results: list[ImageResult] = []
        for result in self._faces_results(images, self.face_options, "whole-image", errors, run, call_size):
            if isinstance(result, FastVitDetectError):
                results.append(result)
            else:
                assert result.prediction is not None  # "whole-image": every image gets a verdict
                results.append(replace(result.prediction, decided_by=result.decided_by))
        return results

    # --- videos (needs the video extra; see fastvit_detect.video for sampling and caps, .timeline for the rules) ----

    def predict_video(self, video: VideoInput, *, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES,
                      faces: bool = True, progress: Callable[[int, int], None] | None = None,
                      limits: VideoLimits | None = None, **options: Any) -> VideoResult:
        """Sample a clip (path, bytes or binary file) by time, find and classify the faces of each sampled frame,
        link them into tracks and decide the clip: a :class:`fastvit_detect.timeline.VideoResult`.

        ``fps``: frames sampled a second; ``max_frames``: at most this many, spread evenly over a longer clip;
        ``faces``: find faces (False: classify whole frames; frames without a face are classified whole anyway);
        ``progress(done, planned)``: called as frames are done; ``limits``: a
        :class:`fastvit_detect.video.VideoLimits` (bytes, duration, resolution, packets, decoded frames, time).
        ``options``: ``batch_size``, ``read_ahead``, ``margin``, ``min_face_size``, ``max_faces``, ``max_side``.
        The rules (tracks, verdicts, timeline) are in :mod:`fastvit_detect.timeline`.
        """
        from .timeline import predict_video  # builds on this module: imported where it is used

        return predict_video(self, video, fps=fps, max_frames=max_frames, faces=faces, progress=progress,
                             limits=limits, **options)

    def predict_video_iter(self, video: VideoInput, *, fps: float = DEFAULT_FPS,
                           max_frames: int = DEFAULT_MAX_FRAMES, faces: bool = True,
                           progress: Callable[[int, int], None] | None = None, limits: VideoLimits | None = None,
                           **options: Any) -> Iterator[FrameResult]:
        """:meth:`predict_video`'s frames one by one (:class:`fastvit_detect.timeline.FrameResult`, in time order,
        each with its faces' track ids), for clips too long to hold; the clip is opened and indexed at the call."""
        from .timeline import iter_video

        return iter_video(self, video, fps=fps, max_frames=max_frames, faces=faces, progress=progress,
                          limits=limits, **options)


def _call_groups(sizes: Sequence[int], call_size: int | None) -> list[list[int]]:
    """Consecutive items grouped into session calls of at most ``call_size`` rows, an item never split (one with
    more rows gets a call of its own); None: all in one call. Groups without rows (images with neither a face nor a
    whole-image row) need no call and are left out."""
    groups: list[list[int]] = [[]]
    rows = 0
    for index, size in enumerate(sizes):
        if call_size is not None and rows and rows + size > call_size:
            groups.append([])
            rows = 0
        groups[-1].append(index)
        rows += size
    return [group for group in groups if sum(sizes[index] for index in group)]


def _check_no_face(no_face: object) -> None:
    if not (isinstance(no_face, str) and no_face in ("whole-image", "none")):
        raise InvalidOptionError(f"no_face must be 'whole-image' or 'none', got {no_face!r}"[:300])


def _check_faces_argument(faces: object) -> None:
    if not isinstance(faces, bool) and not (isinstance(faces, str) and faces == "auto"):
        raise InvalidOptionError(f"faces must be True, False or 'auto', got {faces!r}")


def decides_by_faces(package: ModelPackage, faces: object) -> bool:
    """Whether a detector of ``package`` loaded with ``faces`` (True, False or "auto": as the manifest says) decides
    by faces (:attr:`Detector.faces_first`)."""
    _check_faces_argument(faces)
    return expects_faces(package) if faces == "auto" else bool(faces)


@dataclass(frozen=True, eq=False)
class FacesResult:
    """:meth:`Detector.predict_faces`'s answer: each face with its own prediction, and the image's.

    ``prediction``: the face at ``decisive`` decides (the highest fake probability); with no face, the whole
    image's prediction (``no_face="whole-image"``) or None (``"none"``).
    """

    faces: list[tuple[Face, Prediction]]
    prediction: Prediction | None
    no_face: str  # the policy asked for: "whole-image" or "none"
    decisive: int | None  # index in ``faces`` of the face that decided; None when no face was found

    @classmethod
    def decide(cls, faces: list[tuple[Face, Prediction]], no_face: str,
               whole_image: Prediction | None = None) -> FacesResult:
        """The image's verdict from its faces' (the one place for the rule): the face with the highest fake
        probability decides (for labels that name no fake class, the most confident face); with no face,
        ``whole_image`` (the whole image's prediction, or None)."""
        if not faces:
            return cls([], whole_image, no_face, None)

        def fakeness(index: int) -> float:
            chosen = faces[index][1]
            return chosen.fake_probability if chosen.fake_probability is not None else chosen.score

        decisive = max(range(len(faces)), key=fakeness)
        return cls(faces, faces[decisive][1], no_face, decisive)

    @property
    def decided_by(self) -> str:
        """Where the image's verdict comes from: "face", "whole-image", or "none" (no face, no verdict)."""
        if self.decisive is not None:
            return "face"
        return "whole-image" if self.prediction is not None else "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the image's prediction (its fields at the top level, as a plain prediction's), then the
        faces with their boxes and verdicts."""
        verdict = self.prediction.to_dict() if self.prediction is not None else {"label": None}
        return {**verdict, "decided_by": self.decided_by,
                "faces": [{**face_fields(face), **prediction.to_dict()} for face, prediction in self.faces]}


def face_fields(face: Face) -> dict[str, Any]:
    """A face's fields in a record that also holds its verdict: the detector's score is ``face_score`` there, so
    the verdict's ``score`` doesn't hide it."""
    fields = face.to_dict()
    fields["face_score"] = fields.pop("score")
    return fields
