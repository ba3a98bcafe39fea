"""Fine-tune a ViT real-vs-fake image classifier and save a Hugging Face checkpoint.

Usage::

    python train/finetune.py --data data/synthetic --base tiny --output checkpoints/vit-tiny-synthetic
    python train/finetune.py --data DIR --base google/vit-base-patch16-224-in21k --output CKPT
    python train/finetune.py --data DIR --base path/to/local/checkpoint --output CKPT

``--data`` has the seed project's layout ``{Train,Validation,Test}/{Real,Fake}/*``
(as written by ``train/make_dataset.py``).  The minority class of the Train split
is over-sampled to balance it, as the seed project did.  Training feeds the
model through the runtime's own preprocessing for the saved ``ViTImageProcessor``
(fastvit_detect.preprocess: EXIF orientation, PIL bilinear resize to 224x224,
rescale by 1/255, normalise with mean = std = 0.5), with random horizontal flips
and a small colour jitter on top, and finds images as the runtime does
(sub-folders included, suffixes in any case).

The output directory receives ``model.safetensors`` + ``config.json``
(``id2label = {0: "Fake", 1: "Real"}``), ``preprocessor_config.json`` and
``training_summary.json``.

``--faces PKG`` trains on the face crops inference classifies: each image is cut to its most confident face by the
runtime's own code (``fastvit_detect.faces.face_pixels``: MTCNN from model package PKG, exported with ``--faces``, and
``face_crop`` with ``--face-margin``, default 0.3, as ``predict --faces``), then preprocessed as above; an image with
no face is used whole, as inference falls back to the whole image. So training and inference can't disagree on
what a face crop is. Export the checkpoint with ``--expects-faces`` so that ``predict`` finds the faces too.

``--base tiny`` builds a small randomly initialised ViT (224x224 input, 16x16
patches, so the export / runtime path is the same as for ViT-Base; hidden 192,
2 layers, 3 heads by default) that trains in minutes on a CPU and needs no
network access.  Its patch embedding starts from a frequency-whitened DCT
filter bank (``dct_patch_filters``; ``--tiny-patch-init random`` for the usual
Gaussian): with the Gaussian init a from-scratch ViT does not find the faint
high-frequency traces of ``make_dataset.py`` within minutes.  On a 2-core CPU,
the defaults on ``make_dataset.py --images 3800 --seed 0`` reach about 99 %
Validation and Test accuracy in about 3 minutes.
"""

from __future__ import annotations

import os

# Let idle OpenMP threads sleep instead of spinning: on a small machine shared
# with other work, spinning threads of a 2-thread torch run slow it down ~2x
# (measured on 2 cores with one busy: 56 -> 95 img/s), for a ~10 % cost when
# the machine is idle.  Must be set before torch is imported; an explicit
# OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import json
import math
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    PreTrainedModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)
from transformers.image_utils import PILImageResampling

from fastvit_detect.errors import FastVitDetectError
from fastvit_detect.faces import DEFAULT_MARGIN, FaceOptions, face_pixels, open_face_detector
from fastvit_detect.options import refuse_empty_text
from fastvit_detect.package import ModelPackage
from fastvit_detect.preprocess import Preprocessor, decode_opened, find_images

ID2LABEL = {0: "Fake", 1: "Real"}
LABEL2ID = {label: index for index, label in ID2LABEL.items()}
SPLITS = ("Train", "Validation", "Test")
MODEL_INPUT_SIZE = 224
NORMALISE_MEAN = 0.5
NORMALISE_STD = 0.5
TINY_BASE = "tiny"
BYTES_PER_CACHED_IMAGE = MODEL_INPUT_SIZE * MODEL_INPUT_SIZE * 3

# Defaults that differ between training a small ViT from scratch and
# fine-tuning a pretrained one.
TINY_DEFAULTS = {"epochs": 8, "lr": 1e-3, "weight_decay": 0.05}
PRETRAINED_DEFAULTS = {"epochs": 3, "lr": 5e-5, "weight_decay": 0.01}


