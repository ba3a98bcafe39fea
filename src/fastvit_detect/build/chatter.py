"""Quiet the libraries the build side drives, and only them.

torch, transformers, optimum, onnx, onnxruntime's quantizer, NNCF and OpenVINO warn while they trace, export,
quantize and load: about their own internals and deprecations a user of this package can't act on, and in
numbers that bury the progress lines the user needs. ``library_warnings_hidden`` hides warnings raised inside
those libraries for the duration of a call; a warning from anywhere else, ours included, still shows, and
nothing is changed for the rest of the process.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Matched from the start of the name of the module that raised the warning: the library or one of its
# sub-modules, never a package that merely starts alike (torchvision, onnxscript).
DRIVEN_LIBRARIES = r"(torch|transformers|optimum|onnx|onnxruntime|nncf|openvino)(\.|\Z)"


@contextmanager
def library_warnings_hidden() -> Iterator[None]:
    """Hide warnings of every category raised inside DRIVEN_LIBRARIES, inside this block only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=DRIVEN_LIBRARIES)
        yield
