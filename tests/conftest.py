"""Shared fixtures: tiny checkpoints made at test time, their exported packages, PyTorch's answers, test images.

No network: checkpoints are tiny ViT/DeiT models saved with ``save_pretrained``, wired so that an image's
brightness decides their verdict (fixture_models.py), so verdicts differ from image to image; real photos come
from matplotlib's and scikit-image's bundled sample data. Expected labels and probabilities come from PyTorch
(``reference``), never from the runtime under test.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
from face_reference import facenet_wheel
from fixture_models import brightness_decides
from PIL import Image

import fastvit_detect.build.export as EXPORT  # imports no torch until it exports
from fastvit_detect.build import samples, seeded
from fastvit_detect.build.reference import TorchReference

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(EXPORT.__file__).parent  # the build package under test (the mutation check runs a copy)
VIT_PROCESSOR = seeded.PROCESSORS["vit"]
DEIT_PROCESSOR = seeded.PROCESSORS["deit"]

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
    return seeded.build_checkpoint(directory, processor, preset="tiny", labels=labels, model_type=model_type,
                                             image_size=image_size, seed=seed, safetensors=safetensors,
                                             classifier_gain=20.0)


@dataclass(frozen=True)
class FixtureModel:
    """A test checkpoint whose verdict the image's brightness decides (see fixture_models.py)."""

    processor: dict
    labels: tuple[str, ...]
    slopes: tuple[int, ...]  # per label: its logit rises (+1) or falls (-1) with brightness, or stays (0)
    thresholds: tuple[float, ...]  # brightness statistics where the winning label changes
    model_type: str = "vit"
    seed: int = 0
    gain: float = 1.0  # the head's: wider margins, more saturated probabilities (fixture_models.py)
    openvino: bool = False  # the package also holds the openvino-int8 variant (export --openvino)
    faces: bool = False  # the package also holds the face detector (export --faces; tests/test_faces.py)


# Every family of preprocessing, both label orders, both architectures, and more than two labels. On the sample
# photos and odd images about half of each two-label model's verdicts are each label (tests/test_fixtures.py).
FIXTURE_MODELS = {
    "vit": FixtureModel(VIT_PROCESSOR, ("Fake", "Real"), (-1, 1), (-0.2,)),
    # id2label {0: Real, 1: Fake}: not alphabetical, so a label looked up by sorted name or by index is caught.
    "deit": FixtureModel(DEIT_PROCESSOR, ("Real", "Fake"), (-1, 1), (-0.15,), seed=1),
    "legacy-vit": FixtureModel(LEGACY_VIT_PROCESSOR, ("Fake", "Real"), (1, -1), (-0.2,), seed=2),
    "deit-arch": FixtureModel(LEGACY_DEIT_PROCESSOR, ("Fake", "Real"), (-1, 1), (-0.15,), model_type="deit", seed=3),
    # Three labels, none where sorting would put it: dark -> Real, middling -> Unsure, bright -> Fake.
    "multi": FixtureModel(VIT_PROCESSOR, ("Real", "Unsure", "Fake"), (-1, 0, 1), (-0.5, 0.25), seed=4, gain=2.0),
    # The vit model again, exported with --openvino: both runtimes on the same weights (tests/test_openvino.py).
    "vit-openvino": FixtureModel(VIT_PROCESSOR, ("Fake", "Real"), (-1, 1), (-0.2,), openvino=True),
    # The vit model again, exported with --faces: every fixture's variants, plus the face detector.
    "vit-faces": FixtureModel(VIT_PROCESSOR, ("Fake", "Real"), (-1, 1), (-0.2,), faces=True),
}

