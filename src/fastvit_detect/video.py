"""Video decoding for the detector: sample frames by time, decode only what the samples need, every cost capped.

Needs the ``video`` extra (PyAV, which ships FFmpeg's libraries): ``pip install 'fastvit-detect[video]'``. PyAV is
imported at the first clip opened, so everything else works without it.

How a clip is sampled (:class:`VideoReader`):

1. **Sniffed by content.** The first bytes decide (:func:`sniff_container`): MP4/MOV, Matroska/WebM, AVI and MPEG-TS
   are videos, and FFmpeg is told which demuxer to use; an image's signature, or anything else, is not a video. The
   file's name plays no part. FFmpeg never opens a second file or URL for a clip (a playlist, a reference, a
   container that points elsewhere): its ``io_open`` refuses.
2. **Indexed from the packets, not the header.** One demuxing pass (no decoding) reads every packet's timestamp and
   keyframe flag, at most ``max_packets``. The clip's start and duration come from those timestamps; the duration a
   header claims is ignored, so a header claiming days costs nothing, and timestamps that span more than
   ``max_duration`` (absurd ones included) are refused before a frame is decoded.
3. **Sampled by time.** The clip is cut into windows of ``1 / fps`` seconds; with more than ``max_frames`` windows,
   ``max_frames`` windows of equal length span the clip instead. Each window gives one frame: its first keyframe
   when it has one (reached by a seek and one decoded frame), else the first frame at or after the window's start,
   decoded forward from the decoder's position or from the last keyframe before it, whichever is later. A clip
   with a keyframe every second decodes about one frame per sample; one with rare keyframes decodes forward, never
   more than it would to decode every frame once, and skips the frames no other frame refers to (most B-frames):
   a sample is a reference frame.
4. **Bounded.** An MP4's sample tables may claim at most ``4 x max_packets`` samples (counted over its boxes
   before FFmpeg indexes them). Each sample may decode at most the packets between its starting point and its
   window's end (plus :data:`REORDER_SLACK`); the clip at most ``max_decoded_frames`` frames and
   ``max_decode_seconds`` seconds. Frames over ``max_frame_pixels`` are refused from the stream's header and again
   from each decoded frame.
5. **Upright RGB, once.** Each sampled frame becomes one HxWx3 uint8 array, turned as the stream's display matrix
   says (a phone's portrait clip comes out upright).

Every failure is a :class:`~fastvit_detect.errors.InputError` naming the clip: :class:`VideoDecodeError`,
:class:`NoVideoStreamError`, :class:`VideoTooLargeError`, or the path errors images get.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import (
    EmptyImageError,
    FastVitDetectError,
    ImageNotFoundError,
    InputError,
    InvalidOptionError,
    MissingExtraError,
    NoVideoStreamError,
    UnsupportedInputError,
    VideoDecodeError,
    VideoTooLargeError,
)
from .media import describe_source, open_regular_file
from .options import check_finite, check_whole

__all__ = ["DEFAULT_FPS", "DEFAULT_MAX_FRAMES", "SampledFrame", "VideoInfo", "VideoInput", "VideoLimits",
           "VideoReader", "is_video", "sniff_container"]

VideoInput = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO
"""A clip: a path, its bytes, or a binary file object (seekable, or read whole within ``max_bytes``)."""

DEFAULT_FPS = 1.0
DEFAULT_MAX_FRAMES = 600  # a 10-minute clip at 1 fps; longer clips (up to the caps) get 600 frames spread evenly
MIN_FPS = 1e-4  # one frame every 10,000 s: the slowest sampling rate the library and the server accept
MAX_FPS = 120.0
MAX_MAX_FRAMES = 100_000
REORDER_SLACK = 64  # frames a decoder may hold back (B-frame reordering, frame threads) beyond a sample's packets
SNIFF_BYTES = 4096

GiB = 1024 ** 3


@dataclass(frozen=True)
class VideoLimits:
    """Caps on what one clip may cost. ``max_bytes``: the encoded file; ``max_duration``: seconds spanned by its
    packets' timestamps; ``max_frame_pixels``: width x height of a frame (the default takes 4K, refuses 8K);
    ``max_packets``: packets demuxed while indexing; ``max_decoded_frames``: frames decoded in all, the ones decoded
    on the way to a sample included; ``max_decode_seconds``: wall-clock seconds of indexing and decoding."""

    max_bytes: int = 2 * GiB
    max_duration: float = 600.0
    max_frame_pixels: int = 4096 * 2304
    max_packets: int = 500_000
    max_decoded_frames: int = 40_000
    max_decode_seconds: float = 600.0

    def __post_init__(self) -> None:
        check_whole("max_bytes", self.max_bytes, 1, None, InvalidOptionError)
        check_finite("max_duration", self.max_duration, 0.001, 10 * 365 * 86400.0, InvalidOptionError)
        check_whole("max_frame_pixels", self.max_frame_pixels, 1, 1 << 34, InvalidOptionError)
        check_whole("max_packets", self.max_packets, 1, 1 << 31, InvalidOptionError)
        check_whole("max_decoded_frames", self.max_decoded_frames, 1, 1 << 31, InvalidOptionError)
        check_finite("max_decode_seconds", self.max_decode_seconds, 0.001, 86400.0, InvalidOptionError)


# --- what a file is, by its first bytes ---------------------------------------------------------------------------

# ISO base media brands that are still images (HEIF, AVIF), not videos: Pillow's business, not FFmpeg's.
_IMAGE_BRANDS = frozenset({b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1",
                           b"msf1", b"mif2", b"jpeg", b"jxl "})
_MPEG_TS_PACKET = 188


def sniff_container(head: bytes) -> str | None:
    """The FFmpeg demuxer for a clip starting with ``head`` (its first :data:`SNIFF_BYTES` bytes or all of a
    shorter file), or None when it isn't a video container this runtime reads (images included)."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        size = int.from_bytes(head[:4], "big")
        brands = {head[8:12]} | {head[offset:offset + 4] for offset in range(16, min(size, len(head)) - 3, 4)}
        return None if brands & _IMAGE_BRANDS else "mov"
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"free", b"wide", b"skip"):  # QuickTime without ftyp
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if len(head) >= 12 and head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if len(head) > 2 * _MPEG_TS_PACKET and all(head[offset] == 0x47 for offset in range(0, len(head),
                                                                                    _MPEG_TS_PACKET)):
        return "mpegts"
    return None


VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts"})
"""File endings that folder walks (scan) pick up as videos; content decides what a file is when it is read."""


def find_videos(root: str | os.PathLike[str]) -> list[Path]:
    """Video files under ``root`` (recursively, by VIDEO_SUFFIXES, case-insensitive), sorted."""
    return sorted(path for path in Path(root).rglob("*") if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file())


def is_video(source: VideoInput) -> bool:
    """Whether a path, bytes or seekable file holds a video container, by content (never by name). False for what
    can't be read: the image path reports that with its own typed error."""
    try:
        if isinstance(source, (str, os.PathLike)):
            descriptor, _ = open_regular_file(source, str(source), "video")
            with os.fdopen(descriptor, "rb", buffering=0) as handle:
                head = handle.read(SNIFF_BYTES)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            head = bytes(memoryview(source)[:SNIFF_BYTES])
        else:
            position = source.tell()
            head = source.read(SNIFF_BYTES)
            source.seek(position)
    except (InputError, OSError, ValueError, AttributeError, TypeError):
        return False
    return isinstance(head, bytes) and sniff_container(head) is not None


# --- opening: a regular file or bytes, never a URL ---------------------------------------------------------------


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise MissingExtraError("videos need PyAV: pip install 'fastvit-detect[video]'") from exc
    return av


