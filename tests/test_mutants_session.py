"""What session's survivors of the automatic mutation run showed untested: check_compatible's rule for graphs of a
fixed size (an axis of 1 pixel is still fixed), the graph signature's immutability, and cpuinfo where there is no
/proc/cpuinfo (not Linux, or a sandbox hiding it)."""

from __future__ import annotations

import builtins
import dataclasses
from pathlib import Path

import pytest

from fastvit_detect import session
from fastvit_detect.errors import IncompatibleModelError
from fastvit_detect.session import Signature, check_compatible


def signature(height, width) -> Signature:
    return Signature("pixel_values", ("batch", 3, height, width), "tensor(float)", "logits", ("batch", 2),
                     "tensor(float)")


def test_a_graph_of_fixed_size_is_held_to_its_own_size_even_at_one_pixel():
    """config.json's image_size binds only a graph that takes any size: a fixed graph states its own."""
    check_compatible(signature(1, 1), Path("one-pixel.onnx"), (1, 1), 2, model_image_size=(224, 224))
    check_compatible(signature(224, 224), Path("fixed.onnx"), (224, 224), 2, model_image_size=(384, 384))
    with pytest.raises(IncompatibleModelError, match="takes images of any size"):
        check_compatible(signature("height", "width"), Path("dynamic.onnx"), (1, 1), 2, model_image_size=(224, 224))


def shaped(*axes) -> Signature:
    return Signature("x", axes, "tensor(float)", "y", ("batch", 2), "tensor(float)")


def test_an_input_must_take_3_channels_unless_its_channel_axis_is_dynamic():
    for grey in (shaped("batch", 1, 224, 224), shaped("batch", 1, "height", "width")):
        with pytest.raises(IncompatibleModelError, match="expected \\(N, 3, H, W\\)"):
            check_compatible(grey, Path("grey.onnx"), (224, 224), 2)
    check_compatible(shaped("batch", "channels", 224, 224), Path("any-channels.onnx"), (224, 224), 2)


def test_a_graphs_signature_cannot_be_changed():
    with pytest.raises(dataclasses.FrozenInstanceError):
        signature(224, 224).input_name = "other"  # type: ignore[misc]


def test_without_proc_cpuinfo_there_are_no_processors_to_describe(monkeypatch):
    real_open = builtins.open

    def hidden(file, *args, **kwargs):
        if str(file) == "/proc/cpuinfo":
            raise PermissionError(13, "Permission denied", file)
        return real_open(file, *args, **kwargs)

    session.cpuinfo.cache_clear()
    monkeypatch.setattr(builtins, "open", hidden)
    try:
        assert session.cpuinfo() == ()
    finally:
        session.cpuinfo.cache_clear()  # the next caller reads the real file again
