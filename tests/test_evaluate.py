"""fastvit-detect eval: metrics against hand-computed values, and the command on a labelled folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_photos

from fastvit_detect.cli import main
from fastvit_detect.errors import InputError, UnsupportedInputError
from fastvit_detect.evaluate import (
    LabelledImages,
    VariantRun,
    auroc,
    confusion_matrix,
    find_labelled_images,
    macro_f1,
    variant_metrics,
)


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


def pairwise_auroc(positive, scores) -> float:
    """AUROC by definition: the share of (positive, negative) pairs the scores order rightly, ties counting half."""
    pairs = [(p, n) for p in scores[positive] for n in scores[~positive]]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def hand_case(labels: list[str], fake_column: int) -> tuple[VariantRun, LabelledImages]:
    """Six images: three real ones with p(fake) 0.2, 0.7, 0.1 and three fake ones with 0.8, 0.3, 0.4."""
    real = labels.index("Real")
    targets = np.array([real, real, real, fake_column, fake_column, fake_column])
    p_fake = np.array([0.2, 0.7, 0.1, 0.8, 0.3, 0.4])
    probabilities = np.zeros((6, len(labels)))
    probabilities[:, fake_column] = p_fake
    probabilities[:, real] = 1 - p_fake
    images = LabelledImages([Path(f"{i}.png") for i in range(6)], targets, labels)
    return VariantRun("hand", probabilities, seconds=2.0), images


@pytest.mark.parametrize("labels", [["Fake", "Real"], ["Real", "Fake"], ["Real", "Unsure", "Fake"]])
def test_variant_metrics_on_a_hand_computed_case(labels):
    run, images = hand_case(labels, labels.index("Fake"))
    metrics = variant_metrics(run, images)
    # Predicted (argmax): real, fake, real | fake, real, real. Rows true, columns predicted, in the labels' order.
    expected = {("Real", "Real"): 2, ("Real", "Fake"): 1, ("Fake", "Fake"): 1, ("Fake", "Real"): 2}
    assert metrics["confusion_matrix"] == [[expected.get((true, predicted), 0) for predicted in labels]
                                           for true in labels]
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    # F1 = 2TP / (2TP + FP + FN). Real: TP 2, FP 2, FN 1 -> 4/7; Fake: TP 1, FP 1, FN 2 -> 2/5. A label with no
    # image (Unsure) doesn't count.
    assert metrics["macro_f1"] == pytest.approx((4 / 7 + 2 / 5) / 2)
    # Fake scores 0.8, 0.3, 0.4 against real 0.2, 0.7, 0.1: 0.8 beats three, 0.3 and 0.4 two each -> 7 of 9 pairs.
    assert metrics["auroc"] == pytest.approx(7 / 9) == pytest.approx(
        pairwise_auroc(images.targets == labels.index("Fake"), run.probabilities[:, labels.index("Fake")]))
    assert metrics["auroc_positive_label"] == "Fake"
    assert (metrics["images"], metrics["skipped"], metrics["images_per_second"]) == (6, 0, 3.0)


def test_variant_metrics_skip_unreadable_images():
    run, images = hand_case(["Fake", "Real"], 0)
    run.probabilities[1] = np.nan  # the real image scored 0.7 couldn't be read
    run.errors[1] = InputError("1.png: unreadable", "1.png")
    metrics = variant_metrics(run, images)
    assert metrics["confusion_matrix"] == [[1, 2], [0, 2]]  # rows Fake, Real
    assert (metrics["images"], metrics["skipped"]) == (5, 1)
    assert metrics["auroc"] == 1.0  # without 0.7, every fake score beats every real one


@pytest.fixture
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


def test_eval_command_reports_every_variant_and_skips_bad_images(vit_package, checkpoints, labelled_dir, reference,
                                                                 capsys):
    assert main(["eval", "--model", str(vit_package), "--data", str(labelled_dir), "--json",
                 "--reference", str(checkpoints["vit"])]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["variant"]: row for row in report["variants"]}
    assert set(rows) == {"fp32", "int8", "pytorch-fp32"}
    # What every row must say, counted from the folders (the truth) and PyTorch's answers (the predictions).
    photos = sample_photos()
    truth = ["Fake" if index % 2 else "Real" for index in range(len(photos))]
    predicted = reference.labels("vit", photos)
    matrix = [[sum(t == true and p == guess for t, p in zip(truth, predicted)) for guess in ("Fake", "Real")]
              for true in ("Fake", "Real")]
    assert 0 < matrix[0][0] + matrix[1][1] < len(photos)  # some right, some wrong: a real test of the counting
    p_fake = reference.probabilities("vit", photos)[:, 0]
    area = pairwise_auroc(np.array(truth) == "Fake", p_fake)
    for row in rows.values():
        assert (row["images"], row["skipped"]) == (len(photos), 1)
        assert row["confusion_matrix"] == matrix
        assert row["accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / len(photos))
        assert row["auroc"] == pytest.approx(area, abs=1e-9) and row["auroc_positive_label"] == "Fake"
    pairs = {tuple(pair["pair"]): pair for pair in report["agreement"]}
    assert pairs[("fp32", "pytorch-fp32")]["label_agreement"] == 1.0
    assert pairs[("fp32", "pytorch-fp32")]["max_abs_probability_diff"] < 1e-4
    assert pairs[("fp32", "int8")]["label_agreement"] == 1.0
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
