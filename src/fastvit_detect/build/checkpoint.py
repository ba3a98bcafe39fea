"""The source checkpoint: a local folder or a Hub id resolved, its weights vetted, its PyTorch model loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FastVitDetectError
from ..package import CONFIG_FILE, PREPROCESSOR_FILE
from ..preprocess import PreprocessConfig
from . import ExportError, Log

SUPPORTED_MODEL_TYPES = ("vit", "deit")
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    model: str  # what the user named: a Hub id or a local path
    revision: str | None  # Hub commit, when known
    from_hub: bool = False

    @property
    def public_name(self) -> str:
        """What the manifest records: a Hub id, or only a local checkpoint's folder name, never the build
        machine's path (packages get published; their manifests shouldn't map the exporter's disk)."""
        return self.model if self.from_hub else self.directory.name


def resolve_checkpoint(model: str, revision: str | None, trust_pickle: bool, log: Log) -> Checkpoint:
    """A local directory as is, or a Hub id downloaded (configs and weights only) to the HF cache."""
    local = Path(model).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ExportError(f"{model}: not a directory; expected a Hugging Face checkpoint directory or Hub id")
        return Checkpoint(local.resolve(), model, revision)
    if model.count("/") != 1 or model.startswith(("/", ".", "~")):
        raise ExportError(f"{model}: no such directory, and not a Hub id of the form owner/name")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - the export extra installs it
        raise ExportError("downloading from the Hub needs huggingface_hub "
                          "(pip install 'fastvit-detect[export]')") from exc
    patterns = ["*.json", "*.safetensors"] + (["*.bin"] if trust_pickle else [])
    log(f"downloading {model} (revision {revision or 'main'}) from the Hugging Face Hub")
    try:
        directory = Path(snapshot_download(model, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # hub errors are many and untyped across versions
        raise ExportError(
            f"{model}: can't download from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "Offline? Pass a local checkpoint directory instead."
        ) from exc
    # snapshot_download returns .../snapshots/<commit>: the commit pins what we exported.
    return Checkpoint(directory, model, directory.name if len(directory.name) == 40 else revision, from_hub=True)


def check_weights(checkpoint: Checkpoint, trust_pickle: bool) -> bool:
    """Whether to load safetensors; refuse pickle weights unless the user trusts them."""
    directory = checkpoint.directory
    if any((directory / name).is_file() for name in SAFETENSORS_FILES):
        return True
    if any((directory / name).is_file() for name in PICKLE_FILES):
        if trust_pickle:
            return False
        raise ExportError(
            f"{checkpoint.model}: only pickle weights (pytorch_model.bin) found. Unpickling can run arbitrary "
            "code, so they're refused by default. Convert the checkpoint to safetensors, or pass --trust-pickle "
            "if you trust its author."
        )
    raise ExportError(f"{checkpoint.model}: no model weights found (expected {SAFETENSORS_FILES[0]})")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint ready to export: its transformers config, the PyTorch model and the package's image size."""

    checkpoint: Checkpoint
    config: Any
    model: Any
    image_size: tuple[int, int]


def load_checkpoint(model: str, revision: str | None, trust_pickle: bool, log: Log) -> LoadedCheckpoint:
    """Resolve, vet and load ``model``; refuse what the package couldn't reproduce (missing configs, another
    architecture, an image size the preprocessor doesn't make)."""
    checkpoint = resolve_checkpoint(model, revision, trust_pickle, log)
    use_safetensors = check_weights(checkpoint, trust_pickle)
    for name in (CONFIG_FILE, PREPROCESSOR_FILE):
        if not (checkpoint.directory / name).is_file():
            raise ExportError(f"{model}: {name} is missing; the package needs it to preprocess images the same way")
    try:
        preprocess = PreprocessConfig.from_hf(json.loads((checkpoint.directory / PREPROCESSOR_FILE).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, FastVitDetectError) as exc:
        raise ExportError(f"{model}: {PREPROCESSOR_FILE} can't be used: {exc}") from exc
    image_size = preprocess.output_size
    if image_size is None:
        raise ExportError(f"{model}: {PREPROCESSOR_FILE} fixes no image size (no resize or crop)")

    import transformers
    from transformers import AutoConfig, AutoModelForImageClassification

    # transformers logs (rather than warns) its advice; at error level it no longer buries the progress lines.
    transformers.logging.set_verbosity_error()

    config = AutoConfig.from_pretrained(checkpoint.directory)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(f"{model}: model_type {config.model_type!r} isn't supported (supported: vit, deit)")
    if getattr(config, "image_size", image_size[0]) != image_size[0]:
        raise ExportError(f"{model}: the model expects {config.image_size}px images, the preprocessor makes "
                          f"{image_size}")
    torch_model = AutoModelForImageClassification.from_pretrained(
        checkpoint.directory, use_safetensors=use_safetensors
    ).eval()
    return LoadedCheckpoint(checkpoint, config, torch_model, image_size)
