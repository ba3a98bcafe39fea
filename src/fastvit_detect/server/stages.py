"""The stages a request's work runs on, each with its own bounded threads: decoding (within the pixel budget),
explanations (at a lower priority, in slices between predictions) and faces (detection, then each crop through
the model threads)."""

from __future__ import annotations

import asyncio
import io
import os
import platform
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image

from ..detector import Detector, FacesResult, ImageResult, Prediction
from ..errors import (
    FastVitDetectError,
    InvalidOptionError,
    MissingFaceDetectorError,
    ModelOutputError,
    ServerBusyError,
)
from ..explain import (
    Explanation,
    PreparedImage,
    Target,
    explain_prepared,
    model_passes,
    prepare_opened,
)
from ..faces import (
    DEFAULT_MARGIN,
    DEFAULT_MIN_FACE_SIZE,
    FaceOptions,
    bounded_face_crop,
    expects_faces,
)
from ..media import (
    OpenedImage,
    decode_opened,
    describe_source,
)
from .batching import MicroBatcher
from .limits import DecodeWatch, PixelBudget, return_large_frees_to_the_os
from .requests import (
    FACE_GEOMETRY_PARAMETERS,
    FACES_SWITCH,
    NO_FACE_POLICIES,
    PREDICT_PARAMETERS,
    FaceRequest,
    FoundFaces,
    heatmap_body,
    number_parameter,
    open_upload,
    public_model_name,
    refuse_unknown_parameters,
    whole_parameter,
)
from .settings import ServeSettings


@dataclass(frozen=True)
class DecodedImage:
    """An upload decoded, resized and cropped: what the model thread needs, and a name for errors."""

    pixels: Any  # HxWx3 uint8
    source: str


Decoded = TypeVar("Decoded")


class DecodeStage:
    """Decodes uploads in a bounded thread pool, under the server's caps and pixel budget."""

    def __init__(self, detector: Detector, settings: ServeSettings) -> None:
        return_large_frees_to_the_os()
        self.preprocessor = detector.preprocessor
        self.settings = settings
        self.budget = PixelBudget(settings.budget_pixels)
        self.pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="fastvit-decode")
        self.watch = DecodeWatch(settings.decode_workers, settings.decode_stall_s)

    async def decode(self, upload: io.BytesIO) -> DecodedImage:
        """Raises the image's InputError; never blocks the event loop, never runs on the model thread."""
        pixels, source = await self.decode_with(upload, self.preprocessor.opened_to_pixels)
        return DecodedImage(pixels, source)

    async def decode_with(self, upload: io.BytesIO, convert: Callable[[OpenedImage], Decoded],
                          pool: ThreadPoolExecutor | None = None, watch: DecodeWatch | None = None
                          ) -> tuple[Decoded, str]:
        """``convert(opened)`` on a decode thread, under the caps and within the pixel budget, and the upload's
        name: the one way an upload is decoded, for a prediction (:meth:`decode`), an explanation or faces. A
        stage whose conversion costs more than decoding (face detection) runs it on its own ``pool``, timed by
        its own ``watch``: the header is still read here, and the budget still holds the decoded pixels."""
        if self.watch.all_stalled():  # queued behind them, it would wait for as long as they run
            raise ServerBusyError(f"every decode thread ({self.watch.threads}) has been busy on one image for over "
                                  f"{self.watch.stall_s:g} s; retry later")
        loop = asyncio.get_running_loop()
        source = describe_source(upload)
        opened = await loop.run_in_executor(self.pool, self.watch.run, source, open_upload, upload, self.settings)
        cost = opened.cost
        await self.budget.acquire(cost)
        try:
            work = loop.run_in_executor(pool or self.pool, (watch or self.watch).run, source, convert, opened)
        except BaseException:
            await self.budget.release(cost)
            raise
        # The budget is returned when the decode ends, not when its request does: a client that disconnects
        # mid-decode must not free room that its decode still uses.
        work.add_done_callback(lambda _done: loop.create_task(self.budget.release(cost)))
        return await asyncio.shield(work), opened.source

    async def decode_all(self, uploads: Sequence[io.BytesIO]) -> list[DecodedImage | FastVitDetectError]:
        """Every upload decoded; a bad one becomes its error in place, never failing the others."""
        results = await asyncio.gather(*(self.decode(upload) for upload in uploads), return_exceptions=True)
        for result in results:  # anything but an image's own error is the server's fault: raise it
            if isinstance(result, BaseException) and not isinstance(result, FastVitDetectError):
                raise result
        return list(results)  # type: ignore[arg-type]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def classify_decoded(detector: Detector) -> Callable[[list[DecodedImage]], list[ImageResult]]:
    """The model thread's work: one session call for a batch of decoded images (errors stay per image)."""
    import numpy as np

    def run(items: list[DecodedImage]) -> list[ImageResult]:
        return detector.classify_pixels(np.stack([item.pixels for item in items]),
                                        sources=[item.source for item in items])

    return run


