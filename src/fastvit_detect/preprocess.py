"""The HF image-processor transforms, in numpy + Pillow: upright RGB pictures into the model's input.

Decoding (bytes, files and paths into those pictures, with every cap) is :mod:`.media`'s; its public names are
importable from here too, as they were before the two were split.

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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .errors import InputError, UnsupportedPreprocessorError
from .media import (
    DECODE_COST,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    EXCLUDED_FORMATS,
    IMAGE_SUFFIXES,
    SERVER_FORMATS,
    ImageInput,
    OpenedImage,
    check_formats,
    decode_boundary,
    decode_opened,
    describe_source,
    find_images,
    load_image,
    open_image,
    openable_formats,
    server_formats,
)
from .options import check_whole

__all__ = [  # the transforms, and media's public names as they were importable from here before the split
    "DECODE_COST", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "EXCLUDED_FORMATS", "IMAGE_SUFFIXES", "SERVER_FORMATS",
    "CenterCrop", "ImageInput", "OpenedImage", "PreprocessConfig", "Preprocessor", "ProcessorFamily", "Resize",
    "check_formats", "decode_boundary", "decode_opened", "describe_source", "find_images", "load_image",
    "normalization_table", "open_image", "openable_formats", "server_formats",
]


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
# DeiT checkpoints' configs carry ImageNet's mean/std, but the class's own default is 0.5 (transformers'
# IMAGENET_STANDARD_MEAN/STD), which is what HF applies to a config that leaves them out.
_DEIT = ProcessorFamily(
    defaults={**_VIT.defaults, "size": {"height": 256, "width": 256}, "resample": 3, "do_center_crop": True,
              "crop_size": {"height": 224, "width": 224}},
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
