"""What the video modules' survivors of the automatic mutation run showed untested: the face tracker's rule (the
timeline module's docstring: a face continues the track whose last box overlaps it most, IoU >= 0.3, one face per
track, a track surviving up to MAX_GAP = 2 unseen sampled frames), max_frames' smallest value, and the MP4
sample-table walk's bounds (8 levels of nesting, 100,000 boxes). Expected values come from those rules and from
boxes laid out by hand, not from the code."""

from __future__ import annotations

import io
import struct

import pytest

from fastvit_detect.errors import InvalidOptionError, VideoDecodeError
from fastvit_detect.faces import Face
from fastvit_detect.timeline import Tracker
from fastvit_detect.video import _iso_claimed_samples


def face(x: float) -> Face:
    return Face((x, 0.0, x + 10.0, 10.0), 0.99)


def test_a_track_survives_two_unseen_frames_and_not_three():
    tracker = Tracker()
    first = tracker.link([face(0)])
    tracker.link([])
    tracker.link([])  # unseen for 2 sampled frames
    assert tracker.link([face(0)]) == first
    for _ in range(3):  # unseen for 3
        tracker.link([])
    assert tracker.link([face(0)]) != first


def test_two_faces_over_one_track_continue_it_once():
    """One face per track: the better-overlapping face continues it, the other starts a new track."""
    tracker = Tracker()
    (track,) = tracker.link([face(0)])
    near, further = tracker.link([face(1), face(3)])  # IoU 9/11 and 7/13 with the track's box
    assert near == track and further not in (track, None)


def box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def stsz(samples: int) -> bytes:
    return box(b"stsz", bytes(8) + struct.pack(">I", samples))  # version/flags, sample size 0, sample count


def claimed(data: bytes) -> int:
    return _iso_claimed_samples(io.BytesIO(data), len(data), "clip.mp4")


@pytest.mark.parametrize(("levels", "counted"), [(8, True), (9, False)])
def test_sample_tables_are_read_eight_containers_deep_and_no_deeper(levels, counted):
    nested = stsz(7)
    for _ in range(levels):
        nested = box(b"trak", nested)
    assert claimed(box(b"moov", nested)) == (7 if counted else 0)


def test_a_hundred_thousand_boxes_are_walked_and_one_more_is_refused():
    empty = box(b"free", b"")
    assert claimed(box(b"moov", empty * 99_999)) == 0  # the moov and 99,999 boxes in it: 100,000
    with pytest.raises(VideoDecodeError, match="more than 100,000 MP4 boxes"):
        claimed(box(b"moov", empty * 100_000))


def test_one_sampled_frame_is_the_fewest_a_clip_may_ask_for_and_none_is_refused():
    """max_frames: a whole number from 1 (the video guide's predict_video options)."""
    from fastvit_detect.timeline import _Settings

    assert _Settings(max_frames=1).max_frames == 1
    for wrong in (0, 1.5):
        with pytest.raises(InvalidOptionError, match="max_frames"):
            _Settings(max_frames=wrong)


def test_a_box_whose_header_ends_the_data_still_counts():
    """An 8-byte box ending the file, and a 64-bit-size box (size field 1, 16-byte header) ending a container, are
    boxes like any other: they count towards the 100,000."""
    empty = box(b"free", b"")
    with pytest.raises(VideoDecodeError, match="more than 100,000 MP4 boxes"):
        claimed(empty * 100_001)  # at the top level, the last ending the file
    assert claimed(empty * 100_000) == 0
    large = struct.pack(">I", 1) + b"free" + struct.pack(">Q", 16)
    with pytest.raises(VideoDecodeError, match="more than 100,000 MP4 boxes"):
        claimed(box(b"moov", empty * 99_999 + large))  # the moov, 99,999 boxes and the large one ending it


def test_a_readers_counters_start_at_zero_and_count_what_it_did(tmp_path):
    """VideoReader.seeks and decoded_frames: the keyframe seeks made and the frames decoded so far (none when
    opened; at most a seek per sampled frame; at the clip's own rate, each frame decoded once)."""
    pytest.importorskip("av")
    from video_clips import fake_segment_clip

    from fastvit_detect.video import VideoReader

    clip = fake_segment_clip(tmp_path / "clip.mp4")  # 8 s at 10 fps
    with VideoReader(clip) as reader:
        assert (reader.seeks, reader.decoded_frames) == (0, 0)
        sampled = list(reader.frames(1.0, 100))
        assert 1 <= reader.seeks <= len(sampled)
    with VideoReader(clip) as reader:  # at the clip's own rate: every frame decoded once, none twice
        sampled = list(reader.frames(10.0, 1000))
        assert reader.decoded_frames == len(sampled) == reader.info.packets == 80


def test_boxes_too_large_for_floats_do_not_link_into_one_track():
    """Box IoU for boxes whose areas overflow to infinity is no overlap (NaN isn't a match), so two such faces in
    successive frames start two tracks."""
    huge = Face((0.0, 0.0, 1e200, 1e200), 0.9)
    tracker = Tracker()
    assert tracker.link([huge]) != tracker.link([huge])


