"""Accuracy on a labelled image folder, per variant, and how far the variants agree with each other.

The folder holds one sub-folder per label, named like the model's labels (case-insensitive), as the seed
project's data set does: ``Test/Real/*.jpg``, ``Test/Fake/*.jpg``. Torch-free; only the optional PyTorch
reference (``load_reference``) imports the build package, and with it torch, and only when it's called.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .detector import Detector, Prediction, fake_label_index, softmax
from .errors import FastVitDetectError, InputError, UnsupportedInputError
from .fidelity import probability_agreement
from .media import find_images
from .progress import Progress


@dataclass(frozen=True)
class LabelledImages:
    paths: list[Path]
    targets: np.ndarray  # label index per path
    labels: list[str]


def find_labelled_images(data_dir: str | Path, labels: Sequence[str], limit: int | None = None) -> LabelledImages:
    """Images under ``data_dir/<label>/`` for each of ``labels``, sorted; ``limit`` spreads a sample over them."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UnsupportedInputError(f"{root}: not a directory of labelled images", str(root))
    folders = {child.name.lower(): child for child in root.iterdir() if child.is_dir()}
    paths: list[Path] = []
    targets: list[int] = []
    for index, label in enumerate(labels):
        folder = folders.get(label.lower())
        if folder is None:
            continue
        found = find_images(folder)
        paths += found
        targets += [index] * len(found)
    if not paths:
        raise UnsupportedInputError(
            f"{root}: no images in sub-folders named after the labels ({', '.join(labels)})", str(root)
        )
    if limit is not None and limit < len(paths):
        keep = np.linspace(0, len(paths) - 1, limit).round().astype(int)
        paths = [paths[i] for i in keep]
        targets = [targets[i] for i in keep]
    return LabelledImages(paths, np.asarray(targets, dtype=np.int64), list(labels))


@dataclass
class VariantRun:
    """One system's outputs on the images: probabilities (NaN rows for images it couldn't read)."""

    name: str
    probabilities: np.ndarray
    seconds: float
    errors: dict[int, FastVitDetectError] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        return ~np.isnan(self.probabilities).any(axis=1)


def run_detector(detector: Detector, images: LabelledImages, batch_size: int = 16,
                 progress: Progress | None = None) -> VariantRun:
    total = len(images.paths)
    probabilities = np.full((total, len(images.labels)), np.nan)
    errors: dict[int, FastVitDetectError] = {}
    started = time.perf_counter()
    for index, result in enumerate(detector.predict_iter(images.paths, batch_size=batch_size, errors="return")):
        if isinstance(result, Prediction):
            probabilities[index] = [result.probabilities[label] for label in images.labels]
        else:
            errors[index] = result
        if progress and ((index + 1) % batch_size == 0 or index + 1 == total):
            progress(index + 1, total)
    return VariantRun(detector.variant.name, probabilities, time.perf_counter() - started, errors)


@dataclass(frozen=True)
class Reference:
    """A PyTorch checkpoint loaded the way the seed serves it (fastvit_detect.build.reference), ready to classify."""

    checkpoint: str
    pytorch: Any  # a fastvit_detect.build.reference.TorchReference


