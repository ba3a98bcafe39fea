"""Clips the video tests make with PyAV from the project's own photos, and hostile ones.

The "fake" segment: the vit fixtures' verdict follows brightness (dark -> Fake, fixture_models.py), so a face
darkened for a few seconds is a fake segment at known times, and the same face at normal brightness is real.
"""

from __future__ import annotations

import fractions
import io
import struct
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageEnhance

from fastvit_detect.build import samples

ASTRONAUT_FACE = (150, 30, 300, 210)  # as tests/test_faces.py: a patch around the face, with some hair and neck
SCENE_SIZE = (480, 360)  # width, height
FACE_AT = (160, 90)


def _photo(name: str) -> Image.Image:
    path = next(path for path in samples.sample_photos() if path.name == name)
    with Image.open(path) as image:
        return image.convert("RGB")


def face_scene(dark: bool) -> np.ndarray:
    """The rocket photo with the astronaut's face pasted in; ``dark``: the face darkened (the fixtures say Fake)."""
    scene = _photo("rocket.jpg").resize(SCENE_SIZE, Image.Resampling.BILINEAR)
    face = _photo("astronaut.png").crop(ASTRONAUT_FACE)
    scene.paste(ImageEnhance.Brightness(face).enhance(0.35) if dark else face, FACE_AT)
    return np.asarray(scene)


def two_faces_scene(dark: bool) -> np.ndarray:
    """800x450: the astronaut's face on the left (darkened: the fixtures say Fake) and Grace Hopper's, brightened
    (Real), on the right."""
    scene = _photo("rocket.jpg").resize((800, 450), Image.Resampling.BILINEAR)
    face = _photo("astronaut.png").crop(ASTRONAUT_FACE)
    other = _photo("grace_hopper.jpg").crop((140, 80, 390, 380)).resize((150, 180), Image.Resampling.LANCZOS)
    scene.paste(ImageEnhance.Brightness(face).enhance(0.35) if dark else face, (60, 90))
    scene.paste(ImageEnhance.Brightness(other).enhance(1.8), (520, 120))
    return np.asarray(scene)


def plain_scene(dark: bool) -> np.ndarray:
    """A faceless frame, dark (Fake as a whole frame) or bright (Real)."""
    scene = _photo("rocket.jpg").resize(SCENE_SIZE, Image.Resampling.BILINEAR)
    return np.asarray(ImageEnhance.Brightness(scene).enhance(0.3 if dark else 2.5))


CODECS = {  # name -> (encoder, container format, file suffix, encoder options, pixel format)
    "h264-mp4": ("libx264", "mp4", ".mp4", {"preset": "ultrafast"}, "yuv420p"),
    "vp9-webm": ("libvpx-vp9", "webm", ".webm", {"deadline": "realtime", "cpu-used": "8"}, "yuv420p"),
    "mjpeg-avi": ("mjpeg", "avi", ".avi", {}, "yuvj420p"),
    "mpeg4-mkv": ("mpeg4", "matroska", ".mkv", {"qscale": "3"}, "yuv420p"),
    "h264-ts": ("libx264", "mpegts", ".ts", {"preset": "ultrafast"}, "yuv420p"),
}


