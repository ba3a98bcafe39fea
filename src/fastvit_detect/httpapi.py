"""The framework-free part of serving over HTTP: errors to status codes and JSON bodies, and the seed client's
base64 images. Shared by the FastAPI server (``server``) and framework embeddings such as the Django example.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import io
import json
from typing import Any

from .errors import (
    BadRequestError,
    EmptyImageError,
    ImageDecodeError,
    ImageTooLargeError,
    InputError,
    InvalidOptionError,
    MissingFaceDetectorError,
    RequestTimeoutError,
    ServerBusyError,
    UnsupportedInputError,
    UploadTooLargeError,
)

SERVER_MAX_PIXELS = 40_000_000
"""A server's own pixel cap: an 8000x5000 photo passes. Decoding an image this size costs up to about 1.5 s of a
core and 170-330 MB (an RGB to an RGBA PNG, measured: benchmarks/decode_memory.py, docs/reliability.md), which
the server's decode budget then bounds. The library's default (100 MP) is for batch jobs, where no stranger picks
the images."""

SERVE_MODULES = ("fastapi", "uvicorn", "python_multipart")  # the serve extra, by import name


def missing_serve_modules() -> list[str]:
    """The serve extra's modules that aren't importable here: all of them, not just the first one hit."""
    def missing(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):  # a broken or blocked installation counts as missing
            return True

    return [name for name in SERVE_MODULES if missing(name)]


# The one place errors become HTTP status codes. Looked up along the class's MRO, so subclasses inherit.
HTTP_STATUS: dict[type[Exception], int] = {
    RequestTimeoutError: 408,
    UploadTooLargeError: 413,
    ImageTooLargeError: 413,  # too many pixels: a smaller image will do, as for a too-large body
    ImageDecodeError: 415,  # not an image we can decode, whatever its declared type
    UnsupportedInputError: 415,
    EmptyImageError: 422,
    BadRequestError: 422,
    InputError: 422,
    InvalidOptionError: 422,  # an explain parameter out of range: the request's fault
    MissingFaceDetectorError: 409,  # faces asked of a package without the face detector: not this request's form
    ServerBusyError: 503,
}

INTERNAL_ERROR = {"error": {"type": "InternalServerError", "message": "the server failed to answer; see its log"}}


def http_status(error: Exception) -> int:
    """The HTTP status for an error: its class's entry in HTTP_STATUS, else 500 (a fault of the server, such as a
    :class:`~fastvit_detect.errors.ModelOutputError`: never a verdict, never blamed on the client)."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_body(error: Exception) -> dict[str, Any]:
    """The JSON body of a failure, in the CLI's shape: ``{"error": {"type", "message"}}``."""
    return {"error": {"type": type(error).__name__, "message": str(error)}}


def named_image(data: bytes, name: str) -> io.BytesIO:
    """Image bytes that error messages call by ``name`` (the upload's file name) rather than ``<N bytes>``."""
    image = io.BytesIO(data)
    image.name = name
    return image


def decode_base64_image(value: Any, limit: int) -> io.BytesIO:
    """The seed client's ``image`` value: base64, optionally a ``data:image/...;base64,`` URL."""
    if not isinstance(value, str):
        raise BadRequestError(f"JSON field 'image' must be a base64 string, got {type(value).__name__}")
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadRequestError("JSON field 'image' is a data URL without ';base64,': only base64 data URLs work")
    compact = "".join(value.split())  # line-wrapped base64 (base64.encodebytes) is common
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f"JSON field 'image' isn't valid base64: {exc}") from exc
    if len(data) > limit:
        raise UploadTooLargeError(f"image of {len(data):,} bytes exceeds the upload limit of {limit:,} bytes")
    return named_image(data, "image (base64)")


def seed_body_limit(limit: int) -> int:
    """The JSON body that carries an image of ``limit`` bytes in base64: 4 characters per 3 bytes, and, line-wrapped
    as ``base64.encodebytes`` writes it, a line break per 76 characters, which JSON escapes to up to 4 bytes
    (``\\r\\n``); 1 KiB for the rest of the JSON. The decoded image is then held to ``limit`` itself."""
    characters = -(-limit // 3) * 4
    return characters + -(-characters // 76) * 4 + 1024


def seed_request_image(body: bytes, limit: int) -> io.BytesIO:
    """The image of a seed-client request body, JSON ``{"image": "<base64>"}``."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, integers past Python's digit limit, nesting
        raise BadRequestError(f"request body isn't valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(payload, dict) or "image" not in payload:
        raise BadRequestError('JSON field \'image\' is missing: send {"image": "<base64>"}')
    return decode_base64_image(payload["image"], limit)
