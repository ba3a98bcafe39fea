"""The images the benchmark feeds every system: encoded files on disk, as a server receives them.

* real photos shipped by matplotlib and scikit-image (451x300 to 1411x1411; RGB, grayscale, RGBA);
* larger camera-sized JPEGs (2 to 12 MP) generated deterministically from one of those photos plus seeded
  sensor-like noise, so they decode like real photos (a flat synthetic image would compress to nothing and
  decode unrealistically fast);
* optionally a labelled folder (``Real/`` and ``Fake/``) for accuracy;
* calibration images for the static int8 recipes: other photos scikit-image ships, none of them measured, unless
  ``--calibration DIR`` names a folder (a trained model's training split, say).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ASPECT = (4, 3)  # a phone camera's
# Held out from every measured image set: calibrating on the fidelity images would flatter a static recipe.
CALIBRATION_PHOTO_FILES = [
    ("skimage", "data", name) for name in (
        "brick.png", "cell.png", "clock_motion.png", "coins.png", "color.png", "grass.png", "gravel.png", "horse.png",
        "ihc.png", "microaneurysms.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png",
        "text.png", "chessboard_RGB.png")
]


def sample_photos() -> list[Path]:
    from fastvit_detect.build.samples import sample_photos as installed_sample_photos

    photos = installed_sample_photos()
    if not photos:
        raise SystemExit("benchmarks: no sample photos found; install matplotlib and scikit-image (the dev extra)")
    return photos


def large_jpeg(megapixels: float, directory: Path, seed: int = 0) -> Path:
    """A deterministic ``megapixels`` MP 4:3 JPEG (quality 90), generated once and cached."""
    width = round((megapixels * 1e6 * ASPECT[0] / ASPECT[1]) ** 0.5)
    height = round(width * ASPECT[1] / ASPECT[0])
    path = directory / f"generated-{width}x{height}-q90.jpg"
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    source = Image.open(sample_photos()[0]).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed + width)
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.float32)  # luminance grain, like a real sensor
    pixels = np.clip(np.asarray(source, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    partial = path.with_suffix(".partial")
    Image.fromarray(pixels).save(partial, format="JPEG", quality=90)
    partial.rename(path)
    return path


@dataclass(frozen=True)
class ImageSet:
    latency: list[Path]  # end-to-end latency: photos + large JPEGs
    throughput: list[Path]  # the photos only, cycled to fill batches (12 MP decodes would swamp the model)

    def describe(self) -> list[dict[str, object]]:
        rows = []
        for path in self.latency:
            with Image.open(path) as image:
                rows.append({"file": path.name, "width": image.width, "height": image.height, "mode": image.mode,
                             "bytes": path.stat().st_size})
        return rows


def image_set(large_megapixels: Sequence[float], cache: Path) -> ImageSet:
    photos = sample_photos()
    generated = [large_jpeg(mp, cache / "images") for mp in large_megapixels]
    return ImageSet(latency=photos + generated, throughput=photos)


def calibration_photos(cache: Path) -> Path:
    """A folder of the held-out sample photos (copied once into the cache), for calibrating static int8."""
    directory = cache / "calibration-photos"
    from fastvit_detect.build.samples import sample_photos as installed_sample_photos

    photos = installed_sample_photos(CALIBRATION_PHOTO_FILES)
    if not photos:
        raise SystemExit("benchmarks: no calibration photos found; install scikit-image (the dev extra) or pass "
                         "--calibration DIR")
    if sorted(path.name for path in directory.glob("*")) != sorted(path.name for path in photos):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for path in photos:
            shutil.copyfile(path, directory / path.name)
    return directory


def batches(pool: Sequence[Path], batch_size: int, count: int) -> list[list[Path]]:
    """``count`` batches of ``batch_size`` files cycling through ``pool``, each starting where the last ended."""
    batches_out, position = [], 0
    for _ in range(count):
        batches_out.append([pool[(position + i) % len(pool)] for i in range(batch_size)])
        position += batch_size
    return batches_out
