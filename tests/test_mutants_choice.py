"""What the variant choice's survivors of the automatic mutation run showed untested: a choice is a value (shown
by info, /healthz, /api/v1/model and repr, shared by the detector and the server)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

import fastvit_detect.choice as choice_module
from fastvit_detect.choice import VariantChoice


def test_a_variant_choice_cannot_be_changed():
    choice = VariantChoice("int8", "recommended", "the package's default onnxruntime variant")
    with pytest.raises(dataclasses.FrozenInstanceError):
        choice.name = "fp32"  # type: ignore[misc]
    assert choice.describe() == "int8 (recommended: the package's default onnxruntime variant)"
    assert choice.to_dict() == {"variant": "int8", "source": "recommended",
                                "reason": "the package's default onnxruntime variant"}


@pytest.mark.parametrize("flags, problem", [
    ({"avx2", "avx512f"}, "variant 'int8' needs a CPU with avx512_vnni or avx_vnni, and this one has neither"),
    ({"avx2", "avx_vnni"}, None),  # one of the flags is enough
    (set(), None),  # flags that can't be read: trusted
])
def test_a_variant_needing_vnni_is_refused_only_on_a_cpu_with_none_of_its_flags(monkeypatch, flags, problem):
    monkeypatch.setattr(choice_module, "cpu_flags", lambda: frozenset(flags))
    variant = SimpleNamespace(name="int8", entry=SimpleNamespace(required_cpu_flags=("avx512_vnni", "avx_vnni")))
    assert choice_module.unmet_cpu_requirement(variant) == problem
