"""Images to validate on: real photos shipped in PyPI packages, deterministic synthetic ones, and the user's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..media import find_images
from . import ExportError

# Real photos shipped inside PyPI packages: (package, folder inside it, file). From 451x300 to 1411x1411,
# RGB, grayscale (camera) and RGBA (logo).
SAMPLE_PHOTO_FILES = [("matplotlib", "mpl-data/sample_data", "grace_hopper.jpg")] + [
    ("skimage", "data", name) for name in ("astronaut.png", "coffee.png", "chelsea.png", "camera.png", "logo.png",
                                           "rocket.jpg", "retina.jpg", "hubble_deep_field.jpg")
]


def sample_photos(files: Sequence[tuple[str, str, str]] = SAMPLE_PHOTO_FILES) -> list[Path]:
    """The sample photos (``files``: package, folder, name) whose packages are installed here."""
    import importlib.util

    found = []
    for package, folder, name in files:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            path = Path(spec.origin).parent / folder / name
            if path.is_file():
                found.append(path)
    return found


def synthetic_images(seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Deterministic images of varied sizes, aspect ratios and modes, for when no real photos are at hand."""
    rng = np.random.default_rng(seed)

    def textured(height: int, width: int) -> np.ndarray:
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
        return np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)

    face = Image.fromarray(textured(320, 256))
    draw = ImageDraw.Draw(face)
    draw.ellipse((48, 40, 208, 260), fill=(224, 180, 150))
    draw.ellipse((90, 110, 115, 125), fill=(40, 30, 30))
    draw.ellipse((141, 110, 166, 125), fill=(40, 30, 30))
    draw.arc((95, 170, 160, 215), 20, 160, fill=(150, 60, 60), width=4)
    return [
        ("synthetic-face-256x320.png", face.filter(ImageFilter.GaussianBlur(1))),
        ("synthetic-rgb-640x480.png", Image.fromarray(textured(480, 640))),
        ("synthetic-gray-300x500.png", Image.fromarray(textured(500, 300)[..., 0])),
        ("synthetic-rgba-1000x200.png", Image.fromarray(np.dstack([textured(200, 1000),
                                                                  rng.integers(0, 256, (200, 1000), np.uint8)]))),
        ("synthetic-tiny-37x23.png", Image.fromarray(textured(23, 37))),
    ]


def validation_set(extra_dirs: Sequence[Path], limit_per_dir: int) -> list[tuple[str, Any]]:
    """(name, path-or-PIL image) pairs: sample photos, synthetic images, then images from ``extra_dirs``."""
    images: list[tuple[str, Any]] = [(path.name, path) for path in sample_photos()]
    images += synthetic_images()
    for directory in extra_dirs:
        if not directory.is_dir():
            raise ExportError(f"--validation-images {directory}: not a directory")
        files = find_images(directory)
        if not files:
            raise ExportError(f"--validation-images {directory}: no images found")
        step = max(1, len(files) // limit_per_dir)  # spread the sample over classes and sub-folders
        images += [(str(path.relative_to(directory)), path) for path in files[::step][:limit_per_dir]]
    return images