ExplainResult = tuple[Explanation, dict[str, Any]]  # the explanation and its answer's heat map


EXPLAIN_SLICE_IMAGES = 1  # masked copies per model call: a prediction arriving meanwhile waits for one at most


EXPLAIN_PREVIEW_SIDE = 1024  # the upright picture an explanation keeps after decoding (overlay()'s default size)


EXPLAIN_NICENESS = 10  # added to the explain threads' nice value: the CPU goes to predictions' threads first


def lower_thread_priority(increment: int = EXPLAIN_NICENESS) -> bool:
    """Raise the calling thread's nice value by ``increment``, so that the kernel runs other threads first when
    they compete for a core. Linux only, where a thread has a nice value of its own (elsewhere setpriority
    would lower the whole process): returns False and does nothing there, or where it isn't allowed."""
    if platform.system() != "Linux":
        return False
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + increment))
    except OSError:
        return False
    return True


class ExplainStage:
    """Explanations under their own limits, behind predictions.

    One explanation runs dozens of model passes: queued on the model thread it would make every prediction
    behind it wait. Here at most ``explain_concurrency`` run at once, each on its own thread, and at most
    ``explain_queue`` more wait; the next gets 503 at once. An explanation's upload is opened and decoded by the
    decode stage, under the server's caps and within the same pixel budget as predictions, so what decodes at
    once stays bounded whatever the mix; only the model input and a preview outlive the decode. Its passes run
    in slices of ``EXPLAIN_SLICE_IMAGES`` on a worker of the detector's layout (never on extra threads), and each
    slice first waits until no prediction is queued or running (at most ``explain_yield_s``, so explanations
    still advance under a load that never pauses). The explain threads run at a lower CPU priority where the OS
    allows it per thread, for what they compute around the passes.
    """

    def __init__(self, detector: Detector, settings: ServeSettings, decoder: DecodeStage,
                 batcher: MicroBatcher[Any, Any]) -> None:
        self.detector = detector
        self.settings = settings
        self.labels = detector.labels
        self.decoder = decoder
        self.batcher = batcher
        self.pool = ThreadPoolExecutor(settings.explain_concurrency, thread_name_prefix="fastvit-explain",
                                       initializer=lower_thread_priority)
        self.capacity = settings.explain_concurrency + settings.explain_queue
        self.admitted = 0  # running or waiting; only the event loop changes it
        self.explained = 0
        self.passes_waited = 0  # slices that found predictions at the model and waited for them
        self.passes_forced = 0  # slices that ran after explain_yield_s although predictions were still there
        self._counts_lock = threading.Lock()  # explain threads count at once

    def check(self, method: str, target: str, options: dict[str, Any]) -> None:
        """Refuse what this server won't compute, and refuse while busy, before the upload is read."""
        Target.resolve(target, self.labels, predicted=self.labels[0])
        passes = model_passes(method, options)
        if passes > self.settings.explain_max_passes:
            raise InvalidOptionError(f"this explanation takes {passes} model passes; this server allows at most "
                                     f"{self.settings.explain_max_passes} (explain_max_passes: use a smaller grid "
                                     "or fewer samples)")
        self.check_room()

    def model_pass(self, inputs: Any) -> Any:
        """One slice of an explanation's passes: after the predictions at the model, on a worker of the layout."""
        if not self.batcher.wait_until_idle(0):
            idle = self.batcher.wait_until_idle(self.settings.explain_yield_s)
            with self._counts_lock:
                self.passes_waited += 1
                self.passes_forced += not idle
        return self.run_model(inputs)

    def run_model(self, inputs: Any) -> Any:
        return self.detector.pool.run(inputs)

    def compute(self, prepared: PreparedImage, method: str, target: str, options: dict[str, Any]) -> ExplainResult:
        """On an explain thread: the explanation, and its heat layer and grid (PNG encoding stays off the loop)."""
        explanation = explain_prepared(self.detector, prepared, method, target, EXPLAIN_SLICE_IMAGES,
                                       run=self.model_pass, **options)
        return explanation, heatmap_body(explanation)

    def check_room(self) -> None:
        if self.admitted >= self.capacity:
            raise ServerBusyError(f"explanations are busy ({self.admitted} running or waiting); retry later")

    async def explain(self, upload: io.BytesIO, method: str, target: str, options: dict[str, Any]) -> ExplainResult:
        self.check_room()  # again: others may have been admitted while this upload was read
        self.admitted += 1
        work = asyncio.ensure_future(self._explain(upload, method, target, options))

        def finished(done: asyncio.Future[ExplainResult]) -> None:
            # Counted until the work itself ends, not its request: a client that leaves mid-explanation must not
            # free a slot that its explanation still occupies.
            self.admitted -= 1
            self.explained += 1
            if not done.cancelled():
                done.exception()  # retrieved: when its client has left, nobody else awaits it

        work.add_done_callback(finished)
        return await asyncio.shield(work)

    async def _explain(self, upload: io.BytesIO, method: str, target: str, options: dict[str, Any]) -> ExplainResult:
        preprocessor = self.detector.preprocessor
        prepared, _source = await self.decoder.decode_with(
            upload, lambda opened: prepare_opened(preprocessor, opened, EXPLAIN_PREVIEW_SIDE))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.compute, prepared, method, target, options)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)