class TrainingError(RuntimeError):
    """A problem with the user's inputs, reported without a traceback."""


def log(message: str) -> None:
    print(f"[finetune] {message}", flush=True)


# --------------------------------------------------------------------------- #
# Preprocessing: the exact ViTImageProcessor (use_fast=False) semantics.
# --------------------------------------------------------------------------- #


def make_image_processor() -> ViTImageProcessor:
    """The processor saved with the checkpoint; training reproduces it exactly."""
    return ViTImageProcessor(
        do_resize=True,
        size={"height": MODEL_INPUT_SIZE, "width": MODEL_INPUT_SIZE},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[NORMALISE_MEAN] * 3,
        image_std=[NORMALISE_STD] * 3,
    )


# The runtime's preprocessing for the processor saved with the checkpoint: the model trains on exactly the pixels
# it will be served (EXIF orientation applied, any mode to RGB, the HF resize), not on a look-alike.
PREPROCESSOR = Preprocessor.from_hf(make_image_processor().to_dict())


def load_resized(path: Path) -> np.ndarray:
    """Decode and resize like the runtime (and the slow ViTImageProcessor); uint8 (224, 224, 3)."""
    return PREPROCESSOR.to_pixels(path)


class FaceCrops:
    """Loads an image as its most confident face's crop, resized as :func:`load_resized` resizes, exactly as
    inference makes it (``fastvit_detect.faces.face_pixels``); the whole image when it has no face."""

    def __init__(self, package: Path, margin: float = DEFAULT_MARGIN) -> None:
        self.detector = open_face_detector(ModelPackage.open(package))  # its files checked against the manifest
        self.options = FaceOptions(max_faces=1, margin=margin)  # the most confident face: the same as with more
        self.package, self.faceless = package, set[Path]()

    def __call__(self, path: Path) -> np.ndarray:
        picture = decode_opened(PREPROCESSOR.open(path))  # as Detector decodes for its face detector
        faces, pixels = face_pixels(picture, self.detector, self.options, PREPROCESSOR.to_pixels,
                                    PREPROCESSOR.output_size, whole_image=True)
        if not faces:
            self.faceless.add(path)
        return pixels[0]


# Augmentation works on [0, 1] values: the processor's rescale (float64, cast to float32) as a lookup table.
RESCALE_TABLE = torch.from_numpy((np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32))


def to_pixel_values(batch: np.ndarray) -> torch.Tensor:
    """uint8 (B, 224, 224, 3) -> normalised float32 (B, 3, 224, 224), as the runtime computes it."""
    return torch.from_numpy(PREPROCESSOR.normalize(batch))


