"""Requests and answers of the HTTP API, independent of the stages: reading bodies and uploads within their
limits, the query parameters of predict, faces and explain (one value each, validated), and the JSON bodies and
OpenAPI documentation of the answers."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import QueryParams, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from ..detector import Detector, FacesResult, Prediction, face_fields
from ..errors import (
    BadRequestError,
    ImageDecodeError,
    ImageTooLargeError,
    InvalidOptionError,
    MissingFaceDetectorError,
    RequestTimeoutError,
    ServerBusyError,
    UploadTooLargeError,
)
from ..explain import (
    BASELINES,
    DEFAULT_METHOD,
    DEFAULT_TARGET,
    METHODS,
    Explanation,
    colour_stops,
    resolve_options,
)
from ..faces import (
    DEFAULT_MARGIN,
    DEFAULT_MIN_FACE_SIZE,
    Face,
    FaceOptions,
)
from ..httpapi import (
    INTERNAL_ERROR,
    error_body,
    http_status,
    named_image,
)
from ..media import (
    DECODE_COST,
    OpenedImage,
    open_image,
)
from .settings import ServeSettings


def open_upload(upload: io.BytesIO, settings: ServeSettings) -> OpenedImage:
    """An upload's header read and held to the server's caps: bytes, formats, and pixels weighted by what its
    format costs to decode (``DECODE_COST``: a WebP pixel counts twice), so the decode budget counts memory."""
    opened = open_image(upload, settings.max_pixels, settings.max_upload_bytes, settings.formats)
    if opened.cost > settings.max_pixels:
        image = opened.image
        metadata = f" + {opened.metadata_bytes:,} bytes of metadata" if opened.metadata_bytes else ""
        message = (f"{opened.source}: a {image.width}x{image.height} {image.format} image costs as much to decode "
                   f"as {opened.cost:,} pixels of a JPEG or PNG ({DECODE_COST.get(str(image.format), 1):g} x "
                   f"{opened.pixels:,}{metadata}), over the cap of {settings.max_pixels:,} (raise max_pixels to "
                   "accept it)")
        image.close()
        raise ImageTooLargeError(message, opened.source)
    return opened


EXPLAIN_PARAMETERS = ("method", "target", "grid", "samples", "baseline", "seed")


WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")


def repeated_query_parameters(items: Sequence[tuple[str, str]]) -> list[str]:
    """The names that occur more than once among a query string's (name, value) pairs, in order."""
    seen: set[str] = set()
    repeated: list[str] = []
    for name, _value in items:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated


class OneValuePerQueryParameter:
    """ASGI middleware: a query parameter given twice is a 422 naming it, on every endpoint. Starlette keeps a
    repeated parameter's last value, so ``?grid=5&grid=6`` would silently mean ``grid=6``."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http":
            repeated = repeated_query_parameters(QueryParams(scope.get("query_string", b"")).multi_items())
            if repeated:
                error = InvalidOptionError(f"query parameter(s) {', '.join(map(repr, repeated))[:200]} given more "
                                           "than once; give each at most once")
                await JSONResponse(error_body(error), status_code=http_status(error))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def refuse_unknown_parameters(query: Mapping[str, str], allowed: Sequence[str], endpoint: str) -> None:
    """422 for a query parameter ``endpoint`` doesn't take: a misspelt option (``?face=1``, ``?frames=10``) must not
    be ignored into an answer the client didn't ask for. The one check every endpoint with options makes."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise InvalidOptionError(f"unknown query parameter(s) {', '.join(map(repr, unknown))[:200]}; "
                                 f"{endpoint} takes {', '.join(allowed)}")


def explain_parameters(query: Mapping[str, str]) -> tuple[str, str, dict[str, Any]]:
    """(method, target, options) from the query string; anything unknown or malformed is a 422."""
    refuse_unknown_parameters(query, EXPLAIN_PARAMETERS, "explain")
    options: dict[str, Any] = {}
    for key in ("grid", "samples", "seed"):
        if key in query:
            if not WHOLE_NUMBER.fullmatch(query[key]):
                raise InvalidOptionError(f"{key} must be a whole number, got {query[key][:40]!r}")
            options[key] = int(query[key])
    if "baseline" in query:
        options["baseline"] = query["baseline"]
    method = query.get("method", DEFAULT_METHOD)
    resolve_options(method, options)  # unknown methods, out-of-range values: refused before the upload is read
    return method, query.get("target", DEFAULT_TARGET)[:100], options


def heatmap_body(explanation: Explanation) -> dict[str, Any]:
    """The answer's heat map: a PNG layer over the photo's frame, its colour scale and a coarse grid."""
    layer = explanation.layer(EXPLAIN_LAYER_SIDE)
    png = io.BytesIO()
    layer.save(png, format="PNG", optimize=True)
    return {"png": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii"),
            "width": layer.width, "height": layer.height, "vmax": explanation.colour_scale(),
            "colours": colour_stops(), "grid": explanation.grid(EXPLAIN_GRID_SIDE)}