class FaceStage:
    """Face detection for predict requests, where it can't stall anything else.

    Detection costs a second or more of CPU per photo, more than decoding it. It runs on ``faces_concurrency``
    threads of its own, at a lower CPU priority (as explanations), so decode threads stay free for plain
    uploads and predictions get the cores first; ``faces_queue`` more images may wait (on the event loop,
    holding no thread), the next gets 503 at once. Each image is decoded on its face thread, within the decode
    stage's pixel budget, which stays held until its crops are cut: what decodes and detects at once is bounded
    with everything else. Detection runs on a copy of at most ``faces_detect_side`` px and returns at most
    ``faces_cap`` faces (the faces first of all: MTCNN's own stage caps bound a crowd's cost, see
    :mod:`fastvit_detect.faces`); each face's crop then takes a place in the micro-batcher's queue, so a photo of
    many faces is batched with other requests' images, and waits or is refused as that many images would be.
    """

    def __init__(self, detector: Detector, settings: ServeSettings, decoder: DecodeStage,
                 batcher: MicroBatcher[DecodedImage, ImageResult]) -> None:
        self.detector, self.settings, self.decoder, self.batcher = detector, settings, decoder, batcher
        self.expected = expects_faces(detector.package)
        try:
            detector.face_detector  # noqa: B018 - opened and verified now, not during the first request
            self.available = True
        except MissingFaceDetectorError:
            if self.expected:  # every default request would fail: say so before serving
                raise
            self.available = False
        self.pool = ThreadPoolExecutor(settings.faces_concurrency, thread_name_prefix="fastvit-faces",
                                       initializer=lower_thread_priority)
        self.watch = DecodeWatch(settings.faces_concurrency, settings.decode_stall_s)
        self.slots = PixelBudget(settings.faces_concurrency)  # a weighted semaphore: here each image weighs 1
        self.capacity = settings.faces_concurrency + settings.faces_queue
        self.admitted = 0  # images detecting or waiting to; only the event loop changes it
        self.detected = 0

    def request(self, query: Mapping[str, str]) -> FaceRequest | None:
        """The predict request's face parameters, or None for a whole-image prediction. Refuses (422) unknown or
        malformed parameters, and (409) faces from a package without the face detector, before the upload is
        read. Without ``faces``, the package decides: faces when its manifest says the model expects them."""
        refuse_unknown_parameters(query, PREDICT_PARAMETERS, "predict")
        wanted = self.expected
        if "faces" in query:
            switch = FACES_SWITCH.get(query["faces"].strip().lower())
            if switch is None:
                raise InvalidOptionError(f"faces must be 1 or 0 (or true, false), got {query['faces'][:40]!r}")
            wanted = switch
        geometry = [name for name in FACE_GEOMETRY_PARAMETERS if name in query]
        if not wanted:
            if geometry:
                raise InvalidOptionError(f"{', '.join(geometry)} only apply to faces: ask with faces=1")
            return None
        if not self.available:
            raise MissingFaceDetectorError(
                f"faces=1: this server's model package ({public_model_name(self.detector)}) has no face detector "
                "(it was exported without --faces); ask with faces=0, or serve a package exported with --faces")
        cap = self.settings.faces_cap
        max_faces = whole_parameter(query, "max_faces", cap)
        if max_faces > cap:
            raise InvalidOptionError(f"max_faces={max_faces:,}: this server answers with at most {cap} faces per "
                                     f"image (faces_max_per_image, within queue_size)")
        no_face = query.get("no_face", NO_FACE_POLICIES[0])
        if no_face not in NO_FACE_POLICIES:
            raise InvalidOptionError(f"no_face must be one of {', '.join(NO_FACE_POLICIES)}, got {no_face[:40]!r}")
        # FaceOptions holds the bounds the CLI and the library use: one place for them.
        options = FaceOptions(min_face_size=whole_parameter(query, "min_face_size", DEFAULT_MIN_FACE_SIZE),
                              max_faces=max_faces, max_side=self.settings.faces_detect_side,
                              margin=number_parameter(query, "margin", DEFAULT_MARGIN))
        return FaceRequest(options, no_face)

    def check_room(self) -> None:
        if self.admitted >= self.capacity:
            raise ServerBusyError(f"face detection is busy ({self.admitted} images detecting or waiting); retry "
                                  "later")
        if self.watch.all_stalled():
            raise ServerBusyError(f"every face detection thread ({self.watch.threads}) has been busy on one image "
                                  f"for over {self.watch.stall_s:g} s; retry later")

    def find(self, opened: OpenedImage, request: FaceRequest) -> FoundFaces:
        """On a face thread: decode the upright original, find its faces, cut and resize their crops."""
        picture = decode_opened(opened)
        try:
            faces = self.detector.face_detector.detect(picture, request.options)
            preprocessor = self.detector.preprocessor
            if faces:
                # Opened as the crops they are, not as uploads: bounded_face_crop bounds their size, and the
                # upload's pixel cap (which a crop with a wide margin may pass) was checked on the upload.
                pixels = [preprocessor.opened_to_pixels(OpenedImage(Image.fromarray(bounded_face_crop(
                    picture, face, request.options.margin)), f"{opened.source} face {number}", owned=True))
                    for number, face in enumerate(faces, start=1)]
            else:
                pixels = [preprocessor.to_pixels(picture)] if request.no_face == "whole-image" else []
            return FoundFaces(faces, pixels, picture.width, picture.height)
        finally:
            picture.close()

    async def predict(self, upload: io.BytesIO, request: FaceRequest) -> tuple[FacesResult, FoundFaces]:
        """One upload's faces and verdicts; raises the image's error (an InputError, or a 503 while busy)."""
        self.check_room()
        self.admitted += 1
        work = asyncio.ensure_future(self._find(upload, request))

        def finished(done: asyncio.Future[tuple[FoundFaces, str]]) -> None:
            # Counted until the detection ends, not its request: a client that leaves mid-detection must not free
            # the place that its detection still occupies.
            self.admitted -= 1
            self.detected += 1
            if not done.cancelled():
                done.exception()  # retrieved: when its client has left, nobody else awaits it

        work.add_done_callback(finished)
        found, source = await asyncio.shield(work)
        numbers = range(1, len(found.faces) + 1) if found.faces else [0]
        items = [DecodedImage(pixels, f"{source} face {number}" if number else source)
                 for pixels, number in zip(found.pixels, numbers)]
        answers = await self.batcher.classify(items, return_exceptions=True) if items else []
        predictions = []
        for item, answer in zip(items, answers):
            result = model_result(item, answer)
            if not isinstance(result, Prediction):
                raise result  # a crop the model failed on fails its image, as in Detector.predict_faces
            predictions.append(result)
        if found.faces:
            return FacesResult.decide(list(zip(found.faces, predictions)), request.no_face), found
        return FacesResult.decide([], request.no_face, predictions[0] if predictions else None), found

    async def _find(self, upload: io.BytesIO, request: FaceRequest) -> tuple[FoundFaces, str]:
        await self.slots.acquire(1)  # a free face thread first: the pixel budget is taken only when it can decode
        try:
            return await self.decoder.decode_with(upload, lambda opened: self.find(opened, request),
                                                  pool=self.pool, watch=self.watch)
        finally:
            await self.slots.release(1)

    async def predict_all(self, uploads: Sequence[io.BytesIO], request: FaceRequest
                          ) -> list[tuple[FacesResult, FoundFaces] | FastVitDetectError]:
        """Every upload's faces; a bad image becomes its error in place, never failing the others."""
        results = await asyncio.gather(*(self.predict(upload, request) for upload in uploads),
                                       return_exceptions=True)
        for result in results:  # anything but an image's own error is the server's fault: raise it
            if isinstance(result, BaseException) and not isinstance(result, FastVitDetectError):
                raise result
        return list(results)  # type: ignore[arg-type]

    def report(self) -> dict[str, Any]:
        """``/healthz``'s faces fields."""
        threads = self.watch.report()
        return {"available": self.available, "expected": self.expected, "in_progress": self.admitted,
                "detected": self.detected, "threads": threads["decode_threads"],
                "threads_busy": threads["decode_threads_busy"], "threads_stalled": threads["decode_threads_stalled"],
                "longest_detection_s": threads["longest_decode_s"]}

    def summary(self) -> dict[str, Any]:
        """``/api/v1/model``'s faces fields: what a client may ask for."""
        return {"available": self.available, "expected": self.expected, "max_faces": self.settings.faces_cap,
                "detect_side": self.settings.faces_detect_side, "margin": DEFAULT_MARGIN,
                "min_face_size": DEFAULT_MIN_FACE_SIZE, "no_face": list(NO_FACE_POLICIES)}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def model_result(item: DecodedImage, result: ImageResult | BaseException) -> ImageResult:
    """The model thread's answer for one image. Its failure (already logged there, with the traceback) becomes
    this image's ModelOutputError: a 500 for this image alone, never for the other files of its request."""
    if isinstance(result, FastVitDetectError | Prediction):
        return result
    if isinstance(result, Exception):
        return ModelOutputError(f"{item.source}: inference failed ({type(result).__name__})", item.source)
    raise result  # not a failure of this image's: a cancellation, say