# Exported fixture packages are cached here when set (scripts/test.sh sets .cache/test-fixtures in the checkout;
# the mutation checks point it at a fresh temporary folder and run pytest dozens of times); unset, every session
# builds its own. Keyed by content: the fixture's spec, the build-side code (BUILD: the copy under test when the
# mutation check mutates it), the checkout's runtime modules (the exporter writes and validates through them; a
# mutated copy of the runtime doesn't change the key, so mutants share one build) and the library versions.
CACHE_ENVIRONMENT = "FASTVIT_TEST_CACHE"
_BUILD_FILES = (*sorted(BUILD.glob("*.py")), Path(__file__).resolve().with_name("fixture_models.py"))
BUILD_LIBRARIES = ("torch", "transformers", "optimum-onnx", "onnx", "onnxruntime", "pillow", "numpy", "openvino",
                    "nncf")


def _fixture_key(kind: str) -> str:
    digest = hashlib.sha256(json.dumps([kind, asdict(FIXTURE_MODELS[kind])], sort_keys=True).encode())
    for path in (*_BUILD_FILES, *sorted((ROOT / "src" / "fastvit_detect").glob("*.py"))):
        digest.update(path.read_bytes())
    for library in BUILD_LIBRARIES:
        try:
            digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{library} absent".encode())
    return digest.hexdigest()[:16]


def _build_fixture(kind: str, directory: Path) -> None:
    """``directory/kind`` (the checkpoint: its folder name is what the server shows as the model's name) and
    ``directory/package``."""
    pytest.importorskip("torch")
    model = FIXTURE_MODELS[kind]
    checkpoint = seeded.build_checkpoint(
        directory / kind, model.processor, preset="tiny", labels=model.labels, model_type=model.model_type,
        seed=model.seed,
        adjust=lambda torch_model: brightness_decides(torch_model, model.slopes, model.thresholds, model.gain))
    if model.openvino:
        pytest.importorskip("nncf")
    wheel = None
    if model.faces:
        wheel = facenet_wheel()
        if wheel is None:
            pytest.skip("facenet-pytorch's wheel (the face detector's weights) can't be downloaded here")
    EXPORT.export_package(EXPORT.ExportSettings(str(checkpoint), directory / "package", openvino=model.openvino,
                                                faces=model.faces, faces_wheel=wheel),
                          log=lambda _text: None)


def _cached_fixture(kind: str, cache: Path) -> Path:
    entry = cache / f"{kind}-{_fixture_key(kind)}"
    if not entry.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=cache))
        _build_fixture(kind, staging)
        try:
            staging.rename(entry)  # atomic: a concurrent session either finds it whole or builds its own
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return entry


