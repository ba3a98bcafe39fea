"""The model package on disk: the contract between ``export/`` and the runtime.

A package is a directory in Hugging Face Optimum's layout, so Optimum's ``ORTModelForImageClassification`` opens
it too::

    config.json               HF model config (id2label), copied unchanged from the checkpoint
    preprocessor_config.json  HF image-processor config, copied unchanged
    model.onnx                fp32 graph, dynamic batch axis
    model.onnx_data           its weights (ONNX external data, Optimum's name for the file)
    model_quantized.onnx      dynamic int8 graph (Optimum's name for it)
    model_quantized.onnx_data its weights
    fastvit_manifest.json     ours: format version, source, sizes and sha256 of the configs and of each variant's
                              files, validation figures

Weights live beside the graph rather than inside it because onnxruntime then maps them instead of copying them
out of a parsed protobuf, which lowers peak memory and start-up time (figures in docs/guides/model-package.md).

A directory exported by Optimum alone (no manifest) loads too; its files simply can't be verified. A manifest of
format 1 or 2 vouches for the graphs and weights but not for the configs, which then load unverified.

A package is data from wherever it came from, so opening one trusts nothing: JSON files are size-capped and
parsed strictly, every field is validated, every file must resolve inside the package directory, and a graph may
load external data only from the one file its variant vouches for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import (
    ChecksumMismatchError,
    InvalidPackageError,
    MissingFileError,
    PackageNotFoundError,
    VariantNotFoundError,
)
from .graphfile import GraphFormatError, external_data_locations
from .manifest import (
    DATA_SUFFIX,
    DEFAULT_RUNTIME,
    FORMAT_NAME,
    FORMAT_VERSION,
    READABLE_FORMAT_VERSIONS,
    FileEntry,
    Manifest,
    VariantEntry,
)

__all__ = ["CONFIG_FILE", "DATA_SUFFIX", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_FILE", "PREPROCESSOR_FILE",
           "READABLE_FORMAT_VERSIONS", "ModelPackage", "Variant", "file_sha256"]

MANIFEST_FILE = "fastvit_manifest.json"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
MAX_JSON_BYTES = 16 * 1024 * 1024  # configs and manifests are a few KB; more is a broken or hostile file
MAX_LABELS = 10_000

# Variants a manifest-less Optimum export may hold, by the file names Optimum gives them.
OPTIMUM_FILES = {"fp32": "model.onnx", "int8": "model_quantized.onnx"}

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

# "auto" takes the manifest's recommendation, else the first of these present: int8 is faster on CPU.
AUTO_PREFERENCE = ("int8", "fp32")


@dataclass(frozen=True)
class Variant:
    """One ONNX graph of the package, with the files it loads."""

    name: str
    path: Path
    entry: VariantEntry | None = None  # the manifest's description; None: no manifest to verify against
    data_path: Path | None = None  # the graph's external weights, when it has them

    @property
    def sha256(self) -> str | None:
        return self.entry.graph.sha256 if self.entry else None

    @property
    def runtime(self) -> str:
        """What runs the graph: "onnxruntime", or "openvino" for an NNCF int8 graph (``openvino-int8``)."""
        return self.entry.runtime if self.entry else DEFAULT_RUNTIME

    @property
    def files(self) -> list[tuple[Path, str | None, int | None]]:
        """(path, sha256, size) of every file the variant loads: its graph, then its weights if separate."""
        graph = self.entry.graph if self.entry else None
        files = [(self.path, graph.sha256 if graph else None, graph.size_bytes if graph else None)]
        if self.data_path is not None:
            data = self.entry.data if self.entry else None
            files.append((self.data_path, data.sha256 if data else None, data.size_bytes if data else None))
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
    manifest: Manifest | None
    variants: Mapping[str, Variant]
    labels: list[str]  # class names by output index, from config.json's id2label
    within: Path | None = None  # the directory every file must resolve inside; None: root
    # The configs as open() read and parsed them: verification checks these bytes, not the files as they are later.
    configs_read: Mapping[str, FileEntry] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike[str], files: Collection[str] | None = None,
             within: str | os.PathLike[str] | None = None) -> ModelPackage:
        """Open the package at ``path``.

        ``files``: the names the package holds when its graphs aren't all on disk yet (a Hub repository's
        listing, read before choosing what to download); by default, what ``path`` holds. ``within``: the
        directory its files must resolve inside, by default ``path`` itself; the HF cache links a snapshot's files
        to its repository's blobs folder, which is given here.
        """
        root = Path(path)
        boundary = Path(within) if within is not None else root
        if not root.exists():
            raise PackageNotFoundError(f"model package {root}: no such directory")
        if not root.is_dir():
            raise PackageNotFoundError(f"model package {root}: not a directory")
        config, config_read = _read_json(root / CONFIG_FILE, root, boundary)
        preprocessor_config, preprocessor_read = _read_json(root / PREPROCESSOR_FILE, root, boundary)
        manifest = None
        if _holds(root, None, MANIFEST_FILE):
            manifest = Manifest.parse(_read_json(root / MANIFEST_FILE, root, boundary)[0],
                                      f"model package {root}: {MANIFEST_FILE}")
            _check_configs_vouched(root, manifest)
        variants = (_variants_from_manifest(root, manifest, files) if manifest is not None
                    else _variants_from_optimum_layout(root, files))
        for variant in variants.values():  # present files must be inside; a missing one is reported on use
            for file, _, _ in variant.files:
                if file.exists() or file.is_symlink():
                    _check_inside(file, root, f"variant {variant.name!r} file {file.name}", boundary)
        labels = _labels(config, root)
        if manifest is not None and manifest.labels is not None and list(manifest.labels) != labels:
            raise InvalidPackageError(f"model package {root}: the manifest's labels {list(manifest.labels)} differ "
                                      f"from {CONFIG_FILE}'s id2label {labels}")
        return cls(root, config, preprocessor_config, manifest, variants, labels, boundary,
                   {CONFIG_FILE: config_read, PREPROCESSOR_FILE: preprocessor_read})

    @property
    def source_name(self) -> str:
        """What the package was exported from, fit to show anyone: a Hub id as is; for a local checkpoint only its
        folder's name, so the build machine's paths don't travel with published packages or server answers."""
        model = self.manifest.source.model if self.manifest else None
        if model and HUB_ID.fullmatch(model) and not model.startswith((".", "~")):
            return model
        return Path(model).name if model else self.root.resolve().name

    def public_manifest(self) -> dict[str, Any] | None:
        """The manifest as it may be shown to anyone (a server's clients, the Hub): the source checkpoint named by
        :attr:`source_name`, never by a path on the build machine. None without a manifest."""
        if self.manifest is None:
            return None
        source = self.manifest.source
        if source.model:
            source = replace(source, model=self.source_name)
        return replace(self.manifest, source=source).to_dict()

    @property
    def default_variant(self) -> str:
        recommended = self.manifest.default_variant if self.manifest else None
        if recommended in self.variants:
            return str(recommended)
        for name in AUTO_PREFERENCE:
            if name in self.variants:
                return name
        return next(iter(self.variants))

    def lookup(self, name: str = "auto") -> Variant:
        """The variant called ``name``; ``"auto"`` picks the recommended one. Its files may not be here yet."""
        if not isinstance(name, str):
            raise VariantNotFoundError(f"model package {self.root}: a variant is named by a string, got {name!r}")
        resolved = self.default_variant if name == "auto" else name
        if resolved not in self.variants:
            available = ", ".join(sorted(self.variants)) or "none"
            raise VariantNotFoundError(f"model package {self.root}: no variant {name!r} (available: {available})")
        return self.variants[resolved]

    def variant(self, name: str = "auto") -> Variant:
        """The variant called ``name``, as :meth:`lookup` finds it; its files must be there."""
        variant = self.lookup(name)
        for path, _, _ in variant.files:
            _check_inside(path, self.root, f"variant {variant.name!r} file {path.name}", self.within)
        return variant

    def check_graph(self, variant: Variant) -> None:
        """Refuse a graph that would make onnxruntime read files the package doesn't vouch for.

        Runs whether or not ``verify`` is on: an unverified load must still not reach outside the package.
        """
        allowed = {variant.data_path.name} if variant.data_path is not None else set()
        try:
            locations = external_data_locations(variant.path)
        except (GraphFormatError, OSError) as exc:
            raise InvalidPackageError(f"model package {self.root}: {variant.path.name} isn't a readable ONNX graph: "
                                      f"{exc}") from exc
        unvouched = sorted(locations - allowed)
        if unvouched:
            raise InvalidPackageError(
                f"model package {self.root}: {variant.path.name} loads external data from "
                f"{', '.join(map(repr, unvouched))}, which the package doesn't vouch for (a graph may only load "
                f"{', '.join(map(repr, sorted(allowed))) or 'no other file'})"
            )

    @property
    def configs_verified(self) -> bool:
        """Whether the manifest vouches for the configs (format 3 on); older manifests vouch for the variants' files
        only, and a package without a manifest for nothing."""
        return self.manifest is not None and bool(self.manifest.configs)

    def verify_configs(self) -> None:
        """Check the configs, as :meth:`open` read and parsed them, against the manifest's sizes and sha256; no-op
        for a manifest that doesn't vouch for them (format 1 or 2) or none."""
        if self.manifest is None:
            return
        for entry in self.manifest.configs:
            read = self.configs_read.get(entry.name)
            if read is not None:  # open() refused a manifest that leaves out a config it reads
                self._check_size(entry.name, read.size_bytes, entry.size_bytes)
                self._check_digest(entry.name, read.sha256, entry.sha256)

    def verify(self, variant: Variant) -> None:
        """Check the configs (:meth:`verify_configs`) and the variant's files against the manifest's sizes and
        sha256; no-op without a manifest."""
        self.verify_configs()
        for path, sha256, size_bytes in variant.files:
            if sha256 is None:
                continue
            if size_bytes is not None:  # first: a file of the wrong size is refused without reading it through
                self._check_size(path.name, path.stat().st_size, size_bytes)
            self._check_digest(path.name, file_sha256(path), sha256)

    def _check_size(self, name: str, size: int, vouched_size: int) -> None:
        if size != vouched_size:
            raise ChecksumMismatchError(f"model package {self.root}: {name} is {size:,} bytes, the manifest says "
                                        f"{vouched_size:,}; the file is truncated or was replaced")

    def _check_digest(self, name: str, digest: str, vouched_digest: str) -> None:
        if digest != vouched_digest:
            raise ChecksumMismatchError(f"model package {self.root}: {name} has sha256 {digest}, the manifest says "
                                        f"{vouched_digest}; the file is corrupt or was replaced")


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _check_inside(path: Path, root: Path, what: str, within: Path | None = None) -> None:
    """``path`` must be a regular file that resolves inside ``within`` (default ``root``): a symlink out of the
    package would make it read (and vouch for) whatever the link points to."""
    if not path.is_file():
        raise MissingFileError(f"model package {root}: {what} is missing")
    try:
        path.resolve(strict=True).relative_to((within or root).resolve(strict=True))
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise InvalidPackageError(f"model package {root}: {what} can't be resolved: {exc}") from exc
    except ValueError:
        raise InvalidPackageError(f"model package {root}: {what} resolves outside the package "
                                  f"({path.resolve()}); copy the file into the package instead of linking it") from None


