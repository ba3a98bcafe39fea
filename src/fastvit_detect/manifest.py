"""The manifest of a model package (``fastvit_manifest.json``), as a typed model: parsed, validated, serialised.

The manifest says what the HF configs don't: the format version, where the model came from, the sizes and sha256
of every file the runtime reads (the HF configs, each variant's graph and weights), how each variant was quantized
and how far it agrees with PyTorch. A package is data from wherever it came from, so parsing checks every field's
type and range: a hand-edited or hostile manifest gives
:class:`~fastvit_detect.errors.InvalidPackageError` naming the field, never an ``AttributeError`` further on, and
can't switch verification off or point outside the package.

The exporter writes through :meth:`Manifest.to_dict`; the runtime reads only through :meth:`Manifest.parse`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, NoReturn

from .errors import InvalidPackageError

FORMAT_NAME = "fastvit-detect-model-package"
# 2: a variant may keep its weights in a data file (data_file, data_sha256, data_size_bytes).
# 3: "configs" vouches for the HF configs too; older manifests load with their configs unverified.
FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
CONFIGS_VOUCHED_SINCE = 3
MAX_CONFIGS = 16
DATA_SUFFIX = "_data"  # Optimum's (and onnx's convention for) a graph's external-data file: model.onnx_data
# The runtime of a variant whose manifest entry names none. Another name is kept as written: a runtime this version
# doesn't know makes only that variant unloadable (BackendError), not the package unreadable.
DEFAULT_RUNTIME = "onnxruntime"

_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_TEXT = 10_000  # characters in any free-text field (description, labels, names)
MAX_DEPTH = 12  # nesting of the free-form parts (quantization settings, validation figures)


@dataclass(frozen=True)
class FileEntry:
    """A file the manifest vouches for: a plain name inside the package, its size and sha256."""

    name: str
    sha256: str
    size_bytes: int

    def to_dict(self, prefix: str = "") -> dict[str, Any]:
        return {f"{prefix}file": self.name, f"{prefix}sha256": self.sha256, f"{prefix}size_bytes": self.size_bytes}


@dataclass(frozen=True)
class VariantEntry:
    """One ONNX graph of the package, as the manifest describes it."""

    name: str
    graph: FileEntry
    data: FileEntry | None = None  # its weights, when they live beside the graph (format 2)
    precision: str | None = None
    quantization: Mapping[str, Any] | None = None
    validation: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # other figures the exporter recorded, kept as they are
    runtime: str = DEFAULT_RUNTIME  # what runs the graph: onnxruntime, or openvino for an NNCF int8 graph

    @property
    def required_cpu_flags(self) -> tuple[str, ...]:
        """CPU flags of which the variant needs at least one (full 8-bit weights need VNNI); empty: none."""
        required = (self.quantization or {}).get("requires_cpu_flags_any")
        return tuple(required) if isinstance(required, list) else ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.extra, **self.graph.to_dict()}
        if self.data is not None:
            out.update(self.data.to_dict("data_"))
        for key in ("precision", "quantization", "validation"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.runtime != DEFAULT_RUNTIME:  # absent means onnxruntime: packages without other runtimes are unchanged
            out["runtime"] = self.runtime
        return out


@dataclass(frozen=True)
class Source:
    """What the package was exported from: a Hub id and revision, or a local checkpoint's folder name."""

    model: str | None = None
    revision: str | None = None
    architecture: str | None = None
    model_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "revision": self.revision, "architecture": self.architecture,
                "model_type": self.model_type}


