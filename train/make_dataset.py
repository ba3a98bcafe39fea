"""Generate a deterministic synthetic real-vs-fake image data set.

Usage::

    python train/make_dataset.py --output data/synthetic --images 3800 --seed 0

writes the layout of the seed project's data set (the Kaggle "deepfake and real
images" set, split 14:4:1)::

    OUTPUT/Train/{Real,Fake}/*.jpg
    OUTPUT/Validation/{Real,Fake}/*.jpg
    OUTPUT/Test/{Real,Fake}/*.jpg
    OUTPUT/dataset_info.json

with 256x256 RGB JPEGs, the classes balanced within every split.  Only numpy and
Pillow are used, so the data can be built without torch.

What is modelled
================
Both classes start from the *same* random scene distribution (``render_scene``):
a background with a natural-image-like 1/f^alpha amplitude spectrum
(Field 1987; van der Schaaf & van Hateren 1996), an illumination gradient,
soft-edged ellipses/rectangles/triangles (flat or textured) and, in most
images, a face-like composition (head, hair, eyes, brows, nose, mouth), then a
random defocus blur.  Colour, brightness, contrast and sharpness are therefore
drawn identically for both classes; the class is defined only by how the scene
was turned into pixels.

``Real`` -- a simulated camera pipeline (``CameraModel``):
  * a per-camera colour-correction matrix (CCM): the scene is mapped into the
    sensor's native RGB, captured, and mapped back, so colours are preserved
    but sensor noise ends up correlated across channels exactly as a real
    ISP's CCM correlates it;
  * photo-response non-uniformity (PRNU), a fixed multiplicative pattern per
    camera (Lukas, Fridrich & Goljan 2006, "Digital camera identification from
    sensor pattern noise");
  * a Bayer RGGB colour-filter array, signal-dependent shot noise plus read
    noise (the Poisson-Gaussian model of Foi et al. 2008, "Practical
    Poissonian-Gaussian noise modeling and fitting for single-image raw-data")
    at a random ISO-like gain;
  * bilinear demosaicing, which leaves the periodic inter-pixel correlations
    used in CFA forensics (Popescu & Farid 2005, "Exposing digital forgeries in
    color filter array interpolated images");
  * sRGB gamma and a mild (0-0.3) ISP unsharp mask.

``Fake`` -- a simulated generator (``GeneratorModel``):
  * no sensor noise, no CFA, no PRNU;
  * the scene's finest octave is re-synthesised by a stride-2 up-sampling
    layer with an imperfect learned-like kernel: it loses the true top-octave
    spectrum (Durall, Keuper & Keuper 2020, "Watch your up-convolution: CNN
    based generative deep neural networks are failing to reproduce spectral
    distributions") and its four output phases have slightly different gains,
    a multiplicative period-2 checkerboard (spread 3.5-7.5 %, mean gain 1);
  * an up-sampling trace: a random latent is pushed through a chain of
    stride-2 transposed convolutions with leaky-ReLU activations
    (16 -> 32 -> ... -> 256) whose RGB outputs are summed through bilinear skip
    connections, as in StyleGAN2's skip generator.  The uneven kernel overlap
    of each layer, acting on mostly positive activations, leaves a
    checkerboard at that layer's resolution (Odena, Dumoulin & Olah 2016,
    "Deconvolution and checkerboard artifacts"), i.e. periods of 16, 8, 4 and
    2 pixels in the final image: the regular spectral peaks that Frank et al.
    2020 ("Leveraging frequency analysis for deep fake image recognition")
    and Wang et al. 2020 ("CNN-generated images are surprisingly easy to
    spot... for now") exploit, and, since the kernels are fixed per simulated
    architecture, a per-generator fingerprint (Marra et al. 2019, "Do GANs
    leave artificial fingerprints?"; Yu, Davis & Fritz 2019, "Attributing fake
    images to GANs").  The trace is content-modulated (stronger on bright,
    textured regions) and, because every RGB output shares a colour direction,
    correlated across colour channels, unlike demosaiced sensor noise;
  * stochastic detail: per-pixel noise inputs (as in StyleGAN) rendered by the
    last transposed convolution -- fine texture, but spatially and
    colour-correlated and with a period-2 variance pattern.

What survives the ViT image processor's 256 -> 224 antialiased bilinear
resize: the period-2 checkerboard is attenuated but aliases to a strong
spectral peak at 96 cycles/image (it is the most useful single trace), the
4-px period survives well, and the camera noise survives as broadband
high-frequency energy; the 8/16-px periods are faint next to the content and
the CFA correlations are largely lost.

The camera-noise level and the generator-trace strengths all follow one shared
"noise level" draw and are calibrated so that both classes compress to the
same JPEG file sizes, and JPEG quality (70..95, 4:2:0 chroma) is drawn from one
range for both classes: mean colour, brightness and file size do not separate
the classes (``tests/test_train_data.py`` checks this with cross-validated
logistic regressions; on the default 3800 images they score 0.49-0.51).

Determinism: every image gets its own random stream from
``SeedSequence([seed, image_id])`` (the fixed cameras and generator
architectures from ``SeedSequence([seed, <stream>])``), so the same arguments
give byte-identical files regardless of ``--workers``.
"""

from __future__ import annotations

import os

