"""Faces first: MTCNN face detection on onnxruntime with numpy pre- and post-processing, and the face crops that the
classifier sees.

The detectors this library serves were fine-tuned on face crops, so on a whole photo the verdict should come from
the faces in it. :class:`FaceDetector` runs MTCNN's three nets (exported from facenet-pytorch's weights by
``fastvit-detect export --faces``, see :mod:`fastvit_detect.build.faces`) the way facenet-pytorch's
``MTCNN.detect`` does: an image pyramid (smallest face ``min_face_size`` px, factor 0.709), P-net proposals, NMS,
box regression, squared boxes, R-net refinement, O-net with five landmarks. Resizing reproduces torch's
``interpolate(mode="area")`` (an adaptive average pool) with cumulative sums, and pixels are normalised as
``(x - 127.5) * 0.0078125``; boxes match the reference within IoU 0.9 (``tests/test_faces.py``).

Where this departs from the reference, on purpose:

- Detection runs on a copy of the image whose long side is at most ``max_side`` (default 1600 px); boxes and
  landmarks map back to the upright original's pixels. Faces smaller than ``min_face_size`` px *of that copy* are
  not searched for: on a 4000x3000 photo that is 50 px of the original.
- Every stage is capped (:data:`MAX_PROPOSALS`, :data:`MAX_REFINED`) and at most ``max_faces`` faces (default
  :data:`DEFAULT_MAX_FACES`) are returned, the most confident first: an image of a crowd costs bounded time.
- A box a net makes degenerate (NaN or infinite numbers, zero or negative size, entirely outside the image) is
  dropped, never cropped or returned; the reference would crash or mis-index on some of those.

Crop convention (:func:`face_crop`): a square centred on the face box, of side ``(1 + margin) * max(width,
height)`` (margin 0.3: the 1.3x box of DeepfakeBench's face crops), taken from the original image, the parts outside
the image filled with black. The crop is never out of bounds, whatever the box.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import (
    IncompatibleModelError,
    InvalidOptionError,
    InvalidPackageError,
    MissingFaceDetectorError,
    ModelOutputError,
)
from .manifest import VariantEntry, parse_file_entry
from .options import check_finite, check_whole
from .package import MANIFEST_FILE, ModelPackage, Variant

__all__ = ["DEFAULT_MARGIN", "DEFAULT_MAX_FACES", "DEFAULT_MAX_SIDE", "DEFAULT_MIN_FACE_SIZE", "FACE_FILES",
           "Face", "FaceDetector", "FaceOptions", "MissingFaceDetectorError", "bounded_face_crop", "face_crop",
           "face_pixels"]

FACE_FILES = {"pnet": "face_pnet.onnx", "rnet": "face_rnet.onnx", "onet": "face_onet.onnx"}
FACE_LICENSE_FILE = "face_detector_LICENSE.txt"

DEFAULT_MIN_FACE_SIZE = 20  # px of the detection copy: facenet-pytorch's default
DEFAULT_MAX_FACES = 64
DEFAULT_MAX_SIDE = 1600
DEFAULT_MARGIN = 0.3
MAX_MIN_FACE_SIZE = 10_000
MAX_MAX_FACES = 1024
MAX_MAX_SIDE = 16_384
MIN_MAX_SIDE = 64
PYRAMID_FACTOR = 0.709
THRESHOLDS = (0.6, 0.7, 0.7)  # P-, R-, O-net face probability
MAX_PROPOSALS = 4096  # P-net windows per pyramid level and overall, the most confident kept
MAX_REFINED = 512  # R-net survivors sent to the O-net
MAX_CROP_SIDE = 4096  # a face crop larger than this is cut from a reduced copy: see bounded_face_crop
MAX_BOX_FACTOR = 2.0  # a face box's side is at most this times the image's longer side (a close-up's box overhangs)
_CELL, _STRIDE = 12, 2  # P-net's window and step, in pyramid pixels


@dataclass(frozen=True)
class Face:
    """A face found in an image: ``box`` (x0, y0, x1, y1) in the upright original's pixels (it may reach past the
    border for a face cut by the edge), the detector's ``score`` (0-1) and five ``landmarks`` (x, y) in MTCNN's
    order: the eye on the image's left, the other eye, the nose, the mouth's left and right corners."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def size(self) -> float:
        """The longer side of the box, in pixels."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])

    def to_dict(self) -> dict[str, Any]:
        return {"box": [round(value, 2) for value in self.box], "score": self.score,
                "landmarks": None if self.landmarks is None else [[round(x, 2), round(y, 2)]
                                                                  for x, y in self.landmarks]}


@dataclass(frozen=True)
class FaceOptions:
    """Detection and crop geometry. ``min_face_size``: the smallest face searched for, in px of the detection copy;
    ``max_faces``: at most this many faces per image, the most confident; ``max_side``: the detection copy's long
    side (None: detect on the full image, slower on large photos); ``margin``: the crop's side is ``1 + margin``
    times the face box's longer side."""

    min_face_size: int = DEFAULT_MIN_FACE_SIZE
    max_faces: int = DEFAULT_MAX_FACES
    max_side: int | None = DEFAULT_MAX_SIDE
    margin: float = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        check_whole("min_face_size", self.min_face_size, _CELL, MAX_MIN_FACE_SIZE, InvalidOptionError)
        check_whole("max_faces", self.max_faces, 1, MAX_MAX_FACES, InvalidOptionError)
        if self.max_side is not None:
            check_whole("max_side", self.max_side, MIN_MAX_SIDE, MAX_MAX_SIDE, InvalidOptionError)
        check_finite("margin", self.margin, 0.0, 4.0, InvalidOptionError)


