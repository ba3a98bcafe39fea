"""Tests for the build-time training tools: train/make_dataset.py and train/finetune.py.

``train`` is a folder of the checkout importable from its root (pytest's ``pythonpath``), as ``benchmarks`` is.
The fine-tuning tests need torch and transformers and are skipped without them.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_DIR = REPO_ROOT / "train"


def load_train_script(name: str) -> ModuleType:
    # The scripts set thread variables (OMP_NUM_THREADS, ...) for their own
    # process; don't let them leak into subprocesses started by other tests.
    environment = dict(os.environ)
    try:
        return importlib.import_module(f"train.{name}")
    finally:
        os.environ.clear()
        os.environ.update(environment)


make_dataset = load_train_script("make_dataset")

SPLITS = ("Train", "Validation", "Test")
CLASSES = ("Real", "Fake")
CUE_CHECK_IMAGES = 320  # per class 160: Train 118, Validation 34, Test 8


def jpeg_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/*/*.jpg"))


@pytest.fixture(scope="module")
def cue_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("cues") / "data"
    make_dataset.generate_dataset(output, CUE_CHECK_IMAGES, seed=7, workers=2, quiet=True)
    return output


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("small") / "data"
    make_dataset.generate_dataset(output, 40, seed=3, workers=1, quiet=True)
    return output


# --------------------------------------------------------------------------- #
# make_dataset.py
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("total", [20, 38, 40, 320, 1000, 3800, 190_334])
def test_split_follows_14_4_1_and_is_balanced(total: int) -> None:
    counts = make_dataset.images_per_split_and_class(total)
    assert list(counts) == list(SPLITS)
    assert sum(counts.values()) * 2 == total
    per_class = total // 2
    for split, ratio in zip(SPLITS, (14, 4, 1)):
        assert abs(counts[split] - per_class * ratio / 19) < 1
        assert counts[split] >= 1


def test_standard_sizes() -> None:
    assert make_dataset.images_per_split_and_class(3800) == {"Train": 1400, "Validation": 400, "Test": 100}
    assert make_dataset.minimum_images() == 20


def test_layout_sizes_and_manifest(cue_dataset: Path) -> None:
    expected = make_dataset.images_per_split_and_class(CUE_CHECK_IMAGES)
    assert sorted(p.name for p in cue_dataset.iterdir()) == sorted([*SPLITS, "dataset_info.json"])
    for split in SPLITS:
        assert sorted(p.name for p in (cue_dataset / split).iterdir()) == sorted(CLASSES)
        for label in CLASSES:
            files = sorted((cue_dataset / split / label).iterdir())
            assert len(files) == expected[split], (split, label)
            assert all(f.suffix == ".jpg" and f.name.startswith(label.lower() + "_") for f in files)
    for path in jpeg_files(cue_dataset)[::25]:
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == (256, 256)
    info = json.loads((cue_dataset / "dataset_info.json").read_text())
    assert info["seed"] == 7 and info["images"] == CUE_CHECK_IMAGES
    assert info["counts"] == {split: {label: expected[split] for label in CLASSES} for split in SPLITS}


def test_same_seed_gives_byte_identical_files(tmp_path: Path, small_dataset: Path) -> None:
    # Through the command line, with a different worker count than the fixture.
    rerun = tmp_path / "rerun"
    command = [sys.executable, str(TRAIN_DIR / "make_dataset.py"), "--output", str(rerun), "--images", "40",
               "--seed", "3", "--workers", "2", "--quiet"]
    subprocess.run(command, check=True, timeout=120)
    first = {p.relative_to(small_dataset): p.read_bytes() for p in small_dataset.rglob("*") if p.is_file()}
    second = {p.relative_to(rerun): p.read_bytes() for p in rerun.rglob("*") if p.is_file()}
    assert len(first) == 41  # 40 images + dataset_info.json
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_other_seed_gives_other_images(tmp_path: Path, small_dataset: Path) -> None:
    make_dataset.generate_dataset(tmp_path / "other", 40, seed=4, workers=1, quiet=True)
    same = [
        path.relative_to(small_dataset)
        for path in jpeg_files(small_dataset)
        if path.read_bytes() == (tmp_path / "other" / path.relative_to(small_dataset)).read_bytes()
    ]
    assert same == []


def test_classes_share_the_content_and_differ_in_the_traces() -> None:
    """With one image id, both labels render the same scene: the label only changes the pipeline."""
    devices = make_dataset.Devices.for_seed(0)
    real, _ = make_dataset.render_image(0, 5, "Real", devices)
    fake, _ = make_dataset.render_image(0, 5, "Fake", devices)
    difference = real.astype(np.float32) - fake.astype(np.float32)
    assert abs(difference.mean()) < 3  # same scene, same brightness
    assert 1 < difference.std() < 25  # but not the same pixels


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--images", "41"], "even"),
        (["--images", "18"], "too small"),
        (["--images", "40", "--seed", "-1"], "non-negative"),
        (["--images", "40", "--workers", "0"], "--workers"),
    ],
)
def test_bad_arguments_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert make_dataset.main(["--output", str(tmp_path / "out"), "--quiet", *arguments]) == 2
    error = capsys.readouterr().err
    assert "error:" in error and message in error
    assert not (tmp_path / "out" / "Train").exists()


def test_non_empty_output_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "data"
    (output / "Train" / "Real").mkdir(parents=True)
    stale = output / "Train" / "Real" / "real_999999.jpg"
    stale.write_bytes(b"stale")
    unrelated = output / "notes.txt"
    unrelated.write_text("keep me")
    assert make_dataset.main(["--output", str(output), "--images", "20", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert stale.exists()

    assert make_dataset.main(["--output", str(output), "--images", "20", "--quiet", "--overwrite"]) == 0
    assert not stale.exists()
    assert unrelated.read_text() == "keep me"
    assert len(jpeg_files(output)) == 20


def test_command_line_error_exit_status(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(TRAIN_DIR / "make_dataset.py"), "--output", str(tmp_path / "x"), "--images", "7"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "--images" in result.stderr and "even" in result.stderr


# --- Trivial cues ------------------------------------------------------------ #


def image_statistics(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-image mean R, G, B, brightness, file size and a spectral-peak score; labels (1 = Real)."""
    rows, labels = [], []
    for path in jpeg_files(root):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        grey = pixels.mean(axis=2)
        power = np.abs(np.fft.fft2(grey - grey.mean())) ** 2
        # Up-sampling checkerboards put energy at N/2 and N/4 cycles per image.
        peaks = [(0, 128), (128, 0), (128, 128), (0, 64), (64, 0), (64, 64)]
        offsets = [(2, 2), (-2, 2), (2, -2), (-2, -2)]
        peak_power = sum(power[y, x] for y, x in peaks)
        nearby_power = sum(power[(y + dy) % 256, (x + dx) % 256] for y, x in peaks for dy, dx in offsets) / 4
        colour = pixels.reshape(-1, 3).mean(axis=0)
        rows.append([*colour, grey.mean(), path.stat().st_size, np.log(peak_power / nearby_power)])
        labels.append(1 if path.parent.name == "Real" else 0)
    names = ["mean R", "mean G", "mean B", "brightness", "file size", "spectral peaks"]
    return np.asarray(rows), np.asarray(labels), names


