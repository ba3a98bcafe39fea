"""Writing the package: its manifest, through the runtime's typed Manifest, and its file modes."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..manifest import DEFAULT_RUNTIME, FORMAT_VERSION, FileEntry, Manifest, Source, VariantEntry
from ..package import CONFIG_FILE, MANIFEST_FILE, PREPROCESSOR_FILE, file_sha256

# fp32 ONNX may differ from PyTorch by float rounding only; more means the graph or the preprocessing is wrong.
FP32_MAX_ABS_LOGIT_DIFF = 1e-4
REFERENCE_DESCRIPTION = "PyTorch fp32 (transformers load_image + slow image processor)"


def apply_umask(directory: Path) -> None:
    """Give the package the modes ``cp`` would: 0777/0666 less the umask.

    tempfile.mkdtemp makes the staging directory 0700, and some writers (onnx's external data) make 0600 files,
    whatever the umask: a server running as another user could then not read the package it was handed.
    """
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def library_versions() -> dict[str, str]:
    versions = {"fastvit_detect": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "optimum", "onnx", "onnxruntime"):
        with contextlib.suppress(ImportError, AttributeError):  # a library not installed isn't recorded
            versions[name] = __import__(name).__version__
    return versions


def file_entry(path: Path) -> FileEntry:
    """What the manifest vouches for about ``path``: its name, sha256 and size."""
    return FileEntry(path.name, file_sha256(path), path.stat().st_size)


def variant_entry(staging: Path, name: str, figures: Mapping[str, Any]) -> VariantEntry:
    """A finished variant's manifest entry. ``figures``: file, data_file, precision, quantization, validation and
    any other figures recorded while building it (kept as they are)."""
    data = figures.get("data_file")
    known = ("file", "data_file", "precision", "quantization", "validation", "runtime")
    return VariantEntry(name=name, graph=file_entry(staging / figures["file"]),
                        data=file_entry(staging / data) if data else None, precision=figures.get("precision"),
                        quantization=figures.get("quantization"), validation=figures.get("validation"),
                        extra={key: value for key, value in figures.items() if key not in known},
                        runtime=figures.get("runtime", DEFAULT_RUNTIME))


def write_manifest(staging: Path, *, source: Source, labels: Sequence[str], image_size: tuple[int, int], opset: int,
                   variants: Mapping[str, Mapping[str, Any]], image_names: Sequence[str],
                   notes: Mapping[str, str], export_seconds: float,
                   sections: Mapping[str, Any] | None = None) -> Manifest:
    """Write ``staging``'s manifest through the runtime's Manifest model, so what the exporter writes is what the
    runtime reads; returns it. The configs must be in ``staging`` already: the manifest vouches for them too.
    ``sections``: more top-level entries (the face detector's ``faces``)."""
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        variants={name: variant_entry(staging, name, figures) for name, figures in variants.items()},
        source=source,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        labels=tuple(labels),
        default_variant="int8" if "int8" in variants else "fp32",
        description=notes.get("description"),
        intended_use=notes.get("intended_use"),
        configs=tuple(file_entry(staging / name) for name in (CONFIG_FILE, PREPROCESSOR_FILE)),
        extra={
            "input": {"name": "pixel_values", "shape": ["batch_size", 3, *image_size], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch_size", len(labels)], "dtype": "float32"},
            "opset": opset,
            "validation": {"reference": REFERENCE_DESCRIPTION,
                           "fp32_max_abs_logit_diff_bound": FP32_MAX_ABS_LOGIT_DIFF,
                           "images": list(image_names)},
            "exporter": library_versions(),
            "export_seconds": round(export_seconds, 1),
            **(sections or {}),
        },
    )
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return manifest