def write_clip(path: Path, frame_at: Callable[[int], np.ndarray], count: int, codec: str = "h264-mp4",
               rate: int = 10, times_ms: Sequence[int] | None = None, rotation: float | None = None,
               gop: int | None = None) -> Path:
    """``count`` frames ``frame_at(i)``; ``times_ms``: each frame's timestamp in ms (variable frame rate);
    ``rotation``: the display matrix's angle (a phone's portrait clip); ``gop``: frames between keyframes."""
    encoder, fmt, _, options, pixel_format = CODECS[codec]
    options = dict(options)
    if gop is not None:
        options["g"] = str(gop)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(encoder, rate=rate, options=options)
        first = frame_at(0)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = pixel_format
        if times_ms is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(frame_at(index), format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[index], fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def fake_segment_clip(path: Path, codec: str = "h264-mp4", seconds: int = 8, fake: tuple[int, int] = (3, 5),
                      rate: int = 10) -> Path:
    """The face clip, its face darkened (fake) from ``fake[0]`` to ``fake[1]`` seconds."""
    real, dark = face_scene(False), face_scene(True)
    return write_clip(path, lambda index: dark if fake[0] <= index / rate < fake[1] else real, seconds * rate,
                      codec, rate)


def repeated_packets(path: Path, count: int, step_ms: int, side: int = 16, stamps: Sequence[int] | None = None,
                     fmt: str = "matroska") -> Path:
    """``count`` copies of one tiny MJPEG frame, ``step_ms`` apart (or at ``stamps``, in ms): many frames for
    few bytes, and timestamps of one's choosing. dts stays monotonic, as muxers insist; pts may go anywhere above."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width = stream.height = side
        stream.pix_fmt = "yuvj420p"
        (encoded,) = [packet for packet in stream.encode(av.VideoFrame.from_ndarray(
            np.full((side, side, 3), 128, np.uint8), format="rgb24"))]
        payload = bytes(encoded)
        base = fractions.Fraction(1, 1000)
        for index in range(count):
            packet = av.Packet(payload)
            packet.stream, packet.time_base = stream, base
            packet.dts = index * step_ms
            packet.pts = stamps[index] if stamps is not None else index * step_ms
            packet.is_keyframe = True
            container.mux(packet)
    return path


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100)
        for index in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def nested(path: Path, inner: Path) -> Path:
    """A Matroska file whose only picture stream is a whole clip carried as an attachment, beside a silent audio
    track: a container nested in a container."""
    with av.open(str(path), "w", format="matroska") as container:
        audio = container.add_stream("flac", rate=8000)
        container.add_attachment(inner.name, "video/mp4", inner.read_bytes())
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in [*audio.encode(frame), *audio.encode()]:
            container.mux(packet)
    return path


def zipped(path: Path, inner: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(inner, inner.name)
    return path


def claim_duration(data: bytes, seconds: int) -> bytes:
    """An MP4 whose movie and track headers (mvhd, tkhd, mdhd, version 0) claim ``seconds`` of duration."""
    patched = bytearray(data)
    for box, offset in ((b"mvhd", 16), (b"tkhd", 20), (b"mdhd", 16)):
        start = patched.find(box)
        assert start > 0 and patched[start + 4] == 0, box
        scale_at = start + 4 + 12  # version+flags, creation and modification times
        timescale = struct.unpack(">I", patched[scale_at:scale_at + 4])[0] if box != b"tkhd" else 1000
        duration = min(0xFFFFFFFF, seconds * timescale)
        patched[start + 4 + offset:start + 4 + offset + 4] = struct.pack(">I", duration)
    return bytes(patched)


def sample_table_bomb(data: bytes, samples: int) -> bytes:
    """An MP4 (from ``data``, a one-chunk-table clip of ours) whose tables claim ``samples`` samples of one byte:
    FFmpeg builds an index entry for each when it opens the file (3.4 GiB for 50 million)."""
    patched = bytearray(data)

    def box(name: bytes) -> int:
        at = patched.find(name)
        assert at > 0, name
        return at - 4

    stsz, stsc, stts = box(b"stsz"), box(b"stsc"), box(b"stts")
    patched[stsz + 12:stsz + 20] = struct.pack(">II", 1, samples)  # constant sample size 1, sample count
    for entry in range(struct.unpack(">I", patched[stsc + 12:stsc + 16])[0]):
        at = stsc + 16 + 12 * entry + 4
        patched[at:at + 4] = struct.pack(">I", samples)  # samples per chunk
    patched[stts + 16:stts + 20] = struct.pack(">I", samples)  # the first run of durations
    return bytes(patched)


def image_bytes(name: str = "astronaut.png", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    _photo(name).save(buffer, format=fmt)
    return buffer.getvalue()
