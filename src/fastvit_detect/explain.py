"""Why a verdict: heat maps of the image regions that drove a detector's probability for a label.

    >>> explanation = detector.explain("photo.jpg")                # occlusion, target "fake"
    >>> explanation.heatmap.shape                                  # model input resolution, e.g. (224, 224)
    >>> explanation.original_heatmap.shape                         # the upright photo's (height, width)
    >>> explanation.overlay().save("photo.explain.png")            # heat over the photo, with a colour bar

Both methods are gradient-free: they only run masked copies of the image through the detector's own session,
so they work on every variant (fp32, int8, fused) and need no torch.

``occlusion``
    The model input is cut into ``grid`` x ``grid`` cells; masked copy *i* hides cell *i* (replaces it with the
    baseline). The cell's heat is how much p(target) drops when it is hidden. ``grid**2`` masked passes.
``rise``
    Randomized input sampling (Petsiuk, Das & Saenko 2018, "RISE"): ``samples`` random smooth masks, each a
    coarse ``grid`` x ``grid`` binary pattern upsampled bilinearly with a random sub-cell shift, half of them the
    complements of the other half (antithetic pairs: every pixel is hidden in exactly half of the copies). A
    pixel's heat is the mean p(target) of the copies that showed it minus that of the copies that hid it.
    ``samples`` masked passes.

Either way heat is in units of probability: the drop in p(target) when the region is hidden. Positive heat is
evidence for the target; negative heat is evidence against it. "Hidden" means replaced by the ``baseline``:
``blur`` (a Gaussian blur of the image itself, which removes fine texture, noise and checkerboards but keeps
colours and shapes) or ``grey`` (the image's mean colour).

Where the heat lands on the photo: the preprocessing maps the *upright* image (EXIF orientation applied, as
viewers and browsers display it, and as ``transformers``' ``load_image`` decodes it) onto the model input by a
resize and, for DeiT, a center crop: per axis an affine map, ``x_model = x * resized / original - crop_offset``
in continuous pixel coordinates. :class:`Geometry` holds it; the map back samples the model-resolution heat map
bilinearly at each original pixel's centre. Pixels the model never saw (outside a DeiT center crop) get NaN.

On a face (``detector.explain(image, face="decisive")``, the default for a detector that decides by faces, and
``predict --faces --explain``): the face's crop, the one :meth:`Detector.predict_faces` classifies, is explained as
an image of its own. The heat map, ``image`` and ``original_heatmap`` are then the *crop's* (a square, black where it
reaches past the photo's border); ``crop_box`` (left, top, right, bottom) places the crop on the upright photo: crop
pixel (x, y) is photo pixel (left + x, top + y), at the crop's own scale (it isn't resized), save for a crop over
``faces.MAX_CROP_SIDE`` px, cut from a copy reduced by a whole factor (then scale by ``crop_box``'s side over the
crop's).

Explanations decode at full resolution even when the detector drafts JPEGs (``jpeg_draft``), so the heat map
lands on the file's own pixel grid; their verdict can then differ from a drafted ``predict`` as much as the
draft's pixels do.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .errors import InvalidOptionError, ModelOutputError
from .faces import Face, bounded_face_crop, crop_box
from .media import ImageInput, OpenedImage, decode_boundary, decode_opened
from .options import check_whole
from .preprocess import PreprocessConfig, Preprocessor

if TYPE_CHECKING:  # the detector imports this module lazily; at run time the objects arrive as arguments
    from .detector import Detector, Prediction

METHODS = ("occlusion", "rise")
BASELINES = ("blur", "grey")
DEFAULT_METHOD = "occlusion"
DEFAULT_TARGET = "fake"
# Chosen by measuring cost against deletion/insertion faithfulness (docs/guides/explanations.md): occlusion 3x3 is the
# cheapest setting that beats random deletion on every measure there and stays under 10 predictions' cost; at
# equal cost RISE is less faithful, so it is the second method, with the sample count where it catches up most.
DEFAULT_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "occlusion": {"grid": 3, "baseline": "blur"},
    "rise": {"samples": 16, "grid": 4, "baseline": "blur", "seed": 0},
}
MAX_GRID = 32
MAX_SAMPLES = 4096
MAX_BATCH_SIZE = 1024
EXPLAIN_BATCH_SIZE = 16  # masked copies per session call
BLUR_RADIUS_FRACTION = 1 / 56  # of the model input's shorter side: 4 px at 224, past the 2-4 px traces


# --- options ------------------------------------------------------------------------------------------------


def option_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in [low, high], else :class:`InvalidOptionError`: floats (4.0, nan, inf), bools and
    strings are refused, not rounded or parsed."""
    return check_whole(name, value, low, high, InvalidOptionError)


