"""Tiny test checkpoints whose verdicts are known by construction: the image's brightness decides.

A random-weight classifier labels nearly every image the same way (its logits hardly depend on the image), so a
detector that always answers one label passes every label assertion made with it. These checkpoints keep the
random weights, scaled down, for sensitivity to every pixel, and add a path that carries each patch's mean
brightness to the classifier with a large gain:

* hidden dimensions 0 and 1 of each patch embedding are +/- the patch's mean (normalised) pixel value, 2 and 3
  a constant +/- ``PATCH_BIAS``, so the first LayerNorm turns them into ``b / sqrt(b^2 + PATCH_BIAS^2)``, a soft
  sign of the patch's brightness;
* the first layer's attention averages dimensions 0-1 over all tokens into the class token (value and output
  projections are the identity there; the random query and key weights are small, so attention is near uniform);
  no other layer writes to dimensions 0-3, so the average reaches the final LayerNorm untouched;
* the head reads dimension 0 minus dimension 1 with a gain, one slope per label, and a bias per label that places
  the thresholds. The gain keeps the margins wide enough for int8 but the probabilities short of 1: a verdict
  saturated at p = 1 - 1e-9 would leave nothing for an explanation (the drop in p when a region is hidden) to
  measure.

With two labels the verdict flips where the brightness statistic crosses ``thresholds[0]``; with three, the
middle label wins between two thresholds (the upper envelope of three lines). The expected labels in tests still
come from PyTorch: the construction only makes sure they differ from image to image, with wide margins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

PATCH_BIAS = 0.5  # the brightness at which a patch's soft sign is at 0.71 of its full swing
CLASS_TOKEN_BIAS = 2.0  # keeps the final LayerNorm's scale bounded when the average is near zero
GAIN = 1.0
RANDOM_PATCH_SCALE = 0.1  # the random patch-embedding weights, kept small beside the brightness channels


def _final_feature(statistic: float) -> float:
    """The class token's dimension 0 after the final LayerNorm, for a brightness statistic in [-1, 1].

    ``statistic`` is the mean over patches of ``b / sqrt(b^2 + PATCH_BIAS^2)``. The first LayerNorm scales a patch's
    (b, -b, c, -c, ~0...) to unit variance over 32 dims, i.e. dimension 0 becomes 4 * b / sqrt(b^2 + c^2); the
    class token averages that over the tokens; the final LayerNorm does the same with CLASS_TOKEN_BIAS.
    """
    mean = 4.0 * statistic
    return 4.0 * mean / math.sqrt(mean * mean + CLASS_TOKEN_BIAS**2)


def brightness_decides(model, slopes: Sequence[float], thresholds: Sequence[float], gain: float = GAIN) -> None:
    """Rewire a tiny ViT/DeiT classifier (hidden size 32) in place, as the module docstring describes.

    ``slopes``: per label, how its logit grows with brightness (-1, 0 or +1). ``thresholds``: the brightness
    statistics where the winning label changes, in rising order: one for two labels, two for three.
    """
    import torch

    base = model.base_model
    embeddings, layers = base.embeddings, base.encoder.layer
    hidden = embeddings.cls_token.shape[-1]
    with torch.no_grad():
        projection = embeddings.patch_embeddings.projection
        projection.weight.mul_(RANDOM_PATCH_SCALE)
        projection.weight[0:4] = 0.0
        pixels_per_patch = projection.weight[0].numel()
        projection.weight[0] = 1.0 / pixels_per_patch
        projection.weight[1] = -1.0 / pixels_per_patch
        projection.bias[0:4] = torch.tensor([0.0, 0.0, PATCH_BIAS, -PATCH_BIAS])
        for token in (embeddings.cls_token, getattr(embeddings, "distillation_token", None)):
            if token is not None:
                token[..., 0:4] = torch.tensor([0.0, 0.0, CLASS_TOKEN_BIAS, -CLASS_TOKEN_BIAS])
        embeddings.position_embeddings[..., 0:4] = 0.0
        for index, layer in enumerate(layers):
            for writer in (layer.attention.output.dense, layer.output.dense):
                writer.weight[0:4] = 0.0
                writer.bias[0:4] = 0.0
            if index == 0:
                value = layer.attention.attention.value
                value.weight[0:2] = 0.0
                value.bias[0:2] = 0.0
                for dim in (0, 1):
                    value.weight[dim, dim] = 1.0
                    layer.attention.output.dense.weight[dim, dim] = 1.0
        classifier = model.classifier
        classifier.weight[:, 0:4] = 0.0  # the rest keeps its small random init: every dimension still counts
        features = [_final_feature(threshold) for threshold in thresholds]
        for label, slope in enumerate(slopes):
            classifier.weight[label, 0] = gain * slope
            classifier.weight[label, 1] = -gain * slope
        # Logit of label k at final feature F: 2 * gain * slope_k * F + bias_k. Biases chosen so neighbouring
        # labels (sorted by slope) tie exactly at their threshold.
        order = sorted(range(len(slopes)), key=lambda label: slopes[label])
        biases = [0.0] * len(slopes)
        for lower, upper, feature in zip(order, order[1:], features):
            biases[upper] = biases[lower] + 2 * gain * (slopes[lower] - slopes[upper]) * feature
        classifier.bias.copy_(torch.tensor(biases))
    assert hidden == 32, "the construction assumes the tiny preset"