Net = Callable[[np.ndarray], list[np.ndarray]]


class FaceDetector:
    """MTCNN's three nets on onnxruntime. Thread-safe (onnxruntime sessions are)."""

    def __init__(self, pnet: Net, rnet: Net, onet: Net) -> None:
        self.pnet, self.rnet, self.onet = pnet, rnet, onet

    @classmethod
    def open(cls, paths: Mapping[str, Path], threads: int | None = None) -> FaceDetector:
        """Sessions on the three graphs (``paths`` keyed pnet, rnet, onet)."""
        import onnxruntime as ort

        from .session import session_options

        options = session_options(threads)
        # A detection is a dozen short calls (a pyramid level each, then the R- and O-net) between numpy stages:
        # pool threads spin-waiting after each would burn the cores those stages, and the classifier after them,
        # need. Measured on a 1 MP photo, 2 threads, the 2-core machine loaded: 763 ms wall and 429 ms of CPU
        # spinning, 316 and 220 not (1 thread: 324 and 185).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def net(name: str, path: Path) -> Net:
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own types for a file that isn't a usable graph
                raise InvalidPackageError(f"{path}: the face detector's {name} isn't a usable ONNX graph: "
                                          f"{exc}") from exc
            inputs = session.get_inputs()
            if [item.name for item in inputs] != ["input"] or len(inputs[0].shape) != 4:
                raise IncompatibleModelError(f"{path}: the face detector's {name} must take one NCHW 'input', it takes "
                                             f"{[(item.name, item.shape) for item in inputs]}")

            def run(pixels: np.ndarray) -> list[np.ndarray]:
                try:
                    return [np.asarray(output) for output in session.run(None, {"input": pixels})]
                except Exception as exc:  # the graph's failure on an input: the model's fault, never a verdict
                    raise ModelOutputError(f"the face detector's {name} failed on {pixels.shape}: {exc}") from exc
            return run

        return cls(*(net(name, paths[name]) for name in ("pnet", "rnet", "onet")))

    def detect(self, image: Image.Image, options: FaceOptions = FaceOptions()) -> list[Face]:
        """The faces in an upright image (converted to RGB if it isn't), the most confident first."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        copy = image
        if options.max_side is not None and max(image.size) > options.max_side:
            scale = options.max_side / max(image.size)
            copy = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                Image.Resampling.BOX)
        boxes, points = self.detect_pixels(np.asarray(copy), options.min_face_size)
        back = np.array([image.width / copy.width, image.height / copy.height], dtype=np.float64)
        faces = []
        for row, landmarks in zip(boxes[: options.max_faces], points[: options.max_faces]):
            x0, y0, x1, y1 = (float(value) for value in row[:4] * np.tile(back, 2))
            marks = tuple((float(x), float(y)) for x, y in landmarks * back)
            faces.append(Face((x0, y0, x1, y1), float(row[4]), marks))
        return faces

    def detect_pixels(self, pixels: np.ndarray, min_face_size: int = DEFAULT_MIN_FACE_SIZE
                      ) -> tuple[np.ndarray, np.ndarray]:
        """MTCNN on an HxWx3 array of 0-255 values (uint8, or float32): boxes (N, 5: x0, y0, x1, y1, score) and
        landmarks (N, 5, 2), the most confident first."""
        sampler = AreaSampler(pixels)
        boxes = self._propose(pixels, sampler, min_face_size)
        if len(boxes):
            boxes = self._refine(pixels, sampler, boxes)
        if not len(boxes):
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        return self._output(pixels, sampler, boxes)

    # --- stage 1: P-net over the pyramid ------------------------------------------------------------------------

    def _propose(self, pixels: np.ndarray, sampler: AreaSampler, min_face_size: int) -> np.ndarray:
        height, width = pixels.shape[:2]
        found = []
        for scale in pyramid_scales(height, width, min_face_size):
            level = sampler.resize(int(height * scale + 1), int(width * scale + 1))
            regression, probabilities = self.pnet(_normalized(level))[:2]
            candidates = _windows(regression, probabilities, scale)
            candidates = candidates[_top(candidates[:, 4], MAX_PROPOSALS)]
            found.append(candidates[nms(candidates[:, :4], candidates[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 9), np.float32)
        boxes = np.concatenate(found)
        boxes = boxes[_top(boxes[:, 4], MAX_PROPOSALS)]
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        width_, height_ = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        regressed = np.stack([boxes[:, 0] + boxes[:, 5] * width_, boxes[:, 1] + boxes[:, 6] * height_,
                              boxes[:, 2] + boxes[:, 7] * width_, boxes[:, 3] + boxes[:, 8] * height_,
                              boxes[:, 4]], axis=1)
        return square(_sane(regressed, height, width))

    # --- stage 2: R-net on 24x24 crops ------------------------------------------------------------------------

    def _refine(self, pixels: np.ndarray, sampler: AreaSampler, boxes: np.ndarray) -> np.ndarray:
        crops, boxes = _crops(pixels, sampler, boxes, 24)
        if not len(boxes):
            return boxes
        regression, probabilities = _checked(self.rnet(crops), 2, len(boxes))
        score = probabilities[:, 1]
        keep = score > THRESHOLDS[1]
        boxes = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
        regression = regression[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)[:MAX_REFINED]
        return square(_sane(regress(boxes[pick], regression[pick]), *pixels.shape[:2]))

    # --- stage 3: O-net on 48x48 crops, landmarks -------------------------------------------------------------

    def _output(self, pixels: np.ndarray, sampler: AreaSampler, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        crops, boxes = _crops(pixels, sampler, boxes, 48)
        if not len(boxes):
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        regression, landmarks, probabilities = _checked(self.onet(crops), 3, len(boxes))
        score = probabilities[:, 1]
        keep = score > THRESHOLDS[2]
        boxes = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
        landmarks, regression = landmarks[keep], regression[keep]
        side_x = boxes[:, 2] - boxes[:, 0] + 1
        side_y = boxes[:, 3] - boxes[:, 1] + 1
        points = np.stack([side_x[:, None] * landmarks[:, :5] + boxes[:, 0, None] - 1,
                           side_y[:, None] * landmarks[:, 5:10] + boxes[:, 1, None] - 1], axis=2)
        boxes = regress(boxes, regression)
        sound = np.isfinite(points).all(axis=(1, 2))
        boxes, points = boxes[sound], points[sound]
        kept = _sane(np.concatenate([boxes, np.arange(len(boxes))[:, None]], axis=1), *pixels.shape[:2])
        boxes, points = kept[:, :5], points[kept[:, 5].astype(np.intp)]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, smaller=True)
        return boxes[pick].astype(np.float32), points[pick].astype(np.float32)


def pyramid_scales(height: int, width: int, min_face_size: int, factor: float = PYRAMID_FACTOR) -> list[float]:
    """The scales at which P-net's 12 px window sees faces from ``min_face_size`` px up to the image's short side."""
    scale = 12.0 / min_face_size
    side = min(height, width) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


class AreaSampler:
    """Area resizing of any rectangle of one image, as torch's ``interpolate(mode="area")`` (adaptive average
    pooling) resizes: output cell i averages input cells floor(i*n/m) to ceil((i+1)*n/m) - 1 of each axis.

    One summed-area table serves every pyramid level and every crop, so each resize costs four lookups per output
    pixel, whatever the size of the rectangle it averages. The table is exact: integers for byte pixels (int32
    while the image's total fits, as any detection copy's does), float64 for float pixels; so each output equals
    the bin's exact mean, as torch's pooling gives it. It is planar (channels first), so levels and crops come out
    in the nets' NCHW order without a transpose. (A 1 MP photo's table took 37 ms of CPU in float64 from a float32
    copy of the pixels, 12 ms so.)
    """

    def __init__(self, pixels: np.ndarray) -> None:
        height, width, channels = pixels.shape
        if pixels.dtype == np.uint8:
            dtype: type = np.int32 if height * width * 255 < 2**31 else np.int64
        else:
            dtype = np.int64 if np.issubdtype(pixels.dtype, np.integer) else np.float64
        self.sums = np.zeros((channels, height + 1, width + 1), dtype=dtype)
        self.sums[:, 1:, 1:] = pixels.transpose(2, 0, 1)
        np.cumsum(self.sums, axis=1, out=self.sums)
        np.cumsum(self.sums, axis=2, out=self.sums)

    def resize(self, height: int, width: int) -> np.ndarray:
        """The whole image at height x width: C x H x W float32."""
        full_height, full_width = self.sums.shape[1] - 1, self.sums.shape[2] - 1
        (row_start, row_end), (column_start, column_end) = (
            (start[0], end[0]) for start, end in (_bins(np.zeros(1, np.int64), np.array([full_height]), height),
                                                  _bins(np.zeros(1, np.int64), np.array([full_width]), width)))
        # Separable: the row bins' sums of every column prefix first, then the column bins of those (two gathers of
        # whole rows and two of a smaller array, where the 2-D lookups gathered four times per output value).
        band = np.take(self.sums, row_end, axis=1) - np.take(self.sums, row_start, axis=1)
        total = np.take(band, column_end, axis=2) - np.take(band, column_start, axis=2)
        counts = (row_end - row_start)[:, None] * (column_end - column_start)[None, :]
        return (total / counts).astype(np.float32)

    def crops(self, rectangles: np.ndarray, height: int, width: int) -> np.ndarray:
        """Each (left, top, right, bottom) rectangle, in whole pixels inside the image and non-empty, at height x
        width: N x C x H x W float32."""
        left, top, right, bottom = (rectangles[:, index, None].astype(np.int64) for index in range(4))
        row_start, row_end = _bins(top, bottom, height)
        column_start, column_end = _bins(left, right, width)
        # Flat offsets into each channel's table and np.take: half the time of indexing the table by (row, column).
        stride = self.sums.shape[2]
        flat = self.sums.reshape(self.sums.shape[0], -1)
        rows_a, rows_b = (row_start * stride)[:, :, None], (row_end * stride)[:, :, None]
        columns_a, columns_b = column_start[:, None, :], column_end[:, None, :]
        total = (np.take(flat, rows_b + columns_b, axis=1) - np.take(flat, rows_a + columns_b, axis=1)
                 - np.take(flat, rows_b + columns_a, axis=1) + np.take(flat, rows_a + columns_a, axis=1))
        counts = (row_end - row_start)[:, :, None] * (column_end - column_start)[:, None, :]
        return (total / counts).astype(np.float32).transpose(1, 0, 2, 3)


def _bins(start: np.ndarray, end: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive pooling's bins of [start, end) into ``size`` cells, per row: (first, one past the last) indices."""
    length = end - start
    index = np.arange(size)[None, :]
    return start + (index * length) // size, start - ((-(index + 1) * length) // size)


