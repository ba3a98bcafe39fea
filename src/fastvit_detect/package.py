"""The model package on disk: the contract between ``export/`` and the runtime.

A package is a directory in Hugging Face Optimum's layout, so Optimum's ``ORTModelForImageClassification`` opens
it too::

    config.json               HF model config (id2label), copied unchanged from the checkpoint
    preprocessor_config.json  HF image-processor config, copied unchanged
    model.onnx                fp32 graph, dynamic batch axis
    model.onnx_data           its weights (ONNX external data, Optimum's name for the file)
    model_quantized.onnx      dynamic int8 graph (Optimum's name for it)
    model_quantized.onnx_data its weights
    fastvit_manifest.json     ours: format version, source, variants with sizes and sha256, validation figures

Weights live beside the graph rather than inside it because onnxruntime then maps them instead of copying them
out of a parsed protobuf: on ViT-B/16 int8 that lowered a process's peak memory from 193-235 MB to 160 MB and
the time to the first result from 0.42 s to 0.33 s (fp32: 471 -> 409 MB, 0.89 -> 0.56 s).

A directory exported by Optimum alone (no manifest) loads too; its files simply can't be verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    ChecksumMismatchError,
    InvalidPackageError,
    MissingFileError,
    PackageNotFoundError,
    VariantNotFoundError,
)

MANIFEST_FILE = "fastvit_manifest.json"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
FORMAT_NAME = "fastvit-detect-model-package"
FORMAT_VERSION = 2  # 2: a variant may keep its weights in a data file (data_file, data_sha256, data_size_bytes)
READABLE_FORMAT_VERSIONS = (1, 2)
_SHA256 = re.compile(r"[0-9a-f]{64}")

# Variants a manifest-less Optimum export may hold, by the file names Optimum gives them.
OPTIMUM_FILES = {"fp32": "model.onnx", "int8": "model_quantized.onnx"}
DATA_SUFFIX = "_data"  # Optimum's (and onnx's convention for) a graph's external-data file: model.onnx_data

# "auto" takes the manifest's recommendation, else the first of these present: int8 is ~2-3x faster on CPU.
AUTO_PREFERENCE = ("int8", "fp32")


@dataclass(frozen=True)
class Variant:
    """One ONNX graph of the package."""

    name: str
    path: Path
    sha256: str | None = None  # None: no manifest to verify against
    size_bytes: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # precision, quantization, validation figures
    data_path: Path | None = None  # the graph's external weights, when it has them
    data_sha256: str | None = None
    data_size_bytes: int | None = None

    @property
    def files(self) -> list[tuple[Path, str | None, int | None]]:
        """(path, sha256, size) of every file the variant loads: its graph, then its weights if separate."""
        files = [(self.path, self.sha256, self.size_bytes)]
        if self.data_path is not None:
            files.append((self.data_path, self.data_sha256, self.data_size_bytes))
        return files

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path, _, _ in self.files if path.is_file())


@dataclass(frozen=True)
class ModelPackage:
    """An opened model package: its configs, manifest and variants. Cheap to open; loads no model."""

    root: Path
    config: Mapping[str, Any]
    preprocessor_config: Mapping[str, Any]
    manifest: Mapping[str, Any] | None
    variants: Mapping[str, Variant]
    labels: list[str]  # class names by output index, from config.json's id2label

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ModelPackage:
        root = Path(path)
        if not root.exists():
            raise PackageNotFoundError(f"model package {root}: no such directory")
        if not root.is_dir():
            raise PackageNotFoundError(f"model package {root}: not a directory")
        config = _read_json(root / CONFIG_FILE, root)
        preprocessor_config = _read_json(root / PREPROCESSOR_FILE, root)
        manifest = _read_json(root / MANIFEST_FILE, root) if (root / MANIFEST_FILE).exists() else None
        variants = (_variants_from_manifest(root, manifest) if manifest is not None
                    else _variants_from_optimum_layout(root))
        return cls(root, config, preprocessor_config, manifest, variants, _labels(config, root))

    @property
    def default_variant(self) -> str:
        recommended = (self.manifest or {}).get("default_variant")
        if isinstance(recommended, str) and recommended in self.variants:
            return str(recommended)
        for name in AUTO_PREFERENCE:
            if name in self.variants:
                return name
        return next(iter(self.variants))

    def variant(self, name: str = "auto") -> Variant:
        """The variant called ``name``; ``"auto"`` picks the recommended one."""
        resolved = self.default_variant if name == "auto" else name
        if resolved not in self.variants:
            available = ", ".join(sorted(self.variants)) or "none"
            raise VariantNotFoundError(f"model package {self.root}: no variant {name!r} (available: {available})")
        variant = self.variants[resolved]
        for path, _, _ in variant.files:
            if not path.is_file():
                raise MissingFileError(f"model package {self.root}: variant {resolved!r} file {path.name} is missing")
        return variant

    def verify(self, variant: Variant) -> None:
        """Check the variant's files against the manifest's sizes and sha256; no-op without a manifest."""
        for path, sha256, size_bytes in variant.files:
            if sha256 is None:
                continue
            actual_size = path.stat().st_size
            if size_bytes is not None and actual_size != size_bytes:
                raise ChecksumMismatchError(
                    f"model package {self.root}: {path.name} is {actual_size:,} bytes, the manifest says "
                    f"{size_bytes:,}; the file is truncated or was replaced"
                )
            digest = file_sha256(path)
            if digest != sha256:
                raise ChecksumMismatchError(
                    f"model package {self.root}: {path.name} has sha256 {digest}, the manifest says "
                    f"{sha256}; the file is corrupt or was replaced"
                )


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _labels(config: Mapping[str, Any], root: Path) -> list[str]:
    id2label = config.get("id2label")
    if not isinstance(id2label, Mapping) or not id2label:
        raise InvalidPackageError(f"model package {root}: {CONFIG_FILE} has no id2label mapping")
    try:
        by_index = {int(index): str(label) for index, label in id2label.items()}
    except (TypeError, ValueError) as exc:
        raise InvalidPackageError(f"model package {root}: id2label keys must be integers: {exc}") from exc
    if sorted(by_index) != list(range(len(by_index))):
        raise InvalidPackageError(
            f"model package {root}: id2label indices must be 0..{len(by_index) - 1}, got {sorted(by_index)}"
        )
    return [by_index[index] for index in range(len(by_index))]


def _read_json(path: Path, root: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"model package {root}: {path.name} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidPackageError(f"model package {root}: {path.name} isn't valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidPackageError(f"model package {root}: {path.name} must hold a JSON object")
    return data


def _variants_from_manifest(root: Path, manifest: Mapping[str, Any]) -> dict[str, Variant]:
    if manifest.get("format") != FORMAT_NAME:
        raise InvalidPackageError(f"model package {root}: {MANIFEST_FILE} isn't a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise InvalidPackageError(
            f"model package {root}: manifest format_version {version!r} isn't supported by this runtime "
            f"(it reads versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))}); upgrade fastvit-detect or "
            "re-export the model"
        )
    entries = manifest.get("variants")
    if not isinstance(entries, Mapping) or not entries:
        raise InvalidPackageError(f"model package {root}: manifest lists no variants")
    variants = {}
    for name, entry in entries.items():
        # A manifest vouches for its files: every field that verification relies on must be there and sane,
        # or a hand-edited manifest could switch verification off or point outside the package.
        # The weights file is the one the graph names, which the exporter always calls <file>_data: any other
        # name would verify one file while onnxruntime loads another.
        problem = "not an object" if not isinstance(entry, Mapping) else _file_fields_problem(entry, "")
        data_name = f"{entry['file']}{DATA_SUFFIX}" if problem is None else ""
        if problem is None and "data_file" in entry:
            problem = _file_fields_problem(entry, "data_")
            if problem is None and entry["data_file"] != data_name:
                problem = f"data_file {entry['data_file']!r} must be {data_name!r}, the file its graph loads"
        elif problem is None and (root / data_name).exists():
            problem = f"{data_name} is in the package but the manifest doesn't vouch for it"
        if problem is None:
            problem = _cpu_requirement_problem(entry)
        if problem:
            raise InvalidPackageError(f"model package {root}: manifest variant {name!r}: {problem}")
        has_data = "data_file" in entry
        variants[name] = Variant(name=name, path=root / entry["file"], sha256=entry["sha256"],
                                 size_bytes=entry["size_bytes"], details=entry,
                                 data_path=root / entry["data_file"] if has_data else None,
                                 data_sha256=entry["data_sha256"] if has_data else None,
                                 data_size_bytes=entry["data_size_bytes"] if has_data else None)
    return variants


def _cpu_requirement_problem(entry: Mapping[str, Any]) -> str | None:
    """A malformed CPU requirement must not read as "none": a variant that needs VNNI would then run anywhere."""
    quantization = entry.get("quantization")
    if not isinstance(quantization, Mapping) or "requires_cpu_flags_any" not in quantization:
        return None
    required = quantization["requires_cpu_flags_any"]
    if not isinstance(required, list) or not required or not all(isinstance(flag, str) for flag in required):
        return f"quantization.requires_cpu_flags_any {required!r} must be a non-empty list of CPU flag names"
    return None


def _file_fields_problem(entry: Mapping[str, Any], prefix: str) -> str | None:
    """What is wrong with an entry's ``{prefix}file``, ``{prefix}sha256`` and ``{prefix}size_bytes``, if anything."""
    file, sha256, size = entry.get(f"{prefix}file"), entry.get(f"{prefix}sha256"), entry.get(f"{prefix}size_bytes")
    if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
        return f"{prefix}file {file!r} must be a plain file name inside the package"
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        return f"{prefix}sha256 {sha256!r} must be 64 hex digits"
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"{prefix}size_bytes {size!r} must be a whole number"
    return None


def _variants_from_optimum_layout(root: Path) -> dict[str, Variant]:
    variants = {}
    for name, file in OPTIMUM_FILES.items():
        if (root / file).is_file():
            data = root / f"{file}{DATA_SUFFIX}"
            variants[name] = Variant(name=name, path=root / file, data_path=data if data.is_file() else None)
    if not variants:
        raise MissingFileError(
            f"model package {root}: no ONNX model found (looked for {', '.join(OPTIMUM_FILES.values())})"
        )
    return variants
