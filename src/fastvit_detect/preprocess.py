"""Image decoding and the HF image-processor transforms, in numpy + Pillow.

The reference is what a ``transformers`` image-classification pipeline does with the slow processors
(``use_fast=False``) of ViT and DeiT checkpoints:

1. ``transformers.image_utils.load_image``: EXIF orientation applied, then ``convert("RGB")`` for every mode;
2. resize with PIL straight to (height, width) with the config's ``resample``;
3. center-crop (DeiT), zero-padding when the crop is larger than the image;
4. rescale (float64 multiply, cast to float32) and normalise ``(x - mean) / std`` in float32.

Steps 2-3 run per image on uint8 data (PIL does the heavy lifting in C). Step 4 runs once per batch through a
per-channel lookup table of 256 values computed with exactly HF's arithmetic, so the float32 output is
bit-identical to HF's while costing one lookup per channel instead of several float passes.
"""

from __future__ import annotations

import io
import math
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    UnsupportedPreprocessorError,
)
from .headers import METADATA_FREE_BYTES, METADATA_PIXEL_COST, check_headers
from .options import check_whole

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray
"""Everything :func:`load_image` accepts."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
"""File endings that folder walks (eval, scan) pick up; content decides the format when decoding."""

DEFAULT_MAX_PIXELS = 100_000_000
"""Default decompression-bomb cap: 100 megapixels, above any phone camera in common use."""

@dataclass(frozen=True)
class ProcessorFamily:
    """What one family of HF image processors does: its defaults for every option, and whether it crops.

    A config only lists what differs from its class's defaults (and legacy ones leave out whole options), so the
    defaults are part of the contract. Adding a processor family is adding an entry to PROCESSOR_FAMILIES.
    """

    defaults: Mapping[str, Any]
    center_crop: bool  # whether the processor has a crop step at all (ViT's ignores crop keys a config carries)


_VIT = ProcessorFamily(
    defaults={"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2, "do_center_crop": False,
              "crop_size": None, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    center_crop=False)
_DEIT = ProcessorFamily(
    defaults={**_VIT.defaults, "size": {"height": 256, "width": 256}, "resample": 3, "do_center_crop": True,
              "crop_size": {"height": 224, "width": 224}, "image_mean": [0.485, 0.456, 0.406],
              "image_std": [0.229, 0.224, 0.225]},
    center_crop=True)

# The processors this module reproduces, by the class name a config stores. Fast variants share the config
# format; the slow processor's arithmetic is what we reproduce for them too, since that's what the checkpoints
# were validated with.
PROCESSOR_FAMILIES: Mapping[str, ProcessorFamily] = {
    "ViTImageProcessor": _VIT, "ViTImageProcessorFast": _VIT, "ViTFeatureExtractor": _VIT,
    "DeiTImageProcessor": _DEIT, "DeiTImageProcessorFast": _DEIT, "DeiTFeatureExtractor": _DEIT,
}
SUPPORTED_PROCESSORS = frozenset(PROCESSOR_FAMILIES)

# PIL resampling filters by the integer codes HF configs store (PILImageResampling).
_RESAMPLE_FILTERS = {0: Image.Resampling.NEAREST, 1: Image.Resampling.LANCZOS, 2: Image.Resampling.BILINEAR,
                     3: Image.Resampling.BICUBIC, 4: Image.Resampling.BOX, 5: Image.Resampling.HAMMING}


# --- config -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessConfig:
    """What the HF preprocessor config asks for, resolved against the processor class's defaults."""

    resize: tuple[int, int] | None  # (height, width)
    resample: int
    crop: tuple[int, int] | None  # (height, width)
    rescale_factor: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    processor: str

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of the model input, or None when the config doesn't fix it."""
        return self.crop or self.resize

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> PreprocessConfig:
        """Resolve a ``preprocessor_config.json`` dict, including legacy ``*FeatureExtractor`` configs.

        Every field is validated, since a config is data from wherever the package came from: a zero or NaN
        std, a NaN rescale factor or an absurd size would otherwise turn into NaN verdicts or gigabytes of input.
        """
        processor = config.get("image_processor_type") or config.get("feature_extractor_type")
        if processor is None:
            raise UnsupportedPreprocessorError(
                "preprocessor config names no image_processor_type or feature_extractor_type; "
                f"supported: {', '.join(sorted(SUPPORTED_PROCESSORS))}"
            )
        if not isinstance(processor, str) or processor not in PROCESSOR_FAMILIES:
            raise UnsupportedPreprocessorError(
                f"image processor {processor!r} isn't reproduced by this runtime; "
                f"supported: {', '.join(sorted(SUPPORTED_PROCESSORS))}"
            )
        family = PROCESSOR_FAMILIES[processor]
        # HF falls back to the class default for any option stored as null, as for a missing one.
        merged = {**family.defaults, **{k: v for k, v in config.items() if v is not None}}
        flags = {key: _flag(merged[key], key) for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize")}

        resize = _square_or_hw(merged["size"], "size") if flags["do_resize"] else None
        crop = None
        if family.center_crop and flags["do_center_crop"]:
            if merged["crop_size"] is None:
                raise UnsupportedPreprocessorError("do_center_crop is set but crop_size is missing")
            crop = _square_or_hw(merged["crop_size"], "crop_size")
        resample = merged["resample"]
        if isinstance(resample, bool) or not isinstance(resample, int) or resample not in _RESAMPLE_FILTERS:
            raise UnsupportedPreprocessorError(f"unknown resample {resample!r}; expected an integer code 0-5")
        rescale = _bounded(merged["rescale_factor"], "rescale_factor", *_RESCALE_RANGE) if flags["do_rescale"] else None
        mean = std = None
        if flags["do_normalize"]:
            mean = _per_channel(merged["image_mean"], "image_mean", *_MEAN_RANGE)
            std = _per_channel(merged["image_std"], "image_std", *_STD_RANGE)
        return cls(resize=resize, resample=resample, crop=crop, rescale_factor=rescale, mean=mean, std=std,
                   processor=processor)


MAX_IMAGE_SIDE = 1024
"""The largest model input side a preprocessor config may ask for. ViT detectors run at 224-518 px; a config
asking for more is broken or hostile, and with a graph of dynamic size the model's memory grows with the square of
the token count."""

# Accepted ranges: wide enough for every real config (0-1 or 0-255 pixel scales), narrow enough that the
# normalisation table stays finite and meaningful.
_RESCALE_RANGE = (1e-6, 1.0)
_MEAN_RANGE = (-1e3, 1e3)
_STD_RANGE = (1e-3, 1e3)


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise UnsupportedPreprocessorError(f"{key}={value!r} must be true or false")
    return value


def _bounded(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        # NaN fails the comparison too; an int too large for a float raises nothing here and is out of range.
        raise UnsupportedPreprocessorError(f"{key}={value!r} must be a finite number from {low:g} to {high:g}")
    return float(value)


def _side(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_IMAGE_SIDE


def _square_or_hw(size: Any, key: str) -> tuple[int, int]:
    # ViT/DeiT processors call get_size_dict(default_to_square=True): a bare int means a square.
    if _side(size):
        return (size, size)
    if isinstance(size, Mapping) and "height" in size and "width" in size:
        height, width = size["height"], size["width"]
        if _side(height) and _side(width):
            return (height, width)
    raise UnsupportedPreprocessorError(
        f"{key}={size!r} isn't supported: ViT/DeiT processors take an int or {{'height', 'width'}}, "
        f"each from 1 to {MAX_IMAGE_SIDE}"
    )


def _per_channel(values: Any, key: str, low: float, high: float) -> tuple[float, float, float]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return (_bounded(values, key, low, high),) * 3
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise UnsupportedPreprocessorError(f"{key} must be 3 numbers (RGB), got {values!r}")
    first, second, third = (_bounded(value, key, low, high) for value in values)
    return (first, second, third)


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


def _read_path(image: str | os.PathLike, source: str, max_bytes: int | None) -> bytes:
    """The file's bytes, from a regular file only: a FIFO would block, /dev/zero never end."""
    # One descriptor for the check and the read, so the path can't be swapped for a FIFO in between;
    # O_NONBLOCK keeps opening a FIFO from waiting for a writer (it changes nothing for regular files).
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(image, flags)
    except FileNotFoundError as exc:
        raise ImageNotFoundError(f"{source}: no such file", source) from exc
    except IsADirectoryError as exc:
        raise ImageNotFoundError(f"{source}: is a directory, not an image file", source) from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        kind = _path_kind(image)  # a socket can't even be opened: say what it is
        cause = f"not a regular file ({kind})" if kind else f"can't read file: {getattr(exc, 'strerror', None) or exc}"
        raise ImageNotFoundError(f"{source}: {cause}", source) from exc
    try:
        problem = file_status_problem(os.fstat(descriptor), source, max_bytes)
        if problem is not None:
            raise problem
    except BaseException:
        os.close(descriptor)
        raise
    with os.fdopen(descriptor, "rb") as handle:
        try:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        except OSError as exc:
            raise ImageNotFoundError(f"{source}: can't read file: {exc.strerror or exc}", source) from exc
    return _check_bytes(data, source, max_bytes)  # a file that grew after fstat


def file_status_problem(status: os.stat_result, source: str, max_bytes: int | None) -> InputError | None:
    """Why a file with this ``os.stat`` result isn't read as an image (not a regular file, over ``max_bytes``),
    or None. Checked before reading: a FIFO would block a reader, /dev/zero never end."""
    if stat.S_ISDIR(status.st_mode):
        return ImageNotFoundError(f"{source}: is a directory, not an image file", source)
    if not stat.S_ISREG(status.st_mode):
        return ImageNotFoundError(f"{source}: not a regular file ({_file_kind(status.st_mode)}); only image "
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


# --- transforms ---------------------------------------------------------------------------------------------
# Small composable steps, each image -> image, built from the config; the batch-level normalisation comes last.


@dataclass(frozen=True)
class Resize:
    height: int
    width: int
    resample: int

    def __call__(self, image: Image.Image) -> Image.Image:
        if image.size == (self.width, self.height):
            return image  # PIL returns a copy for a same-size resize; HF's output equals the input here
        return image.resize((self.width, self.height), resample=_RESAMPLE_FILTERS[self.resample], reducing_gap=None)


@dataclass(frozen=True)
class CenterCrop:
    height: int
    width: int

    def __call__(self, image: Image.Image) -> Image.Image:
        # Floor division for the offset, and PIL filling out-of-bounds with zeros, match HF's center_crop,
        # including its zero padding when the crop is larger than the image.
        top = (image.height - self.height) // 2
        left = (image.width - self.width) // 2
        if (top, left) == (0, 0) and image.size == (self.width, self.height):
            return image
        return image.crop((left, top, left + self.width, top + self.height))


def normalization_table(config: PreprocessConfig) -> np.ndarray:
    """Per-channel lookup table (3, 256) float32: uint8 value -> model input value, with HF's exact arithmetic."""
    values = np.arange(256, dtype=np.uint8)[None, :].repeat(3, axis=0)
    if config.rescale_factor is not None:
        table = (values.astype(np.float64) * config.rescale_factor).astype(np.float32)
    else:
        table = values.astype(np.float32)
    if config.mean is not None and config.std is not None:
        mean = np.asarray(config.mean, dtype=np.float32)[:, None]
        std = np.asarray(config.std, dtype=np.float32)[:, None]
        table = (table - mean) / std
    return np.ascontiguousarray(table, dtype=np.float32)


class Preprocessor:
    """Turns images into the model's float32 NCHW input, reproducing the HF slow image processor."""

    def __init__(
        self,
        config: PreprocessConfig,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        jpeg_draft: bool = False,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        formats: Sequence[str] | None = None,
    ) -> None:
        if config.output_size is None:  # images of every size can't share one batch tensor
            raise UnsupportedPreprocessorError("the preprocessor config sets neither a resize nor a crop size")
        self.config = config
        self.max_pixels = _cap(max_pixels, "max_pixels")
        self.max_bytes = _cap(max_bytes, "max_bytes")
        self.formats = check_formats(formats)
        # Drafting needs a resize step to absorb the reduced decode; a crop-only config must see full pixels.
        self.draft_size = (config.resize[1], config.resize[0]) if jpeg_draft and config.resize else None
        self.transforms: list[Callable[[Image.Image], Image.Image]] = []
        if config.resize is not None:
            self.transforms.append(Resize(*config.resize, resample=config.resample))
        if config.crop is not None:
            self.transforms.append(CenterCrop(*config.crop))
        self._table = normalization_table(config)
        if not np.isfinite(self._table).all():  # the config's ranges make this impossible; never feed NaN anyway
            raise UnsupportedPreprocessorError(f"preprocessor config {config} gives non-finite model inputs")

    @classmethod
    def from_hf(
        cls,
        config: Mapping[str, Any],
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        jpeg_draft: bool = False,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        formats: Sequence[str] | None = None,
    ) -> Preprocessor:
        return cls(PreprocessConfig.from_hf(config), max_pixels=max_pixels, jpeg_draft=jpeg_draft, max_bytes=max_bytes,
                   formats=formats)

    @property
    def output_size(self) -> tuple[int, int]:
        size = self.config.output_size
        assert size is not None  # checked in __init__
        return size

    def open(self, image: ImageInput) -> OpenedImage:
        """Read and check an image's header against this preprocessor's caps; decode nothing yet."""
        return open_image(image, self.max_pixels, self.max_bytes, self.formats)

    def opened_to_pixels(self, opened: OpenedImage) -> np.ndarray:
        """Decode, resize and crop an opened image: HxWx3 uint8, before normalisation."""
        picture = decode_opened(opened, self.draft_size)
        with decode_boundary(opened.source):
            for transform in self.transforms:
                picture = transform(picture)
            return np.asarray(picture, dtype=np.uint8)

    def to_pixels(self, image: ImageInput) -> np.ndarray:
        """Decode, resize and crop one image: HxWx3 uint8, before normalisation."""
        return self.opened_to_pixels(self.open(image))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC batch -> float32 NCHW model input."""
        # One lookup per channel, indexed by the uint8 pixels themselves: widening them to intp for a single
        # flattened lookup cost several times more.
        out = np.empty((len(pixels), 3, *pixels.shape[1:3]), dtype=np.float32)
        for channel in range(3):
            np.take(self._table[channel], pixels[..., channel], out=out[:, channel])
        return out

    def __call__(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Preprocess a batch into one float32 NCHW array. Raises the first image's InputError."""
        pixels, errors = self.batch_pixels(images)
        for error in errors:
            if error is not None:
                raise error
        return self.normalize(pixels)

    def batch_pixels(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, list[InputError | None]]:
        """Decode a batch into one uint8 NHWC array; a failed image leaves zeros and its error in the list."""
        height, width = self.output_size
        batch = np.zeros((len(images), height, width, 3), dtype=np.uint8)
        errors: list[InputError | None] = [None] * len(images)
        for index, image in enumerate(images):
            try:
                batch[index] = self.to_pixels(image)
            except InputError as exc:  # decode_boundary turns every decoding failure into one
                errors[index] = exc
        return batch, errors


def _cap(value: int | None, name: str) -> int | None:
    """A size cap: None (no cap) or a whole number >= 1; anything else is a caller's mistake, said plainly."""
    return None if value is None else check_whole(f"{name} (None: no cap)", value, 1)