# The per-image matrix products are tiny: BLAS threads only add overhead and
# fight with --workers processes.  Must be set before numpy is imported.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 256
SPLITS: tuple[str, ...] = ("Train", "Validation", "Test")
SPLIT_RATIOS: tuple[int, ...] = (14, 4, 1)
CLASSES: tuple[str, ...] = ("Real", "Fake")
DEFAULT_IMAGES = 3800
JPEG_QUALITY_RANGE = (70, 95)  # inclusive, identical for both classes
JPEG_SUBSAMPLING = 2  # 4:2:0, the libjpeg / camera default
# Amplitudes (fraction of full scale, before content modulation) of the
# generator's up-sampling trace and stochastic detail at the lowest and highest
# noise level; calibrated with the camera noise so file sizes match.
FAKE_TRACE_STRENGTH = (0.005, 0.02)
FAKE_DETAIL_STRENGTH = (0.002, 0.012)
# Standard deviation of the gains of the four output phases of the
# generator's last up-sampling layer (the period-2 checkerboard strength),
# at the lowest and highest noise level.
OUTPUT_PHASE_GAIN_SPREAD = (0.035, 0.075)
NUM_CAMERAS = 6
NUM_GENERATORS = 6
GENERATOR_VERSION = 1  # bump when the pixels a seed produces change

# Independent random streams derived from the user seed; image ids are >= 0.
_CAMERA_STREAM = -1
_GENERATOR_STREAM = -2

_REC709_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


class DatasetError(ValueError):
    """An invalid request, reported to the user without a traceback."""


# --------------------------------------------------------------------------- #
# Planning: which file gets which class, split and random stream.
# --------------------------------------------------------------------------- #