def fold_indices(count: int, folds: int = 5) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    order = np.random.default_rng(0).permutation(count)
    for test in np.array_split(order, folds):
        yield np.setdiff1d(order, test), test


def cross_validated_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of an L2-regularised logistic regression, 5-fold cross-validated."""
    correct = 0
    for train, test in fold_indices(len(labels)):
        mean, std = features[train].mean(axis=0), features[train].std(axis=0) + 1e-12
        x_train, x_test = (features[train] - mean) / std, (features[test] - mean) / std
        weights, bias = np.zeros(features.shape[1]), 0.0
        for _ in range(300):
            residual = 1 / (1 + np.exp(-(x_train @ weights + bias))) - labels[train]
            weights -= 0.5 * (x_train.T @ residual / len(train) + 1e-3 * weights)
            bias -= 0.5 * residual.mean()
        correct += int(((x_test @ weights + bias > 0) == labels[test]).sum())
    return correct / len(labels)


def cross_validated_threshold_accuracy(feature: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the best single threshold (either direction), 5-fold cross-validated."""
    correct = 0
    for train, test in fold_indices(len(labels)):
        cuts = np.unique(feature[train])
        real_above = (feature[train][None, :] > cuts[:, None]) == labels[train][None, :].astype(bool)
        accuracy = real_above.mean(axis=1)
        best = int(np.argmax(np.maximum(accuracy, 1 - accuracy)))
        prediction = feature[test] > cuts[best]
        if accuracy[best] < 0.5:
            prediction = ~prediction
        correct += int((prediction == labels[test].astype(bool)).sum())
    return correct / len(labels)


