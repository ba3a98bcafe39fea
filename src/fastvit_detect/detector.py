"""Detector = model package + preprocessing + ONNX session + softmax over the labels."""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import onnxruntime as ort

from .errors import (
    FastVitDetectError,
    IncompatibleModelError,
    InputError,
    ModelOutputError,
)
from .hub import fetch
from .package import AUTO_PREFERENCE, ModelPackage, Variant
from .preprocess import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageInput,
    Preprocessor,
    describe_source,
)
from .session import OnnxSession, cpu_flags

if TYPE_CHECKING:
    from .explain import Explanation

DEFAULT_BATCH_SIZE = 16
MAX_BATCH_SIZE = 4096  # one session call's images; more is an operator's typo, not a batch
MAX_PREFETCH = 64


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


ImageResult = Prediction | FastVitDetectError
"""One image's outcome with ``errors="return"``: its prediction, or the error that stands in its place (an
:class:`InputError` for a bad image, a :class:`ModelOutputError` when the model gave no usable answer)."""


def _check_count(value: object, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")


def _check_errors(errors: object) -> None:
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")


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
    required = variant.entry.required_cpu_flags if variant.entry else ()
    flags = cpu_flags()  # the manifest's list was validated when the package was opened
    if not required or not flags or any(flag in flags for flag in required):
        return None
    return f"variant {variant.name!r} needs a CPU with {' or '.join(required)}, and this one has neither"


def _model_image_size(config: Mapping[str, Any]) -> tuple[int, int] | None:
    """config.json's ``image_size`` (an int, or [height, width]) as (height, width); None when absent or odd."""
    size = config.get("image_size")
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size)
    if isinstance(size, list) and len(size) == 2 and all(isinstance(side, int) for side in size):
        return (size[0], size[1])
    return None


def choose_variant(package: ModelPackage, variant: str = "auto") -> Variant:
    """The variant :meth:`Detector.load` runs for ``variant``: the one named, or for ``"auto"`` the package's
    recommendation, falling back (with a warning) to one this CPU can run. Its files needn't be there yet:
    :meth:`Detector.from_pretrained` chooses before it downloads."""
    chosen = package.lookup(variant)
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
                      RuntimeWarning, stacklevel=3)
        chosen = package.lookup(fallback)
    return chosen