def child_environment() -> dict[str, str]:
    """This environment for a child Python that must run the fastvit_detect this test imported: the checkout's, or
    a mutation run's copy (scripts/mutate_all.py), whose mutant the child must run too."""
    import fastvit_detect

    src = str(Path(fastvit_detect.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def cached_build(name: str, sources: Sequence[Path], build: Callable[[Path], None], destination: Path,
                 libraries: Sequence[str] = BUILD_LIBRARIES) -> Path:
    """``build(destination)``, or with FASTVIT_TEST_CACHE set a copy of an earlier build of the same content.

    The key is every byte of ``sources`` (files, or folders' Python files, recursively) and the libraries'
    versions: a changed line of training, export or runtime code, or another torch, builds anew. For fixtures that
    take minutes (a trained model, a benchmark run) and whose result the suite only reads.
    """
    cache = os.environ.get(CACHE_ENVIRONMENT)
    if not cache:
        build(destination)
        return destination
    digest = hashlib.sha256(name.encode())
    for source in sources:
        for path in sorted(source.rglob("*.py")) if source.is_dir() else [source]:
            name_in_key = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            digest.update(str(name_in_key).encode() + b"\0" + path.read_bytes())
    for library in libraries:
        try:
            digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{library} absent".encode())
    entry = Path(cache) / f"{name}-{digest.hexdigest()[:16]}"
    if not entry.is_dir():
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        build(staging)
        try:
            staging.rename(entry)  # atomic: a concurrent session either finds it whole or builds its own
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(entry, destination, dirs_exist_ok=True)  # a copy: tests may change what they're given
    return destination


class FixtureBuilds(dict):
    """kind -> (checkpoint, package), built on first use: a run that needs two fixture models builds two.

    With a cache the session gets its own copies: tests may damage what they're given, never the shared cache.
    """

    def __init__(self, base: Path) -> None:
        super().__init__()
        self.base = base
        cache = os.environ.get(CACHE_ENVIRONMENT)
        self.cache = Path(cache) if cache else None

    def __missing__(self, kind: str) -> tuple[Path, Path]:
        if kind not in FIXTURE_MODELS:
            raise KeyError(kind)
        if self.cache is not None:
            shutil.copytree(_cached_fixture(kind, self.cache), self.base / kind)
        else:
            _build_fixture(kind, self.base / kind)
        self[kind] = (self.base / kind / kind, self.base / kind / "package")
        return self[kind]


class _Part(Mapping):
    """One side of FixtureBuilds (checkpoints or packages) as a read-only, lazily built mapping."""

    def __init__(self, builds: FixtureBuilds, side: int) -> None:
        self.builds, self.side = builds, side

    def __getitem__(self, kind: str) -> Path:
        return self.builds[kind][self.side]

    def __iter__(self) -> Iterator[str]:
        return iter(FIXTURE_MODELS)

    def __len__(self) -> int:
        return len(FIXTURE_MODELS)


@pytest.fixture(scope="session")
def fixture_builds(tmp_path_factory) -> FixtureBuilds:
    return FixtureBuilds(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="session")
def checkpoints(fixture_builds) -> Mapping[str, Path]:
    """Checkpoints covering the processor and label variants the seed models use (FIXTURE_MODELS)."""
    return _Part(fixture_builds, 0)


@pytest.fixture(scope="session")
def packages(fixture_builds) -> Mapping[str, Path]:
    """The checkpoints exported with fastvit_detect.build.export: fp32 and dynamic int8."""
    return _Part(fixture_builds, 1)


@pytest.fixture(scope="session")
def vit_package(packages) -> Path:
    return packages["vit"]


@pytest.fixture
def package_copy(vit_package, tmp_path) -> Path:
    """A copy of the tiny ViT package a test may damage."""
    copy = tmp_path / "package"
    shutil.copytree(vit_package, copy)
    return copy


def revouch_configs(package: Path) -> None:
    """Record changed configs' sha256 and size in the manifest, as a build step that edits them would: a test of
    what an edited config does must get past verification first."""
    manifest_path = package / "fastvit_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["configs"]:
        data = (package / entry["file"]).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    manifest_path.write_text(json.dumps(manifest))


def torch_logits(checkpoint: Path, images) -> np.ndarray:
    """The reference: transformers' load_image + slow processor + PyTorch fp32, all images in one batch."""
    return TorchReference.load(checkpoint).logits(list(images))


class Reference:
    """PyTorch's answers for the fixture models on image files: the expected values of the tests.

    Computed by ``torch_logits``, outside the runtime under test; remembered per session, and on disk beside the
    cached packages when FASTVIT_TEST_CACHE is set (so the mutation check needn't import torch per run).
    """

    def __init__(self, checkpoints: Mapping[str, Path], cache: Path | None) -> None:
        self.checkpoints = checkpoints
        self.cache = cache
        self._memo: dict[str, np.ndarray] = {}

    def logits(self, kind: str, images: Sequence[Path]) -> np.ndarray:
        digest = hashlib.sha256(_fixture_key(kind).encode())
        for image in images:
            digest.update(hashlib.sha256(Path(image).read_bytes()).digest())
        key = f"{kind}-{digest.hexdigest()[:20]}"
        if key not in self._memo:
            stored = self.cache / "reference" / f"{key}.npy" if self.cache else None
            if stored is not None and stored.is_file():
                self._memo[key] = np.load(stored)
            else:
                self._memo[key] = torch_logits(self.checkpoints[kind], [Path(image) for image in images])
                if stored is not None:
                    stored.parent.mkdir(parents=True, exist_ok=True)
                    partial = stored.with_name(f".{stored.name}.{os.getpid()}.npy")
                    np.save(partial, self._memo[key])
                    partial.replace(stored)
        return self._memo[key]

    def probabilities(self, kind: str, images: Sequence[Path]) -> np.ndarray:
        logits = self.logits(kind, images).astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def labels(self, kind: str, images: Sequence[Path]) -> list[str]:
        names = FIXTURE_MODELS[kind].labels
        return [names[index] for index in self.logits(kind, images).argmax(axis=1)]

    def label(self, kind: str, image: Path) -> str:
        return self.labels(kind, [image])[0]


@pytest.fixture(scope="session")
def reference(checkpoints) -> Reference:
    cache = os.environ.get(CACHE_ENVIRONMENT)
    return Reference(checkpoints, Path(cache) if cache else None)


# --- images -------------------------------------------------------------------------------------------------


def sample_photos() -> list[Path]:
    """The real photos the exporter validates on; the dev extra installs the packages that ship them."""
    photos = samples.sample_photos()
    assert len(photos) == len(samples.SAMPLE_PHOTO_FILES), "install the dev extra: matplotlib and scikit-image"
    return photos


DARK, BRIGHT = 64, 192  # the fixture checkpoints' verdicts follow brightness: odd images come in both kinds


def noise_image(height: int, width: int, seed: int, channels: int = 3, level: int = DARK) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = (np.sin(x / 7.0) + np.cos(y / 11.0))[..., None] * 30 + level
    shape = (height, width, channels) if channels > 1 else (height, width)
    noisy = smooth if channels > 1 else smooth[..., 0]
    return np.clip(noisy + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)


def png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height``: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    """Images in the modes and shapes that break naive pipelines."""
    out = tmp_path_factory.mktemp("odd-images")
    rgb = Image.fromarray(noise_image(120, 90, 0))
    made: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **options) -> None:
        made[name] = out / name
        image.save(made[name], **options)

    save("cmyk.jpg", rgb.convert("CMYK"), quality=90)
    save("gray16.png", Image.fromarray(noise_image(80, 100, 1, 1).astype(np.uint16) * 257))  # I;16: bright in RGB
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    save("palette-transparent.png", palette, transparency=3)
    save("gray-alpha.png", Image.fromarray(noise_image(64, 64, 2, 1, BRIGHT)).convert("LA"))
    save("rgba.png", Image.fromarray(np.dstack([noise_image(64, 96, 3, level=BRIGHT), noise_image(64, 96, 4, 1)])))
    save("bilevel.png", Image.fromarray(noise_image(50, 70, 5, 1, BRIGHT)).convert("1"))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save("exif-rotated.jpg", rgb, exif=exif.tobytes(), quality=95)
    save("one-by-n.png", Image.fromarray(noise_image(1, 300, 6, level=BRIGHT)))
    save("n-by-one.png", Image.fromarray(noise_image(300, 1, 7)))
    save("wide.png", Image.fromarray(noise_image(20, 2000, 8, level=BRIGHT)))
    save("single-pixel.png", Image.fromarray(noise_image(1, 1, 9, level=BRIGHT)))
    save("large.jpg", Image.fromarray(noise_image(1500, 2000, 10)), quality=85)
    frames = [Image.fromarray(noise_image(40, 60, 11 + i, level=BRIGHT if i == 0 else DARK)) for i in range(3)]
    made["animated.gif"] = out / "animated.gif"
    frames[0].save(made["animated.gif"], save_all=True, append_images=frames[1:], duration=50)
    made["animated.webp"] = out / "animated.webp"  # lossless: its first frame decodes to exactly frames[0]
    frames[0].save(made["animated.webp"], save_all=True, append_images=frames[1:], duration=50, lossless=True)
    save("webp.webp", rgb, quality=80)
    save("uppercase-ext.JPG", rgb)
    save("png-named.jpg", rgb, format="PNG")  # wrong extension: content decides
    return made


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bad-inputs")
    buffer = io.BytesIO()
    Image.fromarray(noise_image(200, 200, 0)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(noise_image(200, 200, 0)).save(buffer, format="PNG")
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
