"""The FastAPI application: routes, the upload page, error mapping and ``serve`` (the ``fastvit-detect serve``
command's server)."""

from __future__ import annotations

import asyncio
import io
import logging
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..detector import Detector, ImageResult, Prediction
from ..errors import (
    BadRequestError,
    FastVitDetectError,
)
from ..httpapi import (
    INTERNAL_ERROR,
    error_body,
    http_status,
    seed_body_limit,
    seed_request_image,
)
from .batching import MicroBatcher
from .protocol import TimedH11Protocol, bind_socket
from .requests import (
    ERROR_DOCS,
    EXPLAIN_REQUEST_DOCS,
    PREDICT_REQUEST_DOCS,
    SEED_REQUEST_DOCS,
    ClientGone,
    FaceRequest,
    OneValuePerQueryParameter,
    explain_parameters,
    explanation_body,
    faces_body,
    model_summary,
    prediction_body,
    public_model_name,
    read_body,
    read_uploads,
)
from .settings import ServeSettings
from .stages import DecodedImage, DecodeStage, ExplainStage, FaceStage, classify_decoded, model_result
from .video import VideoServeSettings, VideoStage, add_video_route

log = logging.getLogger("fastvit_detect.server")


STATIC_PACKAGE = ("fastvit_detect", "static")


# The page may load only what this server sends: no CDN, no fonts, no analytics.
PAGE_SECURITY_POLICY = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'"


