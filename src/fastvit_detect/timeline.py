"""Faces across time: a clip's sampled frames through face detection and the classifier, faces linked into tracks,
a verdict per track and one for the clip, and the fake probability against time.

The rules, in one place:

- **Frames.** :class:`fastvit_detect.video.VideoReader` samples the clip (default 1 frame a second, at most 600
  frames, spread evenly over longer clips). A thread decodes ahead of face detection, holding at most
  ``read_ahead`` (2) frames, so decoding overlaps face detection and classification.
- **Faces.** Each frame's faces are found and cropped as :meth:`Detector.predict_faces` does, but on a detection
  copy whose long side is at most ``max_side`` = :data:`VIDEO_MAX_SIDE` (960 px: on a 1080p frame, faces from
  40 px; less time, and 449 instead of 592 MiB of peak RSS than the 1600 px copy photos get, on a 1080p clip with
  ViT-B: docs/guides/video.md); a frame without a face (or every frame, with ``faces=False``) is classified whole, as an
  image is. The crops (or whole frames) of several frames go through the classifier together, ``batch_size`` (4)
  at a time.
- **Tracks.** A face joins the track whose last box overlaps it most (box IoU at least :data:`LINK_IOU`), provided
  that track was seen within the last :data:`MAX_GAP` + 1 sampled frames; each track takes at most one face a
  frame, and a face that joins none starts a track. Whole frames form a track of their own, ``kind="frame"``.
- **A track's verdict** is the mean, over its ``k = ceil(n / 4)`` frames with the highest fake probability (the top
  quarter, at least one), of their probabilities (and logits): a single odd frame can't convict a long track, a
  fake segment a quarter of its length can. For labels that name no fake class, "highest fake probability" reads
  "most confident".
- **The clip's verdict** is its most suspicious face track's; a clip where no face was found anywhere gets the
  verdict of its whole-frame track.
- **Timeline**: each sampled frame's time and fake probability, that of its most suspicious face (or of the whole
  frame). :meth:`VideoResult.suspicious_ranges` turns it into time ranges at or over a threshold.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from .detector import MAX_BATCH_SIZE, Prediction
from .errors import FastVitDetectError, InvalidOptionError
from .faces import (
    DEFAULT_MARGIN,
    DEFAULT_MAX_FACES,
    DEFAULT_MIN_FACE_SIZE,
    Face,
    FaceDetector,
    FaceOptions,
    face_crop,
    face_detector_variants,
)
from .options import check_finite, check_whole
from .progress import Progress
from .video import (
    DEFAULT_FPS,
    DEFAULT_MAX_FRAMES,
    MAX_FPS,
    MAX_MAX_FRAMES,
    MIN_FPS,
    SampledFrame,
    VideoInfo,
    VideoInput,
    VideoLimits,
    VideoReader,
)

if TYPE_CHECKING:
    from .detector import Detector
    from .package import ModelPackage

__all__ = ["FrameResult", "Track", "VideoResult", "iter_video", "predict_video", "track_verdict"]

VIDEO_MAX_SIDE = 960  # the face-detection copy's long side: half a 1080p frame, faces from 40 px of it up
VIDEO_BATCH_SIZE = 4  # crops per session call: ViT-B activations of 4 keep a 1080p clip under 500 MiB of RSS
LINK_IOU = 0.3
MAX_GAP = 2  # sampled frames a face may go unseen (a blink of the detector) and still continue its track
DEFAULT_READ_AHEAD = 2  # decoded frames waiting for face detection: 6 MB each at 1080p
MAX_READ_AHEAD = 64
SUSPICIOUS = 0.5


def _fakeness(prediction: Prediction) -> float:
    return prediction.fake_probability if prediction.fake_probability is not None else prediction.score


@dataclass(frozen=True, eq=False)
class FrameResult:
    """One sampled frame: ``faces`` with their predictions and ``track_ids`` (in the same order), or, for a frame
    without a face, ``whole``: the whole frame's prediction."""

    index: int  # in the sampling plan
    time: float  # seconds from the clip's start
    faces: list[tuple[Face, Prediction]]
    track_ids: list[int]
    whole: Prediction | None = None

    @property
    def prediction(self) -> Prediction:
        """The frame's verdict: its most suspicious face's, or the whole frame's."""
        if self.faces:
            return max((prediction for _, prediction in self.faces), key=_fakeness)
        assert self.whole is not None  # a frame has faces or a whole-frame prediction
        return self.whole

    @property
    def fake_probability(self) -> float | None:
        return self.prediction.fake_probability

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "time": round(self.time, 6), "fake_probability": self.fake_probability,
                "label": self.prediction.label,
                "faces": [{"track": track, **face.to_dict(), **prediction.to_dict()}
                          for (face, prediction), track in zip(self.faces, self.track_ids)],
                "whole": None if self.whole is None else self.whole.to_dict()}