def test_colour_brightness_and_file_size_do_not_separate_the_classes(cue_dataset: Path) -> None:
    features, labels, names = image_statistics(cue_dataset)
    assert labels.mean() == 0.5
    trivial = {name: features[:, [i]] for i, name in enumerate(names[:5])}
    trivial["mean colour (R, G, B)"] = features[:, :3]
    trivial["all five together"] = features[:, :5]
    accuracies = {name: cross_validated_accuracy(x, labels) for name, x in trivial.items()}
    thresholds = {
        name: cross_validated_threshold_accuracy(features[:, i], labels) for i, name in enumerate(names[:5])
    }
    print("\nlogistic regression (5-fold CV accuracy):", accuracies, "\nsingle threshold (5-fold CV):", thresholds)
    # Chance is 0.5; with 320 images one standard error is ~0.028.
    assert max(accuracies.values()) <= 0.62, accuracies
    assert max(thresholds.values()) <= 0.63, thresholds  # one threshold varies more across samples

    # Positive control: the same classifier does separate the classes on a
    # forensic (frequency) feature, so the near-chance results above are not
    # an artifact of a broken classifier.
    assert cross_validated_accuracy(features[:, [5]], labels) >= 0.9


# --------------------------------------------------------------------------- #
# finetune.py
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def finetune() -> ModuleType:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return load_train_script("finetune")