def create_app(detector: Detector, settings: ServeSettings | None = None,
               video_settings: VideoServeSettings | None = None) -> FastAPI:
    """The ASGI app over a loaded detector. Its decode pool and model thread start now and stop with the app.
    ``video_settings``: the limits of ``POST /api/v1/video`` (:mod:`fastvit_detect.server.video`)."""
    settings = settings or ServeSettings()
    detector.pool  # noqa: B018 - the layout's sessions open now, not during the first request
    decoder = DecodeStage(detector, settings)
    batcher: MicroBatcher[DecodedImage, ImageResult] = MicroBatcher(
        classify_decoded(detector), settings.max_batch, settings.max_wait_ms, settings.queue_size,
        workers=detector.layout.workers)
    model = model_summary(detector)
    static = StaticFiles(packages=[STATIC_PACKAGE])
    index_page, found = static.lookup_path("index.html")
    if found is None:
        raise RuntimeError("fastvit_detect/static/index.html is missing: the package was installed without its data")

    explainer = ExplainStage(detector, settings, decoder, batcher)
    videos = VideoStage(detector, video_settings)
    faces = FaceStage(detector, settings, decoder, batcher)

    async def lifespan(_app: FastAPI):
        yield
        await asyncio.to_thread(batcher.close)
        decoder.close()
        explainer.close()
        faces.close()
        videos.close()

    app = FastAPI(title="fastvit-detect", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Torch-free deepfake detection with ONNX Vision Transformers.")
    app.state.detector, app.state.batcher, app.state.decoder, app.state.settings = detector, batcher, decoder, settings
    app.state.explainer, app.state.faces = explainer, faces
    app.state.videos = videos
    app.mount("/static", static, name="static")

    @app.exception_handler(Exception)
    async def server_error(_request: Request, _exc: Exception) -> JSONResponse:
        # Not the client's fault: the log gets the traceback (uvicorn writes it as the exception propagates), the
        # client only learns that it failed.
        return JSONResponse(INTERNAL_ERROR, status_code=500)

    @app.exception_handler(FastVitDetectError)
    async def detector_error(_request: Request, exc: FastVitDetectError) -> JSONResponse:
        status = http_status(exc)
        if status == 500:  # a broken model, say: handled here, so no one else logs it
            log.error("request failed: %s: %s", type(exc).__name__, exc)
            return JSONResponse(INTERNAL_ERROR, status_code=500)
        headers = {"Retry-After": "1"} if status == 503 else {"Connection": "close"} if status == 408 else None
        return JSONResponse(error_body(exc), status_code=status, headers=headers)

    @app.exception_handler(ClientGone)
    async def client_gone(_request: Request, _exc: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": never sent, only logged

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 404, 405 and the like, in the same {"error": ...} shape as every other failure.
        body = {"error": {"type": "HTTPError", "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(BadRequestError(str(exc.errors())[:1000])), status_code=422)

    app.add_middleware(OneValuePerQueryParameter)  # added before log_request, so it runs inside: refusals are logged

    @app.middleware("http")
    async def log_request(request: Request, call_next):
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            client = f"{request.client.host}:{request.client.port}" if request.client else "-"
            log.info('%s "%s %s" %d %.1f ms', client, request.method, request.url.path, status,
                     1000 * (time.perf_counter() - started))

    async def classify(uploads: Sequence[io.BytesIO]) -> list[ImageResult]:
        decoded = await decoder.decode_all(uploads)
        ready = [item for item in decoded if isinstance(item, DecodedImage)]
        answers = iter(await batcher.classify(ready, return_exceptions=True)) if ready else iter(())
        return [model_result(item, next(answers)) if isinstance(item, DecodedImage) else item for item in decoded]

    def get_and_head(path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A GET route that answers HEAD too (FastAPI routes don't), documented once."""
        def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
            app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
            return app.get(path, **options)(endpoint)
        return register

    @get_and_head("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(index_page, media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_SECURITY_POLICY, "Cache-Control": "no-cache"})

    @app.post("/api/v1/predict", openapi_extra=PREDICT_REQUEST_DOCS, responses=ERROR_DOCS,
              summary="Classify one image (object) or several multipart files (list, in order)")
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        face_request = faces.request(request.query_params)
        if face_request is not None:
            faces.check_room()  # before the upload is read; again per image
            return await predict_faces(request, face_request, started)
        uploads, as_list = await read_uploads(request, settings)
        results = await classify(uploads)
        elapsed_ms = 1000 * (time.perf_counter() - started)
        if not as_list:
            (result,) = results
            if not isinstance(result, Prediction):
                raise result
            return JSONResponse(prediction_body(result, model, elapsed_ms))
        return JSONResponse([
            {"filename": upload.name, **(prediction_body(result, model, elapsed_ms) if isinstance(result, Prediction)
                                        else _error_entry(result))}
            for upload, result in zip(uploads, results)
        ])

    async def predict_faces(request: Request, face_request: FaceRequest, started: float) -> JSONResponse:
        uploads, as_list = await read_uploads(request, settings)
        results = await faces.predict_all(uploads, face_request)
        elapsed_ms = 1000 * (time.perf_counter() - started)
        if not as_list:
            (result,) = results
            if isinstance(result, FastVitDetectError):
                raise result
            return JSONResponse(faces_body(*result, face_request, model, elapsed_ms))
        return JSONResponse([
            {"filename": upload.name, **(faces_body(*result, face_request, model, elapsed_ms)
                                        if not isinstance(result, FastVitDetectError) else _error_entry(result))}
            for upload, result in zip(uploads, results)
        ])

    @app.post("/predict/", openapi_extra=SEED_REQUEST_DOCS, responses=ERROR_DOCS,
              summary="The seed project's API: {\"image\": base64} -> {\"result\": label}")
    async def predict_base64(request: Request) -> JSONResponse:
        body = await read_body(request, seed_body_limit(settings.max_upload_bytes), settings.body_timeout_s,
                               f" (an image of {settings.max_upload_bytes:,} bytes, base64-encoded in JSON)")
        image = seed_request_image(body, settings.max_upload_bytes)
        face_request = faces.request({})  # the seed's client sends no options: the package decides, as predict's
        if face_request is not None:
            decided, _found = await faces.predict(image, face_request)  # it checks for room: 503 when busy
            assert decided.prediction is not None  # no face: the whole image decides, by default
            return JSONResponse({"result": decided.prediction.label})
        (result,) = await classify([image])
        if not isinstance(result, Prediction):
            raise result
        return JSONResponse({"result": result.label})

    @app.post("/api/v1/explain", openapi_extra=EXPLAIN_REQUEST_DOCS, responses=ERROR_DOCS,
              summary="Classify one image and show why: the verdict plus a heat map of the evidence")
    async def explain(request: Request) -> JSONResponse:
        started = time.perf_counter()
        method, target, options = explain_parameters(request.query_params)
        explainer.check(method, target, options)
        uploads, as_list = await read_uploads(request, settings)
        if as_list:
            raise BadRequestError(f"explain takes one image per request, got {len(uploads)} files")
        explanation, heatmap = await explainer.explain(uploads[0], method, target, options)
        return JSONResponse(explanation_body(explanation, heatmap, model, 1000 * (time.perf_counter() - started)))

    add_video_route(app, videos, settings, model)

    @get_and_head("/healthz", summary="Liveness, and the model thread's and decode threads' counters")
    async def healthz() -> JSONResponse:
        alive = batcher.healthy
        decoding = decoder.watch.report()
        stalled = decoding["decode_threads_stalled"] >= decoding["decode_threads"]
        status = "unavailable" if not alive else "stalled" if stalled else "ok"
        body = {"status": status, "worker_alive": alive,
                "workers": batcher.workers, "workers_alive": batcher.workers_alive,
                "layout": detector.layout.to_dict(),
                "worker_restarts": batcher.worker_restarts, "variant": detector.variant.name,
                "runtime": detector.runtime, "variant_choice": detector.choice.to_dict(),
                "queue_depth": batcher.queue_depth, "batches": batcher.batches_run, "images": batcher.images_run,
                "largest_batch": batcher.largest_batch, "failed_batches": batcher.failed_batches,
                "decoding_pixels": decoder.budget.in_use, **decoding,
                "explanations_in_progress": explainer.admitted, "explanations": explainer.explained,
                "videos_in_progress": videos.admitted, "videos": videos.done, "faces": faces.report()}
        if stalled:
            body["reason"] = (f"every decode thread ({decoding['decode_threads']}) has been busy on one image for "
                              f"over {decoding['decode_stall_s']:g} s: new uploads get 503")
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @get_and_head("/api/v1/model", summary="The model package's manifest, variant, labels and the serving settings")
    async def model_info() -> dict[str, Any]:
        return {**model, "labels": list(detector.labels), "manifest": detector.package.public_manifest(),
                "serving": asdict(settings), "layout": detector.layout.to_dict(), "runtime": detector.runtime,
                "variant_choice": detector.choice.to_dict(), "faces": faces.summary()}

    return app


def _error_entry(error: FastVitDetectError) -> dict[str, Any]:
    """A failed image in a list answer: its own error for client faults, the generic one for the server's."""
    if http_status(error) == 500:
        log.error("an image failed: %s: %s", type(error).__name__, error)
        return INTERNAL_ERROR
    return error_body(error)


def serve(
    detector: Detector,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    log_level: str = "info",
    sock: socket.socket | None = None,
    video_settings: VideoServeSettings | None = None,
) -> None:
    """Serve a loaded detector with uvicorn until interrupted; on ``sock`` when given (see bind_socket)."""
    settings = settings or ServeSettings()
    sock = sock or bind_socket(host, port)
    app = create_app(detector, settings, video_settings)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The effective decode budget, not its "None: 1.5 x max_pixels" default: the operator reads figures here.
    log.info("serving %s (variant %s on %s, labels %s) with %s", public_model_name(detector), detector.variant.name,
             detector.runtime, ", ".join(detector.labels),
             replace(settings, decode_budget_pixels=settings.budget_pixels))
    log.info("variant chosen: %s", detector.choice.describe())

    protocol = type("ConfiguredH11Protocol", (TimedH11Protocol,), {"header_timeout_s": settings.header_timeout_s})
    # access_log off: log_request writes one line per request, with its latency. uvicorn refuses a request once
    # its connections, that request's own included, reach limit_concurrency: max_connections + 1 serves that many.
    config = uvicorn.Config(app, host=host, port=port, http=protocol, access_log=False, log_level=log_level,
                            timeout_keep_alive=math.ceil(settings.keep_alive_s),
                            limit_concurrency=settings.max_connections + 1)
    # uvicorn announces its address only for sockets it binds itself; scripts wait for this line.
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, bound_port)
    uvicorn.Server(config).run(sockets=[sock])
