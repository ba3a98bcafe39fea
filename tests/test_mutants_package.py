"""What package's survivors of the automatic mutation run showed untested: the label count's cap at its edge (the
model-package guide: at most 10,000 labels, each 1 to 200 characters)."""

from __future__ import annotations

import pytest
from hostile import CONFIG, write_package

from fastvit_detect.errors import InvalidPackageError
from fastvit_detect.package import ModelPackage


def labelled(directory, count: int, length: int = 5):
    labels = {str(index): str(index).rjust(length, "x") for index in range(count)}  # distinct, each `length` long
    return write_package(directory, config={**CONFIG, "id2label": labels})


def test_ten_thousand_labels_are_read_and_one_more_is_refused(tmp_path):
    assert len(ModelPackage.open(labelled(tmp_path / "10000", 10_000)).labels) == 10_000
    with pytest.raises(InvalidPackageError, match="10,001 labels \\(at most 10,000\\)"):
        ModelPackage.open(labelled(tmp_path / "10001", 10_001))


def test_a_label_may_be_200_characters_long_and_not_201(tmp_path):
    assert ModelPackage.open(labelled(tmp_path / "200", 2, length=200)).labels == ["x" * 199 + "0", "x" * 199 + "1"]
    with pytest.raises(InvalidPackageError, match="must be a non-empty label name"):
        ModelPackage.open(labelled(tmp_path / "201", 2, length=201))