def _labels(config: Mapping[str, Any], root: Path) -> list[str]:
    id2label = config.get("id2label")
    if not isinstance(id2label, Mapping) or not id2label:
        raise InvalidPackageError(f"model package {root}: {CONFIG_FILE} has no id2label mapping")
    if len(id2label) > MAX_LABELS:
        raise InvalidPackageError(
            f"model package {root}: id2label has {len(id2label):,} labels (at most {MAX_LABELS:,})")
    by_index: dict[int, str] = {}
    for key, label in id2label.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise InvalidPackageError(f"model package {root}: id2label keys must be integers, got {key!r}") from None
        if not isinstance(label, str) or not label.strip() or len(label) > 200:
            raise InvalidPackageError(f"model package {root}: id2label[{key!r}] must be a non-empty label name, "
                                      f"got {label!r}")
        by_index[index] = label
    if sorted(by_index) != list(range(len(by_index))):
        raise InvalidPackageError(
            f"model package {root}: id2label indices must be 0..{len(by_index) - 1}, got {sorted(by_index)}"
        )
    labels = [by_index[index] for index in range(len(by_index))]
    if len({label.strip().lower() for label in labels}) != len(labels):
        raise InvalidPackageError(f"model package {root}: id2label names a label twice: {labels}")
    return labels


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _check_configs_vouched(root: Path, manifest: Manifest) -> None:
    """A manifest that vouches for configs must vouch for each one the runtime reads, and for no other file: one
    left out would load unverified while the package claims to be checked."""
    if not manifest.configs:
        return
    vouched = {entry.name for entry in manifest.configs}
    read = {CONFIG_FILE, PREPROCESSOR_FILE}
    if vouched != read:
        missing, unknown = sorted(read - vouched), sorted(vouched - read)
        raise InvalidPackageError(
            f"model package {root}: {MANIFEST_FILE}'s configs must vouch for {', '.join(sorted(read))}"
            + (f"; it leaves out {', '.join(missing)}" if missing else "")
            + (f"; it names {', '.join(unknown)}, which this runtime doesn't read" if unknown else ""))


