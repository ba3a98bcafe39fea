"""fastvit-detect eval: metrics against hand-computed values, and the command on a labelled folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import sample_photos

from fastvit_detect.cli import main
from fastvit_detect.errors import UnsupportedInputError
from fastvit_detect.evaluate import auroc, confusion_matrix, find_labelled_images, macro_f1


def test_metrics_on_known_values():
    targets = np.array([0, 0, 0, 1, 1])
    predicted = np.array([0, 1, 0, 1, 1])
    matrix = confusion_matrix(targets, predicted, 2)
    assert matrix.tolist() == [[2, 1], [0, 2]]
    # class 0: P=1, R=2/3 -> F1 0.8; class 1: P=2/3, R=1 -> F1 0.8
    assert macro_f1(matrix) == pytest.approx(0.8)
    positive = np.array([False, False, True, True])
    assert auroc(positive, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auroc(positive, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)  # ties count half
    assert auroc(np.array([True, True]), np.array([0.1, 0.2])) is None


@pytest.fixture()
def labelled_dir(tmp_path, bad_inputs):
    photos = sample_photos()
    for index, photo in enumerate(photos):
        folder = tmp_path / ("Fake" if index % 2 else "real")  # folder names match labels case-insensitively
        folder.mkdir(exist_ok=True)
        shutil.copyfile(photo, folder / photo.name)
    shutil.copyfile(bad_inputs["truncated.jpg"], tmp_path / "Fake" / "broken.jpg")
    (tmp_path / "Fake" / "notes.txt").write_text("not an image, not an image suffix: ignored")
    return tmp_path


def test_find_labelled_images(labelled_dir):
    images = find_labelled_images(labelled_dir, ["Fake", "Real"])
    assert len(images.paths) == len(sample_photos()) + 1
    assert all(images.labels[t] .lower() == p.parent.name.lower() for p, t in zip(images.paths, images.targets))
    assert len(find_labelled_images(labelled_dir, ["Fake", "Real"], limit=3).paths) == 3
    with pytest.raises(UnsupportedInputError, match="no images in sub-folders"):
        find_labelled_images(labelled_dir, ["Cat", "Dog"])


def test_eval_command_reports_every_variant_and_skips_bad_images(vit_package, checkpoints, labelled_dir, capsys):
    assert main(["eval", "--model", str(vit_package), "--data", str(labelled_dir), "--json",
                 "--reference", str(checkpoints["vit"])]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["variant"]: row for row in report["variants"]}
    assert set(rows) == {"fp32", "int8", "pytorch-fp32"}
    photos = len(sample_photos())
    for row in rows.values():
        assert row["images"] == photos and row["skipped"] == 1
        assert np.sum(row["confusion_matrix"]) == photos
        assert 0 <= row["accuracy"] <= 1 and row["auroc_positive_label"] == "Fake"
    # fp32 ONNX and PyTorch are the same function: identical metrics and labels.
    assert rows["fp32"]["confusion_matrix"] == rows["pytorch-fp32"]["confusion_matrix"]
    pairs = {tuple(pair["pair"]): pair for pair in report["agreement"]}
    assert pairs[("fp32", "pytorch-fp32")]["label_agreement"] == 1.0
    assert pairs[("fp32", "pytorch-fp32")]["max_abs_probability_diff"] < 1e-4
    assert list(report["skipped"]) == [str(labelled_dir / "Fake" / "broken.jpg")]


def test_eval_table(vit_package, labelled_dir, capsys):
    assert main(["eval", "--model", str(vit_package), "--data", str(labelled_dir), "--variant", "int8"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["variant", "images", "accuracy", "macro-F1", "AUROC", "images/s"]
    assert "confusion matrix, int8" in out and "skipped 1 image(s)" in out and "broken.jpg" in out


def test_eval_json_stays_valid_when_every_image_fails(vit_package, tmp_path, bad_inputs, capsys):
    for label in ("Fake", "Real"):
        (tmp_path / label).mkdir()
        shutil.copyfile(bad_inputs["text.jpg"], tmp_path / label / "bad.jpg")
    assert main(["eval", "--model", str(vit_package), "--data", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # strict JSON: no NaN
    assert all(row["accuracy"] is None and row["images"] == 0 for row in report["variants"])
    assert main(["eval", "--model", str(vit_package), "--data", str(tmp_path)]) == 0
    assert "no image both could read" in capsys.readouterr().out