@dataclass(eq=False)
class Track:
    """A face followed across sampled frames (``kind="face"``), or the frames classified whole (``kind="frame"``,
    ``boxes`` None). ``verdict``: see :func:`track_verdict`."""

    id: int
    kind: Literal["face", "frame"]
    times: list[float] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float] | None] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)

    @property
    def verdict(self) -> Prediction:
        return track_verdict(self.predictions)

    @property
    def fake_probabilities(self) -> list[float | None]:
        return [prediction.fake_probability for prediction in self.predictions]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "verdict": self.verdict.to_dict(),
                "frames": [{"time": round(when, 6), "box": None if box is None else [round(v, 2) for v in box],
                            "fake_probability": prediction.fake_probability, "label": prediction.label}
                           for when, box, prediction in zip(self.times, self.boxes, self.predictions)]}


def track_verdict(predictions: Sequence[Prediction]) -> Prediction:
    """The mean of the top quarter (``ceil(n / 4)``, at least 1) of ``predictions`` by fake probability: their mean
    probabilities, and logits, with the label the mean probabilities favour."""
    if not predictions:
        raise InvalidOptionError("a track's verdict needs at least one prediction")
    ranked = sorted(predictions, key=_fakeness, reverse=True)[: max(1, math.ceil(len(predictions) / 4))]
    labels = list(ranked[0].probabilities)
    probabilities = np.mean([[chosen.probabilities[label] for label in labels] for chosen in ranked], axis=0)
    logits = np.mean([chosen.logits for chosen in ranked], axis=0)
    best = int(probabilities.argmax())
    fakes = [chosen.fake_probability for chosen in ranked]
    return Prediction(label=labels[best], score=float(probabilities[best]),
                      probabilities={label: float(p) for label, p in zip(labels, probabilities)}, logits=logits,
                      fake_probability=None if None in fakes else float(np.mean(fakes)))  # type: ignore[arg-type]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Links faces into tracks online, frame by frame, by the rule in the module's docstring."""

    def __init__(self, link_iou: float = LINK_IOU, max_gap: int = MAX_GAP) -> None:
        self.link_iou, self.max_gap = link_iou, max_gap
        self._last: dict[int, tuple[int, tuple[float, float, float, float]]] = {}  # id -> (frame number, box)
        self._frames = 0
        self._next_id = 1

    def link(self, faces: Sequence[Face]) -> list[int]:
        """Track ids for one frame's faces, in their order."""
        number = self._frames
        self._frames += 1
        live = {track: box for track, (seen, box) in self._last.items() if number - seen <= self.max_gap + 1}
        pairs = sorted(((_iou(face.box, box), position, track) for position, face in enumerate(faces)
                        for track, box in live.items()), reverse=True)
        ids: list[int | None] = [None] * len(faces)
        taken: set[int] = set()
        for overlap, position, track in pairs:
            if overlap < self.link_iou:
                break
            if ids[position] is None and track not in taken:
                ids[position] = track
                taken.add(track)
        for position, face in enumerate(faces):
            if ids[position] is None:
                ids[position] = self._next_id
                self._next_id += 1
            self._last[ids[position]] = (number, face.box)  # type: ignore[index]
        self._last = {track: seen for track, seen in self._last.items() if number - seen[0] <= self.max_gap + 1}
        return ids  # type: ignore[return-value]