def _read_json(path: Path, root: Path, within: Path | None = None) -> tuple[dict[str, Any], FileEntry]:
    """The JSON object in ``path``, and the name, sha256 and size of the bytes it was parsed from."""
    _check_inside(path, root, path.name, within)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise InvalidPackageError(f"model package {root}: can't read {path.name}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_JSON_BYTES:
        raise InvalidPackageError(f"model package {root}: {path.name} is over {MAX_JSON_BYTES:,} bytes")
    try:
        # Strict JSON: NaN and Infinity literals, integers beyond Python's digit limit and absurd nesting are
        # all refused here rather than surfacing as a verdict or a traceback later.
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidPackageError(
            f"model package {root}: {path.name} isn't valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(data, dict):
        raise InvalidPackageError(f"model package {root}: {path.name} must hold a JSON object")
    return data, FileEntry(path.name, hashlib.sha256(raw).hexdigest(), len(raw))


def _holds(root: Path, files: Collection[str] | None, name: str) -> bool:
    """Whether the package holds ``name``: in ``files`` when given, else on disk (a dangling link counts, so that
    it is refused rather than ignored)."""
    if files is not None:
        return name in files
    return (root / name).exists() or (root / name).is_symlink()


def _variants_from_manifest(root: Path, manifest: Manifest, files: Collection[str] | None) -> dict[str, Variant]:
    variants = {}
    for name, entry in manifest.variants.items():
        data_name = entry.graph.name + DATA_SUFFIX
        if entry.data is None and _holds(root, files, data_name):
            raise InvalidPackageError(f"model package {root}: manifest variant {name!r}: {data_name} is in the "
                                      "package but the manifest doesn't vouch for it")
        variants[name] = Variant(name=name, path=root / entry.graph.name, entry=entry,
                                 data_path=root / entry.data.name if entry.data else None)
    return variants


def _variants_from_optimum_layout(root: Path, files: Collection[str] | None) -> dict[str, Variant]:
    variants = {}
    for name, file in OPTIMUM_FILES.items():
        if _holds(root, files, file):
            data = f"{file}{DATA_SUFFIX}"
            variants[name] = Variant(name=name, path=root / file,
                                     data_path=root / data if _holds(root, files, data) else None)
    if not variants:
        raise MissingFileError(
            f"model package {root}: no ONNX model found (looked for {', '.join(OPTIMUM_FILES.values())})"
        )
    return variants