def _open_input(source: VideoInput, name: str, max_bytes: int) -> tuple[BinaryIO, bool]:
    """A seekable binary file of the clip, checked: a regular file within ``max_bytes`` (a FIFO would block, a
    device never end), the bytes given, or the caller's seekable file (read in place, never closed here); and
    whether it is ours to close."""
    if isinstance(source, (str, os.PathLike)):
        descriptor, status = open_regular_file(source, name, "video")
        try:
            _check_size(status.st_size, name, max_bytes)
        except BaseException:
            os.close(descriptor)
            raise
        return os.fdopen(descriptor, "rb"), True
    if isinstance(source, (bytes, bytearray, memoryview)):
        _check_size(memoryview(source).nbytes, name, max_bytes)
        return io.BytesIO(bytes(source)), True
    if callable(getattr(source, "read", None)):
        try:
            seekable = bool(source.seekable()) if callable(getattr(source, "seekable", None)) else False
            if seekable:  # read in place: a clip of a GiB needn't be copied into memory
                size = source.seek(0, os.SEEK_END)
                source.seek(0)
                _check_size(size, name, max_bytes)
                if not isinstance(source.read(0), bytes):
                    raise UnsupportedInputError(f"{name}: the file object must be opened in binary mode ('rb')",
                                                name)
                return source, False
            data = source.read(max_bytes + 1)
        except (OSError, ValueError) as exc:
            raise ImageNotFoundError(f"{name}: can't read from the file object: {exc}", name) from exc
        if not isinstance(data, (bytes, bytearray)):
            raise UnsupportedInputError(f"{name}: the file object must be opened in binary mode ('rb')", name)
        _check_size(len(data), name, max_bytes)
        return io.BytesIO(bytes(data)), True
    raise UnsupportedInputError(f"{name}: unsupported video input {type(source).__name__}; expected a path, bytes "
                                "or a binary file", name)


def _check_size(size: int, name: str, max_bytes: int) -> None:
    if size == 0:
        raise EmptyImageError(f"{name}: empty input (0 bytes)", name)
    if size > max_bytes:
        raise VideoTooLargeError(f"{name}: {size:,} bytes exceeds the video cap of {max_bytes:,} bytes (raise "
                                 "max_bytes to accept it)", name)


# --- MP4/MOV sample tables: claims FFmpeg turns into memory before a packet is read ---------------------------------
# FFmpeg's mov demuxer builds an index entry (24 bytes) per sample its tables claim, when the file is opened: a
# 134 KB MP4 whose stsz says 50 million samples of one byte took 3.4 GiB and 5 s of CPU in av.open. So the tables'
# sample counts (stsz, stz2, and trun in fragments) are read first, over the raw boxes, and held to a cap.

_ISO_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl", b"moof", b"traf", b"mvex", b"edts"})
MAX_ISO_BOXES = 100_000  # top-level and nested boxes walked; a real clip has hundreds
MAX_ISO_DEPTH = 8  # moov/trak/mdia/minf/stbl is 5 deep
MAX_ISO_TABLE_BYTES = 64 * 1024 * 1024  # one moov or moof box: a 10-minute clip's is about 1 MB
CLAIMED_SAMPLES_PER_PACKET = 4  # sample-table entries allowed per video packet of max_packets: audio tracks too


def _iso_claimed_samples(handle: BinaryIO, size: int, source: str) -> int:
    """The samples that an MP4/MOV file's sample tables (and fragments' runs) claim, from its boxes alone."""
    counter = [0]

    def count_box() -> None:
        counter[0] += 1
        if counter[0] > MAX_ISO_BOXES:
            raise VideoDecodeError(f"{source}: more than {MAX_ISO_BOXES:,} MP4 boxes; not a clip", source)

    def walk(payload: bytes, depth: int = 0) -> int:
        claimed, position = 0, 0
        while position + 8 <= len(payload):
            box_size, kind = int.from_bytes(payload[position:position + 4], "big"), payload[position + 4:position + 8]
            start = position + 8
            if box_size == 1 and position + 16 <= len(payload):
                box_size, start = int.from_bytes(payload[position + 8:position + 16], "big"), position + 16
            elif box_size == 0:
                box_size = len(payload) - position
            if box_size < start - position:
                break  # malformed: FFmpeg says what it makes of it
            count_box()
            body = payload[start:position + box_size]
            if kind in _ISO_CONTAINERS and depth < MAX_ISO_DEPTH:
                claimed += walk(body, depth + 1)
            elif kind in (b"stsz", b"stz2") and len(body) >= 12:
                claimed += int.from_bytes(body[8:12], "big")
            elif kind == b"trun" and len(body) >= 8:
                claimed += int.from_bytes(body[4:8], "big")
            position += box_size
        return claimed

    claimed, position = 0, 0
    while position + 8 <= size:
        handle.seek(position)
        header = handle.read(16)
        if len(header) < 8:
            break
        box_size, kind, start = int.from_bytes(header[:4], "big"), header[4:8], 8
        if box_size == 1 and len(header) == 16:
            box_size, start = int.from_bytes(header[8:16], "big"), 16
        elif box_size == 0:
            box_size = size - position
        if box_size < start:
            break
        count_box()
        if kind in (b"moov", b"moof"):
            length = min(box_size, size - position) - start
            if length > MAX_ISO_TABLE_BYTES:
                raise VideoTooLargeError(f"{source}: a {kind.decode()} box of {length:,} bytes, over the cap of "
                                         f"{MAX_ISO_TABLE_BYTES:,}", source)
            handle.seek(position + start)
            claimed += walk(handle.read(length))
        position += box_size
    handle.seek(0)
    return claimed