@dataclass(frozen=True)
class _Settings:
    """The options of one clip's run, checked. ``batch_size``: crops (or whole frames) per session call;
    ``read_ahead``: decoded frames waiting for face detection; the face options as :meth:`Detector.predict_faces`."""

    fps: float = DEFAULT_FPS
    max_frames: int = DEFAULT_MAX_FRAMES
    faces: bool = True
    batch_size: int = VIDEO_BATCH_SIZE
    read_ahead: int = DEFAULT_READ_AHEAD
    margin: float = DEFAULT_MARGIN
    min_face_size: int = DEFAULT_MIN_FACE_SIZE
    max_faces: int = DEFAULT_MAX_FACES
    max_side: int | None = VIDEO_MAX_SIDE

    def __post_init__(self) -> None:
        check_finite("fps", self.fps, MIN_FPS, MAX_FPS, InvalidOptionError)
        check_whole("max_frames", self.max_frames, 1, MAX_MAX_FRAMES, InvalidOptionError)
        check_whole("batch_size", self.batch_size, 1, MAX_BATCH_SIZE, InvalidOptionError)
        check_whole("read_ahead", self.read_ahead, 1, MAX_READ_AHEAD, InvalidOptionError)
        if not isinstance(self.faces, bool):
            raise InvalidOptionError(f"faces must be True or False, got {self.faces!r}")

    @property
    def face_options(self) -> FaceOptions:
        return FaceOptions(self.min_face_size, self.max_faces, self.max_side, self.margin)