def load_reference(checkpoint: str | Path, labels: Sequence[str]) -> Reference:
    """Load the PyTorch reference up front, so a missing extra or a bad checkpoint fails before any work.

    Needs the ``export`` extra (torch, transformers): the only runtime path that reaches the build package, and
    only here, when the user asks for the reference.
    """
    name = str(checkpoint)
    try:
        from .build.reference import TorchReference
    except ImportError as exc:  # the build package names what is missing
        raise FastVitDetectError(
            f"the PyTorch reference {name} needs torch and transformers: pip install 'fastvit-detect[export]'"
        ) from exc
    path = Path(name)
    if path.exists() and not path.is_dir():
        raise FastVitDetectError(f"reference {name}: not a directory; expected a Hugging Face checkpoint directory")
    try:
        model = TorchReference.load(name)
        model_labels = model.labels
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... for bad input
        raise FastVitDetectError(f"reference {name}: can't load it as a PyTorch image classifier: "
                                 f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    if [label.lower() for label in model_labels] != [label.lower() for label in labels]:
        raise FastVitDetectError(f"reference {name}: labels {model_labels} differ from the package's {list(labels)}")
    return Reference(name, model)


def reference_probabilities(reference: Reference | str | Path, images: LabelledImages, batch_size: int = 16,
                            progress: Progress | None = None) -> VariantRun:
    """PyTorch fp32 as the seed serves it (load_image + slow processor). Needs the ``export`` extra."""
    if not isinstance(reference, Reference):
        reference = load_reference(reference, images.labels)
    total = len(images.paths)
    probabilities = np.full((total, len(images.labels)), np.nan)
    errors: dict[int, FastVitDetectError] = {}
    started = time.perf_counter()
    for start in range(0, total, batch_size):
        loaded, indices = [], []
        for index in range(start, min(start + batch_size, total)):
            try:
                loaded.append(reference.pytorch.load_image(images.paths[index]))
                indices.append(index)
            except Exception as exc:  # noqa: BLE001 - the reference reports, never stops the run
                errors[index] = InputError(f"{images.paths[index]}: {exc}", str(images.paths[index]))
        if loaded:
            probabilities[indices] = softmax(reference.pytorch.run(reference.pytorch.pixel_values(loaded)))
        if progress:
            progress(min(start + batch_size, total), total)
    return VariantRun("pytorch-fp32", probabilities, time.perf_counter() - started, errors)


# --- metrics ------------------------------------------------------------------------------------------------


def confusion_matrix(targets: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Rows: true label; columns: predicted label."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (targets, predicted), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    true_positive = np.diag(matrix).astype(np.float64)
    precision_denominator, recall_denominator = matrix.sum(0), matrix.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * true_positive / (precision_denominator + recall_denominator)
    # Classes with no true image don't count (unlike scikit-learn's default, which averages over the union of
    # true and predicted classes): a model predicting a class absent from the data isn't rewarded or punished twice.
    present = recall_denominator > 0
    return float(np.nan_to_num(f1[present]).mean()) if present.any() else float("nan")


def auroc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count half); None with one class only."""
    positive = np.asarray(positive, dtype=bool)
    positives, negatives = int(positive.sum()), int((~positive).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2 + 1
    ranks[order] = np.repeat(average, counts)
    u = ranks[positive].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def variant_metrics(run: VariantRun, images: LabelledImages) -> dict[str, Any]:
    valid = run.valid
    targets, probabilities = images.targets[valid], run.probabilities[valid]
    predicted = probabilities.argmax(1)
    matrix = confusion_matrix(targets, predicted, len(images.labels))
    fake, real = fake_label_index(images.labels)
    positive_index = fake if fake is not None else (1 - real if real is not None and len(images.labels) == 2 else None)
    area = auroc(targets == positive_index, probabilities[:, positive_index]) if positive_index is not None else None
    return {
        "variant": run.name,
        "images": int(valid.sum()),
        "skipped": len(run.errors),
        "accuracy": float((predicted == targets).mean()) if len(targets) else None,
        "macro_f1": macro_f1(matrix) if len(targets) else None,
        "auroc": area,
        "auroc_positive_label": images.labels[positive_index] if positive_index is not None else None,
        "confusion_matrix": matrix.tolist(),
        "images_per_second": float(len(images.paths) / run.seconds) if run.seconds > 0 else None,
    }


def agreement(first: VariantRun, second: VariantRun) -> dict[str, Any]:
    both = first.valid & second.valid
    figures = probability_agreement(first.probabilities[both], second.probabilities[both]) if both.any() else {}
    return {
        "pair": [first.name, second.name],
        "images": int(both.sum()),
        "label_agreement": figures.get("top1_agreement"),
        "max_abs_probability_diff": figures.get("max_abs_probability_diff"),
    }


def evaluate(runs: Sequence[VariantRun], images: LabelledImages) -> dict[str, Any]:
    """The whole report: metrics per run, pairwise agreement, and the images that were skipped."""
    skipped = {}
    for run in runs:
        for index, error in run.errors.items():
            skipped[str(images.paths[index])] = f"{type(error).__name__}: {error}"
    return {
        "labels": images.labels,
        "images": len(images.paths),
        "variants": [variant_metrics(run, images) for run in runs],
        "agreement": [agreement(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :]],
        "skipped": skipped,
    }