@dataclass(frozen=True)
class Augmentation:
    """Random horizontal flip and a small colour jitter (torchvision ColorJitter semantics)."""

    flip_probability: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1

    def __call__(self, batch: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> augmented, normalised float32 (B, 3, H, W).

        The jitter is applied to the resized image rather than before resizing:
        both steps are linear per pixel, so the order only changes rounding.
        """
        images = RESCALE_TABLE[torch.from_numpy(batch).long()].permute(0, 3, 1, 2)  # [0, 1]
        size = images.shape[0]

        def factors(strength: float) -> torch.Tensor:
            return 1 + (torch.rand(size, 1, 1, 1, generator=generator) * 2 - 1) * strength

        flip = torch.rand(size, generator=generator) < self.flip_probability
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        images = (images * factors(self.brightness)).clamp(0, 1)
        grey = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        mean_grey = grey.mean(dim=(2, 3), keepdim=True)
        contrast = factors(self.contrast)
        images = (contrast * images + (1 - contrast) * mean_grey).clamp(0, 1)
        grey = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        saturation = factors(self.saturation)
        images = (saturation * images + (1 - saturation) * grey).clamp(0, 1)
        return ((images - NORMALISE_MEAN) / NORMALISE_STD).contiguous()


# --------------------------------------------------------------------------- #
# Data.
# --------------------------------------------------------------------------- #


@dataclass
class ImageSplit:
    name: str
    paths: list[Path]
    labels: np.ndarray  # int64 class ids
    cache: np.ndarray | None = None  # uint8 (N, 224, 224, 3) when preloaded
    load: Callable[[Path], np.ndarray] = load_resized  # or a FaceCrops

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        return {ID2LABEL[i]: int((self.labels == i).sum()) for i in sorted(ID2LABEL)}

    def preload(self) -> None:
        start = time.perf_counter()
        self.cache = np.empty((len(self), MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, 3), dtype=np.uint8)
        for index, path in enumerate(self.paths):
            self.cache[index] = self.load(path)
        log(f"{self.name}: decoded and resized {len(self)} images in {time.perf_counter() - start:.1f} s")

    def pixels(self, indices: np.ndarray) -> np.ndarray:
        if self.cache is not None:
            return self.cache[indices]
        return np.stack([self.load(self.paths[i]) for i in indices])


def find_split(data_dir: Path, split: str) -> ImageSplit:
    paths: list[Path] = []
    labels: list[int] = []
    for label, class_id in LABEL2ID.items():
        class_dir = data_dir / split / label
        if not class_dir.is_dir():
            raise TrainingError(f"missing directory {class_dir} (expected {{Train,Validation,Test}}/{{Real,Fake}})")
        files = find_images(class_dir)  # as the runtime finds them: sub-folders too, any case of suffix
        paths += files
        labels += [class_id] * len(files)
    if not paths:
        raise TrainingError(f"no images found under {data_dir / split}")
    return ImageSplit(split, paths, np.asarray(labels, dtype=np.int64))


def oversample_minority(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices in which every class appears as often as the largest one.

    The originals are all kept and smaller classes are topped up with random
    duplicates (like imblearn's RandomOverSampler, which the seed project used).
    """
    classes, counts = np.unique(labels, return_counts=True)
    target = counts.max()
    indices = [np.arange(len(labels))]
    for class_id, count in zip(classes, counts):
        members = np.flatnonzero(labels == class_id)
        if count < target:
            indices.append(rng.choice(members, size=target - count, replace=True))
    return np.concatenate(indices)


def batches(indices: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), batch_size):
        yield indices[start : start + batch_size]


# --------------------------------------------------------------------------- #
# Model.
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class TinyViTShape:
    # Wide and shallow: the width sets how many DCT frequencies the patch
    # embedding covers, which matters more for forensic traces than depth.
    hidden_size: int = 192
    layers: int = 2
    heads: int = 3
    mlp_ratio: int = 2


def dct_patch_filters(hidden_size: int, patch_size: int, seed: int) -> torch.Tensor:
    """A frequency-whitened 2-D DCT filter bank for the patch embedding, (hidden, 3, p, p).

    Each output channel is one orthonormal DCT-II basis image on a luma
    (3/4 of the channels) or chroma axis, picked at random without repetition,
    and scaled up with its spatial frequency.  Natural-image content has a
    1/f spectrum, so the whitening gives low- and high-frequency coefficients
    comparable magnitudes: the token LayerNorm then does not drown the faint
    high-frequency traces (sensor noise, up-sampling artifacts) that separate
    real from generated images under the content's low-frequency energy.  With
    the default Gaussian init a from-scratch ViT needs far longer to find them.
    """
    positions = np.arange(patch_size)
    basis = np.cos(np.pi * (2 * positions[None, :] + 1) * positions[:, None] / (2 * patch_size))
    basis[0] /= np.sqrt(2)
    basis *= np.sqrt(2 / patch_size)  # basis[u] is the u-th orthonormal 1-D DCT-II vector
    colour_axes = np.array([[1, 1, 1] / np.sqrt(3), [1, -1, 0] / np.sqrt(2), [1, 1, -2] / np.sqrt(6)])
    rng = np.random.default_rng(seed)
    frequencies = [(u, v) for u in range(patch_size) for v in range(patch_size)]
    luma_channels = hidden_size * 3 // 4
    chosen = [(0, frequencies[i]) for i in rng.choice(len(frequencies), luma_channels, replace=False)]
    chroma = [(axis, f) for axis in (1, 2) for f in frequencies]
    chosen += [chroma[i] for i in rng.choice(len(chroma), hidden_size - luma_channels, replace=False)]
    filters = np.zeros((hidden_size, 3, patch_size, patch_size), dtype=np.float32)
    for channel, (axis, (u, v)) in enumerate(chosen):
        whitening = max(1.0, np.hypot(u, v)) / 4.0
        filters[channel] = colour_axes[axis][:, None, None] * np.outer(basis[u], basis[v])[None] * whitening
    return torch.from_numpy(filters)