def test_a_clips_crops_go_to_the_model_batch_size_at_a_time(packages, tmp_path):
    """The video guide: crops (or whole frames) go to the model batch_size at a time; progress is reported after
    each batch and at the end. Whole frames are one crop each, so every report before the last is a multiple of the
    batch size."""
    pytest.importorskip("av")
    from video_clips import fake_segment_clip

    from fastvit_detect import Detector

    detector = Detector.load(packages["vit"], variant="fp32", threads=1)
    clip = fake_segment_clip(tmp_path / "clip.mp4")  # 8 s: 8 frames sampled at 1 fps
    reports: list[tuple[int, int]] = []
    detector.predict_video(clip, faces=False, batch_size=3, progress=lambda done, total: reports.append((done, total)))
    assert reports == [(3, 8), (6, 8), (8, 8)]


def test_a_one_byte_packet_is_a_frame_and_only_an_empty_one_ends_the_stream(tmp_path):
    """VP9's "show existing frame" packets are one byte long; the demuxer's end-of-stream marker is an empty packet
    (with no timestamp). A clip muxed by hand with one 1-byte packet among 5 timestamped ones has 5 packets."""
    av = pytest.importorskip("av")
    from fractions import Fraction

    import numpy as np

    from fastvit_detect.video import VideoReader

    path = tmp_path / "one-byte.mkv"
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        stream.time_base = Fraction(1, 10)
        picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        payload = b"".join(bytes(packet) for packet in stream.encode(picture.reformat(format="yuvj420p")))
        for packet in stream.encode():
            payload += bytes(packet)
        for index in range(5):
            packet = av.Packet(b"\x00" if index == 2 else payload)
            packet.pts = packet.dts = index
            packet.time_base, packet.stream, packet.is_keyframe = stream.time_base, stream, index == 0
            out.mux(packet)
    with av.open(str(path)) as container:  # the independent count: what the demuxer hands out
        sizes = [packet.size for packet in container.demux(container.streams.video[0])]
    assert sorted(sizes)[:2] == [0, 1]
    with VideoReader(path) as reader:
        assert reader.info.packets == 5


@pytest.mark.parametrize(("fps", "windows"), [
    (1.0, 8), (1.25, 10),  # exact divisions
    (1 + 0.5e-9 / 8, 8),  # 8 s x fps = 8 + 0.5e-9: within the 1e-9 rounding tolerance, no 9th window
    (1 + 1.5e-9 / 8, 9),  # 8 + 1.5e-9: a remainder over the tolerance gets its window, as exact arithmetic says
    (10 / 3, 27),  # 26.67 windows: the remainder gets its own
])
def test_the_plan_has_a_window_for_every_remainder_over_a_billionth_of_one(fps, windows, tmp_path):
    """plan(): windows 1/fps long over the clip, one more for a remainder, where a remainder under 1e-9 windows is
    taken for the float error of duration x fps (0.3 s at 10 fps is 3 windows, not 4)."""
    pytest.importorskip("av")
    from video_clips import fake_segment_clip

    from fastvit_detect.video import VideoReader

    with VideoReader(fake_segment_clip(tmp_path / "clip.mp4")) as reader:  # 8 s at 10 fps
        assert reader.info.duration == 8.0
        assert len(reader.plan(fps, 1000)) == windows


@pytest.mark.parametrize(("field", "low", "high"), [
    ("max_packets", 1, 2**31), ("max_decoded_frames", 1, 2**31), ("max_frame_pixels", 1, 2**34),
    ("max_duration", 0.001, 10 * 365 * 86400.0), ("max_decode_seconds", 0.001, 86400.0)])
def test_each_video_limit_may_be_raised_to_its_ceiling_and_not_past_it(field, low, high):
    """The video guide's ranges for VideoLimits, each end accepted and one step past it refused naming the field."""
    from fastvit_detect.video import VideoLimits

    for value in (low, high):
        assert getattr(VideoLimits(**{field: value}), field) == value
    step = 1 if isinstance(high, int) else high * 1e-9
    for value in (low - (1 if isinstance(low, int) else low / 2), high + step, float("nan")):
        with pytest.raises(InvalidOptionError, match=field):
            VideoLimits(**{field: value})


def test_boxes_apart_on_one_axis_overlap_by_nothing_however_they_overlap_on_the_other():
    """IoU is a ratio of areas, 0 to 1: boxes side by side (apart left to right, level top to bottom) or one above
    the other share no area, so their IoU is 0, never negative (from a negative width times a positive height)."""
    from fastvit_detect.timeline import _iou

    square = (0.0, 0.0, 10.0, 10.0)
    for other in ((20.0, 0.0, 30.0, 10.0), (0.0, 20.0, 10.0, 30.0), (20.0, 20.0, 30.0, 30.0), (10.0, 0.0, 20.0, 10.0)):
        assert _iou(square, other) == 0.0, other
    assert _iou(square, (5.0, 0.0, 15.0, 10.0)) == pytest.approx(50 / 150)
    assert _iou(square, square) == 1.0
