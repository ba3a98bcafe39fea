"""Shared fixtures: tiny checkpoints made at test time, their exported packages, and test images.

No network: checkpoints are random-weight ViT/DeiT models saved with ``save_pretrained``; real photos come from
matplotlib's and scikit-image's bundled sample data.
"""

from __future__ import annotations

import io
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `benchmarks` is a top-level folder of the repo, not an installed package

from benchmarks.artifacts import checkpoint_maker, export_module

CHECKPOINT_MAKER = checkpoint_maker()
VIT_PROCESSOR = CHECKPOINT_MAKER.PROCESSORS["vit"]
DEIT_PROCESSOR = CHECKPOINT_MAKER.PROCESSORS["deit"]
EXPORT = export_module()  # imports no torch until it exports

# Legacy configs as older checkpoints on the Hub store them: integer sizes, no do_rescale key.
LEGACY_VIT_PROCESSOR = {
    "feature_extractor_type": "ViTFeatureExtractor", "do_resize": True, "size": 224, "resample": 2,
    "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
}
LEGACY_DEIT_PROCESSOR = {
    "feature_extractor_type": "DeiTFeatureExtractor", "do_resize": True, "size": 256, "resample": 3,
    "do_center_crop": True, "crop_size": 224, "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
}


@pytest.fixture(scope="session")
def exporter():
    pytest.importorskip("torch")
    return EXPORT


def make_checkpoint(directory: Path, processor: dict, labels=("Fake", "Real"), model_type="vit",
                    image_size=224, seed=0, safetensors=True) -> Path:
    """A tiny random-weight classifier saved the way a fine-tuned Hub checkpoint is; labels made decisive."""
    return CHECKPOINT_MAKER.build_checkpoint(directory, processor, preset="tiny", labels=labels, model_type=model_type,
                                             image_size=image_size, seed=seed, safetensors=safetensors,
                                             classifier_gain=20.0)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, exporter):
    """Checkpoints covering the processor and label variants the seed models use."""
    base = tmp_path_factory.mktemp("checkpoints")
    return {
        "vit": make_checkpoint(base / "vit", VIT_PROCESSOR),
        "deit": make_checkpoint(base / "deit", DEIT_PROCESSOR, labels=("Real", "Fake"), seed=1),
        "legacy-vit": make_checkpoint(base / "legacy-vit", LEGACY_VIT_PROCESSOR, seed=2),
        "deit-arch": make_checkpoint(base / "deit-arch", LEGACY_DEIT_PROCESSOR, model_type="deit", seed=3),
    }


@pytest.fixture(scope="session")
def packages(tmp_path_factory, exporter, checkpoints):
    base = tmp_path_factory.mktemp("packages")
    for name, checkpoint in checkpoints.items():
        exporter.export_package(str(checkpoint), base / name, log=lambda _text: None)
    return {name: base / name for name in checkpoints}


@pytest.fixture(scope="session")
def vit_package(packages) -> Path:
    return packages["vit"]


@pytest.fixture()
def package_copy(vit_package, tmp_path) -> Path:
    """A copy of the tiny ViT package a test may damage."""
    copy = tmp_path / "package"
    shutil.copytree(vit_package, copy)
    return copy


def torch_logits(checkpoint: Path, images) -> np.ndarray:
    """The reference: transformers' load_image + slow processor + PyTorch fp32."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    from transformers.image_utils import load_image

    processor = AutoImageProcessor.from_pretrained(checkpoint, use_fast=False)
    model = AutoModelForImageClassification.from_pretrained(checkpoint).eval()
    pictures = [load_image(str(image) if isinstance(image, Path) else image) for image in images]
    with torch.inference_mode():
        return model(**processor(pictures, return_tensors="pt")).logits.numpy()


# --- images -------------------------------------------------------------------------------------------------


def sample_photos() -> list[Path]:
    """The real photos the exporter validates on; the dev extra installs the packages that ship them."""
    photos = EXPORT.sample_photos()
    assert len(photos) == len(EXPORT.SAMPLE_PHOTO_FILES), "install the dev extra: matplotlib and scikit-image"
    return photos


def _noise(height: int, width: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = (np.sin(x / 7.0) + np.cos(y / 11.0))[..., None] * 60 + 128
    shape = (height, width, channels) if channels > 1 else (height, width)
    noisy = smooth if channels > 1 else smooth[..., 0]
    return np.clip(noisy + rng.normal(0, 30, shape), 0, 255).astype(np.uint8)


def png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height``: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    """Images in the modes and shapes that break naive pipelines."""
    out = tmp_path_factory.mktemp("odd-images")
    rgb = Image.fromarray(_noise(120, 90, 0))
    made: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **options) -> None:
        made[name] = out / name
        image.save(made[name], **options)

    save("cmyk.jpg", rgb.convert("CMYK"), quality=90)
    save("gray16.png", Image.fromarray((_noise(80, 100, 1, 1).astype(np.uint16) * 257)))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    save("palette-transparent.png", palette, transparency=3)
    save("gray-alpha.png", Image.fromarray(_noise(64, 64, 2, 1)).convert("LA"))
    save("rgba.png", Image.fromarray(np.dstack([_noise(64, 96, 3), _noise(64, 96, 4, 1)])))
    save("bilevel.png", Image.fromarray(_noise(50, 70, 5, 1)).convert("1"))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save("exif-rotated.jpg", rgb, exif=exif.tobytes(), quality=95)
    save("one-by-n.png", Image.fromarray(_noise(1, 300, 6)))
    save("n-by-one.png", Image.fromarray(_noise(300, 1, 7)))
    save("wide.png", Image.fromarray(_noise(20, 2000, 8)))
    save("single-pixel.png", Image.fromarray(_noise(1, 1, 9)))
    save("large.jpg", Image.fromarray(_noise(1500, 2000, 10)), quality=85)
    frames = [Image.fromarray(_noise(40, 60, 11 + i)) for i in range(3)]
    made["animated.gif"] = out / "animated.gif"
    frames[0].save(made["animated.gif"], save_all=True, append_images=frames[1:], duration=50)
    save("webp.webp", rgb, quality=80)
    save("uppercase-ext.JPG", rgb)
    save("png-named.jpg", rgb, format="PNG")  # wrong extension: content decides
    return made


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bad-inputs")
    buffer = io.BytesIO()
    Image.fromarray(_noise(200, 200, 0)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(_noise(200, 200, 0)).save(buffer, format="PNG")
    png = buffer.getvalue()
    files = {
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "truncated.png": png[: len(png) // 2],
        "text.jpg": b"this is not an image\n" * 10,
        "bomb.png": png_with_header(100_000, 100_000),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    (out / "a-directory.png").mkdir()
    return {name: out / name for name in [*files, "a-directory.png"]}