def explanation_body(explanation: Explanation, heatmap: dict[str, Any], model: dict[str, Any],
                     elapsed_ms: float) -> dict[str, Any]:
    return {**prediction_body(explanation.prediction, model, elapsed_ms),
            "explanation": {**explanation.summary(), "heatmap": heatmap}}


EXPLAIN_LAYER_SIDE = 512  # the heat layer's longer side: the page stretches it over the preview


EXPLAIN_GRID_SIDE = 32


PREDICT_PARAMETERS = ("faces", "margin", "min_face_size", "max_faces", "no_face")


FACE_GEOMETRY_PARAMETERS = PREDICT_PARAMETERS[1:]


FACES_SWITCH = {"1": True, "true": True, "0": False, "false": False}


NO_FACE_POLICIES = ("whole-image", "none")


@dataclass(frozen=True)
class FaceRequest:
    """What a predict request with faces asks for: the detection and crop geometry, and what no face means."""

    options: FaceOptions
    no_face: str  # "whole-image" or "none", as Detector.predict_faces takes it


@dataclass(frozen=True)
class FoundFaces:
    """An upload's faces, found on a face thread, and the model-size pixels to classify: each face's crop, or
    the whole image's when no face was found and the request falls back to it (none otherwise)."""

    faces: list[Face]
    pixels: list[Any]  # HxWx3 uint8 each, the model's input size
    width: int  # of the upright original, the boxes' frame
    height: int


def whole_parameter(query: Mapping[str, str], name: str, default: int) -> int:
    if name not in query:
        return default
    if not WHOLE_NUMBER.fullmatch(query[name]):
        raise InvalidOptionError(f"{name} must be a whole number, got {query[name][:40]!r}")
    return int(query[name])


def number_parameter(query: Mapping[str, str], name: str, default: float) -> float:
    """A number from the query; NaN and infinities pass through, for FaceOptions to refuse with its range."""
    if name not in query:
        return default
    try:
        return float(query[name]) if len(query[name]) <= 40 else math.nan
    except ValueError:
        raise InvalidOptionError(f"{name} must be a number, got {query[name][:40]!r}") from None


def faces_body(result: FacesResult, found: FoundFaces, request: FaceRequest, model: dict[str, Any],
               elapsed_ms: float) -> dict[str, Any]:
    """A faces answer: the image's verdict (its fields where a plain prediction's are; all None when no face was
    found and none was asked for), which path decided, and each face with its box and verdict."""
    verdict = (prediction_fields(result.prediction) if result.prediction is not None else
               {"label": None, "score": None, "probabilities": None, "fake_probability": None})
    options = request.options
    return {**verdict, "decided_by": result.decided_by, "decisive": result.decisive,
            "image": {"width": found.width, "height": found.height},
            "faces": [{**face_fields(face), **prediction_fields(prediction)} for face, prediction in result.faces],
            "face_options": {"margin": options.margin, "min_face_size": options.min_face_size,
                             "max_faces": options.max_faces, "detect_side": options.max_side,
                             "no_face": request.no_face},
            "model": model, "elapsed_ms": round(elapsed_ms, 2)}


class ClientGone(Exception):
    """The client disconnected before its request was read: nobody is left to answer."""


async def read_body(request: Request, limit: int, timeout_s: float, limit_note: str = "") -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes and with 408 when it takes longer
    than ``timeout_s``: never read unbounded, never waited for forever."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(
            f"request body of {int(declared):,} bytes exceeds the upload limit of {limit:,} bytes{limit_note}")
    chunks, size = [], 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    stream = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                break
            size += len(chunk)
            if size > limit:
                raise UploadTooLargeError(f"request body exceeds the upload limit of {limit:,} bytes{limit_note}")
            chunks.append(chunk)
    except asyncio.TimeoutError:
        raise RequestTimeoutError(
            f"request body not received within {timeout_s:g} s ({size:,} bytes arrived)") from None
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


async def read_uploads(request: Request, settings: ServeSettings) -> tuple[list[io.BytesIO], bool]:
    """The images of a predict request, and whether it was multipart with several files (answered with a list)."""
    body = await read_body(request, settings.max_upload_bytes, settings.body_timeout_s)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        if not body:
            raise BadRequestError("no image: send it as multipart field 'file' or as the request body")
        return [named_image(body, "request body")], False

    async def in_memory() -> AsyncGenerator[bytes, None]:  # the body is read already, within the limit
        yield body

    try:
        form = await MultiPartParser(request.headers, in_memory(), max_files=settings.queue_size).parse()
    except MultiPartException as exc:
        raise BadRequestError(f"malformed multipart body: {exc.message}") from exc
    try:
        fields = form.getlist("file")
        if not fields:
            sent = ", ".join(form.keys()) or "none"
            raise BadRequestError(f"multipart field 'file' is missing (fields sent: {sent[:200]})")
        uploads = []
        for index, upload in enumerate(fields):
            if not isinstance(upload, UploadFile):
                raise BadRequestError("multipart field 'file' must be a file upload, not a text value")
            uploads.append(named_image(await upload.read(), _safe_name(upload.filename) or f"file #{index + 1}"))
        return uploads, len(uploads) > 1
    finally:
        await form.close()


