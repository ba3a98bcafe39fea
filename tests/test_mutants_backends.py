"""What the backends' and the variant choice's survivors of the automatic mutation run showed untested. Expected
values come from the libraries themselves (onnxruntime's version), the docs (docs/guides/backends.md: the choice
cache's figures; the openvino extra named when it is missing) and the file written, not from backends.py."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import onnxruntime
import pytest

from fastvit_detect.backends import OnnxRuntimeBackend, OnnxRuntimeOptions, OpenVinoBackend
from fastvit_detect.choice import write_choice
from fastvit_detect.errors import MissingExtraError


def test_onnxruntime_options_cannot_be_changed_once_made():
    """Options are shared by every session a detector opens (and by its copies): they are values."""
    options = OnnxRuntimeOptions(providers=["CPUExecutionProvider"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.providers = ["CUDAExecutionProvider"]  # type: ignore[misc]


def test_the_onnxruntime_backend_reports_the_installed_version():
    assert OnnxRuntimeBackend().version() == onnxruntime.__version__


def test_an_openvino_backend_without_openvino_names_the_extra_when_it_is_made(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(MissingExtraError, match=r'pip install "fastvit-detect\[openvino\]"'):
        OpenVinoBackend()


def test_the_choice_cache_keeps_both_figures_to_the_thousandth(tmp_path):
    path = tmp_path / "choice.json"
    assert write_choice(path, {"int8": 12.34567, "openvino-int8": 15.00049}) == "openvino-int8"
    record = json.loads(path.read_text())
    assert record["winner"] == "openvino-int8"
    assert record["images_per_s"] == {"int8": 12.346, "openvino-int8": 15.0}


@pytest.mark.parametrize("winner, fallback", [("openvino-int8", "int8"), ("int8", None)])
def test_a_calibrated_openvino_choice_falls_back_to_onnxruntime_and_an_onnxruntime_one_to_nothing(
        packages, monkeypatch, winner, fallback):
    """VariantChoice.fallback: the variant to run if the chosen one can't be opened. OpenVINO measured faster falls
    back to the onnxruntime variant it was measured against; onnxruntime measured faster needs no fallback."""
    pytest.importorskip("openvino")
    import fastvit_detect.choice as choice_module
    from fastvit_detect.choice import choose_variant
    from fastvit_detect.package import ModelPackage

    monkeypatch.setattr(choice_module, "read_choice", lambda path, names: (winner, {names[0]: 10.0, names[1]: 20.0}))
    chosen = choose_variant(ModelPackage.open(packages["vit-openvino"]), "auto")
    assert (chosen.name, chosen.source, chosen.fallback) == (winner, "calibrated", fallback)


@pytest.mark.parametrize("variant", [np.array("auto"), np.array(["fp32", "int8"]), 8, None])
def test_a_variant_that_is_no_string_is_refused_by_name(packages, variant):
    """A variant is named by a string: anything else (a numpy string, a list, a number) is a VariantNotFoundError,
    never taken for "auto" nor left to fail inside numpy."""
    from fastvit_detect.choice import choose_variant
    from fastvit_detect.errors import VariantNotFoundError
    from fastvit_detect.package import ModelPackage

    with pytest.raises(VariantNotFoundError, match="a variant is named by a string"):
        choose_variant(ModelPackage.open(packages["vit"]), variant)
