"""The model package on disk: the contract between ``export/`` and the runtime.

A package is a directory in Hugging Face Optimum's layout, so Optimum's ``ORTModelForImageClassification`` opens
it too::

    config.json               HF model config (id2label), copied unchanged from the checkpoint
    preprocessor_config.json  HF image-processor config, copied unchanged
    model.onnx                fp32 graph, dynamic batch axis
    model_quantized.onnx      dynamic int8 graph (Optimum's name for it)
    fastvit_manifest.json     ours: format version, source, variants with sizes and sha256, validation figures

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
FORMAT_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")

# Variants a manifest-less Optimum export may hold, by the file names Optimum gives them.
OPTIMUM_FILES = {"fp32": "model.onnx", "int8": "model_quantized.onnx"}

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
        if not variant.path.is_file():
            raise MissingFileError(f"model package {self.root}: variant {resolved!r} file {variant.path.name} is missing")
        return variant

    def verify(self, variant: Variant) -> None:
        """Check the variant's file against the manifest's size and sha256; no-op without a manifest."""
        if variant.sha256 is None:
            return
        actual_size = variant.path.stat().st_size
        if variant.size_bytes is not None and actual_size != variant.size_bytes:
            raise ChecksumMismatchError(
                f"model package {self.root}: {variant.path.name} is {actual_size:,} bytes, the manifest says "
                f"{variant.size_bytes:,}; the file is truncated or was replaced"
            )
        digest = file_sha256(variant.path)
        if digest != variant.sha256:
            raise ChecksumMismatchError(
                f"model package {self.root}: {variant.path.name} has sha256 {digest}, the manifest says "
                f"{variant.sha256}; the file is corrupt or was replaced"
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
    if version != FORMAT_VERSION:
        raise InvalidPackageError(
            f"model package {root}: manifest format_version {version!r} isn't supported by this runtime "
            f"(it reads version {FORMAT_VERSION}); upgrade fastvit-detect or re-export the model"
        )
    entries = manifest.get("variants")
    if not isinstance(entries, Mapping) or not entries:
        raise InvalidPackageError(f"model package {root}: manifest lists no variants")
    variants = {}
    for name, entry in entries.items():
        # A manifest vouches for its files: every field that verification relies on must be there and sane,
        # or a hand-edited manifest could switch verification off or point outside the package.
        problem = None
        if not isinstance(entry, Mapping):
            problem = "not an object"
        elif not isinstance(entry.get("file"), str) or Path(entry["file"]).name != entry["file"]:
            problem = f"file {entry.get('file')!r} must be a plain file name inside the package"
        elif not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
            problem = f"sha256 {entry.get('sha256')!r} must be 64 hex digits"
        elif not isinstance(entry.get("size_bytes"), int) or entry["size_bytes"] < 0:
            problem = f"size_bytes {entry.get('size_bytes')!r} must be a whole number"
        if problem:
            raise InvalidPackageError(f"model package {root}: manifest variant {name!r}: {problem}")
        variants[name] = Variant(name=name, path=root / entry["file"], sha256=entry["sha256"],
                                 size_bytes=entry["size_bytes"], details=entry)
    return variants


def _variants_from_optimum_layout(root: Path) -> dict[str, Variant]:
    variants = {name: Variant(name=name, path=root / file) for name, file in OPTIMUM_FILES.items()
                if (root / file).is_file()}
    if not variants:
        raise MissingFileError(
            f"model package {root}: no ONNX model found (looked for {', '.join(OPTIMUM_FILES.values())})"
        )
    return variants