def images_per_split_and_class(total_images: int) -> dict[str, int]:
    """Images of *each* class in each split (largest-remainder 14:4:1 split)."""
    if total_images % 2 or total_images < 0:
        raise DatasetError(f"--images must be even so the two classes are balanced (got {total_images})")
    per_class = total_images // 2
    ratio_sum = sum(SPLIT_RATIOS)
    exact = [per_class * ratio / ratio_sum for ratio in SPLIT_RATIOS]
    counts = [int(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: per_class - sum(counts)]:
        counts[i] += 1
    return dict(zip(SPLITS, counts))


def minimum_images() -> int:
    """Smallest even total giving every split at least one image per class."""
    total = 2
    while min(images_per_split_and_class(total).values()) < 1:
        total += 2
    return total


@dataclass(frozen=True)
class PlannedImage:
    image_id: int
    split: str
    label: str
    relative_path: str


def plan_dataset(total_images: int) -> list[PlannedImage]:
    counts = images_per_split_and_class(total_images)
    plan: list[PlannedImage] = []
    for split in SPLITS:
        for index in range(counts[split]):
            # Interleave the classes so a partial run is still balanced.
            for label in CLASSES:
                name = f"{label.lower()}_{index:06d}.jpg"
                plan.append(PlannedImage(len(plan), split, label, f"{split}/{label}/{name}"))
    return plan


# --------------------------------------------------------------------------- #
# Small vectorised image-processing helpers.
# --------------------------------------------------------------------------- #


def _frequency_radius(size: int) -> np.ndarray:
    """Radial frequency (cycles/pixel) on an rfft2 grid."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    return np.sqrt(fx * fx + fy * fy).astype(np.float32)


_RADIUS = _frequency_radius(IMAGE_SIZE)
_GRID_Y, _GRID_X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def pink_noise(rng: np.random.Generator, exponents: Sequence[float]) -> np.ndarray:
    """Zero-mean, unit-std noise, channel c with a 1/f**exponents[c] amplitude spectrum; (H, W, C).

    Random-phase synthesis: a fixed power-law amplitude with uniform random
    phases, the classic construction of 1/f ("pink") natural-image textures.
    """
    radius = np.maximum(_RADIUS, np.float32(1.0 / IMAGE_SIZE))[None]
    amplitude = radius ** -np.asarray(exponents, dtype=np.float32)[:, None, None]
    amplitude[:, 0, 0] = 0.0  # zero mean
    phase = rng.random(amplitude.shape, dtype=np.float32) * np.float32(2 * np.pi)
    spectrum = np.empty(amplitude.shape, dtype=np.complex64)
    spectrum.real = amplitude * np.cos(phase)
    spectrum.imag = amplitude * np.sin(phase)
    field = np.fft.irfft2(spectrum, s=(IMAGE_SIZE, IMAGE_SIZE), axes=(1, 2))
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-12
    return np.ascontiguousarray(np.moveaxis(field, 0, -1))


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Circular Gaussian blur of an (H, W, C) image via the FFT."""
    transfer = np.exp(-2.0 * (np.pi * sigma * _RADIUS) ** 2)
    blurred = np.fft.irfft2(np.fft.rfft2(image, axes=(0, 1)) * transfer[..., None], s=image.shape[:2], axes=(0, 1))
    return blurred.astype(np.float32)


def convolve3x3(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'Same' 3x3 correlation with reflect padding; image (H, W, ...), kernel (3, 3)."""
    padded = np.pad(image, [(1, 1), (1, 1)] + [(0, 0)] * (image.ndim - 2), mode="reflect")
    height, width = image.shape[:2]
    out = np.zeros_like(image)
    for dy in range(3):
        for dx in range(3):
            if kernel[dy, dx]:
                out += kernel[dy, dx] * padded[dy : dy + height, dx : dx + width]
    return out


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055).astype(np.float32)


def luminance(image: np.ndarray) -> np.ndarray:
    return mix_channels(image, _REC709_LUMA[:, None])[..., 0]


def mix_channels(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Per-pixel ``image[y, x] @ matrix`` as one flat matrix product (much faster than batched)."""
    height, width, channels = image.shape
    return (image.reshape(-1, channels) @ matrix.astype(np.float32)).reshape(height, width, -1)


# --------------------------------------------------------------------------- #
# Shared scene content.
# --------------------------------------------------------------------------- #


def _random_colour(rng: np.random.Generator, low: float = 0.05, high: float = 0.95) -> np.ndarray:
    return rng.uniform(low, high, size=3).astype(np.float32)


def _skin_colour(rng: np.random.Generator) -> np.ndarray:
    # Span pale to dark skin tones; the hue stays in the red-orange range.
    darkness = rng.uniform(0.0, 1.0)
    base = np.array([0.93, 0.76, 0.64]) * (1 - darkness) + np.array([0.36, 0.22, 0.15]) * darkness
    return np.clip(base + rng.normal(0, 0.03, 3), 0, 1).astype(np.float32)


Region = tuple[slice, slice]


def _region(x_min: float, x_max: float, y_min: float, y_max: float, margin: float) -> Region | None:
    """Pixel window covering a shape plus its soft edge; None if off-image."""
    x0, x1 = max(int(np.floor(x_min - margin)), 0), min(int(np.ceil(x_max + margin)) + 1, IMAGE_SIZE)
    y0, y1 = max(int(np.floor(y_min - margin)), 0), min(int(np.ceil(y_max + margin)) + 1, IMAGE_SIZE)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


@dataclass(frozen=True)
class Mask:
    """Soft coverage in [0, 1] of a shape, stored only inside its window."""

    region: Region
    coverage: np.ndarray  # (h, w) float32

    def scaled(self, factor: float) -> Mask:
        return Mask(self.region, self.coverage * np.float32(factor))


def _rotated_coords(region: Region, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    dx, dy = _GRID_X[region] - np.float32(cx), _GRID_Y[region] - np.float32(cy)
    return cos * dx + sin * dy, -sin * dx + cos * dy


def _coverage(signed_distance: np.ndarray, edge: float) -> np.ndarray:
    return np.clip(0.5 - signed_distance / np.float32(edge), 0.0, 1.0)


def ellipse_mask(cx: float, cy: float, rx: float, ry: float, angle: float, edge: float) -> Mask | None:
    """Soft-edged (anti-aliased) ellipse."""
    cos, sin = np.cos(angle), np.sin(angle)
    half_w, half_h = np.hypot(rx * cos, ry * sin), np.hypot(rx * sin, ry * cos)
    region = _region(cx - half_w, cx + half_w, cy - half_h, cy + half_h, edge)
    if region is None:
        return None
    u, v = _rotated_coords(region, cx, cy, angle)
    normalised_radius = np.sqrt((u / np.float32(rx)) ** 2 + (v / np.float32(ry)) ** 2)
    return Mask(region, _coverage((normalised_radius - 1.0) * np.float32(min(rx, ry)), edge))


def rectangle_mask(cx: float, cy: float, half_w: float, half_h: float, angle: float, edge: float) -> Mask | None:
    cos, sin = abs(np.cos(angle)), abs(np.sin(angle))
    extent_x, extent_y = half_w * cos + half_h * sin, half_w * sin + half_h * cos
    region = _region(cx - extent_x, cx + extent_x, cy - extent_y, cy + extent_y, edge)
    if region is None:
        return None
    u, v = _rotated_coords(region, cx, cy, angle)
    return Mask(region, _coverage(np.maximum(np.abs(u) - half_w, np.abs(v) - half_h), edge))


def triangle_mask(vertices: np.ndarray, edge: float) -> Mask | None:
    """Convex triangle as the intersection of three half-planes."""
    region = _region(vertices[:, 0].min(), vertices[:, 0].max(), vertices[:, 1].min(), vertices[:, 1].max(), edge)
    if region is None:
        return None
    edge_1, edge_2 = vertices[1] - vertices[0], vertices[2] - vertices[0]
    if edge_1[0] * edge_2[1] - edge_1[1] * edge_2[0] < 0:  # make the winding counter-clockwise
        vertices = vertices[::-1]
    grid_x, grid_y = _GRID_X[region], _GRID_Y[region]
    signed_distance = np.full(grid_x.shape, -np.inf, dtype=np.float32)
    for start, end in zip(vertices, np.roll(vertices, -1, axis=0)):
        direction = (end - start) / (np.linalg.norm(end - start) + 1e-6)
        # Outward normal of a counter-clockwise edge (x right, y down).
        normal_x, normal_y = np.float32(direction[1]), np.float32(-direction[0])
        distance = (grid_x - np.float32(start[0])) * normal_x + (grid_y - np.float32(start[1])) * normal_y
        signed_distance = np.maximum(signed_distance, distance)
    return Mask(region, _coverage(signed_distance, edge))


def _composite(canvas: np.ndarray, mask: Mask | None, paint: np.ndarray) -> None:
    """Alpha-blend a flat colour (3,) or a full-frame texture (H, W, 3) into the canvas."""
    if mask is None:
        return
    window = canvas[mask.region]
    if paint.ndim == 3:
        paint = paint[mask.region]
    alpha = mask.coverage[..., None]
    window += alpha * (paint - window)


def _fill(rng: np.random.Generator, colour: np.ndarray, textures: np.ndarray) -> np.ndarray:
    """A flat colour or, half of the time, one textured with a random shift of a texture field."""
    if rng.random() < 0.5:
        return colour
    channel = rng.integers(textures.shape[2])
    shift_y, shift_x = rng.integers(0, IMAGE_SIZE, 2)
    texture = np.roll(textures[..., channel : channel + 1], (shift_y, shift_x), axis=(0, 1))
    return colour + np.float32(rng.uniform(0.03, 0.15) * rng.choice([-1, 1])) * texture


def _add_face(rng: np.random.Generator, canvas: np.ndarray, textures: np.ndarray) -> None:
    cx = rng.uniform(0.3, 0.7) * IMAGE_SIZE
    cy = rng.uniform(0.35, 0.65) * IMAGE_SIZE
    head_rx = rng.uniform(0.16, 0.3) * IMAGE_SIZE
    head_ry = head_rx * rng.uniform(1.15, 1.45)
    tilt = rng.normal(0, 0.12)
    edge = rng.uniform(0.8, 2.5)
    skin = _skin_colour(rng)
    cos, sin = np.cos(tilt), np.sin(tilt)

    def at(u: float, v: float) -> tuple[float, float]:
        """Face-relative (u right, v down, in head radii) -> image coordinates."""
        x, y = u * head_rx, v * head_ry
        return cx + cos * x - sin * y, cy + sin * x + cos * y

    hair_colour = _random_colour(rng, 0.02, 0.6) * rng.uniform(0.3, 1.0)
    hair_x, hair_y = at(0, -0.25)
    hair = ellipse_mask(hair_x, hair_y, head_rx * 1.12, head_ry * 0.95, tilt, edge)
    _composite(canvas, hair, _fill(rng, hair_colour, textures))
    _composite(canvas, ellipse_mask(cx, cy, head_rx, head_ry, tilt, edge), _fill(rng, skin, textures))
    # Side lighting on the face.
    face = ellipse_mask(cx, cy, head_rx * 0.98, head_ry * 0.98, tilt, edge * 3)
    if face is not None:
        shading = np.clip(1.0 + rng.uniform(-0.25, 0.25) * ((_GRID_X[face.region] - cx) / head_rx), 0.6, 1.4)
        canvas[face.region] *= (1 + face.coverage * (shading - 1))[..., None]

    eye_v = rng.uniform(-0.2, -0.05)
    eye_spacing = rng.uniform(0.32, 0.45)
    eye_rx = head_rx * rng.uniform(0.14, 0.22)
    iris_colour = _random_colour(rng, 0.05, 0.6)
    for side in (-1, 1):
        ex, ey = at(side * eye_spacing, eye_v)
        _composite(canvas, ellipse_mask(ex, ey, eye_rx, eye_rx * 0.55, tilt, edge), np.float32([0.92, 0.9, 0.88]))
        _composite(canvas, ellipse_mask(ex, ey, eye_rx * 0.45, eye_rx * 0.45, 0, edge), iris_colour)
        _composite(canvas, ellipse_mask(ex, ey, eye_rx * 0.2, eye_rx * 0.2, 0, edge), np.float32([0.03, 0.03, 0.03]))
        bx, by = at(side * eye_spacing, eye_v - rng.uniform(0.13, 0.2))
        _composite(canvas, ellipse_mask(bx, by, eye_rx * 1.1, eye_rx * 0.18, tilt, edge), hair_colour * 0.8)
    nx, ny = at(0, rng.uniform(0.12, 0.22))
    nose = ellipse_mask(nx, ny, head_rx * 0.1, head_ry * 0.16, tilt, edge * 3)
    _composite(canvas, nose.scaled(0.35) if nose else None, skin * 0.7)
    mx, my = at(0, rng.uniform(0.42, 0.55))
    lip_colour = np.clip(skin * np.float32([0.85, 0.55, 0.55]), 0, 1)
    _composite(canvas, ellipse_mask(mx, my, head_rx * rng.uniform(0.2, 0.35), head_ry * 0.06, tilt, edge), lip_colour)


def render_scene(rng: np.random.Generator) -> np.ndarray:
    """Random scene in display-referred sRGB, float32 (H, W, 3) in [0, 1]."""
    base = _random_colour(rng, 0.15, 0.85)
    background_exponent = rng.uniform(0.9, 1.4)
    # One FFT for the background (3 channels) and a bank of shape textures (3 channels).
    fields = pink_noise(rng, [background_exponent] * 3 + list(rng.uniform(0.6, 1.4, 3)))
    background, textures = fields[..., :3], fields[..., 3:]
    # Natural images are far more correlated in luminance than in chroma.
    luma_texture = background[..., :1] * np.float32(rng.uniform(0.04, 0.2))
    chroma_texture = background * np.float32(rng.uniform(0.0, 0.05))
    canvas = base + luma_texture + chroma_texture
    gradient_angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(gradient_angle) * _GRID_X + np.sin(gradient_angle) * _GRID_Y) / IMAGE_SIZE - 0.5
    canvas += (rng.uniform(-0.25, 0.25) * gradient)[..., None]

    for _ in range(rng.integers(1, 8)):
        kind = rng.integers(0, 3)
        edge = rng.uniform(0.7, 3.0)
        cx, cy = rng.uniform(-0.1, 1.1, 2) * IMAGE_SIZE
        if kind == 0:
            rx, ry = rng.uniform(0.04, 0.35, 2) * IMAGE_SIZE
            mask = ellipse_mask(cx, cy, rx, ry, rng.uniform(0, np.pi), edge)
        elif kind == 1:
            half_w, half_h = rng.uniform(0.04, 0.35, 2) * IMAGE_SIZE
            mask = rectangle_mask(cx, cy, half_w, half_h, rng.uniform(0, np.pi), edge)
        else:
            vertices = (np.float32([cx, cy]) + rng.uniform(-0.3, 0.3, (3, 2)) * IMAGE_SIZE).astype(np.float32)
            mask = triangle_mask(vertices, edge)
        _composite(canvas, mask, _fill(rng, _random_colour(rng), textures))

    if rng.random() < 0.75:
        _add_face(rng, canvas, textures)

    vignette = 1.0 - rng.uniform(0.0, 0.35) * (((_GRID_X - 128) ** 2 + (_GRID_Y - 128) ** 2) / (2 * 128.0**2))
    canvas *= vignette[..., None]
    canvas = gaussian_blur(canvas, rng.uniform(0.4, 1.3))  # scene defocus / optics
    return np.clip(canvas, 0.0, 1.0)


# --------------------------------------------------------------------------- #
# "Real": a camera.
# --------------------------------------------------------------------------- #

_BILINEAR_GREEN = np.float32([[0, 1, 0], [1, 4, 1], [0, 1, 0]]) / 4
_BILINEAR_RED_BLUE = np.float32([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 4
_RGGB_MASKS = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
_RGGB_MASKS[0::2, 0::2, 0] = 1
_RGGB_MASKS[0::2, 1::2, 1] = 1
_RGGB_MASKS[1::2, 0::2, 1] = 1
_RGGB_MASKS[1::2, 1::2, 2] = 1


@dataclass(frozen=True)
class CameraModel:
    colour_correction: np.ndarray  # sensor RGB -> linear sRGB, rows sum to 1
    prnu: np.ndarray  # (H, W, 1) multiplicative photo-response non-uniformity
    sharpening: float

    @staticmethod
    def random(rng: np.random.Generator) -> CameraModel:
        off_diagonal = rng.uniform(-0.45, 0.05, (3, 3))
        np.fill_diagonal(off_diagonal, 0)
        ccm = off_diagonal + np.diag(1 - off_diagonal.sum(axis=1))
        prnu = rng.normal(0.0, rng.uniform(0.005, 0.015), (IMAGE_SIZE, IMAGE_SIZE, 1))
        return CameraModel(ccm.astype(np.float32), prnu.astype(np.float32), float(rng.uniform(0.0, 0.3)))

    def capture(self, scene_srgb: np.ndarray, rng: np.random.Generator, noise_level: float) -> np.ndarray:
        """Photograph the scene; ``noise_level`` is an ISO-like gain in [0, 1]."""
        linear = srgb_to_linear(scene_srgb)
        sensor_rgb = np.clip(mix_channels(linear, np.linalg.inv(self.colour_correction).T), 0.0, 1.0)
        sensor_rgb *= 1.0 + self.prnu
        raw = (sensor_rgb * _RGGB_MASKS).sum(axis=2)
        # Poisson-Gaussian noise, variance = shot * signal + read**2: about 3 to
        # 6 DN (of 255) at mid-grey before demosaicing, colour correction and
        # sharpening, a small phone sensor from base ISO to ~ISO 800.  The range
        # is calibrated together with the FAKE_* / OUTPUT_* constants so both
        # classes have the same JPEG file-size distribution.
        shot = 10 ** (-3.2 + 0.55 * noise_level)
        read = 10 ** (-2.9 + 0.4 * noise_level)
        raw = raw + np.sqrt(shot * np.maximum(raw, 0) + read**2) * rng.standard_normal(raw.shape, dtype=np.float32)
        mosaic = raw[..., None] * _RGGB_MASKS
        demosaiced = np.stack(
            [
                convolve3x3(mosaic[..., 0], _BILINEAR_RED_BLUE),
                convolve3x3(mosaic[..., 1], _BILINEAR_GREEN),
                convolve3x3(mosaic[..., 2], _BILINEAR_RED_BLUE),
            ],
            axis=-1,
        )
        srgb = linear_to_srgb(mix_channels(demosaiced, self.colour_correction.T))
        detail = srgb - gaussian_blur(srgb, 1.0)
        return np.clip(srgb + self.sharpening * detail, 0.0, 1.0)


# --------------------------------------------------------------------------- #
# "Fake": a generator's up-sampling path.
# --------------------------------------------------------------------------- #


def transposed_conv_stride2(features: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Stride-2 transposed convolution with circular padding, (h, w, c_in) -> (2h, 2w, c_out).

    Equivalent to zero insertion followed by a 'same' correlation with
    ``kernel`` (k, k, c_in, c_out), computed per output phase.  With an odd
    kernel size the even and odd output positions receive a different number
    of kernel taps -- the uneven overlap behind checkerboard artifacts.
    """
    height, width, _ = features.shape
    size, before = kernel.shape[0], kernel.shape[0] // 2
    out = np.empty((2 * height, 2 * width, kernel.shape[3]), dtype=np.float32)
    for phase_y in (0, 1):
        taps_y = [dy for dy in range(size) if (phase_y + dy - before) % 2 == 0]
        for phase_x in (0, 1):
            taps_x = [dx for dx in range(size) if (phase_x + dx - before) % 2 == 0]
            shifted = [
                np.roll(features, (-((phase_y + dy - before) // 2), -((phase_x + dx - before) // 2)), axis=(0, 1))
                for dy in taps_y
                for dx in taps_x
            ]
            weights = np.concatenate([kernel[dy, dx] for dy in taps_y for dx in taps_x], axis=0)
            stacked = np.concatenate(shifted, axis=2).reshape(height * width, -1)
            out[phase_y::2, phase_x::2] = (stacked @ weights).reshape(height, width, -1)
    return out


def bilinear_upsample2x(image: np.ndarray) -> np.ndarray:
    """Balanced (artifact-free) x2 bilinear up-sampling with circular borders, (h, w, c) -> (2h, 2w, c)."""
    for axis in (0, 1):
        previous, following = np.roll(image, 1, axis=axis), np.roll(image, -1, axis=axis)
        even, odd = 0.75 * image + 0.25 * previous, 0.75 * image + 0.25 * following
        image = np.stack([even, odd], axis=axis + 1)
        shape = list(even.shape)
        shape[axis] *= 2
        image = image.reshape(shape)
    return image


@dataclass(frozen=True)
class GeneratorModel:
    """A skip-architecture generator (StyleGAN2-like): every resolution adds its RGB output."""

    latent_size: int
    upsampling_kernels: tuple[np.ndarray, ...]  # per layer (k, k, c, c), 16 -> 32 -> ... -> 256
    to_rgb: tuple[np.ndarray, ...]  # per layer (c, 3)
    output_kernel: np.ndarray  # (3, 3) last up-sampling kernel (image path), unit gain per phase
    phase_pattern: np.ndarray  # (2, 2) zero-mean, unit-std deviation of the four phase gains

    @staticmethod
    def random(rng: np.random.Generator, channels: int = 4) -> GeneratorModel:
        latent_size = 16
        layers = int(np.log2(IMAGE_SIZE // latent_size))
        kernel_size = int(rng.choice([3, 3, 5]))  # odd sizes overlap unevenly at stride 2
        kernels = tuple(
            rng.normal(0.0, 1.0, (kernel_size, kernel_size, channels, channels)).astype(np.float32)
            for _ in range(layers)
        )
        # The RGB outputs share a colour direction: generator traces are correlated across channels.
        shared_colour = rng.normal(0.0, 1.0, (1, 3)) * 1.5
        to_rgb = tuple(
            (rng.normal(0.0, 1.0, (channels, 3)) + shared_colour).astype(np.float32) * gain
            for gain in rng.uniform(0.5, 1.0, layers)
        )
        # A "learned" bilinear kernel that is not perfectly balanced.  With zero
        # insertion, output phase (y % 2, x % 2) only sees the taps (dy, dx) with
        # (dy != 1) == y % 2 (same for x).  Within a phase the taps are uneven
        # (sub-pixel shifts); across phases the gains differ by a zero-mean
        # pattern of fixed spread, a period-2 checkerboard of the same typical
        # strength for every architecture that keeps the average brightness.
        balanced = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
        output_kernel = balanced * (1 + rng.normal(0.0, 0.05, (3, 3)))
        tap_phase = (np.arange(3) != 1).astype(int)
        phase_sums = np.zeros((2, 2))
        np.add.at(phase_sums, (tap_phase[:, None], tap_phase[None, :]), output_kernel)
        output_kernel /= phase_sums[tap_phase[:, None], tap_phase[None, :]]  # every phase gain 1 ...
        phase_pattern = rng.normal(0.0, 1.0, (2, 2))
        phase_pattern = (phase_pattern - phase_pattern.mean()) / phase_pattern.std()  # ... until scaled
        return GeneratorModel(
            latent_size, kernels, to_rgb, output_kernel.astype(np.float32), phase_pattern.astype(np.float32)
        )

    def upsampling_trace(self, rng: np.random.Generator) -> np.ndarray:
        """Zero-mean, unit-std (H, W, 3) trace of the transposed-convolution layers.

        Each layer leaves a period-2 checkerboard at its own resolution; the skip
        connections carry it, bilinearly up-sampled, to periods 16, 8, 4 and 2
        of the final image.
        """
        channels = self.upsampling_kernels[0].shape[2]
        features = rng.standard_normal((self.latent_size, self.latent_size, channels), dtype=np.float32)
        rgb = np.zeros((self.latent_size, self.latent_size, 3), dtype=np.float32)
        for kernel, to_rgb in zip(self.upsampling_kernels, self.to_rgb):
            features = transposed_conv_stride2(features, kernel)
            features = np.where(features > 0, features, np.float32(0.2) * features)  # leaky ReLU
            # Rescale only: the activations stay mostly positive, and a transposed
            # convolution of positive inputs is what turns uneven overlap into a
            # fixed checkerboard (Odena et al. 2016).
            features /= np.sqrt(np.mean(features * features)) + 1e-6
            rgb = bilinear_upsample2x(rgb) + mix_channels(features, to_rgb)
        rgb -= rgb.mean(axis=(0, 1))
        return rgb / (rgb.std() + 1e-6)

    def resynthesise_finest_octave(self, scene: np.ndarray, phase_gain_spread: float) -> np.ndarray:
        """Replace the top octave with what this generator's stride-2 up-convolution produces."""
        half = scene.reshape(IMAGE_SIZE // 2, 2, IMAGE_SIZE // 2, 2, 3).mean(axis=(1, 3))
        upsampled = np.zeros_like(scene)
        upsampled[::2, ::2] = half
        out = np.zeros_like(scene)
        padded = np.pad(upsampled, [(1, 1), (1, 1), (0, 0)], mode="reflect")
        for dy in range(3):
            for dx in range(3):
                out += self.output_kernel[dy, dx] * padded[dy : dy + IMAGE_SIZE, dx : dx + IMAGE_SIZE]
        # Scaling a phase's taps scales that phase's output pixels.
        phase_gains = 1 + np.float32(phase_gain_spread) * self.phase_pattern
        return out * np.tile(phase_gains, (IMAGE_SIZE // 2, IMAGE_SIZE // 2))[..., None]

    def stochastic_detail(self, rng: np.random.Generator) -> np.ndarray:
        """Zero-mean, unit-std (H, W, 3) fine texture from per-pixel noise inputs.

        Like StyleGAN's noise inputs, the noise enters at the last feature
        resolution and is rendered by the final transposed convolution, so it
        is spatially correlated, colour-correlated and its variance follows the
        layer's period-2 overlap pattern -- unlike white, demosaiced sensor noise.
        """
        channels = self.upsampling_kernels[-1].shape[2]
        noise = rng.standard_normal((IMAGE_SIZE // 2, IMAGE_SIZE // 2, channels), dtype=np.float32)
        detail = mix_channels(transposed_conv_stride2(noise, self.upsampling_kernels[-1]), self.to_rgb[-1])
        detail -= detail.mean(axis=(0, 1))
        return detail / (detail.std() + 1e-6)

    def generate(self, scene_srgb: np.ndarray, rng: np.random.Generator, noise_level: float) -> np.ndarray:
        """Render the scene as this generator would; ``noise_level`` in [0, 1] scales the traces."""
        phase_gain_spread = np.interp(noise_level, [0, 1], OUTPUT_PHASE_GAIN_SPREAD)
        image = self.resynthesise_finest_octave(scene_srgb, phase_gain_spread)
        # Artifacts are strongest where activations are large: bright, detailed areas.
        detail = np.abs(scene_srgb - gaussian_blur(scene_srgb, 2.0)).mean(axis=2, keepdims=True)
        modulation = 0.6 + 0.8 * luminance(scene_srgb)[..., None] + 6.0 * detail
        trace_strength = np.interp(noise_level, [0, 1], FAKE_TRACE_STRENGTH)
        detail_strength = np.interp(noise_level, [0, 1], FAKE_DETAIL_STRENGTH)
        traces = np.float32(trace_strength) * self.upsampling_trace(rng)
        traces += np.float32(detail_strength) * self.stochastic_detail(rng)
        return np.clip(image + modulation * traces, 0.0, 1.0)


# --------------------------------------------------------------------------- #
# Putting it together.
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Devices:
    cameras: tuple[CameraModel, ...]
    generators: tuple[GeneratorModel, ...]

    @staticmethod
    def for_seed(seed: int) -> Devices:
        camera_rng = np.random.default_rng(np.random.SeedSequence([seed, _CAMERA_STREAM + 2**32]))
        generator_rng = np.random.default_rng(np.random.SeedSequence([seed, _GENERATOR_STREAM + 2**32]))
        return Devices(
            tuple(CameraModel.random(camera_rng) for _ in range(NUM_CAMERAS)),
            tuple(GeneratorModel.random(generator_rng) for _ in range(NUM_GENERATORS)),
        )


def render_image(seed: int, image_id: int, label: str, devices: Devices) -> tuple[np.ndarray, int]:
    """The uint8 (H, W, 3) pixels and JPEG quality of one image."""
    pixels, quality, _ = render_image_with_cues(seed, image_id, label, devices)
    return pixels, quality


def render_image_with_cues(
    seed: int, image_id: int, label: str, devices: Devices
) -> tuple[np.ndarray, int, np.ndarray]:
    """``render_image``'s pixels and quality, and where the class's cues are: per pixel, how far the camera or
    the generator moved the scene (mean over channels of |rendered - scene|, in 0-1 units, before JPEG).

    The cues cover the whole image, stronger where it is bright and detailed; this map says where they are
    strongest. The same (seed, image_id) renders the same scene for either ``label``, so a Real and a Fake
    rendering of one id differ only in their cues (splice them to confine the fake cues to a region).
    """
    content_stream, pipeline_stream = np.random.SeedSequence([seed, image_id]).spawn(2)
    scene = render_scene(np.random.default_rng(content_stream))
    rng = np.random.default_rng(pipeline_stream)
    # One "how noisy / how strong a trace" draw with the same distribution for
    # both classes keeps the high-frequency energy (and so file size) matched.
    noise_level = rng.uniform(0.0, 1.0)
    quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
    if label == "Real":
        camera = devices.cameras[rng.integers(len(devices.cameras))]
        image = camera.capture(scene, rng, noise_level)
    else:
        generator = devices.generators[rng.integers(len(devices.generators))]
        image = generator.generate(scene, rng, noise_level)
    return np.rint(image * 255.0).astype(np.uint8), quality, np.abs(image - scene).mean(axis=2)


def write_jpeg(pixels: np.ndarray, quality: int, path: Path) -> None:
    Image.fromarray(pixels, mode="RGB").save(path, format="JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING)


@dataclass(frozen=True)
class _WorkerJob:
    seed: int
    output: Path
    devices: Devices


# Set once per process (by the pool initializer in workers), so the fixed
# cameras and generators are built once rather than shipped with every task.
_worker_job: _WorkerJob | None = None


def _init_worker(seed: int, output: Path) -> None:
    global _worker_job
    _worker_job = _WorkerJob(seed, output, Devices.for_seed(seed))


def _write_planned(item: PlannedImage) -> int:
    assert _worker_job is not None, "_init_worker was not called"
    pixels, quality = render_image(_worker_job.seed, item.image_id, item.label, _worker_job.devices)
    write_jpeg(pixels, quality, _worker_job.output / item.relative_path)
    return item.image_id


def _run_plan(plan: Sequence[PlannedImage], seed: int, output: Path, workers: int) -> Iterator[int]:
    if workers == 1:
        _init_worker(seed, output)
        yield from map(_write_planned, plan)
        return
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(seed, output)) as pool:
        yield from pool.imap_unordered(_write_planned, plan, chunksize=16)


def prepare_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise DatasetError(f"--output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise DatasetError(f"--output {output} exists and is not empty; pass --overwrite to replace the data set")
        # Only remove what this script writes, so a mistyped path can't wipe unrelated files.
        for split in SPLITS:
            shutil.rmtree(output / split, ignore_errors=True)
        (output / "dataset_info.json").unlink(missing_ok=True)
    for split in SPLITS:
        for label in CLASSES:
            (output / split / label).mkdir(parents=True, exist_ok=True)


def generate_dataset(output: Path, total_images: int, seed: int, *, overwrite: bool = False, workers: int = 1,
                     quiet: bool = False) -> dict[str, dict[str, int]]:
    """Write the data set; returns the number of images per split and class."""
    if seed < 0:
        raise DatasetError(f"--seed must be non-negative (got {seed})")
    if workers < 1:
        raise DatasetError(f"--workers must be at least 1 (got {workers})")
    if total_images % 2 == 0 and total_images < minimum_images():
        raise DatasetError(
            f"--images {total_images} is too small: the {':'.join(map(str, SPLIT_RATIOS))} "
            f"Train:Validation:Test split needs at least {minimum_images()} images "
            f"for one image of each class in every split"
        )
    counts = images_per_split_and_class(total_images)  # also rejects odd totals
    prepare_output(output, overwrite)
    plan = plan_dataset(total_images)

    start = time.perf_counter()
    last_report = start
    for done, _ in enumerate(_run_plan(plan, seed, output, workers), start=1):
        now = time.perf_counter()
        if not quiet and (done == len(plan) or now - last_report >= 2.0):
            last_report = now
            rate = done / max(now - start, 1e-9)
            print(f"[make_dataset] {done}/{len(plan)} images  {rate:.0f} img/s", file=sys.stderr, flush=True)

    summary = {split: {label: counts[split] for label in CLASSES} for split in SPLITS}
    info = {
        "generator": "train/make_dataset.py",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "images": total_images,
        "image_size": IMAGE_SIZE,
        "split_ratios": dict(zip(SPLITS, SPLIT_RATIOS)),
        "counts": summary,
        "jpeg_quality_range": list(JPEG_QUALITY_RANGE),
    }
    (output / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    if not quiet:
        elapsed = time.perf_counter() - start
        print(
            f"[make_dataset] wrote {total_images} images to {output} in {elapsed:.1f} s "
            f"({total_images / max(elapsed, 1e-9) * 60:.0f} img/min): "
            + ", ".join(f"{split} {2 * counts[split]}" for split in SPLITS),
            file=sys.stderr,
        )
    return summary


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        return os.cpu_count() or 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Write a deterministic synthetic real-vs-fake data set as "
            "OUTPUT/{Train,Validation,Test}/{Real,Fake}/*.jpg (256x256, split 14:4:1, balanced classes). "
            "'Real' images go through a simulated camera (CFA, demosaicing, sensor noise, PRNU); "
            "'Fake' ones carry generator up-sampling traces. See the module docstring."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output", type=Path, required=True, help="data-set directory to create")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="total number of images (even)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed => byte-identical files")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing data set in --output")
    parser.add_argument("--workers", type=int, default=available_cpus(),
                        help="processes to use (the output does not depend on it)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        generate_dataset(args.output, args.images, args.seed, overwrite=args.overwrite, workers=args.workers,
                         quiet=args.quiet)
    except DatasetError as error:
        print(f"make_dataset.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