@pytest.fixture
def restore_torch_state() -> Iterator[None]:
    """finetune.train() sets process-wide torch options; keep them from leaking into other tests."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


TINY_SMOKE_ARGUMENTS = ["--base", "tiny", "--max-steps", "3", "--batch-size", "4", "--eval-batch-size", "16",
                        "--tiny-hidden-size", "32", "--tiny-layers", "1", "--tiny-heads", "2", "--threads", "1",
                        "--log-every", "1"]


@pytest.fixture(scope="module")
def tiny_checkpoint(finetune: ModuleType, small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    output = tmp_path_factory.mktemp("checkpoint") / "tiny"
    try:
        assert finetune.main(["--data", str(small_dataset), "--output", str(output), *TINY_SMOKE_ARGUMENTS]) == 0
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return output


def test_finetune_writes_a_loadable_safetensors_checkpoint(tiny_checkpoint: Path, small_dataset: Path) -> None:
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    assert (tiny_checkpoint / "model.safetensors").is_file()
    assert not (tiny_checkpoint / "pytorch_model.bin").exists()
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["id2label"] == {"0": "Fake", "1": "Real"}
    assert config["label2id"] == {"Fake": 0, "Real": 1}
    assert config["image_size"] == 224 and config["patch_size"] == 16

    processor_config = json.loads((tiny_checkpoint / "preprocessor_config.json").read_text())
    assert processor_config["image_processor_type"] == "ViTImageProcessor"
    assert processor_config["size"] == {"height": 224, "width": 224}
    assert processor_config["resample"] == 2  # PIL bilinear
    assert processor_config["rescale_factor"] == pytest.approx(1 / 255)
    assert processor_config["image_mean"] == [0.5] * 3 and processor_config["image_std"] == [0.5] * 3

    model = AutoModelForImageClassification.from_pretrained(tiny_checkpoint).eval()
    processor = AutoImageProcessor.from_pretrained(tiny_checkpoint, use_fast=False)
    image = Image.open(jpeg_files(small_dataset)[0])
    with torch.inference_mode():
        logits = model(**processor(image, return_tensors="pt")).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()

    summary = json.loads((tiny_checkpoint / "training_summary.json").read_text())
    assert summary["base"] == "tiny" and summary["steps"] == 3 and summary["seed"] == 0
    assert summary["data_dir"] == str(small_dataset.resolve())
    assert 0.0 <= summary["validation_accuracy"] <= 1.0 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["hyperparameters"]["batch_size"] == 4
    assert {"torch", "transformers"} <= set(summary["versions"])
    assert summary["images"]["Train"] == {"Fake": 15, "Real": 15}


def test_local_checkpoint_as_base(
    finetune: ModuleType, tiny_checkpoint: Path, small_dataset: Path, tmp_path: Path, restore_torch_state: None
) -> None:
    output = tmp_path / "continued"
    arguments = ["--data", str(small_dataset), "--base", str(tiny_checkpoint), "--output", str(output),
                 "--max-steps", "1", "--batch-size", "4", "--threads", "1"]
    assert finetune.main(arguments) == 0
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "Fake", "1": "Real"}
    assert config["hidden_size"] == 32  # the local model, not a new one
    assert json.loads((output / "training_summary.json").read_text())["base"] == str(tiny_checkpoint)


def test_base_with_reversed_labels_is_realigned(finetune: ModuleType, tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    reversed_checkpoint = tmp_path / "reversed"
    reversed_checkpoint.mkdir()
    for name in ("model.safetensors", "preprocessor_config.json"):
        (reversed_checkpoint / name).write_bytes((tiny_checkpoint / name).read_bytes())
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "Real", "1": "Fake"}, {"Real": 0, "Fake": 1}
    (reversed_checkpoint / "config.json").write_text(json.dumps(config))

    model = finetune.load_pretrained_model(str(reversed_checkpoint))
    source = load_file(reversed_checkpoint / "model.safetensors")
    assert model.config.id2label == {0: "Fake", 1: "Real"}
    assert torch.equal(model.classifier.weight[0], source["classifier.weight"][1])
    assert torch.equal(model.classifier.weight[1], source["classifier.weight"][0])


def test_unloadable_base_is_reported(finetune: ModuleType, small_dataset: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], restore_torch_state: None) -> None:
    arguments = ["--data", str(small_dataset), "--base", str(tmp_path / "missing-model"),
                 "--output", str(tmp_path / "out"), "--max-steps", "1"]
    assert finetune.main(arguments) == 2
    assert "could not load --base" in capsys.readouterr().err


def test_missing_split_is_reported(finetune: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   restore_torch_state: None) -> None:
    (tmp_path / "data" / "Train" / "Real").mkdir(parents=True)
    arguments = ["--data", str(tmp_path / "data"), "--base", "tiny", "--output", str(tmp_path / "out")]
    assert finetune.main(arguments) == 2
    assert "missing directory" in capsys.readouterr().err


def test_training_preprocessing_matches_the_slow_vit_image_processor(finetune: ModuleType,
                                                                     small_dataset: Path) -> None:
    paths = jpeg_files(small_dataset)[:3]
    ours = finetune.to_pixel_values(np.stack([finetune.load_resized(p) for p in paths]))
    processor = finetune.make_image_processor()
    reference = processor([Image.open(p) for p in paths], return_tensors="pt")["pixel_values"]
    assert ours.shape == reference.shape == (3, 3, 224, 224)
    assert (ours - reference).abs().max().item() == 0.0


def test_training_finds_and_reads_images_as_the_runtime_does(finetune: ModuleType, tmp_path: Path) -> None:
    from fastvit_detect import Preprocessor

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 80, 3), dtype=np.uint8))
    for label in ("Real", "Fake"):
        (tmp_path / "Train" / label / "phone").mkdir(parents=True)
        rgb.save(tmp_path / "Train" / label / f"{label}.PNG")  # an upper-case suffix
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated = tmp_path / "Train" / "Real" / "phone" / "rotated.jpg"  # in a sub-folder
    rgb.save(rotated, exif=exif.tobytes(), quality=95)
    split = finetune.find_split(tmp_path, "Train")
    assert sorted(path.name for path in split.paths) == ["Fake.PNG", "Real.PNG", "rotated.jpg"]
    runtime = Preprocessor.from_hf(finetune.make_image_processor().to_dict())
    # EXIF orientation applied, as at serving time: the model trains on the pixels it will be shown.
    np.testing.assert_array_equal(finetune.load_resized(rotated), runtime.to_pixels(rotated))
    upright = Image.open(rotated).resize((224, 224), resample=Image.Resampling.BILINEAR)
    assert np.abs(finetune.load_resized(rotated).astype(int) - np.asarray(upright.convert("RGB"), int)).mean() > 5


def test_augmentation(finetune: ModuleType, small_dataset: Path) -> None:
    import torch

    batch = np.stack([finetune.load_resized(p) for p in jpeg_files(small_dataset)[:4]])
    plain = finetune.to_pixel_values(batch)
    identity = finetune.Augmentation(flip_probability=0.0, brightness=0.0, contrast=0.0, saturation=0.0)
    assert torch.allclose(identity(batch, torch.Generator().manual_seed(0)), plain, atol=1e-6)
    always_flip = finetune.Augmentation(flip_probability=1.0, brightness=0.0, contrast=0.0, saturation=0.0)
    assert torch.allclose(always_flip(batch, torch.Generator().manual_seed(0)), plain.flip(-1), atol=1e-6)
    jittered = finetune.Augmentation(flip_probability=0.0)(batch, torch.Generator().manual_seed(0))
    change = (jittered - plain).abs().mean().item()
    assert 0 < change < 0.2  # a small colour jitter
    assert jittered.min() >= -1 and jittered.max() <= 1


def test_oversampling_balances_the_classes(finetune: ModuleType) -> None:
    labels = np.array([0] * 3 + [1] * 8)
    indices = finetune.oversample_minority(labels, np.random.default_rng(0))
    assert np.bincount(labels[indices]).tolist() == [8, 8]
    assert set(range(len(labels))) <= set(indices.tolist())  # every original image is kept
    balanced = np.array([0, 1, 0, 1])
    assert sorted(finetune.oversample_minority(balanced, np.random.default_rng(0)).tolist()) == [0, 1, 2, 3]


def test_dct_patch_filters_are_orthogonal(finetune: ModuleType) -> None:
    filters = finetune.dct_patch_filters(64, 16, seed=0).reshape(64, -1).double()
    gram = filters @ filters.T
    off_diagonal = gram - gram.diag().diag()
    assert off_diagonal.abs().max().item() < 1e-5
    assert (gram.diag() > 0).all()
