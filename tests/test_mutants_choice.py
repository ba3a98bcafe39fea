"""What the variant choice's survivors of the automatic mutation run showed untested: a choice is a value (shown
by info, /healthz, /api/v1/model and repr, shared by the detector and the server)."""

from __future__ import annotations

import dataclasses

import pytest

from fastvit_detect.choice import VariantChoice


def test_a_variant_choice_cannot_be_changed():
    choice = VariantChoice("int8", "recommended", "the package's default onnxruntime variant")
    with pytest.raises(dataclasses.FrozenInstanceError):
        choice.name = "fp32"  # type: ignore[misc]
    assert choice.describe() == "int8 (recommended: the package's default onnxruntime variant)"
    assert choice.to_dict() == {"variant": "int8", "source": "recommended",
                                "reason": "the package's default onnxruntime variant"}
