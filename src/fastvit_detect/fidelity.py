"""How far one system's answers are from another's: the figures the exporter records in a package's manifest,
``fastvit-detect eval`` reports between variants, and the benchmark quotes against PyTorch. One definition, so a
figure means the same thing wherever it is printed."""

from __future__ import annotations

import numpy as np

from .detector import softmax


def probability_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float | int]:
    """Top-1 agreement and |Δ probability| between two (images, labels) probability arrays of the same images."""
    delta = np.abs(reference - candidate)
    return {
        "images": len(reference),
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
        "max_abs_probability_diff": float(delta.max()),
        "mean_abs_probability_diff": float(delta.mean()),
    }


def logit_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float | int]:
    """What an export records per variant: the logits' largest difference, then the probabilities' agreement.

    The keys and their order are the manifest's (``variants.<name>.validation``)."""
    probabilities = probability_agreement(softmax(reference), softmax(candidate))
    return {
        "images": probabilities["images"],
        "max_abs_logit_diff": float(np.abs(reference - candidate).max()),
        "max_abs_probability_diff": probabilities["max_abs_probability_diff"],
        "top1_agreement": probabilities["top1_agreement"],
    }
