"""Reference HTTP server (the ``serve`` extra): an upload page and a JSON API over one shared :class:`Detector`.

    fastvit-detect serve --model DIR            # or: uvicorn-compatible app from create_app(detector)

Endpoints: ``GET /`` upload page, ``POST /api/v1/predict`` (multipart field ``file``, repeatable, or a raw image
body), ``POST /predict/`` (the seed project's ``{"image": base64}`` -> ``{"result": label}``), ``GET /healthz``,
``GET /api/v1/model`` and ``GET /openapi.json``. FastAPI's /docs and /redoc are off: they load Swagger UI from a
CDN, and nothing this server sends may make the browser fetch from elsewhere.

A request goes through three stages, so that no single client can stall the others:

1. the event loop reads the body, within the upload limit and the body timeout;
2. a bounded pool of decode threads counts the image's scans, segments and metadata (``fastvit_detect.headers``),
   reads its header, opens only the formats of ``formats`` (by default ``SERVER_FORMATS``: photo formats, not
   Pillow's slow pure-Python decoders), checks the server's own pixel cap, waits for room in a shared pixel budget
   (what decodes at once is bounded, so is its memory; a format that costs more memory per pixel, such as WebP,
   counts for more, and so does metadata), then decodes, resizes and crops. A decode thread busy on one image for
   longer than ``decode_stall_s`` shows on ``/healthz``; when all are, ``/healthz`` and new uploads get 503;
3. a model thread per worker of the detector's layout takes up to ``max_batch`` decoded images, waiting at most
   ``max_wait_ms`` after the first, and classifies them in one call of its own session; with several workers,
   concurrent requests run in parallel batches. Should a call fail, each image is retried alone, so only the
   image that breaks the model gets the error. The queue is bounded: a request that doesn't fit gets 503 at once.

``POST /api/v1/predict?faces=1`` finds the faces first: the image is decoded and its faces detected on a face
stage of its own (:class:`FaceStage`: its own bounded threads, at a lower priority, within the same pixel budget),
and each face's crop goes through stage 3 as an image of its own.

Each model thread is supervised: if it ever dies it is restarted and ``/healthz`` counts it; a thread that keeps
dying makes ``/healthz`` answer 503 and requests get 503 at once, never a hang. Connections are capped and timed
out: headers must arrive within ``header_timeout_s``, the body within ``body_timeout_s``.

The package's modules hold one idea each and import only those before them (docs/architecture.md):
``settings`` (:class:`ServeSettings`), ``limits`` (the pixel budget, the decode watch), ``batching`` (the model
threads), ``requests`` (reading requests, query parameters, answers), ``stages`` (decode, explain, faces), ``video``
(``POST /api/v1/video``'s stage and route), ``protocol`` (h11 deadlines, the socket) and ``app`` (the FastAPI
application and :func:`serve`).
"""

from __future__ import annotations

import importlib

from ..httpapi import missing_serve_modules

# The serve extra is checked once, here, before any module of the package imports FastAPI or uvicorn.
SERVE_MODULES = ("python_multipart", "uvicorn", "fastapi", "fastapi.exceptions", "fastapi.responses",
                 "starlette.datastructures", "starlette.exceptions", "starlette.formparsers", "starlette.requests",
                 "starlette.staticfiles", "uvicorn.protocols.http.h11_impl")
# python_multipart: Starlette parses forms with it; fail here, not at the first upload.
try:
    for _module in SERVE_MODULES:
        importlib.import_module(_module)
except ModuleNotFoundError as exc:
    missing = missing_serve_modules() or [str(exc.name)]
    raise ModuleNotFoundError(
        f"fastvit_detect.server needs FastAPI, uvicorn and python-multipart ({', '.join(map(str, missing))} "
        "missing): pip install 'fastvit-detect[serve]'",
        name=exc.name,
    ) from exc

