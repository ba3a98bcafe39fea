"""Hostile inputs found by the decoder fuzzer (tests/fuzzing.py), kept as regression tests."""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastvit_detect
from fastvit_detect import InputError, Prediction


class NameRaises:
    """A file-like whose ``name`` property raises: naming it in an error message must not escape."""

    @property
    def name(self) -> str:
        raise RuntimeError("name property exploded")

    def read(self, size: int = -1) -> bytes:
        return b"\x89PNG\r\n\x1a\n"


class FspathRaises:
    def __init__(self, exception: Exception):
        self.exception = exception

    def __fspath__(self) -> str:
        raise self.exception


def released_memoryview() -> memoryview:
    view = memoryview(b"\x89PNG\r\n\x1a\n")
    view.release()
    return view


HOSTILE_NAMES = {
    "name property raises": NameRaises,
    "__fspath__ raises RuntimeError": lambda: FspathRaises(RuntimeError("fspath")),
    "__fspath__ raises ValueError": lambda: FspathRaises(ValueError("fspath")),
    "released memoryview": released_memoryview,
}


@pytest.mark.parametrize("make", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_an_input_that_cant_be_named_is_still_a_typed_error(make):
    # These escaped as RuntimeError/ValueError: describe_source() ran outside the decode boundary.
    with pytest.raises(InputError) as raised:
        fastvit_detect.load_image(make())
    assert type(make()).__name__ in str(raised.value)


def test_a_pathlike_of_bytes_is_named_as_a_str():
    class BytesPath:
        def __fspath__(self) -> bytes:
            return b"/nowhere/\xff.png"

    with pytest.raises(fastvit_detect.ImageNotFoundError) as raised:
        fastvit_detect.load_image(BytesPath())
    assert raised.value.source == os.fsdecode(b"/nowhere/\xff.png")


@pytest.mark.parametrize("make", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_an_unnameable_input_fails_alone_in_a_batch(vit_package, make):
    detector = fastvit_detect.Detector.load(vit_package, variant="fp32")
    good = np.full((32, 32, 3), 120, np.uint8)
    results = detector.predict_batch([good, make(), good], errors="return")
    assert isinstance(results[0], Prediction) and isinstance(results[2], Prediction)
    assert isinstance(results[1], InputError)
    streamed = list(detector.predict_iter([good, make(), good], errors="return"))
    assert isinstance(streamed[1], InputError) and isinstance(streamed[2], Prediction)
