"""The one PyTorch reference: a checkpoint run the way a transformers pipeline serves it.

``transformers.image_utils.load_image`` (EXIF transpose, then RGB), the *slow* image processor (``use_fast=False``:
the fast ones resize differently) and the model in fp32. The exporter validates every variant against it, ``eval
--reference`` reports it, the benchmark's PyTorch systems load through it and the tests take their expected
answers from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..detector import softmax


class TorchReference:
    """A PyTorch image classifier and its slow image processor."""

    def __init__(self, processor: Any, model: Any) -> None:
        self.processor = processor
        self.model = model

    @classmethod
    def load(cls, checkpoint: str | Path, model: Any = None) -> TorchReference:
        """Load ``checkpoint``'s processor, and its model unless one loaded already (in eval mode) is given."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        processor = AutoImageProcessor.from_pretrained(checkpoint, use_fast=False)
        if model is None:
            model = AutoModelForImageClassification.from_pretrained(checkpoint).eval()
        return cls(processor, model)

    @property
    def labels(self) -> list[str]:
        config = self.model.config
        return [str(config.id2label[i]) for i in range(config.num_labels)]

    @staticmethod
    def load_image(source: Any) -> Any:
        """A path, URL or PIL image as a pipeline opens it: EXIF orientation applied, converted to RGB."""
        from transformers.image_utils import load_image

        return load_image(str(source) if isinstance(source, Path) else source)

    def pixel_values(self, images: Sequence[Any]) -> Any:
        """Loaded images -> the processor's pixel_values tensor."""
        return self.processor(list(images), return_tensors="pt")["pixel_values"]

    def run(self, pixel_values: Any) -> np.ndarray:
        """pixel_values -> fp32 logits."""
        import torch

        with torch.inference_mode():
            return self.model(pixel_values=pixel_values).logits.numpy()

    def logits_and_pixels(self, sources: Sequence[Any], batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Logits and the processor's pixels for ``sources`` (paths or PIL images), ``batch_size`` at a time (None:
        one batch)."""
        step = batch_size or max(1, len(sources))
        logits, pixels = [], []
        for start in range(0, len(sources), step):
            pixel_values = self.pixel_values([self.load_image(source) for source in sources[start : start + step]])
            logits.append(self.run(pixel_values))
            pixels.append(pixel_values.numpy())
        return np.concatenate(logits), np.concatenate(pixels)

    def logits(self, sources: Sequence[Any], batch_size: int | None = None) -> np.ndarray:
        return self.logits_and_pixels(sources, batch_size)[0]

    def probabilities(self, sources: Sequence[Any], batch_size: int | None = None) -> np.ndarray:
        return softmax(self.logits(sources, batch_size))