def _normalized(pixels: np.ndarray) -> np.ndarray:
    """CxHxW (or NxCxHxW) pixels -> MTCNN's NCHW input, (x - 127.5) / 128."""
    batch = pixels[None] if pixels.ndim == 3 else pixels
    return np.ascontiguousarray((batch - np.float32(127.5)) * np.float32(0.0078125), dtype=np.float32)


def _windows(regression: np.ndarray, probabilities: np.ndarray, scale: float) -> np.ndarray:
    """P-net's windows over the threshold: (N, 9) rows of x0, y0, x1, y1, score and four regression offsets."""
    if regression.ndim != 4 or probabilities.ndim != 4 or regression.shape[1] != 4 or probabilities.shape[1] != 2:
        raise ModelOutputError(f"the face detector's P-net returned shapes {regression.shape}, {probabilities.shape}")
    score = probabilities[0, 1]
    rows, columns = np.nonzero(score >= THRESHOLDS[0])  # NaN compares False: never a window
    offsets = regression[0][:, rows, columns].T
    corner = np.stack([columns, rows], axis=1).astype(np.float32)
    top_left = np.floor((_STRIDE * corner + 1) / np.float32(scale))
    bottom_right = np.floor((_STRIDE * corner + _CELL) / np.float32(scale))
    return np.concatenate([top_left, bottom_right, score[rows, columns, None], offsets], axis=1).astype(np.float32)


