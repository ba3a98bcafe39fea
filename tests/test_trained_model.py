"""The accuracy measuring stick end to end: generate -> fine-tune -> export -> eval, on a model that learned.

A short training (about a minute here) on a small synthetic set is enough for the check that matters: int8 must
cost no more than one percentage point of accuracy against fp32 ONNX and against PyTorch on the same held-out
images. Random weights can't show that; a trained model can.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cached_build

from fastvit_detect.cli import main

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(data set, checkpoint, package): 1,900 images, 3 epochs of the tiny ViT, exported with Test as validation.

    Minutes of work: with FASTVIT_TEST_CACHE set it is kept there, keyed by the training, export and runtime code
    and the libraries' versions (conftest.cached_build)."""
    def build(base: Path) -> None:
        data, checkpoint, package = base / "data", base / "checkpoint", base / "package"
        run = [sys.executable, str(ROOT / "train" / "make_dataset.py"), "--output", str(data), "--images", "1900",
               "--seed", "3"]
        subprocess.run(run, check=True, timeout=1800, capture_output=True)
        run = [sys.executable, str(ROOT / "train" / "finetune.py"), "--data", str(data), "--base", "tiny",
               "--output", str(checkpoint), "--epochs", "3", "--seed", "3"]
        subprocess.run(run, check=True, timeout=1800, capture_output=True)
        run = [sys.executable, str(ROOT / "export" / "export.py"), str(checkpoint), "--output", str(package),
               "--validation-images", str(data / "Test"), "--validation-limit", "100"]
        subprocess.run(run, check=True, timeout=1800, capture_output=True)

    base = cached_build("trained", [ROOT / "train", ROOT / "export", ROOT / "src" / "fastvit_detect", Path(__file__)],
                        build,
                        tmp_path_factory.mktemp("trained"))
    return base / "data", base / "checkpoint", base / "package"


def test_int8_accuracy_within_one_point_of_fp32_and_pytorch(trained, capsys):
    data, checkpoint, package = trained
    assert main(["eval", "--model", str(package), "--data", str(data / "Test"), "--reference", str(checkpoint),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    accuracy = {row["variant"]: row["accuracy"] for row in report["variants"]}
    assert set(accuracy) == {"fp32", "int8", "pytorch-fp32"}
    assert accuracy["fp32"] > 0.75, f"training didn't learn enough for the comparison to mean anything: {accuracy}"
    assert abs(accuracy["int8"] - accuracy["fp32"]) <= 0.01
    assert abs(accuracy["int8"] - accuracy["pytorch-fp32"]) <= 0.01
    assert accuracy["fp32"] == accuracy["pytorch-fp32"]
    assert all(row["images"] == 100 and row["skipped"] == 0 for row in report["variants"])


def test_export_validated_on_trained_logits(trained):
    _, checkpoint, package = trained
    manifest = json.loads((package / "fastvit_manifest.json").read_text())
    assert sum(name.startswith(("Real/", "Fake/")) for name in manifest["validation"]["images"]) == 100
    int8 = manifest["variants"]["int8"]["validation"]
    assert int8["top1_agreement"] >= 0.97 and int8["max_abs_probability_diff"] < 0.2
    summary = json.loads((checkpoint / "training_summary.json").read_text())
    assert summary["test_accuracy"] > 0.75


def test_static_int8_calibrated_on_training_images_keeps_accuracy(trained, tmp_path, capsys):
    data, checkpoint, _ = trained
    package = tmp_path / "static"
    run = [sys.executable, str(ROOT / "export" / "export.py"), str(checkpoint), "--output", str(package),
           "--quantize", "static", "--calibration", str(data / "Train"), "--calibration-limit", "64"]
    subprocess.run(run, check=True, timeout=1800, capture_output=True)
    assert main(["eval", "--model", str(package), "--data", str(data / "Test"), "--variant", "int8",
                 "--reference", str(checkpoint), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    accuracy = {row["variant"]: row["accuracy"] for row in report["variants"]}
    assert set(accuracy) == {"int8", "pytorch-fp32"}
    assert abs(accuracy["int8"] - accuracy["pytorch-fp32"]) <= 0.01
    assert json.loads((package / "fastvit_manifest.json").read_text())["variants"]["int8"]["quantization"][
        "calibration_images"] == 64