def build_tiny_model(shape: TinyViTShape, patch_init: str = "dct", seed: int = 0) -> ViTForImageClassification:
    config = ViTConfig(
        image_size=MODEL_INPUT_SIZE,
        patch_size=16,
        num_channels=3,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.hidden_size * shape.mlp_ratio,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=len(ID2LABEL),
        id2label=dict(ID2LABEL),
        label2id=dict(LABEL2ID),
    )
    model = ViTForImageClassification(config)
    if patch_init == "dct":
        projection = model.vit.embeddings.patch_embeddings.projection
        with torch.no_grad():
            projection.weight.copy_(dct_patch_filters(shape.hidden_size, config.patch_size, seed))
            projection.bias.zero_()
    return model


def load_pretrained_model(base: str) -> PreTrainedModel:
    try:
        source_config = AutoConfig.from_pretrained(base)
        model = AutoModelForImageClassification.from_pretrained(
            base,
            num_labels=len(ID2LABEL),
            id2label=dict(ID2LABEL),
            label2id=dict(LABEL2ID),
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as error:
        raise TrainingError(
            f"could not load --base {base!r}: {error}\n"
            f"(use a local checkpoint directory, or --base {TINY_BASE} to start offline from a small random ViT)"
        ) from error
    _align_classifier_with_labels(model, source_config)
    image_size = getattr(model.config, "image_size", MODEL_INPUT_SIZE)
    if image_size != MODEL_INPUT_SIZE:
        log(f"warning: {base} expects {image_size}px input, but images are resized to {MODEL_INPUT_SIZE}px")
    return model


def _align_classifier_with_labels(model: PreTrainedModel, source_config: transformers.PretrainedConfig) -> None:
    """Keep a two-class Real/Fake head meaningful if the source numbered the classes the other way.

    ``ignore_mismatched_sizes`` only re-initialises heads of a different shape,
    so a head trained with {0: Real, 1: Fake} would otherwise be loaded as is
    and silently have its outputs relabelled.
    """
    source_labels = {int(k): str(v).lower() for k, v in (source_config.id2label or {}).items()}
    wanted = {k: v.lower() for k, v in ID2LABEL.items()}
    if sorted(source_labels.values()) != sorted(wanted.values()) or source_labels == wanted:
        return
    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear):
        return
    order = [next(k for k, v in source_labels.items() if v == wanted[i]) for i in sorted(wanted)]
    with torch.no_grad():
        head.weight.copy_(head.weight[order].clone())
        head.bias.copy_(head.bias[order].clone())
    log(f"reordered the classifier rows of the base checkpoint from {source_config.id2label} to {ID2LABEL}")


# --------------------------------------------------------------------------- #
# Training.
# --------------------------------------------------------------------------- #


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    per_class_accuracy: dict[str, float]


