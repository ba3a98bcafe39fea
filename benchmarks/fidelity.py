"""Fidelity: how far each system's answers are from the PyTorch fp32 baseline's, and accuracy on labelled data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float | int]:
    """Top-1 agreement and probability deltas between two (images, labels) probability arrays."""
    delta = np.abs(reference - candidate)
    return {
        "images": int(len(reference)),
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
        "max_abs_probability_diff": float(delta.max()),
        "mean_abs_probability_diff": float(delta.mean()),
    }


def accuracy(probabilities: np.ndarray, truth: Sequence[str], labels: Sequence[str]) -> dict[str, float | int]:
    """Share of images whose top label matches the folder name (case-insensitive)."""
    lowered = [label.lower() for label in labels]
    known = [index for index, name in enumerate(truth) if name.lower() in lowered]
    if not known:
        raise ValueError(f"no folder name matches the model's labels {list(labels)}")
    expected = np.array([lowered.index(truth[index].lower()) for index in known])
    predicted = probabilities[known].argmax(1)
    return {"images": int(len(known)), "accuracy": float((predicted == expected).mean()),
            "unmatched_images": int(len(truth) - len(known))}