def choice(name: str, value: object, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise InvalidOptionError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def resolve_options(method: object, options: Mapping[str, Any]) -> dict[str, Any]:
    """The method's full, validated options: its defaults overridden by ``options``. Unknown keys are refused."""
    method = choice("method", method, METHODS)
    merged = {**DEFAULT_OPTIONS[method], **{key: value for key, value in options.items() if value is not None}}
    unknown = sorted(set(merged) - set(DEFAULT_OPTIONS[method]))
    if unknown:
        raise InvalidOptionError(f"method {method!r} takes {', '.join(sorted(DEFAULT_OPTIONS[method]))}; "
                                 f"not {', '.join(unknown)}")
    resolved: dict[str, Any] = {"baseline": choice("baseline", merged["baseline"], BASELINES),
                                "grid": option_int("grid", merged["grid"], 2, MAX_GRID)}
    if method == "rise":
        samples = option_int("samples", merged["samples"], 2, MAX_SAMPLES)
        if samples % 2:
            raise InvalidOptionError(f"samples must be even (masks come in complementary pairs), got {samples}")
        resolved["samples"] = samples
        resolved["seed"] = option_int("seed", merged["seed"], 0, 2**63 - 1)
    return resolved


def model_passes(method: str, options: Mapping[str, Any]) -> int:
    """Session passes (images through the model) one explanation costs, the unmasked prediction included."""
    resolved = resolve_options(method, options)
    return 1 + (resolved["grid"] ** 2 if method == "occlusion" else resolved["samples"])


# --- geometry: model input <-> upright original -------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """How the model input sits on the upright original image. Sizes are (width, height); coordinates are
    continuous (pixel ``i`` covers ``[i, i + 1)``), the convention in which PIL's resize is a pure scale."""

    original_size: tuple[int, int]
    resized_size: tuple[int, int]  # after the resize step; the original size when there is none
    crop_origin: tuple[int, int]  # (left, top) of the model input in the resized image; negative: zero padding
    model_size: tuple[int, int]

    @classmethod
    def of(cls, config: PreprocessConfig, original_size: tuple[int, int]) -> Geometry:
        width, height = original_size
        resized = (config.resize[1], config.resize[0]) if config.resize else (width, height)
        if config.crop is None:
            return cls(original_size, resized, (0, 0), resized)
        crop_height, crop_width = config.crop
        # Floor division, as preprocess.CenterCrop (and HF's center_crop) place the window.
        origin = ((resized[0] - crop_width) // 2, (resized[1] - crop_height) // 2)
        return cls(original_size, resized, origin, (crop_width, crop_height))

    def to_model(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[Any, Any]:
        """Original (upright) coordinates -> model-input coordinates."""
        return (np.multiply(x, self.resized_size[0] / self.original_size[0]) - self.crop_origin[0],
                np.multiply(y, self.resized_size[1] / self.original_size[1]) - self.crop_origin[1])

    def to_original(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[Any, Any]:
        """Model-input coordinates -> original (upright) coordinates."""
        return (np.multiply(np.add(x, self.crop_origin[0]), self.original_size[0] / self.resized_size[0]),
                np.multiply(np.add(y, self.crop_origin[1]), self.original_size[1] / self.resized_size[1]))

    def map_to_original(self, heat: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """A model-resolution map sampled at the centres of the original's pixels, or of a ``size`` (width,
        height) grid over the original (a thumbnail of it). NaN where the model saw nothing."""
        width, height = size or self.original_size
        if heat.shape != (self.model_size[1], self.model_size[0]):
            raise ValueError(f"heat map of shape {heat.shape} doesn't match the model input {self.model_size}")
        x_model, _ = self.to_model((np.arange(width) + 0.5) * (self.original_size[0] / width), 0.0)
        _, y_model = self.to_model(0.0, (np.arange(height) + 0.5) * (self.original_size[1] / height))
        rows, rows_seen = _bilinear_taps(y_model, self.model_size[1])
        columns, columns_seen = _bilinear_taps(x_model, self.model_size[0])
        mapped = _resample(heat.astype(np.float32), rows, columns)
        mapped[~rows_seen, :] = np.nan
        mapped[:, ~columns_seen] = np.nan
        return mapped


Taps = tuple[np.ndarray, np.ndarray, np.ndarray]


def _bilinear_taps(positions: np.ndarray, size: int) -> tuple[Taps, np.ndarray]:
    """Linear-interpolation indices and weights at continuous ``positions`` over ``size`` pixel centres
    (clamped at the borders), and which positions fall inside ``[0, size)``."""
    inside = (positions >= 0) & (positions < size)
    index = np.clip(np.asarray(positions, dtype=np.float64) - 0.5, 0, size - 1)
    low = np.floor(index).astype(np.intp)
    high = np.minimum(low + 1, size - 1)
    return (low, high, (index - low).astype(np.float32)), inside


def _resample(values: np.ndarray, rows: Taps, columns: Taps) -> np.ndarray:
    """Separable bilinear resampling of a 2-D array (or a stack: the last two axes) through precomputed taps."""
    low, high, weight = rows
    along_rows = values[..., low, :] * (1 - weight)[:, None] + values[..., high, :] * weight[:, None]
    low, high, weight = columns
    return along_rows[..., low] * (1 - weight) + along_rows[..., high] * weight


def _cell_edges(length: int, cells: int) -> np.ndarray:
    return np.linspace(0, length, cells + 1).round().astype(np.intp)


def upsample_cells(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (rows, columns) grid of cell values spread over (height, width) pixels: bilinear between cell centres,
    constant beyond the outer centres. Cells are those of ``_cell_edges``."""
    height, width = size
    taps = []
    for length, cells in ((height, values.shape[0]), (width, values.shape[1])):
        edges = _cell_edges(length, cells)
        centres = (edges[:-1] + edges[1:]) / 2
        position = np.interp(np.arange(length) + 0.5, centres, np.arange(cells) + 0.5)
        taps.append(_bilinear_taps(position, cells)[0])
    return _resample(values.astype(np.float32), taps[0], taps[1]).astype(np.float32)


# --- the explanation ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Explanation:
    """A verdict, the heat map behind it, and what it cost.

    ``heatmap``: float32 (height, width) at the model's input resolution; the drop in p(``target``) when that
    region is hidden. ``original_heatmap``: the same on the upright original's pixels (NaN where the model saw
    nothing). ``image``: the upright original, for overlays. ``pixels``: the model input before normalisation.
    """

    prediction: Prediction
    target: str
    method: str
    options: Mapping[str, Any]
    heatmap: np.ndarray
    geometry: Geometry
    image: Image.Image = field(repr=False)
    pixels: np.ndarray = field(repr=False)
    target_probability: float
    model_passes: int
    seconds: float
    face: Face | None = None  # the face explained; None: the whole image
    crop_box: tuple[int, int, int, int] | None = None  # where the face's crop (``image``) lies on the upright photo

    @cached_property
    def original_heatmap(self) -> np.ndarray:
        """float32 (height, width) of the upright original; computed on first use (it is as big as the photo)."""
        return self.geometry.map_to_original(self.heatmap)

    def heatmap_on_original(self, size: tuple[int, int]) -> np.ndarray:
        """The heat on a (width, height) grid over the upright original, e.g. a thumbnail's."""
        return self.geometry.map_to_original(self.heatmap, size)

    @property
    def heat_max(self) -> float:
        return float(self.heatmap.max())

    def overlay(self, *, max_side: int | None = 1024, alpha: float = 0.65, vmax: float | None = None,
                colorbar: bool = True) -> Image.Image:
        """The upright image (scaled so its longer side is at most ``max_side``) with the positive heat blended
        over it, and a colour bar in units of p(target). ``vmax``: the heat shown at full colour (default: the
        map's maximum)."""
        picture = self.image
        if max_side is not None:
            max_side = option_int("max_side", max_side, 16, 1 << 15)
            if max(picture.size) > max_side:
                picture = picture.copy()
                picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        scale = self.colour_scale(vmax)
        layer = heat_layer(self.heatmap_on_original(picture.size), scale, alpha)
        blended = Image.alpha_composite(picture.convert("RGBA"), layer).convert("RGB")
        if not colorbar:
            return blended
        return with_colour_bar(blended, scale, f"drop in p({self.target}) when hidden")

    def layer(self, max_side: int = 512, vmax: float | None = None, alpha: float = 0.65) -> Image.Image:
        """The heat alone as an RGBA image over the upright original's frame (longer side at most ``max_side``):
        stack it over the photo, stretched to the photo's displayed size, as the upload page does."""
        max_side = option_int("max_side", max_side, 1, 4096)
        width, height = self.geometry.original_size
        scale = min(1.0, max_side / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return heat_layer(self.heatmap_on_original(size), self.colour_scale(vmax), alpha)

    def colour_scale(self, vmax: float | None = None) -> float:
        if vmax is None:
            return max(self.heat_max, 1e-6)
        if isinstance(vmax, bool) or not isinstance(vmax, numbers.Real) or not math.isfinite(vmax) or vmax <= 0:
            raise InvalidOptionError(f"vmax must be a finite number > 0, got {vmax!r}")
        return float(vmax)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: what was explained, how, and at what cost (the verdict itself is ``prediction``)."""
        summary = {"method": self.method, "target": self.target, "options": dict(self.options),
                   "target_probability": self.target_probability, "heat_min": float(self.heatmap.min()),
                   "heat_max": self.heat_max, "units": f"drop in p({self.target}) when the region is hidden",
                   "model_passes": self.model_passes, "elapsed_ms": round(1000 * self.seconds, 2)}
        if self.face is not None:  # the heat lies on the face's crop, placed on the photo by crop_box
            summary["face"] = {**self.face.to_dict(), "crop_box": list(self.crop_box or ())}
        return summary

    def grid(self, max_side: int = 32) -> list[list[float | None]]:
        """The heat on a coarse grid over the upright original (longer side ``max_side`` cells, the aspect ratio
        kept), row by row; None where the model saw nothing."""
        max_side = option_int("max_side", max_side, 1, 1024)
        width, height = self.geometry.original_size
        scale = max_side / max(width, height)
        cells = (max(1, round(width * scale)), max(1, round(height * scale)))
        coarse = self.heatmap_on_original(cells)
        return [[None if math.isnan(value) else round(float(value), 6) for value in row] for row in coarse]


# --- colours ------------------------------------------------------------------------------------------------

# matplotlib's "inferno" sampled at 12 points from 0.2 to 1 (dark purple -> orange -> pale yellow): its darkest
# end is left out so low heat stays visible on dark photos; no matplotlib at run time.
COLOURS = np.array([
    (0x42, 0x0A, 0x68), (0x5F, 0x13, 0x6E), (0x7D, 0x1E, 0x6D), (0x9B, 0x29, 0x64), (0xB7, 0x35, 0x57),
    (0xD2, 0x46, 0x44), (0xE6, 0x5D, 0x2F), (0xF5, 0x7B, 0x17), (0xFB, 0x9D, 0x07), (0xFA, 0xC0, 0x26),
    (0xF3, 0xE5, 0x5D), (0xFC, 0xFF, 0xA4),
], dtype=np.float32)
UNSEEN_VEIL = (40, 40, 40, 150)  # over pixels the model never saw (outside a center crop)


def colour_stops() -> list[str]:
    """The colour bar as CSS colours, from heat 0 to the scale's maximum, evenly spaced."""
    return [f"#{red:02x}{green:02x}{blue:02x}" for red, green, blue in COLOURS.astype(int)]


def colourise(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> float RGB in 0-255 along COLOURS."""
    position = np.clip(np.nan_to_num(values), 0, 1) * (len(COLOURS) - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, len(COLOURS) - 1)
    weight = (position - low)[..., None]
    return COLOURS[low] * (1 - weight) + COLOURS[high] * weight


def heat_layer(heat: np.ndarray, vmax: float, alpha: float = 0.65) -> Image.Image:
    """An RGBA layer to stack over the image: positive heat coloured, opacity growing with it; negative heat
    transparent; NaN (unseen) veiled grey."""
    if not 0 < alpha <= 1:
        raise InvalidOptionError(f"alpha must be in (0, 1], got {alpha!r}")
    level = np.clip(np.nan_to_num(heat, nan=0.0) / vmax, 0, 1)
    rgba = np.empty((*heat.shape, 4), dtype=np.uint8)
    rgba[..., :3] = np.rint(colourise(level)).astype(np.uint8)
    # sqrt: faint heat stays faintly visible instead of vanishing under a linear ramp.
    rgba[..., 3] = np.rint(255 * alpha * np.sqrt(level)).astype(np.uint8)
    unseen = np.isnan(heat)
    rgba[unseen] = UNSEEN_VEIL
    return Image.fromarray(rgba, mode="RGBA")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _format(value: float) -> str:
    return f"{value:.3f}" if value >= 0.01 else f"{value:.2g}"


def with_colour_bar(picture: Image.Image, vmax: float, caption: str) -> Image.Image:
    """``picture`` with a vertical colour bar (0 at the bottom, ``vmax`` at the top) and its caption on the right."""
    height = picture.height
    text_size = max(10, min(18, height // 28))
    font = _font(text_size)
    bar_width = max(10, text_size)
    margin = text_size // 2 + 2
    labels = [_format(vmax), _format(vmax / 2), "0"]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(measure.textlength(label, font=font) for label in labels)
    panel_width = int(2 * margin + bar_width + 6 + label_width + text_size + 4)
    canvas = Image.new("RGB", (picture.width + panel_width, height), "white")
    canvas.paste(picture, (0, 0))
    top, bottom = margin + text_size, max(margin + text_size + 2, height - margin)
    ramp = np.linspace(1, 0, bottom - top)[:, None].repeat(bar_width, axis=1)
    bar = Image.fromarray(np.rint(colourise(ramp)).astype(np.uint8), mode="RGB")
    left = picture.width + margin
    canvas.paste(bar, (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((left - 1, top - 1, left + bar_width, bottom), outline=(90, 90, 90))
    for label, y in zip(labels, (top, (top + bottom) / 2, bottom)):
        draw.line((left + bar_width, y, left + bar_width + 4, y), fill=(60, 60, 60))
        draw.text((left + bar_width + 6, y), label, fill=(30, 30, 30), font=font, anchor="lm")
    # The caption runs up the panel's right edge, read bottom to top as axis titles are.
    caption_font = _font(max(9, text_size - 2))
    title = Image.new("RGB", (max(1, bottom - top), text_size + 4), "white")
    ImageDraw.Draw(title).text((title.width / 2, title.height / 2), caption, fill=(30, 30, 30),
                               font=caption_font, anchor="mm")
    canvas.paste(title.rotate(90, expand=True), (canvas.width - text_size - 4, top))
    return canvas


# --- masking ------------------------------------------------------------------------------------------------


def baseline_pixels(pixels: np.ndarray, kind: str) -> np.ndarray:
    """What a hidden region becomes, as a uint8 (H, W, 3) model input: ``blur`` or ``grey`` (the mean colour)."""
    if kind == "grey":
        mean = pixels.reshape(-1, 3).mean(axis=0)
        return np.broadcast_to(np.rint(mean).astype(np.uint8), pixels.shape).copy()
    radius = BLUR_RADIUS_FRACTION * min(pixels.shape[:2])
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)), dtype=np.uint8)


def occlusion_masks(size: tuple[int, int], grid: int) -> Iterator[np.ndarray]:
    """One float32 (H, W) mask per cell, row by row: 1 shows the image, 0 hides it."""
    height, width = size
    rows, columns = _cell_edges(height, grid), _cell_edges(width, grid)
    for row in range(grid):
        for column in range(grid):
            mask = np.ones(size, dtype=np.float32)
            mask[rows[row]:rows[row + 1], columns[column]:columns[column + 1]] = 0
            yield mask


def rise_masks(size: tuple[int, int], grid: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """``samples`` RISE masks in complementary pairs: coarse random binary grids (half the cells shown),
    bilinearly upsampled over one cell more than the image and shifted by a random fraction of a cell."""
    height, width = size
    rng = np.random.default_rng(seed)
    cell_height, cell_width = math.ceil(height / grid), math.ceil(width / grid)
    big = ((grid + 1) * cell_height, (grid + 1) * cell_width)
    for _ in range(samples // 2):
        cells = (rng.random((grid + 1, grid + 1)) < 0.5).astype(np.float32)
        top, left = rng.integers(0, cell_height), rng.integers(0, cell_width)
        mask = upsample_cells(cells, big)[top:top + height, left:left + width]
        yield mask
        yield 1 - mask


def _batched(masks: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    chunk: list[np.ndarray] = []
    for mask in masks:
        chunk.append(mask)
        if len(chunk) == size:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def masked_inputs(image: np.ndarray, baseline: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Normalised model inputs (N, 3, H, W): ``image`` where a mask is 1, ``baseline`` where it is 0."""
    return baseline[None] + masks[:, None] * (image - baseline)[None]


# --- targets ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Which probability to explain: a label's, or p(fake) as 1 - p(real) for two labels without "fake"."""

    name: str
    index: int
    complement: bool = False

    @classmethod
    def resolve(cls, target: object, labels: Sequence[str], predicted: str) -> Target:
        if not isinstance(target, str):
            raise InvalidOptionError(f"target must be a label name, 'predicted' or 'fake', got {target!r}")
        wanted = predicted if target.strip().lower() == "predicted" else target
        lowered = [label.strip().lower() for label in labels]
        if wanted.strip().lower() in lowered:
            index = lowered.index(wanted.strip().lower())
            return cls(labels[index], index)
        if wanted.strip().lower() == "fake" and "real" in lowered and len(labels) == 2:
            return cls("fake", lowered.index("real"), complement=True)
        raise InvalidOptionError(f"target {target!r} isn't one of the model's labels ({', '.join(labels)}), "
                                 "'predicted' or 'fake'")

    def probability(self, probabilities: np.ndarray) -> np.ndarray:
        column = probabilities[..., self.index]
        return 1 - column if self.complement else column


# A normalised float32 NCHW batch -> its logits: where an explanation's passes run. The library's default is the
# detector's all-cores session; the server's waits for queued predictions first, then takes a worker of the layout.
ModelCall = Callable[[np.ndarray], np.ndarray]


def verdict(detector: Detector, pixels: np.ndarray, source: str, run: ModelCall | None = None) -> Prediction:
    """The detector's prediction on one model-input image, exactly as ``predict`` gives it (alone in its batch:
    int8 graphs quantize activations per batch). A model without a usable answer raises ModelOutputError."""
    (result,) = detector.classify_pixels(pixels[None], sources=[source], run=run)
    if isinstance(result, Exception):
        raise result
    return result


def target_probabilities(detector: Detector, inputs: np.ndarray, target: Target,
                         run: ModelCall | None = None) -> np.ndarray:
    """p(target) of a batch of normalised inputs; a model that returns non-finite logits is refused."""
    from .detector import softmax  # at run time: the detector imports this module

    logits = detector.run_logits(inputs) if run is None else run(inputs)
    if logits.shape != (len(inputs), len(detector.labels)):
        raise ModelOutputError(f"{detector.variant.path}: the model returned logits of shape {logits.shape} for "
                               f"{len(inputs)} masked copies, expected ({len(inputs)}, {len(detector.labels)})")
    if not np.isfinite(logits).all():
        raise ModelOutputError(f"{detector.variant.path}: the model returned non-finite logits for a masked copy")
    return target.probability(softmax(logits))


# --- explaining ---------------------------------------------------------------------------------------------


def explain(
    detector: Detector,
    image: ImageInput,
    method: str = DEFAULT_METHOD,
    target: str = DEFAULT_TARGET,
    batch_size: int = EXPLAIN_BATCH_SIZE,
    face: FaceChoice | None = None,
    **options: Any,
) -> Explanation:
    """Explain the detector's verdict on one image; see the module docstring for methods and options. ``face``:
    explain that face's crop instead (:func:`explain_face`)."""
    if face is not None:
        return explain_face(detector, image, face, method, target, batch_size, **options)
    started = time.perf_counter()
    resolve_options(method, options)  # bad options fail before the image is read
    return explain_opened(detector, detector.preprocessor.open(image), method, target, batch_size, started,
                          **options)


FaceChoice = str | int | Face
"""Which face to explain: "decisive" (the face whose verdict decides the image), a face's index in
:meth:`Detector.predict_faces`'s ``faces`` (from 0), or a :class:`~fastvit_detect.faces.Face` (its box)."""


def explain_face(
    detector: Detector,
    image: ImageInput,
    face: FaceChoice = "decisive",
    method: str = DEFAULT_METHOD,
    target: str = DEFAULT_TARGET,
    batch_size: int = EXPLAIN_BATCH_SIZE,
    **options: Any,
) -> Explanation:
    """Explain the verdict on one face of ``image``: its crop (as :meth:`Detector.predict_faces` cuts it, with the
    detector's :attr:`~Detector.face_options`) explained as an image of its own; the heat map is the crop's, and
    ``crop_box`` places it on the photo. With no face found, "decisive" explains the whole image, as the verdict
    then comes from it (``face`` None in the result); an index with no such face is an InvalidOptionError."""
    started = time.perf_counter()
    resolve_options(method, options)  # bad options fail before the image is read
    if isinstance(face, numbers.Integral) and not isinstance(face, bool):
        face = int(face)  # numpy's integers too
    elif not (isinstance(face, Face) or (isinstance(face, str) and face == "decisive")):
        raise InvalidOptionError(f"face must be 'decisive', a face's index or a Face, got {face!r}"[:300])
    margin = detector.face_options.margin
    detector.face_detector  # noqa: B018 - a package without faces fails before the image is decoded
    opened = detector.preprocessor.open(image)
    picture = decode_opened(opened)  # upright: predict_faces and detect_faces below take it as it is
    if isinstance(face, Face):
        chosen = face
    elif isinstance(face, int):
        faces = detector.detect_faces(picture)
        if not 0 <= face < len(faces):
            raise InvalidOptionError(f"{opened.source}: face={face}, but {len(faces)} face(s) were found")
        chosen = faces[face]
    else:  # "decisive"
        result = detector.predict_faces(picture, no_face="none")
        if result.decisive is None:  # no face: the whole image decides, so it is what is explained
            return explain_prepared(detector, prepare_opened(detector.preprocessor, opened), method, target,
                                    batch_size, started, **options)
        chosen = result.faces[result.decisive][0]
    box = crop_box(chosen, margin, picture.size)
    crop = bounded_face_crop(picture, chosen, margin)  # as predict_faces cuts it: a huge one from a reduced copy
    crop_picture = Image.fromarray(crop)
    prepared = PreparedImage(detector.preprocessor.to_pixels(crop), crop_picture.size, crop_picture,
                             f"{opened.source}: face at {[round(value) for value in chosen.box]}")
    explanation = explain_prepared(detector, prepared, method, target, batch_size, started, **options)
    return replace(explanation, face=chosen, crop_box=box)


def explain_opened(
    detector: Detector,
    opened: OpenedImage,
    method: str = DEFAULT_METHOD,
    target: str = DEFAULT_TARGET,
    batch_size: int = EXPLAIN_BATCH_SIZE,
    started: float | None = None,
    **options: Any,
) -> Explanation:
    """:func:`explain` for an image already opened (and held to a caller's caps) with ``open_image``."""
    started = time.perf_counter() if started is None else started
    resolve_options(method, options)
    return explain_prepared(detector, prepare_opened(detector.preprocessor, opened), method, target, batch_size,
                            started, **options)


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """An image decoded for explaining: the model input, and the upright original's size and picture (or a
    preview of it: the heat map needs only the size, an overlay no more than its own ``max_side``)."""

    pixels: np.ndarray  # the model input, HxWx3 uint8 before normalisation
    original_size: tuple[int, int]  # (width, height) of the upright original
    picture: Image.Image = field(repr=False)
    source: str


def prepare_opened(preprocessor: Preprocessor, opened: OpenedImage, preview_side: int | None = None) -> PreparedImage:
    """Decode an opened image at full resolution (never drafted: the map must land on the file's own pixel grid)
    and make its model input. ``preview_side``: keep the upright picture only that large (longer side), so that
    what outlives the decode is small; None keeps it whole."""
    upright = decode_opened(opened)
    with decode_boundary(opened.source):
        picture = upright
        for transform in preprocessor.transforms:
            picture = transform(picture)
        pixels = np.asarray(picture, dtype=np.uint8)
        original_size, kept = upright.size, upright
        if preview_side is not None and max(original_size) > preview_side:
            kept = upright.copy() if upright is opened.image and not opened.owned else upright  # not a caller's
            kept.thumbnail((preview_side, preview_side), Image.Resampling.LANCZOS)
    return PreparedImage(pixels, original_size, kept, opened.source)


def explain_prepared(
    detector: Detector,
    prepared: PreparedImage,
    method: str = DEFAULT_METHOD,
    target: str = DEFAULT_TARGET,
    batch_size: int = EXPLAIN_BATCH_SIZE,
    started: float | None = None,
    run: ModelCall | None = None,
    **options: Any,
) -> Explanation:
    """:func:`explain` for an image already decoded with :func:`prepare_opened`. ``run``: where every model pass
    goes, the verdict's included, in calls of at most ``batch_size`` images (default: the all-cores session)."""
    started = time.perf_counter() if started is None else started
    resolved = resolve_options(method, options)
    batch_size = option_int("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    pixels = prepared.pixels
    prediction = verdict(detector, pixels, prepared.source, run)
    chosen = Target.resolve(target, detector.labels, prediction.label)
    reference = float(chosen.probability(np.array([prediction.probabilities[label] for label in detector.labels])))
    heat, passes = heat_map(detector, pixels, method, resolved, chosen, reference, batch_size, run)
    return Explanation(
        prediction=prediction, target=chosen.name, method=method, options=resolved, heatmap=heat,
        geometry=Geometry.of(detector.preprocessor.config, prepared.original_size), image=prepared.picture,
        pixels=pixels, target_probability=reference, model_passes=passes + 1, seconds=time.perf_counter() - started,
    )


def heat_map(detector: Detector, pixels: np.ndarray, method: str, options: Mapping[str, Any], target: Target,
             reference: float, batch_size: int = EXPLAIN_BATCH_SIZE,
             run: ModelCall | None = None) -> tuple[np.ndarray, int]:
    """The (H, W) heat map of model-input ``pixels`` and the masked passes it took (``run``: as explain_prepared)."""
    size = pixels.shape[:2]
    normalize = detector.preprocessor.normalize
    image = normalize(pixels[None])[0]
    baseline = normalize(baseline_pixels(pixels, options["baseline"])[None])[0]
    if method == "occlusion":
        drops = [reference - target_probabilities(detector, masked_inputs(image, baseline, masks), target, run)
                 for masks in _batched(occlusion_masks(size, options["grid"]), batch_size)]
        grid = options["grid"]
        return upsample_cells(np.concatenate(drops).reshape(grid, grid), size), grid * grid
    shown_sum = np.zeros(size, dtype=np.float64)
    hidden_sum = np.zeros(size, dtype=np.float64)
    shown_weight = np.zeros(size, dtype=np.float64)
    hidden_weight = np.zeros(size, dtype=np.float64)
    for masks in _batched(rise_masks(size, options["grid"], options["samples"], options["seed"]), batch_size):
        probability = target_probabilities(detector, masked_inputs(image, baseline, masks), target, run)
        shown_sum += np.tensordot(probability, masks, axes=1)
        hidden_sum += np.tensordot(probability, 1 - masks, axes=1)
        shown_weight += masks.sum(axis=0)
        hidden_weight += (1 - masks).sum(axis=0)
    heat = shown_sum / np.maximum(shown_weight, 1e-9) - hidden_sum / np.maximum(hidden_weight, 1e-9)
    return heat.astype(np.float32), options["samples"]


# --- faithfulness: deletion and insertion -------------------------------------------------------------------

DEFAULT_FRACTIONS = tuple(round(0.05 * step, 2) for step in range(1, 11))  # 5 % ... 50 %
FAITHFULNESS_CELLS = 14  # 16 x 16 px units at 224: the ViT's own patches


@dataclass(frozen=True)
class Faithfulness:
    """Deletion and insertion curves of one explanation next to random orders.

    Deletion: hide the hottest k % of the image and read p(target); random: hide k % chosen at random (mean over
    ``random_orders``). Insertion: start from the fully hidden image and show the hottest k %. ``deletion_gap``
    is the mean over k of p(target) after random deletion minus after deletion by heat (positive: the heat
    found what matters more than chance); ``insertion_gap`` the mean of insertion by heat minus random.
    """

    fractions: tuple[float, ...]
    reference: float  # p(target) of the intact image
    deletion: tuple[float, ...]
    deletion_random: tuple[float, ...]
    insertion: tuple[float, ...]
    insertion_random: tuple[float, ...]
    hidden: float  # p(target) with everything hidden

    @property
    def deletion_gap(self) -> float:
        return float(np.mean(self.deletion_random) - np.mean(self.deletion))

    @property
    def insertion_gap(self) -> float:
        return float(np.mean(self.insertion) - np.mean(self.insertion_random))

    @property
    def deletion_gap_log_odds(self) -> float:
        """The deletion gap in log-odds of the target: still visible where the model is so sure (p = 0.9999)
        that hiding half the image barely moves the probability."""
        return float(np.mean(_log_odds(self.deletion_random)) - np.mean(_log_odds(self.deletion)))

    @property
    def insertion_gap_log_odds(self) -> float:
        return float(np.mean(_log_odds(self.insertion)) - np.mean(_log_odds(self.insertion_random)))

    def to_dict(self) -> dict[str, Any]:
        return {"fractions": list(self.fractions), "reference": self.reference, "hidden": self.hidden,
                "deletion": list(self.deletion), "deletion_random": list(self.deletion_random),
                "insertion": list(self.insertion), "insertion_random": list(self.insertion_random),
                "deletion_gap": self.deletion_gap, "insertion_gap": self.insertion_gap,
                "deletion_gap_log_odds": self.deletion_gap_log_odds,
                "insertion_gap_log_odds": self.insertion_gap_log_odds}


def _log_odds(probabilities: Sequence[float]) -> np.ndarray:
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(clipped / (1 - clipped))


def cell_order(heat: np.ndarray, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Cell indices (row-major over a cells x cells grid), hottest first by mean heat; ties in random order."""
    rows, columns = _cell_edges(heat.shape[0], cells), _cell_edges(heat.shape[1], cells)
    means = np.add.reduceat(np.add.reduceat(heat, rows[:-1], axis=0), columns[:-1], axis=1)
    means = means / np.outer(np.diff(rows), np.diff(columns))
    return np.lexsort((rng.random(cells * cells), -means.ravel()))


def cell_masks(order: np.ndarray, counts: Sequence[int], size: tuple[int, int], cells: int) -> np.ndarray:
    """(len(counts), H, W) float32 masks, mask j hiding (0) the first counts[j] cells of ``order``."""
    rows, columns = _cell_edges(size[0], cells), _cell_edges(size[1], cells)
    masks = np.ones((len(counts), *size), dtype=np.float32)
    for index, count in enumerate(counts):
        for cell in order[:count]:
            row, column = divmod(int(cell), cells)
            masks[index, rows[row]:rows[row + 1], columns[column]:columns[column + 1]] = 0
    return masks


@dataclass(frozen=True)
class RemovalTest:
    """How deletion and insertion hide an image: by ``removal`` (``blur`` or ``grey``), in ``cells`` x ``cells``
    units of the model input, the first ``fractions`` of them in a given order."""

    removal: str = "blur"
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    cells: int = FAITHFULNESS_CELLS
    batch_size: int = EXPLAIN_BATCH_SIZE

    def __post_init__(self) -> None:
        choice("removal", self.removal, BASELINES)
        option_int("cells", self.cells, 2, 256)
        option_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if not self.fractions or not all(isinstance(f, numbers.Real) and 0 < f <= 1 for f in self.fractions):
            raise InvalidOptionError(f"fractions must be numbers in (0, 1], got {self.fractions!r}")

    def curves(self, detector: Detector, explanation: Explanation,
               orders: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
        """p(target) after deleting, and after inserting, the first k % of cells of each order: two (orders,
        fractions) arrays; and p(target) with everything hidden."""
        target = Target.resolve(explanation.target, detector.labels, explanation.prediction.label)
        pixels = explanation.pixels
        normalize = detector.preprocessor.normalize
        image = normalize(pixels[None])[0]
        hidden_image = normalize(baseline_pixels(pixels, self.removal)[None])[0]
        counts = [max(1, round(fraction * self.cells * self.cells)) for fraction in self.fractions]
        size = pixels.shape[:2]
        deletion_masks = np.concatenate([cell_masks(order, counts, size, self.cells) for order in orders])
        masks = np.concatenate([deletion_masks, 1 - deletion_masks, np.zeros((1, *size), dtype=np.float32)])
        probability = np.concatenate([
            target_probabilities(detector, masked_inputs(image, hidden_image, chunk), target)
            for chunk in np.array_split(masks, math.ceil(len(masks) / self.batch_size))
        ])
        shape = (len(orders), len(counts))
        return (probability[:len(deletion_masks)].reshape(shape),
                probability[len(deletion_masks):-1].reshape(shape), float(probability[-1]))

    def random_curves(self, detector: Detector, explanation: Explanation, random_orders: int = 4,
                      seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Deletion and insertion curves, (random_orders, fractions) each, for cells in random orders. They
        depend on the image and target only: compute them once to compare several explanations of one image."""
        random_orders = option_int("random_orders", random_orders, 1, 1000)
        rng = np.random.default_rng(seed)
        deletion, insertion, _ = self.curves(
            detector, explanation, [rng.permutation(self.cells * self.cells) for _ in range(random_orders)])
        return deletion, insertion

    def measure(self, detector: Detector, explanation: Explanation, random_orders: int = 4, seed: int = 0,
                random_curves: tuple[np.ndarray, np.ndarray] | None = None) -> Faithfulness:
        """The explanation's heat order against ``random_orders`` random ones (or ``random_curves``)."""
        order = cell_order(explanation.heatmap, self.cells, np.random.default_rng(seed))
        deletion, insertion, hidden = self.curves(detector, explanation, [order])
        if random_curves is None:
            random_curves = self.random_curves(detector, explanation, random_orders, seed + 1)
        return Faithfulness(
            fractions=tuple(float(f) for f in self.fractions), reference=explanation.target_probability,
            deletion=tuple(map(float, deletion[0])), deletion_random=tuple(map(float, random_curves[0].mean(axis=0))),
            insertion=tuple(map(float, insertion[0])),
            insertion_random=tuple(map(float, random_curves[1].mean(axis=0))), hidden=hidden,
        )


def faithfulness(detector: Detector, explanation: Explanation, removal: str = "blur", random_orders: int = 4,
                 seed: int = 0, **test: Any) -> Faithfulness:
    """Deletion/insertion of ``explanation``'s heat against random orders, on its own model input, with regions
    hidden by ``removal`` (``blur`` or ``grey``); ``test``: the other :class:`RemovalTest` settings."""
    return RemovalTest(removal, **test).measure(detector, explanation, random_orders, seed)