@torch.inference_mode()
def evaluate(model: PreTrainedModel, split: ImageSplit, batch_size: int) -> Evaluation:
    model.eval()
    predictions = np.empty(len(split), dtype=np.int64)
    total_loss = 0.0
    for indices in batches(np.arange(len(split)), batch_size):
        pixel_values = to_pixel_values(split.pixels(indices))
        labels = torch.from_numpy(split.labels[indices])
        output = model(pixel_values=pixel_values, labels=labels)
        total_loss += float(output.loss) * len(indices)
        predictions[indices] = output.logits.argmax(-1).numpy()
    correct = predictions == split.labels
    per_class = {ID2LABEL[c]: float(correct[split.labels == c].mean()) for c in np.unique(split.labels)}
    return Evaluation(float(correct.mean()), total_loss / len(split), per_class)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        return os.cpu_count() or 1


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    started = time.perf_counter()
    is_tiny = args.base == TINY_BASE
    defaults = TINY_DEFAULTS if is_tiny else PRETRAINED_DEFAULTS
    epochs = args.epochs if args.epochs is not None else defaults["epochs"]
    lr = args.lr if args.lr is not None else defaults["lr"]
    weight_decay = args.weight_decay if args.weight_decay is not None else defaults["weight_decay"]

    splits = {name: find_split(args.data, name) for name in SPLITS}
    try:
        crops = FaceCrops(args.faces, args.face_margin) if args.faces is not None else None
    except FastVitDetectError as exc:  # not a package, no face detector, a tampered face graph
        raise TrainingError(f"--faces {args.faces}: {exc}") from exc
    if crops is not None:
        log(f"training on face crops (margin {args.face_margin}, face detector of {args.faces})")
        for split in splits.values():
            split.load = crops
    for split in splits.values():
        log(f"{split.name}: {len(split)} images {split.class_counts()}")

    if is_tiny:
        shape = TinyViTShape(args.tiny_hidden_size, args.tiny_layers, args.tiny_heads, args.tiny_mlp_ratio)
        model = build_tiny_model(shape, args.tiny_patch_init, args.seed)
    else:
        model = load_pretrained_model(args.base)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"model: {args.base} ({parameters / 1e6:.2f} M parameters), {args.threads} threads")

    cache_bytes = sum(len(s) for s in splits.values()) * BYTES_PER_CACHED_IMAGE
    if cache_bytes <= args.cache_gb * 2**30:
        for split in splits.values():
            split.preload()
    else:
        log(f"data set needs {cache_bytes / 2**30:.1f} GiB resized; decoding on the fly (raise --cache-gb to preload)")

    train_split = splits["Train"]
    sampling_rng = np.random.default_rng(args.seed)
    augmentation_generator = torch.Generator().manual_seed(args.seed)
    balanced_indices = oversample_minority(train_split.labels, sampling_rng)
    if len(balanced_indices) > len(train_split):
        log(f"over-sampled the minority class: {len(train_split)} -> {len(balanced_indices)} training images")
    steps_per_epoch = math.ceil(len(balanced_indices) / args.batch_size)
    total_steps = steps_per_epoch * epochs
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup_steps = max(1, round(args.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_steps))
    augment = Augmentation(brightness=args.jitter, contrast=args.jitter, saturation=args.jitter,
                           flip_probability=0.5 if args.flip else 0.0)

    log(f"training {epochs} epochs x {steps_per_epoch} steps (batch {args.batch_size}, lr {lr}, "
        f"weight decay {weight_decay}) = {total_steps} steps")
    history: list[dict] = []
    best: tuple[float, int, dict] | None = None
    step = 0
    training_started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        if step >= total_steps:
            break
        model.train()
        order = sampling_rng.permutation(balanced_indices)
        running_loss, running_count, window_started = 0.0, 0, time.perf_counter()
        for indices in batches(order, args.batch_size):
            if step >= total_steps:
                break
            pixel_values = augment(train_split.pixels(indices), augmentation_generator)
            labels = torch.from_numpy(train_split.labels[indices])
            loss = model(pixel_values=pixel_values, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            running_loss += loss.item() * len(indices)
            running_count += len(indices)
            if step % args.log_every == 0 or step == total_steps:
                rate = running_count / max(time.perf_counter() - window_started, 1e-9)
                log(f"epoch {epoch}/{epochs} step {step}/{total_steps} loss {running_loss / running_count:.4f} "
                    f"lr {scheduler.get_last_lr()[0]:.2e} {rate:.0f} img/s")
                running_loss, running_count, window_started = 0.0, 0, time.perf_counter()
        validation = evaluate(model, splits["Validation"], args.eval_batch_size)
        elapsed = time.perf_counter() - training_started
        log(f"epoch {epoch}: validation accuracy {validation.accuracy:.4f} loss {validation.loss:.4f} "
            f"{validation.per_class_accuracy} ({elapsed:.0f} s)")
        history.append({"epoch": epoch, "step": step, "validation_accuracy": validation.accuracy,
                        "validation_loss": validation.loss, "elapsed_seconds": round(elapsed, 1)})
        if args.keep_best and (best is None or validation.accuracy > best[0]):
            best = (validation.accuracy, epoch, copy.deepcopy(model.state_dict()))
    train_seconds = time.perf_counter() - training_started

    final_epoch = history[-1]["epoch"] if history else 0
    if best is not None and best[1] != final_epoch:
        log(f"restoring the weights of epoch {best[1]} (best validation accuracy {best[0]:.4f})")
        model.load_state_dict(best[2])
    chosen_epoch = best[1] if best is not None else final_epoch
    validation = evaluate(model, splits["Validation"], args.eval_batch_size)
    test = evaluate(model, splits["Test"], args.eval_batch_size)
    log(f"Validation accuracy {validation.accuracy:.4f}  Test accuracy {test.accuracy:.4f} {test.per_class_accuracy}")

    args.output.mkdir(parents=True, exist_ok=True)
    model.config.id2label = dict(ID2LABEL)
    model.config.label2id = dict(LABEL2ID)
    model.save_pretrained(args.output, safe_serialization=True)
    make_image_processor().save_pretrained(args.output)
    summary = {
        "data_dir": str(args.data.resolve()),
        "base": args.base,
        "model": {
            "parameters": parameters,
            "hidden_size": model.config.hidden_size,
            "num_hidden_layers": model.config.num_hidden_layers,
            "num_attention_heads": model.config.num_attention_heads,
            "intermediate_size": model.config.intermediate_size,
        },
        "hyperparameters": {
            "epochs": epochs,
            "lr": lr,
            "batch_size": args.batch_size,
            "weight_decay": weight_decay,
            "warmup_ratio": args.warmup_ratio,
            "schedule": "linear warmup + cosine decay",
            "max_grad_norm": args.max_grad_norm,
            "max_steps": args.max_steps,
            "horizontal_flip": args.flip,
            "colour_jitter": args.jitter,
            "keep_best": args.keep_best,
            "tiny_patch_init": args.tiny_patch_init if is_tiny else None,
        },
        "faces": None if crops is None else {"package": str(crops.package), "margin": args.face_margin,
                                             "images_without_a_face": len(crops.faceless)},
        "seed": args.seed,
        "threads": args.threads,
        "images": {name: split.class_counts() for name, split in splits.items()},
        "train_images_after_oversampling": len(balanced_indices),
        "steps": step,
        "epochs_completed": final_epoch,
        "chosen_epoch": chosen_epoch,
        "train_time_seconds": round(train_seconds, 1),
        "total_time_seconds": round(time.perf_counter() - started, 1),
        "validation_accuracy": validation.accuracy,
        "test_accuracy": test.accuracy,
        "test_per_class_accuracy": test.per_class_accuracy,
        "history": history,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
    }
    (args.output / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"saved checkpoint to {args.output} "
        f"(training {train_seconds:.0f} s, total {summary['total_time_seconds']:.0f} s)")
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fine-tune a ViT real/fake classifier on {Train,Validation,Test}/{Real,Fake} image folders "
        "and save a safetensors Hugging Face checkpoint with its ViTImageProcessor.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True, help="data-set root with Train/Validation/Test")
    parser.add_argument("--base", required=True,
                        help=f"Hub id (e.g. google/vit-base-patch16-224-in21k, facebook/deit-base-patch16-224), "
                        f"a local checkpoint directory, or '{TINY_BASE}' for a small random ViT (offline)")
    parser.add_argument("--output", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default {TINY_DEFAULTS['epochs']} for tiny, {PRETRAINED_DEFAULTS['epochs']} otherwise")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"peak learning rate; default {TINY_DEFAULTS['lr']} for tiny, "
                        f"{PRETRAINED_DEFAULTS['lr']} otherwise")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help=f"AdamW weight decay; default {TINY_DEFAULTS['weight_decay']} for tiny, "
                        f"{PRETRAINED_DEFAULTS['weight_decay']} otherwise")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of steps with linear warm-up")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch CPU threads")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    parser.add_argument("--jitter", type=float, default=0.1,
                        help="colour-jitter strength for brightness, contrast and saturation (0 disables)")
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="disable random horizontal flips")
    parser.add_argument("--no-keep-best", dest="keep_best", action="store_false",
                        help="save the last epoch instead of the one with the best validation accuracy")
    parser.add_argument("--cache-gb", type=float, default=4.0,
                        help="preload the resized images when they fit in this many GiB")
    parser.add_argument("--log-every", type=int, default=20, help="print the training loss every N steps")
    parser.add_argument("--faces", type=Path, default=None, metavar="PKG",
                        help="train on each image's most confident face crop, cut as inference cuts it, with the "
                             "face detector of model package PKG (exported with --faces); faceless images whole")
    parser.add_argument("--face-margin", type=float, default=DEFAULT_MARGIN,
                        help="with --faces: a crop's side is (1 + margin) x the face box's longer side")
    tiny = parser.add_argument_group(f"--base {TINY_BASE} model shape")
    tiny.add_argument("--tiny-hidden-size", type=int, default=TinyViTShape.hidden_size)
    tiny.add_argument("--tiny-layers", type=int, default=TinyViTShape.layers)
    tiny.add_argument("--tiny-heads", type=int, default=TinyViTShape.heads)
    tiny.add_argument("--tiny-mlp-ratio", type=int, default=TinyViTShape.mlp_ratio)
    tiny.add_argument("--tiny-patch-init", choices=("dct", "random"), default="dct",
                      help="patch-embedding init: a frequency-whitened DCT filter bank, or the usual Gaussian")
    args = refuse_empty_text(parser).parse_args(argv)

    positive = {"--batch-size": args.batch_size, "--eval-batch-size": args.eval_batch_size,
                "--threads": args.threads, "--log-every": args.log_every}
    if args.epochs is not None:
        positive["--epochs"] = args.epochs
    if args.max_steps is not None:
        positive["--max-steps"] = args.max_steps
    for name, value in positive.items():
        if value < 1:
            parser.error(f"{name} must be at least 1 (got {value})")
    if args.lr is not None and args.lr <= 0:
        parser.error(f"--lr must be positive (got {args.lr})")
    if not 0 <= args.warmup_ratio < 1:
        parser.error(f"--warmup-ratio must be in [0, 1) (got {args.warmup_ratio})")
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a directory")
    if args.faces is not None and not args.faces.is_dir():
        parser.error(f"--faces {args.faces} is not a model package directory")
    if not (math.isfinite(args.face_margin) and 0 <= args.face_margin <= 4):
        parser.error(f"--face-margin must be in [0, 4] (got {args.face_margin})")
    if args.tiny_hidden_size % args.tiny_heads:
        parser.error("--tiny-hidden-size must be a multiple of --tiny-heads")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except TrainingError as error:
        print(f"finetune.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