def _refuse_other_files(url: str, flags: int, options: dict[str, Any]) -> Any:
    raise PermissionError(f"a clip may not open other files or URLs ({url!r})")


@contextlib.contextmanager
def video_boundary(source: str) -> Iterator[None]:
    """Every failure inside becomes a typed error naming the clip: FFmpeg's (``av.FFmpegError`` and its OSError and
    ValueError subclasses) and whatever a corrupt file makes PyAV raise."""
    try:
        yield
    except FastVitDetectError:
        raise
    except MemoryError as exc:
        raise VideoTooLargeError(f"{source}: ran out of memory decoding the video", source) from exc
    except Exception as exc:  # the decode boundary, as preprocess.decode_boundary for images
        cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise VideoDecodeError(f"{source}: video data is truncated or corrupt ({cause})", source) from exc


# --- the clip ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What indexing found. ``duration`` and ``start`` (seconds) come from the packets' timestamps; ``packets`` is
    the video stream's packet count, ``keyframes`` how many of them are keyframes; ``width`` x ``height`` as
    stored (before the display matrix turns a frame upright)."""

    source: str
    container: str
    codec: str
    width: int
    height: int
    start: float
    duration: float
    packets: int
    keyframes: int

    def to_dict(self) -> dict[str, Any]:
        return {"container": self.container, "codec": self.codec, "width": self.width, "height": self.height,
                "start": self.start, "duration": self.duration, "packets": self.packets,
                "keyframes": self.keyframes}


@dataclass(frozen=True, eq=False)
class SampledFrame:
    """One sampled frame: ``index`` in the sampling plan, ``time`` in seconds from the clip's start, ``pixels`` the
    upright HxWx3 uint8 RGB frame."""

    index: int
    time: float
    pixels: np.ndarray


class VideoReader:
    """An opened, indexed clip. Use as a context manager (it holds FFmpeg's demuxer and decoder); not thread-safe.

    Raises, on opening, the typed errors described in the module's docstring.
    """

    def __init__(self, source: VideoInput, limits: VideoLimits | None = None) -> None:
        self.limits = limits or VideoLimits()
        self.source = describe_source(source)
        self.decoded_frames = 0  # frames decoded so far, samples and the frames on the way to them
        self.seeks = 0
        self._deadline = time.monotonic() + self.limits.max_decode_seconds
        av = _import_av()
        handle, self._owned = _open_input(source, self.source, self.limits.max_bytes)
        try:
            with video_boundary(self.source):
                head = handle.read(SNIFF_BYTES)
                handle.seek(0)
                demuxer = sniff_container(head)
                if demuxer is None:
                    raise VideoDecodeError(f"{self.source}: not a video container this runtime reads (MP4/MOV, "
                                           "Matroska/WebM, AVI, MPEG-TS), by its content", self.source)
                if demuxer == "mov":
                    self._check_sample_tables(handle)
                self._container = av.open(handle, format=demuxer, io_open=_refuse_other_files,
                                          options={"probesize": "5000000", "analyzeduration": "5000000"})
        except BaseException:
            if self._owned:
                handle.close()
            raise
        self._handle = handle
        try:
            with video_boundary(self.source):
                self.info = self._index(demuxer)
        except BaseException:
            self.close()
            raise

    def _check_sample_tables(self, handle: BinaryIO) -> None:
        size = handle.seek(0, os.SEEK_END)
        claimed = _iso_claimed_samples(handle, size, self.source)
        allowed = CLAIMED_SAMPLES_PER_PACKET * self.limits.max_packets
        if claimed > allowed:
            raise VideoTooLargeError(f"{self.source}: its sample tables claim {claimed:,} samples, over the cap of "
                                     f"{allowed:,} ({CLAIMED_SAMPLES_PER_PACKET} x max_packets)", self.source)

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a corrupt clip's demuxer can fail; nothing is left to save
            self._container.close()
        if self._owned:
            self._handle.close()

    def _video_stream(self) -> Any:
        streams = [stream for stream in self._container.streams.video
                   if not stream.disposition & stream.disposition.__class__.attached_pic]
        if not streams:
            kinds = sorted({stream.type for stream in self._container.streams})
            what = f"only {', '.join(kinds)} streams" if kinds else "no streams at all"
            cover = " (a cover picture isn't a video)" if self._container.streams.video else ""
            raise NoVideoStreamError(f"{self.source}: no video stream to sample: {what}{cover}", self.source)
        return streams[0]

    def _index(self, demuxer: str) -> VideoInfo:
        stream = self._video_stream()
        self._stream = stream
        context = stream.codec_context
        width, height = int(context.width or 0), int(context.height or 0)
        self._check_pixels(width, height, "the stream's header says")
        limits = self.limits
        stamps: list[int] = []
        keys: list[bool] = []
        for packet in self._container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            if len(stamps) >= limits.max_packets:
                raise VideoTooLargeError(f"{self.source}: more than {limits.max_packets:,} video packets (raise "
                                         "max_packets to accept it)", self.source)
            if len(stamps) % 1024 == 0:
                self._check_deadline()
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                continue
            stamps.append(int(stamp))
            keys.append(bool(packet.is_keyframe))
        if not stamps:
            raise VideoDecodeError(f"{self.source}: the video stream has no timestamped packets", self.source)
        base = stream.time_base
        if base is None or base <= 0:
            raise VideoDecodeError(f"{self.source}: the video stream has no usable time base", self.source)
        self._time_base = float(base)
        order = np.argsort(np.asarray(stamps, dtype=np.int64), kind="stable")
        self._stamps = np.asarray(stamps, dtype=np.int64)[order]
        key_stamps = self._stamps[np.asarray(keys, dtype=bool)[order]]
        self._keys = np.unique(key_stamps) if len(key_stamps) else self._stamps[:1]
        first, last = int(self._stamps[0]), int(self._stamps[-1])
        step = self._typical_step()
        span = (last - first + step) * self._time_base
        if not math.isfinite(span) or span > limits.max_duration:
            raise VideoTooLargeError(f"{self.source}: its packets' timestamps span {span:,.1f} s, over the cap of "
                                     f"{limits.max_duration:g} s (raise max_duration to accept it)", self.source)
        self._first = first
        return VideoInfo(self.source, demuxer, context.name, width, height, first * self._time_base, span,
                         len(self._stamps), len(self._keys))

    def _typical_step(self) -> int:
        """One frame's duration in stream ticks: the median gap between timestamps (so the last frame counts)."""
        gaps = np.diff(self._stamps)
        gaps = gaps[gaps > 0]
        return int(np.median(gaps)) if len(gaps) else 0

    def _check_pixels(self, width: int, height: int, where: str) -> None:
        if width * height > self.limits.max_frame_pixels:
            raise VideoTooLargeError(f"{self.source}: {where} {width}x{height} = {width * height:,} pixels a frame, "
                                     f"over the cap of {self.limits.max_frame_pixels:,} (raise max_frame_pixels to "
                                     "accept it)", self.source)

    def _check_deadline(self) -> None:
        if time.monotonic() > self._deadline:
            raise VideoTooLargeError(f"{self.source}: decoding took longer than {self.limits.max_decode_seconds:g} s "
                                     "(raise max_decode_seconds to accept it)", self.source)

    def plan(self, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES) -> list[tuple[float, float]]:
        """The sampling windows, (start, end) in seconds from the clip's start: ``1 / fps`` long, or ``max_frames``
        equal windows spanning the clip when there would be more."""
        check_finite("fps", fps, MIN_FPS, MAX_FPS, InvalidOptionError)
        check_whole("max_frames", max_frames, 1, MAX_MAX_FRAMES, InvalidOptionError)
        duration = self.info.duration
        interval = 1.0 / fps
        count = max(1, math.ceil(duration / interval - 1e-9))
        if count > max_frames:
            count, interval = max_frames, duration / max_frames
        return [(index * interval, min(duration, (index + 1) * interval)) for index in range(count)]

    def frames(self, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES) -> Iterator[SampledFrame]:
        """The sampled frames in time order, one per window of :meth:`plan` that holds a frame."""
        windows = self.plan(fps, max_frames)
        with video_boundary(self.source):
            yield from self._sample(windows)

    def _sample(self, windows: list[tuple[float, float]]) -> Iterator[SampledFrame]:
        stream, stamps, keys = self._stream, self._stamps, self._keys
        stream.thread_type = "AUTO"
        # Frames no other frame refers to (most B-frames) are never decoded: decoding forward to a sample doesn't
        # need them, and a sample is then the first reference frame at or after its window's start.
        stream.codec_context.skip_frame = "NONREF"
        decoded: Iterator[Any] | None = None
        position: int | None = None  # pts of the last frame decoded: where the decoder stands
        ahead: Any = None  # a frame decoded past its window's end: the next window's, if it falls there
        for index, (start, end) in enumerate(windows):
            low = self._ticks(start)
            high = self._ticks(end) if index + 1 < len(windows) else int(stamps[-1]) + 1
            if ahead is not None:
                if int(ahead.pts) >= high:
                    continue  # no frame in this window
                frame, ahead = ahead, None
                yield self._sampled(index, frame)
                continue
            in_window = keys[(keys >= low) & (keys < high)]
            if len(in_window) and (position is None or position < int(in_window[0])):
                target = origin = int(in_window[0])
            else:
                target = low
                before = keys[keys <= low]
                origin = int(before[-1]) if len(before) else int(keys[0])
                if position is not None and origin <= position < target:
                    origin = position  # decoding on from here is cheaper than going back to the keyframe
            if decoded is None or origin != position:
                self._container.seek(origin, stream=stream, backward=True, any_frame=False)
                self.seeks += 1
                decoded = self._container.decode(stream)
            budget = int(np.count_nonzero((stamps >= min(origin, target)) & (stamps < high))) + REORDER_SLACK
            for _ in range(budget):
                candidate = next(decoded, None)
                if candidate is None:
                    # The end of the stream, reached in time order: every frame after this window's start was
                    # decoded on the way (or skipped as non-reference), so the windows left hold nothing. Seeking
                    # back for each of them re-decoded the clip from its last keyframe, once per window.
                    return
                self._count_decoded()
                if candidate.pts is None:
                    continue
                position = int(candidate.pts)
                if position >= high:
                    ahead = candidate
                    break
                if position >= target:
                    yield self._sampled(index, candidate)
                    break
            else:
                decoded = None  # timestamps that never reach the window: the next window seeks afresh

    def _sampled(self, index: int, frame: Any) -> SampledFrame:
        return SampledFrame(index, (int(frame.pts) - self._first) * self._time_base, self._upright(frame))

    def _ticks(self, seconds: float) -> int:
        return self._first + math.floor(seconds / self._time_base + 1e-6)

    def _count_decoded(self) -> None:
        self.decoded_frames += 1
        if self.decoded_frames > self.limits.max_decoded_frames:
            raise VideoTooLargeError(f"{self.source}: sampling needed more than {self.limits.max_decoded_frames:,} "
                                     "decoded frames (raise max_decoded_frames to accept it)", self.source)
        self._check_deadline()

    def _upright(self, frame: Any) -> np.ndarray:
        self._check_pixels(frame.width, frame.height, "a decoded frame is")
        pixels = frame.to_ndarray(format="rgb24")
        turns = round((frame.rotation or 0) / 90) % 4
        return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels
