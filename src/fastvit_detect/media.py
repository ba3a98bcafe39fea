"""Safe media decoding: bytes, files, paths, PIL images and arrays into upright RGB pictures, with every cap.

Everything here runs on input from strangers, so the order matters: the size is checked before reading, the
header's segments, scans and metadata are counted over the raw bytes (:mod:`.headers`) and the format checked
against the allowed ones before Pillow parses anything, the pixel count before decoding, and every failure on the
way comes out as an :class:`~.errors.InputError` that names the input (:func:`decode_boundary`). What the model
sees is made from these pictures by :mod:`.preprocess` (the HF transforms); faces and video take the same
pictures.
"""


import io
import math
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from .errors import (
    EmptyImageError,
    FastVitDetectError,
    ImageDecodeError,
    ImageNotFoundError,
    ImageTooLargeError,
    InputError,
    InvalidOptionError,
    UnsupportedInputError,
)
from .headers import METADATA_FREE_BYTES, METADATA_PIXEL_COST, check_headers

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray
"""Everything :func:`load_image` accepts."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
"""File endings that folder walks (eval, scan) pick up; content decides the format when decoding."""

DEFAULT_MAX_PIXELS = 100_000_000
"""Default decompression-bomb cap: 100 megapixels, above any phone camera in common use."""

# --- decoding -----------------------------------------------------------------------------------------------

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Default cap on an encoded image's size, checked before reading: far above any photo, and it keeps a path to a
huge file (or a device that never ends) from being read whole."""

EXCLUDED_FORMATS = frozenset({"EPS"})
"""Formats Pillow could open that are refused anyway: decoding EPS runs Ghostscript, an external interpreter."""

SERVER_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
"""The formats a server opens from strangers (``formats=`` of :func:`open_image`, ``serve --formats``): photos as
cameras, phones, browsers and social networks write them. Pillow opens some 40 formats; many of its decoders are
pure Python and slow per pixel (a fuzz campaign measured QOI 0.75 us/pixel, DDS 0.96, BLP 0.3, BMP RLE 0.11),
so a small file declaring many pixels would hold a decode thread for seconds.
"MPO" is what Pillow calls a JPEG with extra frames (phones write them). The library's own default accepts every
format Pillow opens except :data:`EXCLUDED_FORMATS`."""

DECODE_COST = {"WEBP": 2.0, "AVIF": 1.5}
"""Memory cost of decoding a pixel of these formats, as a multiple of a pixel of the formats that decode straight
into their image (JPEG, PNG, GIF, BMP, TIFF: at most about 8 bytes, an RGBA PNG with its RGB copy); others 1.
Measured with ``python benchmarks/decode_memory.py`` (peak RSS, VmHWM, of a fresh process decoding one image with
``open_image`` + ``decode_opened`` + the resize; Pillow 13, 1.5/16/36 MP): RGBA PNG 8.2-8.8 bytes/pixel; WebP,
lossy or lossless, RGB or RGBA, 16.1-18.7 (libwebp's RGBA canvas and Pillow's copies of it: ratio 2.0-2.1);
AVIF 9.3-15.8 (1.1-1.8). A server's decode budget and pixel cap count ``pixels x cost``
(:attr:`OpenedImage.cost`)."""


def check_formats(formats: Any) -> tuple[str, ...] | None:
    """``formats`` as :func:`open_image` takes it: None (every format Pillow opens but :data:`EXCLUDED_FORMATS`)
    or names of Pillow formats, in upper case. A name Pillow doesn't know, or an excluded one, is refused."""
    if formats is None:
        return None
    if isinstance(formats, (str, bytes)) or not isinstance(formats, Iterable):
        raise InvalidOptionError(f"formats must be a list of format names or None, got {formats!r}")
    known = openable_formats()
    names = []
    for name in formats:
        if not isinstance(name, str):
            raise InvalidOptionError(f"formats must be a list of format names or None, got {formats!r}")
        upper = name.upper()
        if upper in EXCLUDED_FORMATS:
            raise InvalidOptionError(f"{upper} images are never opened (decoding them runs an external interpreter)")
        if upper not in known:
            raise InvalidOptionError(f"unknown image format {name!r} in formats; Pillow here opens "
                                     f"{', '.join(sorted(known))}")
        if upper not in names:
            names.append(upper)
    if not names:
        raise InvalidOptionError("formats must name at least one image format (None accepts them all)")
    return tuple(names)


def server_formats() -> tuple[str, ...]:
    """:data:`SERVER_FORMATS` that this Pillow opens (AVIF needs Pillow 11.2+ built with libavif)."""
    known = openable_formats()
    return tuple(name for name in SERVER_FORMATS if name in known)


def openable_formats() -> frozenset[str]:
    """Every format name :func:`open_image` may be limited to: Pillow's, plus "MPO" (JPEG's factory makes those)."""
    Image.init()
    return frozenset(Image.OPEN) - EXCLUDED_FORMATS | {"MPO"}


def describe_source(image: object) -> str:
    """A short human name for an input, used in error messages and reports. Never raises: it runs before the decode
    boundary, on objects that may be hostile (a ``name`` property or ``__fspath__`` that raises, a released
    memoryview); such an input is named by its type and fails later, inside the boundary, with a typed error."""
    try:
        return _describe(image)
    except Exception:  # noqa: BLE001 - see the docstring
        return f"<{type(image).__name__}>"


def _describe(image: object) -> str:
    if isinstance(image, (str, os.PathLike)):
        return os.fsdecode(image)  # a bytes path that isn't UTF-8 keeps its bytes as lone surrogates
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{len(image)} bytes>"
    if isinstance(image, Image.Image):
        return f"<PIL.Image {image.mode} {image.width}x{image.height}>"
    if isinstance(image, np.ndarray):
        return f"<ndarray {image.dtype} {image.shape}>"
    name = getattr(image, "name", None)
    if isinstance(name, str):
        return name
    return f"<{type(image).__name__}>"


@dataclass
class OpenedImage:
    """An image whose header has been read and checked against the caps, its pixels not yet decoded.

    Splitting decoding in two lets a caller learn an image's cost (``pixels``) cheaply, then decide where and
    when to pay for it: the server holds large images to a shared pixel budget before decoding them.
    """

    image: Image.Image
    source: str
    owned: bool  # False for a caller's PIL image: never modified in place
    metadata_bytes: int = 0  # what fastvit_detect.headers counted: held in memory while the image decodes

    @property
    def pixels(self) -> int:
        return self.image.width * self.image.height

    @property
    def cost(self) -> int:
        """What decoding it costs, in pixels of a JPEG or PNG: ``pixels`` times the format's :data:`DECODE_COST`,
        plus its metadata beyond ``headers.METADATA_FREE_BYTES`` at ``headers.METADATA_PIXEL_COST`` a byte."""
        metadata = max(0, self.metadata_bytes - METADATA_FREE_BYTES)
        return math.ceil(self.pixels * DECODE_COST.get(self.image.format or "", 1.0) + metadata * METADATA_PIXEL_COST)


@contextmanager
def decode_boundary(source: str) -> Iterator[None]:
    """Every failure inside becomes a :class:`FastVitDetectError` naming the image.

    Pillow's plugins raise far more than OSError on corrupt files (RuntimeError, NotImplementedError,
    OverflowError, struct.error, IndexError, ZeroDivisionError, ...): whatever one raises, it is this image's
    failure and must never escape as something a caller can't tell apart from a bug, or fail other images.
    """
    try:
        yield
    except FastVitDetectError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError(f"{source}: ran out of memory decoding the image", source) from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{source}: image dimensions exceed Pillow's safety limit: {exc}", source) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{source}: not a recognised image format", source) from exc
    except Exception as exc:  # the decode boundary: see the docstring
        cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"{source}: image data is truncated or corrupt ({cause})", source) from exc


def open_image(
    image: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS, max_bytes: int | None = DEFAULT_MAX_BYTES,
    formats: Sequence[str] | None = None,
) -> OpenedImage:
    """Read an input's bytes and header and check them against ``max_bytes`` and ``max_pixels``; decode nothing.

    ``formats``: the image formats to open (names as :data:`SERVER_FORMATS`, which a server uses); an image in
    another format is refused with :class:`~fastvit_detect.errors.UnsupportedInputError` naming it, before a
    pixel of it is decoded. None: every format Pillow opens except :data:`EXCLUDED_FORMATS`. It applies to encoded
    images (paths, bytes, files); PIL images and arrays are decoded already.

    Raises a subclass of :class:`~fastvit_detect.errors.InputError` naming the input and the cause.
    """
    formats = check_formats(formats)
    source = describe_source(image)
    with decode_boundary(source):
        if isinstance(image, np.ndarray):
            return OpenedImage(_from_array(image, max_pixels, source), source, owned=True)
        if isinstance(image, Image.Image):
            _check_pixels(image, max_pixels, source)
            return OpenedImage(image, source, owned=False)
        if isinstance(image, (str, os.PathLike)):
            data = _read_path(image, source, max_bytes)
        elif isinstance(image, (bytes, bytearray, memoryview)):
            data = _check_bytes(image, source, max_bytes)
        elif callable(getattr(image, "read", None)):
            data = _read_file_object(image, source, max_bytes)
        else:
            raise UnsupportedInputError(
                f"{source}: unsupported input type {type(image).__name__}; expected a path, bytes, a binary file, "
                "a PIL.Image or a numpy array",
                source,
            )
        header = check_headers(data, source)  # before Pillow parses a header: its parsers cost per segment
        opened = _open_bytes(data, source, formats)
        _check_pixels(opened, max_pixels, source)
        return OpenedImage(opened, source, owned=True, metadata_bytes=header.metadata_bytes)


def decode_opened(opened: OpenedImage, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an :func:`open_image` result into an upright RGB image, as ``transformers``' ``load_image`` does."""
    image, source = opened.image, opened.source
    with decode_boundary(source):
        if opened.owned and draft_size is not None and isinstance(image, JpegImagePlugin.JpegImageFile):
            _draft(image, draft_size)  # MPO photos too
        try:
            image.load()
        except ValueError as exc:
            if not opened.owned:  # "Operation on closed image": the caller's object, not image data
                raise UnsupportedInputError(f"{source}: unusable PIL image: {exc}", source) from exc
            raise
        return _to_upright_rgb(image, source, owned=opened.owned)


def load_image(
    image: ImageInput,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    formats: Sequence[str] | None = None,
) -> Image.Image:
    """Decode any accepted input into an upright RGB PIL image, as ``transformers.image_utils.load_image`` does.

    ``draft_size`` (width, height): let the JPEG decoder scale large images down by 1/2, 1/4 or 1/8 in the DCT
    domain while staying at least that size. Several times faster on photos of many megapixels, but the pixels
    differ from a full decode followed by the resize, so results are no longer bit-identical to HF's.

    Raises a subclass of :class:`~fastvit_detect.errors.InputError` naming the input and the cause.
    """
    return decode_opened(open_image(image, max_pixels, max_bytes, formats), draft_size)


def open_regular_file(path: str | os.PathLike, source: str, kind: str = "image",
                      max_bytes: int | None = None) -> tuple[int, os.stat_result]:
    """A read-only descriptor of ``path`` and its status; ``path`` must be a regular file (a FIFO would block a
    reader, /dev/zero never end) of at most ``max_bytes``: the one way images and clips are opened from a path. The
    check is made on the descriptor read from, so the path can't be swapped for a FIFO in between; O_NONBLOCK keeps
    opening a FIFO from waiting for a writer (it changes nothing for regular files). ``kind`` names what was
    expected in the errors (ImageNotFoundError; ImageTooLargeError over ``max_bytes``)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError as exc:
        raise ImageNotFoundError(f"{source}: no such file", source) from exc
    except IsADirectoryError as exc:
        raise ImageNotFoundError(f"{source}: is a directory, not {_article(kind)} file", source) from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        file_kind = _path_kind(path)  # a socket can't even be opened: say what it is
        cause = (f"not a regular file ({file_kind})" if file_kind
                 else f"can't read file: {getattr(exc, 'strerror', None) or exc}")
        raise ImageNotFoundError(f"{source}: {cause}", source) from exc
    try:
        status = os.fstat(descriptor)
        problem = file_status_problem(status, source, max_bytes, kind)
        if problem is not None:
            raise problem
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor, status


def _article(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _read_path(image: str | os.PathLike, source: str, max_bytes: int | None) -> bytes:
    """The file's bytes, from a regular file only (:func:`open_regular_file`), at most ``max_bytes``."""
    descriptor, _ = open_regular_file(image, source, max_bytes=max_bytes)
    with os.fdopen(descriptor, "rb") as handle:
        try:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        except OSError as exc:
            raise ImageNotFoundError(f"{source}: can't read file: {exc.strerror or exc}", source) from exc
    return _check_bytes(data, source, max_bytes)  # a file that grew after fstat


def file_status_problem(status: os.stat_result, source: str, max_bytes: int | None,
                        kind: str = "image") -> InputError | None:
    """Why a file with this ``os.stat`` result isn't read as an image (or ``kind``: not a regular file, over
    ``max_bytes``), or None. Checked before reading: a FIFO would block a reader, /dev/zero never end."""
    if stat.S_ISDIR(status.st_mode):
        return ImageNotFoundError(f"{source}: is a directory, not {_article(kind)} file", source)
    if not stat.S_ISREG(status.st_mode):
        return ImageNotFoundError(f"{source}: not a regular file ({_file_kind(status.st_mode)}); only {kind} "
                                  "files are read", source)
    if max_bytes is not None and status.st_size > max_bytes:
        return _too_many_bytes(source, status.st_size, max_bytes)
    return None


def _read_file_object(handle: Any, source: str, max_bytes: int | None) -> bytes:
    try:
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    except UnicodeDecodeError as exc:
        raise UnsupportedInputError(f"{source}: file object must be opened in binary mode ('rb')", source) from exc
    except (OSError, ValueError) as exc:  # ValueError: read from a closed file
        raise ImageNotFoundError(f"{source}: can't read from file object: {exc}", source) from exc
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UnsupportedInputError(f"{source}: file object must be opened in binary mode ('rb')", source)
    return _check_bytes(data, source, max_bytes)


def _check_bytes(data: bytes | bytearray | memoryview, source: str, max_bytes: int | None) -> bytes:
    size = memoryview(data).nbytes
    if max_bytes is not None and size > max_bytes:
        raise _too_many_bytes(source, size, max_bytes)
    return bytes(data)


def _too_many_bytes(source: str, size: int, max_bytes: int) -> ImageTooLargeError:
    return ImageTooLargeError(f"{source}: {size:,} bytes exceeds the cap of {max_bytes:,} bytes "
                              "(raise max_bytes to accept it)", source)


def _path_kind(path: str | os.PathLike) -> str | None:
    """What a path that isn't a regular file is, for messages; None for a regular file or an unreadable path."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else _file_kind(mode)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def _open_bytes(data: bytes, source: str, formats: tuple[str, ...] | None = None) -> Image.Image:
    if not data:
        raise EmptyImageError(f"{source}: empty input (0 bytes)", source)
    if formats is None:
        image = Image.open(io.BytesIO(data))
    else:  # only the allowed formats' plugins look at the bytes; "MPO" is JPEG's factory's result, not a plugin
        try:
            image = Image.open(io.BytesIO(data), formats=[name for name in formats if name in Image.OPEN])
        except UnidentifiedImageError:
            other = _identify_other_format(data, formats)
            if other is not None:
                raise _format_refused(source, other, formats) from None
            raise ImageDecodeError(f"{source}: not a recognised image format (accepted: {', '.join(formats)})",
                                   source) from None
        if image.format not in formats:
            raise _format_refused(source, str(image.format), formats)
    if image.format in EXCLUDED_FORMATS:
        raise ImageDecodeError(f"{source}: {image.format} images aren't accepted (decoding them runs an external "
                               "interpreter)", source)
    return image


def _identify_other_format(data: bytes, formats: tuple[str, ...]) -> str | None:
    """The format, outside ``formats``, of an image that none of theirs opened, to name in the refusal; None if
    it's no image Pillow knows. Only plugins whose signature check (a comparison of the first bytes) claims the
    data read its header, so a format they share a signature with isn't misnamed; none decodes a pixel."""
    prefix = data[:16]
    claimed = []
    for name in Image.ID:
        _factory, accept = Image.OPEN[name]
        try:
            claim = accept is not None and accept(prefix)
        except Exception:  # noqa: BLE001 - a signature check that can't read these bytes doesn't claim them
            continue
        if claim and not isinstance(claim, str) and name not in formats and name not in EXCLUDED_FORMATS:
            claimed.append(name)  # a str is Pillow's "maybe", with a warning
    for name in claimed:
        try:
            with Image.open(io.BytesIO(data), formats=[name]) as image:
                return str(image.format)
        except Image.DecompressionBombError:  # its header parsed, declaring more pixels than Pillow opens
            return name
        except Exception:  # noqa: BLE001 - this plugin can't read the header: not an image of its format
            continue
    return None


def _format_refused(source: str, name: str, formats: tuple[str, ...]) -> UnsupportedInputError:
    return UnsupportedInputError(f"{source}: {name} images aren't accepted here (accepted: {', '.join(formats)})",
                                 source)


def _draft(image: Image.Image, size: tuple[int, int]) -> None:
    width, height = size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - corrupt EXIF: _to_upright_rgb won't rotate either
        orientation = 1
    if orientation in (5, 6, 7, 8):  # stored sideways: the draft must cover the transposed size
        width, height = height, width
    image.draft(None, (width, height))


def _check_pixels(image: Image.Image, max_pixels: int | None, source: str) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{source}: image has no pixels ({width}x{height})", source)
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{source}: {width}x{height} = {width * height:,} pixels exceeds the cap of {max_pixels:,} "
            "(raise max_pixels to accept it)",
            source,
        )


def _to_upright_rgb(image: Image.Image, source: str, owned: bool = True) -> Image.Image:
    """EXIF orientation applied, then RGB. ``owned``: the image is ours to change in place (saves a full copy)."""
    upright = image
    try:
        if owned:
            ImageOps.exif_transpose(image, in_place=True)
        else:  # the caller's image: never modify it
            upright = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - corrupt EXIF: orientation is unknowable, the pixels are still good
        upright = image
    if upright.mode == "RGB":
        return upright
    try:
        return upright.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"{source}: can't convert mode {upright.mode} to RGB: {exc}", source) from exc


def _from_array(array: np.ndarray, max_pixels: int | None, source: str) -> Image.Image:
    if array.dtype != np.uint8:
        raise UnsupportedInputError(
            f"{source}: numpy images must be uint8 (0-255); convert with (x * 255).round().astype(np.uint8)",
            source,
        )
    if array.ndim == 2:
        mode = "L"
    elif array.ndim == 3 and array.shape[2] == 3:
        mode = "RGB"
    else:
        raise UnsupportedInputError(
            f"{source}: numpy images must be HxWx3 RGB or HxW grayscale, got shape {array.shape}", source
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise EmptyImageError(f"{source}: image has no pixels", source)
    if max_pixels is not None and array.shape[0] * array.shape[1] > max_pixels:
        raise ImageTooLargeError(
            f"{source}: {array.shape[1]}x{array.shape[0]} = {array.shape[0] * array.shape[1]:,} pixels exceeds the "
            f"cap of {max_pixels:,} (raise max_pixels to accept it)", source)
    return Image.fromarray(np.ascontiguousarray(array), mode=mode).convert("RGB")


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``root`` (recursively, by IMAGE_SUFFIXES, case-insensitive), sorted."""
    return sorted(path for path in Path(root).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