def _start(detector: Detector, video: VideoInput, limits: VideoLimits | None, options: dict[str, Any]
           ) -> tuple[VideoReader, _Settings, FaceDetector | None]:
    """Options checked, the face detector opened and the clip opened and indexed, in that order: a typo or a
    package without a face detector fails before the clip is read, a bad clip before a frame is classified."""
    names = set(_Settings.__dataclass_fields__)
    unknown = sorted(set(options) - names)
    if unknown:
        raise InvalidOptionError(f"unknown video option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    settings = _Settings(**options)
    settings.face_options  # noqa: B018 - checks the face options too
    face_detector = detector.face_detector if settings.faces else None
    return VideoReader(video, limits), settings, face_detector


_DONE = object()


def _decode_ahead(reader: VideoReader, settings: _Settings, stop: threading.Event
                  ) -> Generator[SampledFrame, None, None]:
    """The reader's frames, decoded by a thread at most ``read_ahead`` frames ahead of the caller. Its errors are
    raised here, in the caller's thread; a caller that stops early stops the thread."""
    handoff: queue.Queue[Any] = queue.Queue(maxsize=settings.read_ahead)

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        try:
            for frame in reader.frames(settings.fps, settings.max_frames):
                if not put(frame):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            put(exc)

    thread = threading.Thread(target=decode, name="fastvit-video-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def iter_video(detector: Detector, video: VideoInput, *, progress: Progress | None = None,
               limits: VideoLimits | None = None, **options: Any) -> Iterator[FrameResult]:
    """Per-frame results in time order, for clips too long to hold (see :meth:`Detector.predict_video_iter`).
    The clip is opened and indexed at the call: a bad clip raises here, not at the first frame."""
    reader, settings, face_detector = _start(detector, video, limits, options)
    return _frame_results(detector, reader, settings, face_detector, progress)


def _frame_results(detector: Detector, reader: VideoReader, settings: _Settings, face_detector: Any,
                   progress: Progress | None) -> Iterator[FrameResult]:
    planned = len(reader.plan(settings.fps, settings.max_frames))
    tracker = Tracker()
    face_options = settings.face_options
    # Frames waiting for the classifier keep only their crops (or whole frame) at the model's input size, never
    # the decoded frame: a batch of 1080p frames would hold 6 MB each.
    waiting: list[_Waiting] = []
    crops = 0
    frames = _decode_ahead(reader, settings, threading.Event())
    with reader:
        try:
            for frame in frames:
                found: list[Face] = []
                if face_detector is not None:
                    picture = Image.fromarray(frame.pixels)
                    found = face_detector.detect(picture, face_options)
                    images = [face_crop(picture, face, settings.margin) for face in found]
                if not found:
                    images = [frame.pixels]
                waiting.append(_Waiting(frame.index, frame.time, found,
                                        [detector.preprocessor.to_pixels(image) for image in images]))
                crops += len(images)
                if crops >= settings.batch_size:
                    yield from _classify(detector, reader.source, waiting, tracker, settings.batch_size)
                    if progress is not None:
                        progress(waiting[-1].index + 1, planned)
                    waiting, crops = [], 0
            if waiting:
                yield from _classify(detector, reader.source, waiting, tracker, settings.batch_size)
            if progress is not None:
                progress(planned, planned)
        finally:
            frames.close()  # stops and joins the decoding thread before the reader closes under it


@dataclass(frozen=True, eq=False)
class _Waiting:
    index: int
    time: float
    faces: list[Face]
    pixels: list[np.ndarray]  # each face's crop (or the whole frame), resized for the model: HxWx3 uint8


def _classify(detector: Detector, source: str, waiting: list[_Waiting], tracker: Tracker,
              batch_size: int) -> Iterator[FrameResult]:
    rows = [pixels for frame in waiting for pixels in frame.pixels]
    names = [f"{source} at {frame.time:.3f} s" for frame in waiting for _ in frame.pixels]
    predictions: list[Prediction] = []
    for start in range(0, len(rows), batch_size):
        for result in detector.classify_pixels(np.stack(rows[start:start + batch_size]), None,
                                               names[start:start + batch_size], run=detector.session.run):
            if isinstance(result, FastVitDetectError):
                raise result
            predictions.append(result)
    position = 0
    for frame in waiting:
        mine = predictions[position:position + len(frame.pixels)]
        position += len(frame.pixels)
        if frame.faces:
            yield FrameResult(frame.index, frame.time, list(zip(frame.faces, mine)), tracker.link(frame.faces))
        else:
            yield FrameResult(frame.index, frame.time, [], [], mine[0])


@dataclass(frozen=True, eq=False)
class VideoResult:
    """:meth:`Detector.predict_video`'s answer. ``frames``: every sampled frame's result, in time order;
    ``tracks``: face tracks (and the whole-frame track, for frames without a face); ``prediction``: the clip's
    verdict (None only for a clip with no decodable frame); ``decided_by``: "face track", "whole frames" or
    "none"; ``decisive``: the id of the track that decided."""

    source: str
    info: VideoInfo
    fps: float
    frames: list[FrameResult]
    tracks: list[Track]
    prediction: Prediction | None
    decided_by: str
    decisive: int | None
    decoded_frames: int

    @property
    def duration(self) -> float:
        return self.info.duration

    @property
    def timeline(self) -> list[tuple[float, float | None]]:
        """(time in seconds, fake probability) per sampled frame."""
        return [(frame.time, frame.fake_probability) for frame in self.frames]

    def suspicious_ranges(self, threshold: float = SUSPICIOUS) -> list[tuple[float, float]]:
        """Time ranges whose sampled frames' fake probability is at least ``threshold``: from the first such frame
        of a run to the next sampled frame after the run (the clip's end for the last)."""
        check_finite("threshold", threshold, 0.0, 1.0, InvalidOptionError)
        ranges: list[tuple[float, float]] = []
        start: float | None = None
        for when, probability in self.timeline:
            flagged = probability is not None and probability >= threshold
            if flagged and start is None:
                start = when
            elif not flagged and start is not None:
                ranges.append((start, when))
                start = None
        if start is not None:
            ranges.append((start, self.duration))
        return ranges

    def to_dict(self) -> dict[str, Any]:
        verdict = self.prediction.to_dict() if self.prediction is not None else {"label": None}
        return {"video": self.source, **verdict, "decided_by": self.decided_by, "decisive_track": self.decisive,
                "duration": self.duration, "fps": self.fps, "sampled_frames": len(self.frames),
                "decoded_frames": self.decoded_frames, "info": self.info.to_dict(),
                "suspicious_ranges": [[round(a, 3), round(b, 3)] for a, b in self.suspicious_ranges()],
                "timeline": [[round(when, 6), probability] for when, probability in self.timeline],
                "tracks": [track.to_dict() for track in self.tracks],
                "frames": [frame.to_dict() for frame in self.frames]}


def predict_video(detector: Detector, video: VideoInput, *, progress: Progress | None = None,
                  limits: VideoLimits | None = None, **options: Any) -> VideoResult:
    """See :meth:`Detector.predict_video`."""
    reader, settings, face_detector = _start(detector, video, limits, options)
    frames = list(_frame_results(detector, reader, settings, face_detector, progress))
    return summarize(reader.source, reader.info, settings.fps, frames, reader.decoded_frames)


def summarize(source: str, info: VideoInfo, fps: float, frames: list[FrameResult], decoded_frames: int
              ) -> VideoResult:
    """Tracks and the clip's verdict from its frames' results, by the rules in the module's docstring."""
    tracks: dict[int, Track] = {}
    whole = Track(0, "frame")
    for frame in frames:
        if frame.whole is not None:
            whole.times.append(frame.time)
            whole.boxes.append(None)
            whole.predictions.append(frame.whole)
        for (face, prediction), track_id in zip(frame.faces, frame.track_ids):
            track = tracks.setdefault(track_id, Track(track_id, "face"))
            track.times.append(frame.time)
            track.boxes.append(face.box)
            track.predictions.append(prediction)
    listed = list(tracks.values()) + ([whole] if whole.predictions else [])
    if tracks:
        decisive = max(tracks.values(), key=lambda track: _fakeness(track.verdict))
        return VideoResult(source, info, fps, frames, listed, decisive.verdict, "face track", decisive.id,
                           decoded_frames)
    if whole.predictions:
        return VideoResult(source, info, fps, frames, listed, whole.verdict, "whole frames", 0, decoded_frames)
    return VideoResult(source, info, fps, frames, listed, None, "none", None, decoded_frames)


def has_face_detector(package: ModelPackage) -> bool:
    """Whether a package holds a face detector: videos look for faces by default where one is there."""
    try:
        face_detector_variants(package)
    except FastVitDetectError:
        return False
    return True


def draw_timeline(result: VideoResult, path: str, threshold: float = SUSPICIOUS) -> None:
    """A PNG of the fake probability against time, one line per track, the suspicious ranges shaded. Needs
    matplotlib (:class:`~fastvit_detect.errors.MissingExtraError` naming it otherwise)."""
    from .errors import MissingExtraError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("--timeline draws with matplotlib: pip install matplotlib (or "
                                "'fastvit-detect[video]' with it installed); --json prints the same timeline") from exc
    figure, axes = plt.subplots(figsize=(10, 3.5))
    try:
        for start, end in result.suspicious_ranges(threshold):
            axes.axvspan(start, end, color="tab:red", alpha=0.12)
        for track in result.tracks:
            points = [(when, p) for when, p in zip(track.times, track.fake_probabilities) if p is not None]
            if points:
                label = f"face track {track.id}" if track.kind == "face" else "whole frames"
                axes.plot(*zip(*points), marker="o", markersize=3, linewidth=1.2, label=label)
        axes.axhline(threshold, color="grey", linewidth=0.8, linestyle="--")
        axes.set_xlim(0, max(result.duration, 1e-3))
        axes.set_ylim(-0.02, 1.02)
        axes.set_xlabel("time (s)")
        axes.set_ylabel("p(fake)")
        verdict = "no verdict" if result.prediction is None else (
            f"{result.prediction.label} (p(fake) {result.prediction.fake_probability:.3f}, {result.decided_by})"
            if result.prediction.fake_probability is not None else result.prediction.label)
        axes.set_title(f"{result.source}: {verdict}", fontsize=9)
        if result.tracks:
            axes.legend(fontsize=7, loc="upper right")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