# The modules import FastAPI at their top: only after the check above.
from .app import (  # noqa: E402
    PAGE_SECURITY_POLICY,
    STATIC_PACKAGE,
    create_app,
    serve,
)
from .batching import (  # noqa: E402
    RESTART_LIMIT,
    RESTART_WINDOW_S,
    MicroBatcher,
)
from .limits import (  # noqa: E402
    MMAP_THRESHOLD_BYTES,
    DecodeWatch,
    PixelBudget,
    return_large_frees_to_the_os,
)
from .protocol import (  # noqa: E402
    TimedH11Protocol,
    bind_socket,
)
from .requests import (  # noqa: E402
    ERROR_DOCS,
    EXPLAIN_GRID_SIDE,
    EXPLAIN_LAYER_SIDE,
    EXPLAIN_PARAMETERS,
    EXPLAIN_REQUEST_DOCS,
    FACE_GEOMETRY_PARAMETERS,
    FACES_SWITCH,
    NO_FACE_POLICIES,
    PREDICT_PARAMETERS,
    PREDICT_REQUEST_DOCS,
    SEED_REQUEST_DOCS,
    WHOLE_NUMBER,
    ClientGone,
    FaceRequest,
    FoundFaces,
    OneValuePerQueryParameter,
    explain_parameters,
    explanation_body,
    faces_body,
    heatmap_body,
    model_summary,
    number_parameter,
    open_upload,
    prediction_body,
    prediction_fields,
    public_model_name,
    read_body,
    read_uploads,
    repeated_query_parameters,
    whole_parameter,
)
from .settings import (  # noqa: E402
    ServeSettings,
    check_range,
)
from .stages import (  # noqa: E402
    EXPLAIN_NICENESS,
    EXPLAIN_PREVIEW_SIDE,
    EXPLAIN_SLICE_IMAGES,
    DecodedImage,
    DecodeStage,
    ExplainResult,
    ExplainStage,
    FaceStage,
    classify_decoded,
    lower_thread_priority,
    model_result,
)
from .video import VideoServeSettings, VideoStage, add_video_route  # noqa: E402

__all__ = [
    "ERROR_DOCS",
    "EXPLAIN_GRID_SIDE",
    "EXPLAIN_LAYER_SIDE",
    "EXPLAIN_NICENESS",
    "EXPLAIN_PARAMETERS",
    "EXPLAIN_PREVIEW_SIDE",
    "EXPLAIN_REQUEST_DOCS",
    "EXPLAIN_SLICE_IMAGES",
    "FACES_SWITCH",
    "FACE_GEOMETRY_PARAMETERS",
    "MMAP_THRESHOLD_BYTES",
    "NO_FACE_POLICIES",
    "PAGE_SECURITY_POLICY",
    "PREDICT_PARAMETERS",
    "PREDICT_REQUEST_DOCS",
    "RESTART_LIMIT",
    "RESTART_WINDOW_S",
    "SEED_REQUEST_DOCS",
    "STATIC_PACKAGE",
    "WHOLE_NUMBER",
    "ClientGone",
    "DecodeStage",
    "DecodeWatch",
    "DecodedImage",
    "ExplainResult",
    "ExplainStage",
    "FaceRequest",
    "FaceStage",
    "FoundFaces",
    "MicroBatcher",
    "OneValuePerQueryParameter",
    "PixelBudget",
    "ServeSettings",
    "TimedH11Protocol",
    "VideoServeSettings",
    "VideoStage",
    "add_video_route",
    "bind_socket",
    "check_range",
    "classify_decoded",
    "create_app",
    "explain_parameters",
    "explanation_body",
    "faces_body",
    "heatmap_body",
    "lower_thread_priority",
    "model_result",
    "model_summary",
    "number_parameter",
    "open_upload",
    "prediction_body",
    "prediction_fields",
    "public_model_name",
    "read_body",
    "read_uploads",
    "repeated_query_parameters",
    "return_large_frees_to_the_os",
    "serve",
    "whole_parameter",
]