def _top(scores: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the ``limit`` highest scores, in their original order (so ties break as without a cap)."""
    if len(scores) <= limit:
        return np.arange(len(scores))
    return np.sort(np.argsort(-scores, kind="stable")[:limit])


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, smaller: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, highest score first. Overlap is IoU with areas (x1 - x0) *
    (y1 - y0), as torchvision's ``nms``; ``smaller``: intersection over the smaller box with areas counted
    inclusively (+1), as facenet-pytorch's "Min" NMS of the last stage."""
    if not len(boxes):
        return np.zeros(0, dtype=np.intp)
    x0, y0, x1, y1 = (boxes[:, i].astype(np.float64) for i in range(4))
    extra = 1.0 if smaller else 0.0
    area = (x1 - x0 + extra) * (y1 - y0 + extra)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(best)
        overlap_w = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]) + extra)
        overlap_h = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]) + extra)
        inter = overlap_w * overlap_h
        if smaller:
            overlap = inter / np.minimum(area[best], area[rest])
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                overlap = inter / (area[best] + area[rest] - inter)
        order = rest[~(overlap > threshold)]
    return np.asarray(keep, dtype=np.intp)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boxes moved by the nets' regression, in units of the box's inclusive side (MTCNN's ``bbreg``)."""
    side_x = boxes[:, 2] - boxes[:, 0] + 1
    side_y = boxes[:, 3] - boxes[:, 1] + 1
    moved = boxes.copy()
    moved[:, 0] += offsets[:, 0] * side_x
    moved[:, 1] += offsets[:, 1] * side_y
    moved[:, 2] += offsets[:, 2] * side_x
    moved[:, 3] += offsets[:, 3] * side_y
    return moved


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square on its longer side, about its centre (MTCNN's ``rerec``)."""
    out = boxes.copy()
    height = boxes[:, 3] - boxes[:, 1]
    width = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(width, height)
    out[:, 0] = boxes[:, 0] + width * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + height * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _sane(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes with finite numbers, a positive size and a side of at most :data:`MAX_BOX_FACTOR` times the image's
    longer side: a net's NaN, inverted or runaway box is dropped here."""
    boxes = boxes[np.isfinite(boxes).all(axis=1)]
    box_width, box_height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    limit = MAX_BOX_FACTOR * max(height, width)
    return boxes[(box_width > 0) & (box_height > 0) & (box_width <= limit) & (box_height <= limit)]


def _crops(pixels: np.ndarray, sampler: AreaSampler, boxes: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Each box's pixels (clipped to the image, as MTCNN's ``pad``) resized to side x side, normalised; boxes that
    leave no pixel inside the image are dropped with their crops."""
    height, width = pixels.shape[:2]
    # Clipped before the cast: a huge coordinate must not overflow the integer conversion.
    x0 = np.trunc(np.clip(boxes[:, 0], 1, width + 1)).astype(np.int64)
    y0 = np.trunc(np.clip(boxes[:, 1], 1, height + 1)).astype(np.int64)
    x1 = np.trunc(np.clip(boxes[:, 2], -1, width)).astype(np.int64)
    y1 = np.trunc(np.clip(boxes[:, 3], -1, height)).astype(np.int64)
    inside = (x1 > x0 - 1) & (y1 > y0 - 1)
    if not inside.any():
        return np.zeros((0, 3, side, side), np.float32), boxes[:0]
    rectangles = np.stack([x0[inside] - 1, y0[inside] - 1, x1[inside], y1[inside]], axis=1)
    return _normalized(sampler.crops(rectangles, side, side)), boxes[inside]


def _checked(outputs: Sequence[np.ndarray], count: int, rows: int) -> list[np.ndarray]:
    if len(outputs) < count or any(output.ndim != 2 or len(output) != rows for output in outputs[:count]):
        raise ModelOutputError(f"the face detector returned outputs of shapes {[o.shape for o in outputs]} for "
                               f"{rows} crops")
    return [output.astype(np.float32, copy=False) for output in outputs[:count]]


def face_crop(image: Image.Image, face: Face, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The square crop the classifier sees for ``face``: side ``(1 + margin) * face.size`` about the box's centre,
    from the original image, the parts beyond the border black. HxWx3 uint8, never empty."""
    # PIL's crop fills what lies outside the image with zeros, and never reads out of bounds.
    return np.asarray(image.crop(crop_box(face, margin, image.size)), dtype=np.uint8)


def crop_box(face: Face, margin: float, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where :func:`face_crop` cuts ``face`` from an image of ``image_size`` (width, height): (left, top, right,
    bottom) in whole pixels, a square that may reach past the border."""
    x0, y0, x1, y1 = face.box
    extent = (1 + margin) * max(x1 - x0, y1 - y0)
    if not (math.isfinite(extent) and math.isfinite(x0 + y0) and extent <= MAX_BOX_FACTOR * (1 + margin) * max(
            image_size)):
        raise InvalidOptionError(f"face box {face.box} isn't a face of a {image_size[0]}x{image_size[1]} image")
    side = max(1, round(extent))
    left = math.floor((x0 + x1) / 2 - side / 2)
    top = math.floor((y0 + y1) / 2 - side / 2)
    return left, top, left + side, top + side


def bounded_face_crop(picture: Image.Image, face: Face, margin: float, limit: int = MAX_CROP_SIDE) -> np.ndarray:
    """:func:`face_crop`, with memory bounded whatever the box and margin: a crop whose side would pass ``limit`` px
    (a close-up face in a 40 MP photo with margin 4 is a 30,000 px square, 2.7 GB) is cut from a copy reduced by a
    whole factor, to at most ``limit`` px a side; below it, exactly face_crop. The classifier sees 224 px either
    way."""
    x0, y0, x1, y1 = face.box
    side = (1 + margin) * max(x1 - x0, y1 - y0)
    factor = math.ceil(side / limit) if math.isfinite(side) else 1  # face_crop refuses a box that isn't finite
    if factor <= 1:
        return face_crop(picture, face, margin)
    reduced = picture.reduce(factor)
    scale_x, scale_y = reduced.width / picture.width, reduced.height / picture.height
    shrunk = replace(face, box=(x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y), landmarks=None)
    return face_crop(reduced, shrunk, margin)


def face_pixels(picture: Image.Image, detector: FaceDetector, options: FaceOptions,
                to_pixels: Callable[[Any], np.ndarray], size: tuple[int, int],
                whole_image: bool = False) -> tuple[list[Face], np.ndarray]:
    """The faces of an upright picture and the classifier's input for each: :func:`bounded_face_crop` (that is,
    :func:`face_crop` for any crop up to :data:`MAX_CROP_SIDE` px) with ``options.margin``, then ``to_pixels`` (a
    preprocessor's resize and crop to ``size``, height x width), N x H x W x 3 uint8, the most confident face first.
    With no face, no rows, or (``whole_image``) one row: the whole picture. The one way a face becomes a classifier's
    input: inference (:meth:`Detector.face_pixels`) and fine-tuning (``train/finetune.py --faces``) both call it."""
    faces = detector.detect(picture, options)
    if not faces and whole_image:
        return faces, to_pixels(picture)[None]
    pixels = np.zeros((len(faces), size[0], size[1], 3), dtype=np.uint8)
    for row, face in enumerate(faces):
        pixels[row] = to_pixels(bounded_face_crop(picture, face, options.margin))
    return faces, pixels


# --- the face detector's files in a model package ---------------------------------------------------------------

FACES_SECTION = "faces"  # the manifest's section: {"files": {"pnet": {file, sha256, size_bytes}, ...}, ...}
EXPECTS_FACES = "expects_faces"  # the manifest's flag: the model was trained on face crops


def expects_faces(package: ModelPackage) -> bool:
    """Whether the package's manifest says its model expects face crops (``export --expects-faces``)."""
    return package.manifest is not None and package.manifest.extra.get(EXPECTS_FACES) is True


def face_detector_variants(package: ModelPackage) -> dict[str, Variant]:
    """The face graphs as variants of ``package`` (so they are checked like its graphs), vouched for by the
    manifest's ``faces`` section; a package without a manifest may hold them unverified, under their usual names.

    Raises :class:`MissingFaceDetectorError` naming the files when the package has no face detector."""
    where = f"model package {package.root}: {MANIFEST_FILE}"
    section = package.manifest.extra.get(FACES_SECTION) if package.manifest is not None else None
    if section is None:
        present = package.manifest is None and all((package.root / name).is_file() for name in FACE_FILES.values())
        if not present:
            raise MissingFaceDetectorError(
                f"model package {package.root} has no face detector (needs {', '.join(FACE_FILES.values())} and "
                "their manifest entries); re-export it with `fastvit-detect export CKPT -o PKG --faces`")
        return {net: Variant(f"faces/{net}", package.root / name) for net, name in FACE_FILES.items()}
    files = section.get("files") if isinstance(section, Mapping) else None
    if not isinstance(files, Mapping):
        raise InvalidPackageError(f"{where}: faces.files must be an object naming the face detector's graphs")
    variants = {}
    for net in FACE_FILES:
        entry = parse_file_entry(files.get(net), f"faces.files.{net}", where)
        variants[net] = Variant(f"faces/{net}", package.root / entry.name, VariantEntry(f"faces/{net}", entry))
    return variants


def open_face_detector(package: ModelPackage, verify: bool = True, threads: int | None = None) -> FaceDetector:
    """The package's face detector, its files checked as the variants' are: inside the package, external data
    refused, and (``verify``) sizes and sha256 against the manifest (a tampered file: ChecksumMismatchError)."""
    variants = face_detector_variants(package)
    as_package = replace(package, variants=variants)
    missing = [variant.path.name for variant in variants.values() if not variant.path.is_file()]
    if missing:
        raise MissingFaceDetectorError(f"model package {package.root}: the face detector's {', '.join(missing)} "
                                       "missing; re-export it with --faces")
    for net in variants:
        checked = as_package.variant(net)
        if verify:
            as_package.verify(checked)
        as_package.check_graph(checked)
    return FaceDetector.open({net: variant.path for net, variant in variants.items()}, threads)