class Detector:
    """A loaded deepfake detector. Thread-safe: share one instance between request handlers."""

    def __init__(self, package: ModelPackage, variant: Variant, session: OnnxSession, preprocessor: Preprocessor):
        self.package = package
        self.variant = variant
        self.session = session
        self.preprocessor = preprocessor
        self.labels = package.labels
        self._fake_index, self._real_index = fake_label_index(self.labels)
        session.check_compatible(preprocessor.output_size, len(self.labels), _model_image_size(package.config))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | ModelPackage,
        variant: str = "auto",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        verify: bool = True,
        jpeg_draft: bool = False,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        session_options: ort.SessionOptions | None = None,
        provider_options: Sequence[Mapping[str, Any]] | None = None,
    ) -> Detector:
        """Open a model package (a directory, or a :class:`ModelPackage` already open) and start an onnxruntime
        session on one of its variants.

        ``variant``: "auto" (the package's recommendation, else int8 when present), "fp32", "int8", ...
        ``threads``: intra-op threads, default the physical cores. ``providers``: onnxruntime execution
        providers, default CPU. ``max_pixels``: decompression-bomb cap per image (None: Pillow's own limit only).
        ``max_bytes``: cap on an encoded image's size, checked before it is read (None: no cap).
        ``session_options``: onnxruntime SessionOptions replacing fastvit-detect's tuned defaults (``threads``, when
        given, still sets the intra-op threads); ``provider_options``: one dict per provider, as onnxruntime takes
        them (for users who tune onnxruntime themselves).
        ``verify``: check the variant's files (graph and weights) against the manifest's sizes and sha256.
        ``jpeg_draft``: decode large JPEGs at reduced scale (much faster for multi-megapixel photos; results then
        differ slightly from the HF reference, see the README's performance notes).
        """
        package = path if isinstance(path, ModelPackage) else ModelPackage.open(path)
        chosen = package.variant(choose_variant(package, variant).name)
        if verify:  # first: a corrupt file is best reported as such
            package.verify(chosen)
        package.check_graph(chosen)
        preprocessor = Preprocessor.from_hf(package.preprocessor_config, max_pixels=max_pixels, jpeg_draft=jpeg_draft,
                                            max_bytes=max_bytes)
        session = OnnxSession(chosen.path, threads=threads, providers=providers, options=session_options,
                              provider_options=provider_options)
        return cls(package, chosen, session, preprocessor)

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        revision: str | None = None,
        variant: str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        force_download: bool = False,
        endpoint: str | None = None,
        **load_options: Any,
    ) -> Detector:
        """Load a model package from the Hugging Face Hub (needs the ``hub`` extra: ``pip install
        'fastvit-detect[hub]'``).

        Downloads the manifest and configs, chooses the variant as :meth:`load` does, then downloads that
        variant's graph and weights only, into the standard HF cache (``cache_dir``, default ``HF_HUB_CACHE``).
        Once cached it loads offline: ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``, and when the Hub can't be
        reached. ``revision``: a branch, tag or commit. ``token``: for private or gated repositories (default:
        ``HF_TOKEN`` or the saved login). ``force_download``: fetch the files again even if cached.
        ``endpoint``: another Hub (default ``HF_ENDPOINT``). ``load_options`` go to :meth:`load`; the files are
        verified against the manifest's sha256 as there. Failures raise :class:`~fastvit_detect.errors.HubError`
        subclasses (or, for a package that doesn't check out, the same errors as :meth:`load`).
        """
        fetched = fetch(repo_id, revision=revision, select=lambda package: [choose_variant(package, variant)],
                        cache_dir=cache_dir, local_files_only=local_files_only, token=token,
                        force_download=force_download, endpoint=endpoint)
        with fetched.explain_checksum_errors():
            return cls.load(fetched.package, variant=fetched.selected[0].name, **load_options)

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
    ) -> list[ImageResult]: ...

    def predict_batch(
        self,
        images: Iterable[ImageInput],
        batch_size: int = DEFAULT_BATCH_SIZE,
        errors: Literal["raise", "return"] = "raise",
    ) -> list[Prediction] | list[ImageResult]:
        """Classify images in order, one session call per ``batch_size`` images.

        ``errors="raise"`` raises the first failed image's error; ``errors="return"`` puts the error in that
        image's place and classifies the rest. Either way one image's failure never changes another's result.
        """
        _check_count(batch_size, "batch_size", 1, MAX_BATCH_SIZE)
        _check_errors(errors)
        results: list[ImageResult] = []
        for chunk in _chunks(images, batch_size):
            results.extend(self._classify_chunk(chunk, errors))
        return results

    def predict_iter(
        self,
        images: Iterable[ImageInput],
        batch_size: int = DEFAULT_BATCH_SIZE,
        prefetch: int = 1,
        errors: Literal["raise", "return"] = "raise",
    ) -> Generator[ImageResult, None, None]:
        """Stream results in input order, for collections too large to hold.

        ``errors`` as in :meth:`predict_batch`: ``"raise"`` (the default) raises a failed image's error when the
        stream reaches it, ``"return"`` yields the error in its place. While the model runs on one batch, a
        background thread decodes the next ``prefetch`` batches: Pillow releases the GIL while it decodes and
        resizes, so file reading overlaps inference. ``prefetch=0`` decodes in the calling thread.
        """
        # Checked here, not in the generator, so bad arguments fail at the call.
        _check_count(batch_size, "batch_size", 1, MAX_BATCH_SIZE)
        _check_count(prefetch, "prefetch", 0, MAX_PREFETCH)
        _check_errors(errors)
        return self._stream(images, batch_size, prefetch, errors)

    def _stream(
        self, images: Iterable[ImageInput], batch_size: int, prefetch: int, errors: str
    ) -> Generator[ImageResult, None, None]:
        if prefetch == 0:
            for chunk in _chunks(images, batch_size):
                yield from self._results(chunk, *self.preprocessor.batch_pixels(chunk), errors=errors)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastvit-decode") as decoder:
            pending: deque[tuple[list[ImageInput], Future[tuple[np.ndarray, list[InputError | None]]]]] = deque()
            for chunk in _chunks(images, batch_size):
                pending.append((chunk, decoder.submit(self.preprocessor.batch_pixels, chunk)))
                if len(pending) > prefetch:
                    chunk_done, decoded = pending.popleft()
                    yield from self._results(chunk_done, *decoded.result(), errors=errors)
            while pending:
                chunk_done, decoded = pending.popleft()
                yield from self._results(chunk_done, *decoded.result(), errors=errors)

    def _classify_chunk(self, chunk: Sequence[ImageInput], errors: str) -> list[ImageResult]:
        pixels, failures = self.preprocessor.batch_pixels(chunk)
        if errors == "raise":  # before the model runs: nothing to lose
            for failure in failures:
                if failure is not None:
                    raise failure
        return self._results(chunk, pixels, failures, errors)

    def _results(self, chunk: Sequence[ImageInput], pixels: np.ndarray, failures: Sequence[InputError | None],
                 errors: str) -> list[ImageResult]:
        results = self.classify_pixels(pixels, failures, [describe_source(image) for image in chunk])
        if errors == "raise":
            for result in results:
                if isinstance(result, FastVitDetectError):
                    raise result
        return results

    def classify_pixels(self, pixels: np.ndarray, failures: Sequence[FastVitDetectError | None] | None = None,
                        sources: Sequence[str] | None = None) -> list[ImageResult]:
        """Classify a decoded uint8 NHWC batch; images with a failure keep it in their place.

        One session call for the whole batch. Should that call fail, each image is run alone, so only the image
        that makes the model fail gets the error; an image whose logits aren't finite gets a
        :class:`ModelOutputError`, never a verdict.
        """
        failures = list(failures) if failures is not None else [None] * len(pixels)
        names = list(sources) if sources is not None else [f"image #{index + 1}" for index in range(len(pixels))]
        good = [index for index, failure in enumerate(failures) if failure is None]
        results: list[ImageResult | None] = list(failures)
        if good:
            batch = pixels if len(good) == len(failures) else pixels[good]
            for index, row in zip(good, self._logit_rows(batch, [names[index] for index in good])):
                results[index] = row if isinstance(row, FastVitDetectError) else self._prediction(row)
        return results  # type: ignore[return-value]

    def _logit_rows(self, pixels: np.ndarray, names: Sequence[str]) -> list[np.ndarray | ModelOutputError]:
        try:
            logits = self.run_logits(self.preprocessor.normalize(pixels))
        except ModelOutputError as exc:
            if len(pixels) == 1:
                return [ModelOutputError(f"{names[0]}: {exc}", names[0])]
            rows: list[np.ndarray | ModelOutputError] = []
            for index in range(len(pixels)):  # find the image that fails the batch; the others still get answers
                rows.extend(self._logit_rows(pixels[index:index + 1], names[index:index + 1]))
            return rows
        finite = np.isfinite(logits).all(axis=1)
        return [row if ok else ModelOutputError(
                    f"{name}: the model returned non-finite logits {row.tolist()}; no verdict", name)
                for row, ok, name in zip(logits, finite, names)]

    def explain(
        self, image: ImageInput, method: str = "occlusion", target: str = "fake", **options: Any
    ) -> Explanation:
        """Why the verdict: a heat map of the regions whose hiding lowers p(``target``) most.

        ``method``: "occlusion" (options ``grid``, ``baseline``) or "rise" (``samples``, ``grid``, ``baseline``,
        ``seed``); ``target``: a label, "predicted" (the verdict's label) or "fake"; ``batch_size``: masked copies
        per session call. See :mod:`fastvit_detect.explain` for the methods, their defaults and the geometry.
        """
        from .explain import explain  # explain builds on this module: import it where it is used

        return explain(self, image, method=method, target=target, **options)

    def run_logits(self, pixel_values: np.ndarray) -> np.ndarray:
        """Raw logits for an already preprocessed float32 NCHW batch."""
        logits = self.session.run(pixel_values)
        if logits.ndim != 2 or logits.shape != (len(pixel_values), len(self.labels)):
            raise IncompatibleModelError(
                f"{self.variant.path}: model returned logits of shape {logits.shape} for {len(pixel_values)} "
                f"image(s), expected ({len(pixel_values)}, {len(self.labels)})"
            )
        return logits

    def _prediction(self, logits: np.ndarray) -> Prediction:
        (prediction,) = self._postprocess(logits[None, :])
        return prediction

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
