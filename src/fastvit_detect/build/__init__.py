"""Build time: turning a Hugging Face checkpoint into a model package, and what the exporter, the benchmarks, the
training scripts and the tests share to do it. Needs the ``export`` extra (torch, transformers, optimum-onnx, onnx);
the runtime never imports this package (tests/test_torch_free.py guards that), it only imports the runtime.

    checkpoint — a Hub id or local folder resolved, its weights vetted, the PyTorch model loaded
    seeded     — seeded random-weight ViT/DeiT checkpoints, offline (benchmarks, tests, demo)
    reference  — the one PyTorch reference: load_image + slow image processor + model
    samples    — real sample photos shipped in PyPI packages, synthetic images, the validation set
    graphs     — fp32 ONNX export with Optimum, weights moved to an external-data file
    quantize   — the int8 recipes, and --optimize auto's choice among them
    timing     — interleaved measurement in settled blocks (candidates here, systems in the benchmark)
    writer     — the manifest written through the runtime's typed Manifest, file modes, library versions
    export     — the pipeline (ExportSettings -> package) and ``fastvit-detect export``'s command line
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from ..errors import MissingExtraError

EXPORT_MODULES = ("torch", "transformers", "optimum", "onnx")


def missing_export_modules() -> list[str]:
    """The export extra's top-level modules that aren't installed, found without importing them."""
    missing = []
    for name in EXPORT_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a blocked or half-installed module counts as missing
            found = False
        if not found:
            missing.append(name)
    return missing


_missing = missing_export_modules()
if _missing:  # fail at import, naming the extra, rather than minutes into an export
    raise MissingExtraError(f"fastvit_detect.build needs the export extra ({', '.join(_missing)} missing); install it "
                            "with: pip install 'fastvit-detect[export]'")

Log = Callable[[str], None]


class ExportError(Exception):
    """A problem with the export's input or outcome, reported to the user without a traceback."""
