"""Fidelity: how far each system's answers are from the PyTorch fp32 baseline's."""

from __future__ import annotations

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
