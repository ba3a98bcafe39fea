"""What the Hub module's survivors of the automatic mutation run showed untested. The expected behaviour is the
documented contract (a Hub reference is a value: hashable, equal by id and revision; a fetch's result can't be
changed under the package it opened), not read from hub.py."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("huggingface_hub.constants")  # the hub extra

from fastvit_detect.hub import Fetched, HubReference, Pushed, parse_model_reference
from fastvit_detect.package import ModelPackage


def test_a_hub_reference_is_an_immutable_hashable_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder named like the id
    typed = parse_model_reference("deepfakes/vit-onnx@main")
    plain = parse_model_reference("hf://deepfakes/vit-onnx@main")
    assert typed == plain == HubReference("deepfakes/vit-onnx", "main")  # how it was typed doesn't count
    assert len({typed, plain, HubReference("deepfakes/vit-onnx")}) == 2  # usable as a key: one per revision
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.revision = "other"  # type: ignore[misc]


def test_a_fetch_result_cannot_be_changed_under_its_package(vit_package):
    fetched = Fetched("deepfakes/vit-onnx", "0" * 40, ModelPackage.open(vit_package))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fetched.commit = "1" * 40  # type: ignore[misc]


def test_a_push_result_cannot_be_changed():
    pushed = Pushed("deepfakes/vit-onnx", "http://127.0.0.1/deepfakes/vit-onnx", "0" * 40, ["README.md"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        pushed.commit = "1" * 40  # type: ignore[misc]