@dataclass(frozen=True)
class Manifest:
    format_version: int
    variants: Mapping[str, VariantEntry]
    source: Source = field(default_factory=Source)
    created: str | None = None
    labels: tuple[str, ...] | None = None
    default_variant: str | None = None
    description: str | None = None  # what the model is, in the exporter's words
    intended_use: str | None = None  # e.g. "demo only: trained on synthetic images"
    extra: Mapping[str, Any] = field(default_factory=dict)  # input/output/opset/validation/exporter figures
    configs: tuple[FileEntry, ...] = ()  # the HF configs the manifest vouches for (format 3 on)

    @classmethod
    def parse(cls, data: Any, where: str = "manifest") -> Manifest:
        """Validate a manifest read from JSON; ``where`` names it in errors."""
        reader = _Reader(where)
        if not isinstance(data, Mapping):
            reader.fail("", "must be a JSON object")
        if data.get("format") != FORMAT_NAME:
            reader.fail("", f"isn't a {FORMAT_NAME} manifest (its format is {_short(data.get('format'))})")
        version = data.get("format_version")
        if isinstance(version, bool) or version not in READABLE_FORMAT_VERSIONS:
            raise InvalidPackageError(
                f"{where}: format_version {version!r} isn't supported by this runtime (it reads versions "
                f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}); upgrade fastvit-detect or re-export the model")
        entries = data.get("variants")
        if not isinstance(entries, Mapping) or not entries:
            reader.fail("variants", "must list at least one variant")
        variants = {reader.text(name, "variants", limit=100): reader.variant(name, entry)
                    for name, entry in entries.items()}
        labels = data.get("labels")
        if labels is not None:
            if not isinstance(labels, list) or not labels:
                reader.fail("labels", f"{_short(labels)} must be a non-empty list of label names")
            labels = tuple(reader.text(label, "labels") for label in labels)
        default = reader.optional_text(data, "default_variant")
        configs = reader.configs(data.get("configs"), required=version >= CONFIGS_VOUCHED_SINCE)
        known = {"format", "format_version", "variants", "source", "created", "labels", "default_variant",
                 "description", "intended_use", "configs"}
        extra = {key: reader.free_form(value, key) for key, value in data.items() if key not in known}
        return cls(format_version=version, variants=variants, source=reader.source(data.get("source")),
                   created=reader.optional_text(data, "created"), labels=labels, default_variant=default,
                   description=reader.optional_text(data, "description"),
                   intended_use=reader.optional_text(data, "intended_use"), extra=extra, configs=configs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT_NAME, "format_version": self.format_version, "created": self.created,
                               "source": self.source.to_dict()}
        for key in ("description", "intended_use"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.labels is not None:
            out["labels"] = list(self.labels)
        out.update(self.extra)
        if self.default_variant is not None:
            out["default_variant"] = self.default_variant
        if self.configs:
            out["configs"] = [entry.to_dict() for entry in self.configs]
        out["variants"] = {name: entry.to_dict() for name, entry in self.variants.items()}
        return out


class _Reader:
    """Field checks that name the manifest and the field in every error."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, problem: str) -> NoReturn:
        raise InvalidPackageError(f"{self.where}: {key + ' ' if key else ''}{problem}")

    def text(self, value: Any, key: str, limit: int = MAX_TEXT) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > limit:
            self.fail(key, f"{_short(value)} must be a non-empty string of at most {limit:,} characters")
        return value

    def optional_text(self, data: Mapping[str, Any], key: str) -> str | None:
        value = data.get(key)
        return None if value is None else self.text(value, key)

    def source(self, value: Any) -> Source:
        if value is None:
            return Source()
        if not isinstance(value, Mapping):
            self.fail("source", f"{_short(value)} must be an object")
        fields = {key: None if value.get(key) is None else self.text(value[key], f"source.{key}")
                  for key in ("model", "revision", "architecture", "model_type")}
        return Source(**fields)

    def file(self, entry: Mapping[str, Any], prefix: str, key: str) -> FileEntry:
        name, sha256, size = entry.get(f"{prefix}file"), entry.get(f"{prefix}sha256"), entry.get(f"{prefix}size_bytes")
        # A manifest vouches for its files: every field that verification relies on must be there and sane, or a
        # hand-edited manifest could switch verification off or point outside the package.
        if not isinstance(name, str) or name in ("", ".", "..") or PurePath(name).name != name or "\\" in name:
            self.fail(f"{key}.{prefix}file", f"{_short(name)} must be a plain file name inside the package")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            self.fail(f"{key}.{prefix}sha256", f"{_short(sha256)} must be 64 hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 1 << 50:
            self.fail(f"{key}.{prefix}size_bytes", f"{_short(size)} must be a whole number of bytes")
        return FileEntry(name, sha256, size)

    def configs(self, value: Any, required: bool) -> tuple[FileEntry, ...]:
        if value is None and not required:
            return ()
        # A version-3 manifest without the list would load its configs unverified: refused, not read as "none".
        if not isinstance(value, list) or not value or len(value) > MAX_CONFIGS:
            self.fail("configs", f"{_short(value)} must list the config files it vouches for (1 to {MAX_CONFIGS})")
        entries = []
        for index, entry in enumerate(value):
            if not isinstance(entry, Mapping):
                self.fail(f"configs[{index}]", "must be an object")
            entries.append(self.file(entry, "", f"configs[{index}]"))
        names = [entry.name for entry in entries]
        if len(set(names)) != len(names):
            self.fail("configs", f"names a file twice: {names}")
        return tuple(entries)

    def variant(self, name: str, entry: Any) -> VariantEntry:
        key = f"variant {name!r}"
        if not isinstance(entry, Mapping):
            self.fail(key, "must be an object")
        graph = self.file(entry, "", key)
        data = None
        if "data_file" in entry:
            data = self.file(entry, "data_", key)
            # The weights file is the one the graph names, which the exporter always calls <file>_data: any
            # other name would verify one file while onnxruntime loads another.
            if data.name != graph.name + DATA_SUFFIX:
                self.fail(f"{key}.data_file", f"{data.name!r} must be {graph.name + DATA_SUFFIX!r}, the file its "
                          "graph loads")
        quantization = entry.get("quantization")
        if quantization is not None:
            if not isinstance(quantization, Mapping):
                self.fail(f"{key}.quantization", "must be an object")
            self.cpu_flags(quantization, key)
        validation = entry.get("validation")
        if validation is not None and not isinstance(validation, Mapping):
            self.fail(f"{key}.validation", "must be an object")
        precision = entry.get("precision")
        if precision is not None:
            self.text(precision, f"{key}.precision", limit=100)
        runtime = self.text(entry.get("runtime", DEFAULT_RUNTIME), f"{key}.runtime", limit=100)
        known = {"file", "sha256", "size_bytes", "data_file", "data_sha256", "data_size_bytes", "precision",
                 "quantization", "validation", "runtime"}
        extra = {field_: self.free_form(value, f"{key}.{field_}") for field_, value in entry.items()
                 if field_ not in known}
        return VariantEntry(name=name, graph=graph, data=data, precision=precision,
                            quantization=self.free_form(quantization, f"{key}.quantization"),
                            validation=self.free_form(validation, f"{key}.validation"), extra=extra, runtime=runtime)

    def cpu_flags(self, quantization: Mapping[str, Any], key: str) -> None:
        # A malformed CPU requirement must not read as "none": a variant that needs VNNI would then run anywhere.
        if "requires_cpu_flags_any" not in quantization:
            return
        required = quantization["requires_cpu_flags_any"]
        if (not isinstance(required, list) or not required
                or not all(isinstance(flag, str) and flag for flag in required)):
            self.fail(f"{key}.quantization.requires_cpu_flags_any",
                      f"{_short(required)} must be a non-empty list of CPU flag names")

    def free_form(self, value: Any, key: str, depth: int = 0) -> Any:
        """JSON kept as it is (figures, settings), bounded in depth and free of NaN and infinities."""
        if depth > MAX_DEPTH:
            self.fail(key, f"is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, Mapping):
            return {str(k): self.free_form(v, key, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.free_form(v, key, depth + 1) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(key, "holds a NaN or infinite number")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            self.fail(key, f"holds a string over {MAX_TEXT:,} characters")
        return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_file_entry(entry: Any, key: str, where: str) -> FileEntry:
    """A file entry (file, sha256, size_bytes) of a manifest section beside the variants (the face detector's
    graphs), held to the same checks as a variant's graph."""
    reader = _Reader(where)
    if not isinstance(entry, Mapping):
        reader.fail(key, "must be an object")
    return reader.file(entry, "", key)