def _safe_name(name: str | None) -> str | None:
    """A client's file name as it may appear in answers and logs: printable and short."""
    if not name:
        return None
    cleaned = "".join(character if character.isprintable() else "?" for character in name)
    return cleaned if len(cleaned) <= 200 else cleaned[:197] + "..."


def public_model_name(detector: Detector) -> str:
    """A Hub id as is; for a local export only the folder's name: clients needn't learn the server's paths."""
    return detector.package.source_name


def model_summary(detector: Detector) -> dict[str, Any]:
    manifest = detector.package.manifest
    return {"name": public_model_name(detector), "revision": manifest.source.revision if manifest else None,
            "variant": detector.variant.name}


def prediction_fields(prediction: Prediction) -> dict[str, Any]:
    return {"label": prediction.label, "score": prediction.score, "probabilities": dict(prediction.probabilities),
            "fake_probability": prediction.fake_probability}


def prediction_body(prediction: Prediction, model: dict[str, Any], elapsed_ms: float) -> dict[str, Any]:
    return {**prediction_fields(prediction), "model": model, "elapsed_ms": round(elapsed_ms, 2)}


BINARY = {"type": "string", "format": "binary"}


def upload_body(file: Mapping[str, Any], raw: str) -> dict[str, Any]:
    """An upload endpoint's request body for /openapi.json: the multipart field ``file`` (its schema), or the bytes
    as the body, typed ``raw`` (``image/*``, ``video/*``) or ``application/octet-stream``. Required: every upload
    endpoint answers an empty body with an error."""
    return {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {"file": dict(file)}}},
        raw: {"schema": dict(BINARY)}, "application/octet-stream": {"schema": dict(BINARY)},
    }}


PREDICT_REQUEST_DOCS = {"parameters": [
    {"name": "faces", "in": "query", "schema": {"type": "string", "enum": ["1", "0"]},
     "description": "find the faces first: each face's box and verdict, the image decided by its faces (default: "
                    "as the package's manifest says, see /api/v1/model's faces.expected)"},
    {"name": "margin", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 4,
                                                 "default": DEFAULT_MARGIN},
     "description": "faces: a crop's side is (1 + margin) x the face box's longer side"},
    {"name": "min_face_size", "in": "query", "schema": {"type": "integer", "minimum": 12,
                                                        "default": DEFAULT_MIN_FACE_SIZE},
     "description": "faces: the smallest face searched for, in px of the detection copy"},
    {"name": "max_faces", "in": "query", "schema": {"type": "integer", "minimum": 1},
     "description": "faces: at most this many, the most confident (default and limit: /api/v1/model's "
                    "faces.max_faces)"},
    {"name": "no_face", "in": "query", "schema": {"type": "string", "enum": list(NO_FACE_POLICIES)},
     "description": "faces: with no face found, classify the whole image (default) or give no verdict"},
], "requestBody": upload_body({"type": "array", "items": dict(BINARY),
                               "description": "one image, or several: several are answered with a list in the same "
                                              "order"}, "image/*")}


EXPLAIN_REQUEST_DOCS = {
    "parameters": [
        {"name": "method", "in": "query", "schema": {"type": "string", "enum": list(METHODS),
                                                      "default": DEFAULT_METHOD}},
        {"name": "target", "in": "query", "schema": {"type": "string", "default": DEFAULT_TARGET},
         "description": "a label, 'predicted' (the verdict's) or 'fake'"},
        {"name": "grid", "in": "query", "schema": {"type": "integer", "minimum": 2}},
        {"name": "samples", "in": "query", "schema": {"type": "integer", "minimum": 2},
         "description": "rise only; even"},
        {"name": "baseline", "in": "query", "schema": {"type": "string", "enum": list(BASELINES)}},
        {"name": "seed", "in": "query", "schema": {"type": "integer", "minimum": 0}, "description": "rise only"},
    ],
    "requestBody": upload_body(BINARY, "image/*"),
}


SEED_REQUEST_DOCS = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "description": "base64 image, optionally a data:image/...;base64, URL"}},
}}}}}


ERROR_DOCS: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"application/json": {"example": example}}}
    for status, description, example in [
        (408, "the request body took longer than the body timeout",
         error_body(RequestTimeoutError("request body not received within 60 s"))),
        (409, "faces=1 asked of a model package without the face detector",
         error_body(MissingFaceDetectorError("faces=1: this server's model package has no face detector"))),
        (413, "body over the upload limit, or an image over the pixel cap",
         error_body(UploadTooLargeError("request body exceeds the upload limit of 20,971,520 bytes"))),
        (415, "not an image that can be decoded",
         error_body(ImageDecodeError("x.jpg: not a recognised image format"))),
        (422, "missing field, malformed body, empty image, a query parameter unknown or out of range",
         error_body(BadRequestError("multipart field 'file' is missing"))),
        (500, "the server failed (not the request)", INTERNAL_ERROR),
        (503, "inference queue full, or the inference worker stopped: retry later",
         error_body(ServerBusyError("inference queue full; retry later"))),
    ]
}
