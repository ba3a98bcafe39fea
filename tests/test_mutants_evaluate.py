"""What evaluate's, errors' and the detector's result classes' survivors of the automatic mutation run showed
untested. Expected values come from the docs (python-api.md: eval's --limit spreads N images over the sorted set,
first and last included), the error classes' documented attributes and counting stand-ins."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fastvit_detect import errors
from fastvit_detect.detector import FacesResult, Prediction
from fastvit_detect.evaluate import LabelledImages, find_labelled_images, run_detector


def test_a_limit_spreads_its_images_over_the_set_first_and_last_included(tmp_path):
    for label in ("Fake", "Real"):
        (tmp_path / label).mkdir()
        for index in range(5):
            (tmp_path / label / f"{index}.png").write_bytes(b"not decoded here")
    every = find_labelled_images(tmp_path, ["Fake", "Real"]).paths
    picked = find_labelled_images(tmp_path, ["Fake", "Real"], limit=4).paths
    assert len(every) == 10 and picked == [every[0], every[3], every[6], every[9]]


class Answering:
    """Stands in for a Detector: every image Real."""

    labels = ("Fake", "Real")
    variant = type("Variant", (), {"name": "fp32"})()

    def predict_iter(self, images, **options):
        for _ in images:
            yield Prediction("Real", 0.75, {"Fake": 0.25, "Real": 0.75}, np.zeros(2, np.float32), 0.25)


def test_a_run_without_progress_reporting_runs(tmp_path):
    images = LabelledImages([tmp_path / f"{index}.png" for index in range(3)], np.array([0, 1, 1]), ["Fake", "Real"])
    run = run_detector(Answering(), images, batch_size=1, progress=None)  # type: ignore[arg-type]
    assert run.probabilities.tolist() == [[0.25, 0.75]] * 3 and run.errors == {}


@pytest.mark.parametrize("kind", [errors.InputError, errors.ModelOutputError, errors.ImageDecodeError])
def test_an_error_keeps_its_message_and_names_its_source(kind):
    error = kind("photo.jpg: the cause", "photo.jpg")
    assert str(error) == "photo.jpg: the cause" and error.args == ("photo.jpg: the cause",)
    assert error.source == "photo.jpg"


def test_a_faces_result_cannot_be_changed_and_is_an_object_of_its_own():
    """Frozen; compared and hashed as itself (its predictions hold numpy logits, which have no one truth value):
    results can key a dict or sit in a set, and two equal-looking results stay two."""
    result = FacesResult.decide([], "whole-image")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.decisive = 0  # type: ignore[misc]
    other = FacesResult.decide([], "whole-image")
    assert result != other and len({result, other}) == 2


def _run(probabilities, seconds: float = 1.0):
    from fastvit_detect.evaluate import VariantRun

    return VariantRun("fp32", np.asarray(probabilities, dtype=float), seconds, {})


def test_auroc_takes_the_other_label_as_positive_when_two_labels_name_real_but_not_fake(tmp_path):
    """The docs: AUROC with the fake label as positive; for two labels where only "real" is named, the other one."""
    from fastvit_detect.evaluate import variant_metrics

    images = LabelledImages([tmp_path / "a.png", tmp_path / "b.png"], np.array([0, 1]), ["Real", "Generated"])
    metrics = variant_metrics(_run([[0.9, 0.1], [0.2, 0.8]]), images)
    assert metrics["auroc_positive_label"] == "Generated" and metrics["auroc"] == 1.0
    three = LabelledImages([tmp_path / "a.png"] * 3, np.array([0, 1, 2]), ["Real", "Cartoon", "Render"])
    assert variant_metrics(_run([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), three)["auroc_positive_label"] is None


def test_a_run_timed_at_zero_seconds_has_no_rate_rather_than_a_division_by_zero(tmp_path):
    from fastvit_detect.evaluate import variant_metrics

    images = LabelledImages([tmp_path / "a.png"], np.array([1]), ["Fake", "Real"])
    assert variant_metrics(_run([[0.2, 0.8]], seconds=0.0), images)["images_per_second"] is None
    assert variant_metrics(_run([[0.2, 0.8]], seconds=0.5), images)["images_per_second"] == 2.0
