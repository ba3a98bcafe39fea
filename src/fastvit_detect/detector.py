"""Detector = model package + preprocessing + ONNX session + softmax over the labels."""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal, overload

import numpy as np

from .errors import IncompatibleModelError, InputError
from .package import AUTO_PREFERENCE, ModelPackage, Variant
from .preprocess import DEFAULT_MAX_PIXELS, ImageInput, Preprocessor
from .session import OnnxSession, cpu_flags

DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True, eq=False)  # identity equality: logits is an array, whose == isn't a truth value
class Prediction:
    """The verdict on one image."""

    label: str
    score: float  # probability of ``label``
    probabilities: Mapping[str, float]
    logits: np.ndarray
    fake_probability: float | None  # None when the labels name neither "fake" nor "real"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the one record shape of a prediction in CLI output, scan files and server responses."""
        return {
            "label": self.label,
            "score": self.score,
            "probabilities": dict(self.probabilities),
            "fake_probability": self.fake_probability,
            "logits": [float(value) for value in self.logits],
        }


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _chunks(items: Iterable[ImageInput], size: int) -> Iterator[list[ImageInput]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def fake_label_index(labels: Sequence[str]) -> tuple[int | None, int | None]:
    """Indices of the labels named fake and real, case-insensitively; None where absent."""
    lowered = [label.strip().lower() for label in labels]
    fake = lowered.index("fake") if "fake" in lowered else None
    real = lowered.index("real") if "real" in lowered else None
    return fake, real


def unmet_cpu_requirement(variant: Variant) -> str | None:
    """Why this CPU can't run ``variant`` safely, or None. A graph quantized with full 8-bit weights needs VNNI:
    without it onnxruntime's u8 x s8 kernels sum pairs of products in int16, which those weights can saturate.
    Where the flags can't be read (not Linux) the variant is trusted."""
    quantization = variant.details.get("quantization")
    required = quantization.get("requires_cpu_flags_any") if isinstance(quantization, Mapping) else None
    flags = cpu_flags()  # the manifest's list was validated when the package was opened
    if not required or not flags or any(flag in flags for flag in required):
        return None
    return f"variant {variant.name!r} needs a CPU with {' or '.join(required)}, and this one has neither"


class Detector:
    """A loaded deepfake detector. Thread-safe: share one instance between request handlers."""

    def __init__(self, package: ModelPackage, variant: Variant, session: OnnxSession, preprocessor: Preprocessor):
        self.package = package
        self.variant = variant
        self.session = session
        self.preprocessor = preprocessor
        self.labels = package.labels
        self._fake_index, self._real_index = fake_label_index(self.labels)
        session.check_compatible(preprocessor.output_size, len(self.labels))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        variant: str = "auto",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        verify: bool = True,
        jpeg_draft: bool = False,
    ) -> Detector:
        """Open a model package and start an onnxruntime session on one of its variants.

        ``variant``: "auto" (the package's recommendation, else int8 when present), "fp32", "int8", ...
        ``threads``: intra-op threads, default the physical cores. ``providers``: onnxruntime execution
        providers, default CPU. ``max_pixels``: decompression-bomb cap per image (None: Pillow's own limit only).
        ``verify``: check the variant's files (graph and weights) against the manifest's sizes and sha256.
        ``jpeg_draft``: decode large JPEGs at reduced scale (much faster for multi-megapixel photos; results then
        differ slightly from the HF reference, see the README's performance notes).
        """
        package = ModelPackage.open(path)
        chosen = package.variant(variant)
        problem = unmet_cpu_requirement(chosen)
        if problem and variant != "auto":
            raise IncompatibleModelError(f"model package {package.root}: {problem}; load another variant (fp32) "
                                         "or re-export without --cpu-specific / --no-reduce-range")
        if problem:
            order = [*AUTO_PREFERENCE, *package.variants]
            fallback = next((name for name in order if name in package.variants
                             and not unmet_cpu_requirement(package.variants[name])), None)
            if fallback is None:
                raise IncompatibleModelError(f"model package {package.root}: {problem}, and no other variant runs here")
            warnings.warn(f"model package {package.root}: {problem}; using variant {fallback!r} instead",
                          RuntimeWarning, stacklevel=2)
            chosen = package.variant(fallback)
        if verify:
            package.verify(chosen)
        preprocessor = Preprocessor.from_hf(package.preprocessor_config, max_pixels=max_pixels, jpeg_draft=jpeg_draft)
        session = OnnxSession(chosen.path, threads=threads, providers=providers)
        return cls(package, chosen, session, preprocessor)

    def predict(self, image: ImageInput) -> Prediction:
        """Classify one image (path, bytes, binary file, PIL image or uint8 numpy array)."""
        return self.predict_batch([image])[0]

    @overload
    def predict_batch(
        self, images: Iterable[ImageInput], batch_size: int = ..., errors: Literal["raise"] = ...
    ) -> list[Prediction]: ...

    @overload
    def predict_batch(
        self, images: Iterable[ImageInput], batch_size: int = ..., *, errors: Literal["return"]
    ) -> list[Prediction | InputError]: ...

    def predict_batch(
        self,
        images: Iterable[ImageInput],
        batch_size: int = DEFAULT_BATCH_SIZE,
        errors: Literal["raise", "return"] = "raise",
    ) -> list[Prediction] | list[Prediction | InputError]:
        """Classify images in order, one session call per ``batch_size`` images.

        ``errors="raise"`` raises the first bad image's :class:`InputError`; ``errors="return"`` puts the
        error in that image's place and classifies the rest.
        """
        _check_batch_size(batch_size)
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        results: list[Prediction | InputError] = []
        for chunk in _chunks(images, batch_size):
            pixels, failures = self.preprocessor.batch_pixels(chunk)
            if errors == "raise":
                for failure in failures:
                    if failure is not None:
                        raise failure
            results.extend(self._classify(pixels, failures))
        return results  # type: ignore[return-value]

    def predict_iter(
        self, images: Iterable[ImageInput], batch_size: int = DEFAULT_BATCH_SIZE, prefetch: int = 1
    ) -> Generator[Prediction | InputError, None, None]:
        """Stream results in input order, for collections too large to hold; a bad image yields its error.

        While the model runs on one batch, a background thread decodes the next ``prefetch`` batches: Pillow
        releases the GIL while it decodes and resizes, so file reading overlaps inference. ``prefetch=0``
        decodes in the calling thread.
        """
        _check_batch_size(batch_size)  # here, not in the generator, so bad arguments fail at the call
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        return self._stream(images, batch_size, prefetch)

    def _stream(
        self, images: Iterable[ImageInput], batch_size: int, prefetch: int
    ) -> Generator[Prediction | InputError, None, None]:
        if prefetch == 0:
            for chunk in _chunks(images, batch_size):
                yield from self._classify(*self.preprocessor.batch_pixels(chunk))
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastvit-decode") as decoder:
            pending: deque[Future[tuple[np.ndarray, list[InputError | None]]]] = deque()
            for chunk in _chunks(images, batch_size):
                pending.append(decoder.submit(self.preprocessor.batch_pixels, chunk))
                if len(pending) > prefetch:
                    yield from self._classify(*pending.popleft().result())
            while pending:
                yield from self._classify(*pending.popleft().result())

    def _classify(self, pixels: np.ndarray, failures: list[InputError | None]) -> list[Prediction | InputError]:
        """Run the decodable images of a batch through the model; failed ones keep their error in place."""
        good = [index for index, failure in enumerate(failures) if failure is None]
        predictions: dict[int, Prediction] = {}
        if good:
            batch = pixels if len(good) == len(failures) else pixels[good]
            logits = self.run_logits(self.preprocessor.normalize(batch))
            predictions = dict(zip(good, self._postprocess(logits)))
        return [predictions[index] if failure is None else failure for index, failure in enumerate(failures)]

    def run_logits(self, pixel_values: np.ndarray) -> np.ndarray:
        """Raw logits for an already preprocessed float32 NCHW batch."""
        logits = self.session.run(pixel_values)
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise IncompatibleModelError(
                f"{self.variant.path}: model returned logits of shape {logits.shape}, expected (N, {len(self.labels)})"
            )
        return logits

    def _postprocess(self, logits: np.ndarray) -> list[Prediction]:
        probabilities = softmax(logits)
        predictions = []
        for row_logits, row in zip(logits, probabilities):
            best = int(row.argmax())
            predictions.append(
                Prediction(
                    label=self.labels[best],
                    score=float(row[best]),
                    probabilities={label: float(p) for label, p in zip(self.labels, row)},
                    logits=row_logits.copy(),
                    fake_probability=self._fake_probability(row),
                )
            )
        return predictions

    def _fake_probability(self, probabilities: np.ndarray) -> float | None:
        if self._fake_index is not None:
            return float(probabilities[self._fake_index])
        if self._real_index is not None and len(self.labels) == 2:
            return float(1.0 - probabilities[self._real_index])
        return None

    def __repr__(self) -> str:
        return (
            f"Detector({str(self.package.root)!r}, variant={self.variant.name!r}, labels={self.labels}, "
            f"threads={self.session.threads}, providers={self.session.providers})"
        )
