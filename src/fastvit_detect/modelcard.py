"""The model card (``README.md``) a package gets when it is published on the Hub, and the manifest it publishes.

Everything comes from the package: labels from ``config.json``, variants, sizes and validation figures from the
manifest. Nothing the build machine knows about itself is published: a source checkpoint that was a local
directory appears by its folder name only (:attr:`ModelPackage.source_name`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .manifest import FORMAT_NAME
from .package import HUB_ID, ModelPackage

LIBRARY_NAME = "fastvit-detect"
TAGS = ("onnx", "deepfake-detection", "fastvit-detect")


def base_model(package: ModelPackage) -> str | None:
    """The Hub id the package was exported from, if it came from the Hub."""
    source = package.manifest.source.model if package.manifest else None
    return package.source_name if source and HUB_ID.fullmatch(package.source_name) else None


def model_card(package: ModelPackage, repo_id: str) -> str:
    """A Hub model card: YAML metadata, what the model is, a three-line usage snippet, labels, variants with
    their validation figures, provenance."""
    manifest = package.manifest
    base = base_model(package)
    metadata = [f"library_name: {LIBRARY_NAME}", "pipeline_tag: image-classification"]
    if base:
        metadata.append(f"base_model: {json.dumps(base)}")  # a JSON string is a valid YAML scalar
    metadata += ["tags:", *(f"- {tag}" for tag in TAGS)]

    source = manifest.source if manifest else None
    if base:
        origin = f"[{base}](https://huggingface.co/{base})"
    elif source and source.model:
        origin = f"The checkpoint `{_cell(package.source_name)}`"
    else:
        origin = "A Vision Transformer image classifier"
    revision = f" (revision `{_cell(source.revision)}`)" if source and source.revision else ""
    notes = [_text(text) for text in (manifest.description, manifest.intended_use) if text] if manifest else []
    lines = [
        "---", *metadata, "---", "",
        f"# {repo_id}", "",
        (f"{origin}{revision}, exported to ONNX as a fastvit-detect model package: torch-free CPU inference with "
         "numpy, Pillow and onnxruntime. The files follow Optimum's layout, so Optimum's "
         "`ORTModelForImageClassification` opens them too."), "",
        *(line for note in notes for line in (note, "")),
        "## Usage", "",
        "```python",
        "from fastvit_detect import Detector  # pip install 'fastvit-detect[hub]'",
        f"detector = Detector.from_pretrained({repo_id!r})",
        'print(detector.predict("face.jpg").label)',
        "```", "",
        (f"or `fastvit-detect predict --model {repo_id} face.jpg`. Once downloaded it loads offline "
         f"(`HF_HUB_OFFLINE=1`); {checked_files(package)}"), "",
        "## Labels", "",
        "| index | label |", "| --- | --- |",
        *(f"| {index} | {_cell(label)} |" for index, label in enumerate(package.labels)), "",
        "## Variants", "",
        *_variant_table(package), "",
        "## Provenance", "",
        *_provenance(package), "",
    ]
    return "\n".join(lines)


def checked_files(package: ModelPackage) -> str:
    """What loading checks, exactly: the card's promise, worded from the manifest the package carries."""
    if package.manifest is None:
        return "no file is checked: the package has no `fastvit_manifest.json`."
    if package.configs_verified:
        return ("every file it reads (`config.json`, `preprocessor_config.json`, the variant's graph and weights) is "
                "checked against the size and sha256 in `fastvit_manifest.json` before it is used.")
    return (f"the variant's graph and weights are checked against the size and sha256 in `fastvit_manifest.json` "
            f"before they are loaded; `config.json` and `preprocessor_config.json` are not (a format "
            f"{package.manifest.format_version} manifest doesn't vouch for them: re-export to do so).")


def _variant_table(package: ModelPackage) -> list[str]:
    extra = package.manifest.extra if package.manifest else {}
    validation = extra.get("validation")
    reference = (validation.get("reference") if isinstance(validation, Mapping) else None) or "PyTorch fp32"
    rows = ["| variant | files | size | max abs logit diff | max abs probability diff | top-1 agreement | images |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, variant in package.variants.items():
        figures = (variant.entry.validation if variant.entry else None) or {}
        sizes = [size for _path, _sha256, size in variant.files if size is not None]
        size = f"{sum(sizes) / 1e6:.1f} MB" if sizes else "-"
        mark = " (default)" if name == package.default_variant else ""
        files = ", ".join(f"`{_cell(path.name)}`" for path, _, _ in variant.files)
        shown = [_figure(figures.get("max_abs_logit_diff")), _figure(figures.get("max_abs_probability_diff")),
                 _figure(figures.get("top1_agreement"), percent=True), _figure(figures.get("images"))]
        rows.append(f"| {_cell(name)}{mark} | {files} | {size} | {' | '.join(shown)} |")
    rows += ["", f"Validation: each variant's logits against {_cell(reference)} on the same images, at export time."]
    return rows


def _provenance(package: ModelPackage) -> list[str]:
    manifest = package.manifest
    if manifest is None:
        return ["- no manifest: the files can't be verified"]
    lines = []
    if manifest.created:
        lines.append(f"- exported {_cell(manifest.created)}")
    exporter = manifest.extra.get("exporter")
    if isinstance(exporter, Mapping) and exporter:
        lines.append("- with " + ", ".join(f"{_cell(name)} {_cell(version)}" for name, version in exporter.items()))
    if manifest.extra.get("opset"):
        lines.append(f"- ONNX opset {_cell(manifest.extra['opset'])}")
    lines.append(f"- format `{FORMAT_NAME}` version {manifest.format_version}")
    return lines


def _figure(value: Any, percent: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    if percent:
        return f"{100 * value:.2f} %"
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def _cell(value: Any) -> str:
    """Text safe inside a Markdown table cell or inline code: one line, no pipes or backticks."""
    return _text(value).replace("|", "\\|").replace("`", "'")[:200]


def _text(value: Any) -> str:
    """Free text from the manifest as one paragraph: it can't open a heading, a code block or front matter."""
    return " ".join(str(value).split()).lstrip("#-=>`~ ")[:2000]
