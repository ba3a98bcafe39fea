"""Videos (issue 24): sampling by time, faces across time, the timeline and the verdict, the CLI, and every hostile
class ending in a typed error or a bounded result.

The clips are made here with PyAV from the project's own photos (video_clips.py); the fake segment is a face
darkened at known seconds, which the vit fixtures call Fake (their verdict follows brightness).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

import video_clips as clips
from conftest import child_environment

from fastvit_detect import Detector
from fastvit_detect.cli import main
from fastvit_detect.detector import Prediction
from fastvit_detect.errors import (
    ImageDecodeError,
    ImageNotFoundError,
    InputError,
    InvalidOptionError,
    MissingFaceDetectorError,
    NoVideoStreamError,
    VideoDecodeError,
    VideoTooLargeError,
)
from fastvit_detect.faces import Face
from fastvit_detect.timeline import Tracker, track_verdict
from fastvit_detect.video import VideoLimits, VideoReader, is_video, sniff_container


@pytest.fixture(scope="module")
def detector(packages) -> Detector:
    # fp32: a crop's verdict doesn't depend on which crops share its batch (dynamic int8 scales per batch).
    return Detector.load(packages["vit-faces"], variant="fp32")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """8 s of H.264 at 10 fps, the face fake from 3 to 5 s."""
    return clips.fake_segment_clip(tmp_path_factory.mktemp("clips") / "clip.mp4")


def _flagged_times(result, threshold=0.5) -> list[float]:
    return [round(when, 3) for when, p in result.timeline if p is not None and p >= threshold]


# --- the timeline and the verdict -------------------------------------------------------------------------------


def test_the_fake_segment_shows_at_its_times_and_decides(detector, clip):
    result = detector.predict_video(clip)
    assert [round(frame.time, 3) for frame in result.frames] == [float(second) for second in range(8)]
    assert _flagged_times(result) == [3.0, 4.0]
    assert result.suspicious_ranges() == [(3.0, 5.0)]
    assert result.duration == pytest.approx(8.0)
    assert result.decided_by == "face track" and result.prediction.label == "Fake"
    (track,) = result.tracks  # one face, followed through all 8 frames
    assert track.kind == "face" and len(track.times) == 8 and result.decisive == track.id
    # the face sits where it was pasted, in every frame
    x, y = clips.FACE_AT
    assert all(x <= box[0] and y <= box[1] and box[2] <= x + 150 and box[3] <= y + 180 for box in track.boxes)


def test_a_real_clip_is_real(detector, tmp_path):
    path = clips.write_clip(tmp_path / "real.mp4", lambda index: clips.face_scene(False), 40)
    result = detector.predict_video(path)
    assert result.prediction.label == "Real" and result.suspicious_ranges() == []


@pytest.mark.parametrize("codec", ["h264-mp4", "vp9-webm", "mjpeg-avi", "mpeg4-mkv", "h264-ts"])
def test_codecs_and_containers(detector, tmp_path, codec):
    path = clips.fake_segment_clip(tmp_path / f"clip{clips.CODECS[codec][2]}", codec=codec, seconds=6, fake=(2, 4))
    result = detector.predict_video(path)
    assert result.info.container == {"h264-mp4": "mov", "vp9-webm": "matroska", "mjpeg-avi": "avi",
                                     "mpeg4-mkv": "matroska", "h264-ts": "mpegts"}[codec]
    # A sample may be its window's keyframe rather than its first frame (mpeg4 puts one every 1.2 s here): the
    # flagged samples are those of the fake seconds' windows.
    assert [int(when) for when in _flagged_times(result)] == [2, 3] and result.prediction.label == "Fake"
    assert all(2.0 <= when < 4.0 for when in _flagged_times(result))


def test_variable_frame_rate(detector, tmp_path):
    """Frames at irregular times (30-250 ms apart): one sample a second still, each in its second, and the fake
    segment (frames from 2.5 s to 4.5 s) where it is."""
    gaps = np.random.default_rng(7).integers(30, 250, size=80)
    times = np.concatenate([[0], np.cumsum(gaps)[:-1]]).tolist()
    real, dark = clips.face_scene(False), clips.face_scene(True)
    path = clips.write_clip(tmp_path / "vfr.mkv", lambda i: dark if 2500 <= times[i] < 4500 else real, 80,
                            codec="mpeg4-mkv", times_ms=times)
    result = detector.predict_video(path)
    sampled = [frame.time for frame in result.frames]
    assert all(index <= when < index + 1 for index, when in zip(range(len(sampled)), sampled))
    assert len(sampled) == int(np.ceil(result.duration))
    for frame in result.frames:
        assert (frame.fake_probability >= 0.5) == (2.5 <= frame.time < 4.5), frame.time
    assert result.prediction.label == "Fake"


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_a_rotated_phone_clip_comes_out_upright(detector, tmp_path, rotation):
    """Stored turned, with a display matrix saying how to turn it back (what phones write): the frames come out
    upright, so the face is found and the fake segment shows."""
    turns = round(rotation / 90)
    real, dark = (np.ascontiguousarray(np.rot90(clips.face_scene(flag), -turns)) for flag in (False, True))
    path = clips.write_clip(tmp_path / "phone.mp4", lambda i: dark if 20 <= i < 40 else real, 60, rotation=rotation)
    with VideoReader(path) as reader:
        first = next(reader.frames())
    upright = clips.face_scene(False)
    assert first.pixels.shape == upright.shape
    assert np.abs(first.pixels.astype(int) - upright).mean() < 12  # codec loss only; a wrong turn is ~60
    result = detector.predict_video(path)
    assert _flagged_times(result) == [2.0, 3.0] and len(result.tracks) == 1


def test_whole_frames_without_faces(packages, tmp_path):
    """A package without a face detector, faces=False: frames classified whole, as images are."""
    detector = Detector.load(packages["vit"], variant="fp32")
    with pytest.raises(MissingFaceDetectorError):
        detector.predict_video(tmp_path / "never-read.mp4")  # the package's lack is said before the clip is read
    path = clips.write_clip(tmp_path / "plain.mp4", lambda i: clips.plain_scene(30 <= i < 50), 80)
    result = detector.predict_video(path, faces=False)
    assert result.decided_by == "whole frames" and [track.kind for track in result.tracks] == ["frame"]
    assert _flagged_times(result) == [3.0, 4.0] and result.prediction.label == "Fake"
    expected = detector.predict(clips.plain_scene(True))
    assert result.frames[3].whole.fake_probability == pytest.approx(expected.fake_probability, abs=0.02)


def test_frames_without_a_face_are_classified_whole(detector, tmp_path):
    path = clips.write_clip(tmp_path / "mixed.mp4",
                            lambda i: clips.face_scene(False) if i < 30 else clips.plain_scene(False), 60)
    result = detector.predict_video(path)
    assert [frame.whole is None for frame in result.frames] == [True] * 3 + [False] * 3
    assert result.decided_by == "face track"  # faces were found: the whole frames only fill the timeline
    assert {track.kind for track in result.tracks} == {"face", "frame"}


def test_two_faces_make_two_tracks_and_the_fake_one_decides(detector, tmp_path):
    """The left face is fake from 2 to 4 s, the right one never: two tracks, each followed through every frame,
    the left one's verdict Fake and deciding the clip, the right one's Real."""
    real, fake = clips.two_faces_scene(False), clips.two_faces_scene(True)
    path = clips.write_clip(tmp_path / "two.mp4", lambda i: fake if 20 <= i < 40 else real, 60)
    result = detector.predict_video(path)
    assert len(result.tracks) == 2 and all(len(track.times) == 6 for track in result.tracks)
    left, right = sorted(result.tracks, key=lambda track: track.boxes[0][0])
    assert all(box[2] < 400 for box in left.boxes) and all(box[0] > 400 for box in right.boxes)
    assert left.verdict.label == "Fake" and right.verdict.label == "Real"
    assert result.decisive == left.id and result.prediction.label == "Fake"
    assert [when for when, p in zip(left.times, left.fake_probabilities) if p >= 0.5] == [2.0, 3.0]
    assert max(right.fake_probabilities) < 0.5


# --- sampling: by time, decoding only what it needs ----------------------------------------------------------


def test_sampling_decodes_a_fraction_of_a_clip_with_a_keyframe_a_second(tmp_path):
    """A 1-s GOP at 30 fps, sampled at 1 fps: about one decoded frame per sample, not 30 (the issue's target is
    <= 0.3x the work of decoding everything)."""
    frames = [np.full((64, 96, 3), value, np.uint8) for value in range(0, 250, 5)]
    path = clips.write_clip(tmp_path / "gop.mp4", lambda i: frames[i % len(frames)], 300, rate=30, gop=30)
    with VideoReader(path) as reader:
        sampled = list(reader.frames(fps=1.0))
        assert len(sampled) == 10 and reader.info.packets == 300
        assert reader.decoded_frames <= 0.3 * reader.info.packets
        assert reader.decoded_frames <= 2 * len(sampled)


def test_sampling_never_decodes_more_than_decoding_everything(tmp_path):
    frames = [np.full((64, 96, 3), value, np.uint8) for value in range(0, 250, 5)]
    path = clips.write_clip(tmp_path / "long-gop.mp4", lambda i: frames[i % len(frames)], 300, rate=30, gop=300)
    with VideoReader(path) as reader:
        assert len(list(reader.frames(fps=1.0))) == 10
        assert reader.decoded_frames <= reader.info.packets


def test_long_clips_get_max_frames_spread_evenly(tmp_path):
    path = clips.repeated_packets(tmp_path / "long.mkv", 600, 100)  # 60 s at 10 fps
    with VideoReader(path) as reader:
        times = [frame.time for frame in reader.frames(fps=1.0, max_frames=10)]
    assert times == pytest.approx([6.0 * index for index in range(10)], abs=0.11)


def test_streaming_and_progress(detector, clip):
    calls = []
    streamed = list(detector.predict_video_iter(clip, progress=lambda done, total: calls.append((done, total))))
    whole = detector.predict_video(clip)
    assert [(frame.time, frame.fake_probability) for frame in streamed] == whole.timeline
    assert calls[-1] == (8, 8) and all(total == 8 for _, total in calls)


def test_a_stream_given_up_early_stops_its_decoder(detector, clip):
    before = threading.active_count()
    frames = detector.predict_video_iter(clip, read_ahead=1)
    next(frames)
    frames.close()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_bytes_and_files_as_well_as_paths(detector, clip):
    by_path = detector.predict_video(clip).timeline
    assert detector.predict_video(clip.read_bytes()).timeline == by_path
    with open(clip, "rb") as handle:
        assert detector.predict_video(handle).timeline == by_path
        assert not handle.closed  # read in place, and left to its owner


@pytest.mark.parametrize("options", [{"fps": 0}, {"fps": float("nan")}, {"max_frames": 0}, {"max_frames": 1.5},
                                     {"batch_size": 0}, {"faces": "yes"}, {"margin": -1}, {"colour": 1}])
def test_bad_options_are_refused_before_the_clip_is_read(detector, options, tmp_path):
    with pytest.raises(InvalidOptionError):
        detector.predict_video(tmp_path / "never-read.mp4", **options)


# --- tracks and the verdict rule ---------------------------------------------------------------------------------


def _prediction(fake: float) -> Prediction:
    return Prediction("Fake" if fake >= 0.5 else "Real", max(fake, 1 - fake), {"Fake": fake, "Real": 1 - fake},
                      np.array([fake, 1 - fake]), fake)


def test_a_track_verdict_is_the_mean_of_its_top_quarter():
    one_odd = [_prediction(0.9)] + [_prediction(0.05)] * 11  # 12 frames: the top 3 count
    assert track_verdict(one_odd).fake_probability == pytest.approx((0.9 + 0.05 + 0.05) / 3)
    assert track_verdict(one_odd).label == "Real"
    a_quarter = [_prediction(0.95)] * 3 + [_prediction(0.05)] * 9
    assert track_verdict(a_quarter).label == "Fake"
    assert track_verdict([_prediction(0.7)]).fake_probability == pytest.approx(0.7)


def test_faces_link_by_overlap_and_gaps_end_tracks():
    tracker = Tracker()
    left, right = Face((10, 10, 60, 60), 0.99), Face((200, 10, 250, 60), 0.99)
    moved = Face((20, 12, 70, 62), 0.99)
    assert tracker.link([left, right]) == [1, 2]
    assert tracker.link([right, moved]) == [2, 1]  # order in the frame doesn't matter, overlap does
    assert tracker.link([Face((400, 300, 450, 350), 0.9)]) == [3]  # overlaps nothing: a new track
    for _ in range(3):
        tracker.link([])
    assert tracker.link([moved]) == [4]  # unseen for more than MAX_GAP frames: a new track


# --- content, not names -----------------------------------------------------------------------------------------


def test_container_sniffing():
    assert sniff_container(clips.image_bytes("astronaut.png", "PNG")[:4096]) is None
    assert sniff_container(clips.image_bytes("astronaut.png", "JPEG")[:4096]) is None
    assert sniff_container(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf") is None  # an AVIF image
    assert sniff_container(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2") == "mov"
    assert sniff_container(b"\x1a\x45\xdf\xa3" + bytes(8)) == "matroska"


def test_an_image_renamed_mp4_is_an_image_and_a_video_renamed_jpg_is_a_video(detector, clip, tmp_path, capsys,
                                                                             monkeypatch):
    import fastvit_detect.cli as cli

    loads: list[object] = []
    load = cli.load_detector
    monkeypatch.setattr(cli, "load_detector", lambda *args, **options: loads.append(args) or load(*args, **options))
    image = tmp_path / "photo.mp4"
    image.write_bytes(clips.image_bytes())
    video = tmp_path / "clip.jpg"
    video.write_bytes(clip.read_bytes())
    assert not is_video(image) and is_video(video)
    with pytest.raises(VideoDecodeError, match="not a video container"):
        detector.predict_video(image)
    code = main(["predict", "--model", str(detector.package.root), "--variant", "fp32", "--json", str(image),
                 str(video)])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [("video" in record, "image" in record) for record in records] == [(True, False), (False, True)]
    assert records[0]["video"] == str(video) and records[0]["label"] == "Fake"
    assert records[1]["image"] == str(image) and records[1]["label"] == detector.predict(image).label
    assert len(loads) == 1  # videos and images of one command share the model


# --- the command line -------------------------------------------------------------------------------------------


def test_cli_prints_the_verdict_and_the_suspicious_ranges_and_draws_the_timeline(detector, clip, tmp_path, capsys,
                                                                                  monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    drawn: list[Figure] = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: (drawn.append(figure),
                                                                            save(figure, *args, **kwargs))[1])
    png = tmp_path / "timeline.png"
    code = main(["predict", "--model", str(detector.package.root), "--variant", "fp32", str(clip),
                 "--timeline", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{clip}  verdict (face track 1): Fake" in out and f"{clip}  suspicious: 3.0-5.0 s" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # what the picture says: p(fake) against time per track, named in the legend, its points marked
    (axes,) = drawn[0].axes
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("time (s)", "p(fake)")
    tracks = [line for line in axes.get_lines() if line.get_label() == "face track 1"]
    assert len(tracks) == 1 and tracks[0].get_marker() == "o" and tracks[0].get_markersize() == 3


def test_cli_timeline_needs_a_video_and_matplotlib(detector, tmp_path, capsys):
    image = tmp_path / "photo.png"
    image.write_bytes(clips.image_bytes())
    assert main(["predict", "--model", str(detector.package.root), str(image), "--timeline",
                 str(tmp_path / "t.png")]) == 2
    assert "no video was given" in capsys.readouterr().err


def test_cli_reports_a_bad_video_and_goes_on(detector, clip, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[: len(clip.read_bytes()) // 2])  # moov (at the end) lost
    code = main(["predict", "--model", str(detector.package.root), "--variant", "fp32", str(broken), str(clip)])
    out = capsys.readouterr().out
    assert code == 1 and f"{broken}  ERROR  VideoDecodeError" in out and f"{clip}  verdict" in out


# --- hostile clips: a typed error or a bounded result, within a stated CPU time and memory -----------------------

# Each runs in a fresh process that samples the clip (decoding only: the classifier's cost doesn't depend on the
# clip) and reports its CPU seconds and peak RSS growth. The bounds are generous (a loaded 2-core machine); what
# they catch is work that grows with the claims: minutes of CPU, gigabytes of RSS.
CPU_SECONDS, RSS_MIB = 20.0, 400

CHILD = textwrap.dedent(r"""
    import json, resource, sys
    from fastvit_detect.video import VideoLimits, VideoReader

    def status(field):
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field))

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a decoder that allocates wildly fails here
    before = status("VmRSS")
    try:
        with VideoReader(sys.argv[1], VideoLimits(**json.loads(sys.argv[2]))) as reader:
            frames = sum(1 for _ in reader.frames(fps=1.0))
            outcome = {"frames": frames, "decoded": reader.decoded_frames, "duration": reader.info.duration}
    except Exception as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc), "input_error": "InputError" in
                   [cls.__name__ for cls in type(exc).__mro__]}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    outcome.update(cpu=usage.ru_utime + usage.ru_stime, rss_mib=(status("VmHWM") - before) / 2**20)
    print(json.dumps(outcome))
""")


def sample_in_child(path: Path, **limits) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(limits)], capture_output=True,
                          text=True, timeout=120, env=child_environment())
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.splitlines()[-1])
    assert outcome["cpu"] < CPU_SECONDS and outcome["rss_mib"] < RSS_MIB, outcome
    return outcome


def test_truncated_clips(clip, tmp_path):
    data = clip.read_bytes()
    for fraction in (0.02, 0.5, 0.9):
        path = tmp_path / f"cut-{fraction}.mp4"
        path.write_bytes(data[: int(len(data) * fraction)])
        outcome = sample_in_child(path)
        assert outcome.get("input_error") or outcome["frames"] >= 0, outcome
    streamable = clips.fake_segment_clip(tmp_path / "clip.mkv", codec="mpeg4-mkv", seconds=6)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(streamable.read_bytes()[: streamable.stat().st_size // 2])
    outcome = sample_in_child(cut)  # Matroska keeps what arrived: what the complete clusters hold samples
    assert 1 <= outcome["frames"] <= 3 and outcome["duration"] < 3, outcome


def test_corrupt_clips_fuzzed(clip, tmp_path):
    """Seeded mutations (flipped bytes, zeroed runs, duplicated chunks) of an H.264 clip: each ends in a typed
    error or frames, within the bounds; the outcomes are counted."""
    data = clip.read_bytes()
    rng = np.random.default_rng(24)
    outcomes: dict[str, int] = {}
    for index in range(16):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 40))):
            at = int(rng.integers(0, len(mutated)))
            kind = rng.integers(0, 3)
            if kind == 0:
                mutated[at] ^= 1 << int(rng.integers(0, 8))
            elif kind == 1:
                mutated[at:at + int(rng.integers(1, 64))] = bytes(64)[: len(mutated[at:at + 64])]
            else:
                mutated[at:at] = mutated[max(0, at - 32):at]
        path = tmp_path / f"fuzz-{index}.mp4"
        path.write_bytes(bytes(mutated))
        outcome = sample_in_child(path)
        assert "frames" in outcome or outcome["input_error"], outcome
        key = outcome.get("error", "frames")
        outcomes[key] = outcomes.get(key, 0) + 1
    assert sum(outcomes.values()) == 16, outcomes


def test_a_header_claiming_days_costs_what_the_clip_holds(detector, clip, tmp_path):
    liar = tmp_path / "days.mp4"
    liar.write_bytes(clips.claim_duration(clip.read_bytes(), 5 * 86400))
    outcome = sample_in_child(liar)
    assert outcome["duration"] == pytest.approx(8.0) and outcome["frames"] == 8
    assert detector.predict_video(liar).suspicious_ranges() == [(3.0, 5.0)]


def test_sample_tables_claiming_millions_are_refused_before_ffmpeg_indexes_them(clip, tmp_path):
    """134 KB whose tables claim 50 million samples: FFmpeg alone took 3.4 GiB and 5 s of CPU to open it."""
    bomb = tmp_path / "bomb.mp4"
    bomb.write_bytes(clips.sample_table_bomb(clip.read_bytes(), 50_000_000))
    outcome = sample_in_child(bomb)
    assert outcome["error"] == "VideoTooLargeError" and "sample tables claim 50,000,000" in outcome["message"]
    assert outcome["cpu"] < 5 and outcome["rss_mib"] < 100, outcome


def test_8k_is_refused_from_the_header(tmp_path):
    path = clips.write_clip(tmp_path / "8k.avi", lambda i: np.zeros((4320, 7680, 3), np.uint8), 1, codec="mjpeg-avi")
    outcome = sample_in_child(path)
    assert outcome["error"] == "VideoTooLargeError" and "7680x4320" in outcome["message"], outcome
    assert outcome["cpu"] < 5, outcome


def test_100000_tiny_frames(tmp_path):
    """100,000 16x16 frames: at 25 fps that's 67 minutes, refused from the packets; at 1000 fps it's 100 s,
    sampled at 1 fps by decoding about one frame per sample."""
    long = sample_in_child(clips.repeated_packets(tmp_path / "many.mkv", 100_000, 40))
    assert long["error"] == "VideoTooLargeError" and "span" in long["message"], long
    fast = sample_in_child(clips.repeated_packets(tmp_path / "fast.mkv", 100_000, 1))
    assert fast["frames"] == 100 and fast["decoded"] <= 2 * 100, fast
    capped = sample_in_child(tmp_path / "fast.mkv", max_packets=50_000)
    assert capped["error"] == "VideoTooLargeError" and "packets" in capped["message"], capped


def test_absurd_and_non_monotonic_timestamps(tmp_path):
    absurd = sample_in_child(clips.repeated_packets(tmp_path / "absurd.mkv", 50, 40,
                                                    stamps=[*range(0, 49 * 40, 40), 10**13]))
    assert absurd["error"] == "VideoTooLargeError", absurd
    shuffled = np.arange(200) * 40 + np.random.default_rng(0).integers(0, 8000, size=200)
    outcome = sample_in_child(clips.repeated_packets(tmp_path / "shuffled.mkv", 200, 40, stamps=shuffled.tolist()))
    assert "frames" in outcome and outcome["decoded"] <= 200 + 64, outcome


def _sample_all(clip: Path, limits: VideoLimits) -> list:
    with VideoReader(clip, limits) as reader:
        time.sleep(0.01)  # so that a deadline of 1 ms has passed by the first frame
        return list(reader.frames(fps=1.0))


def test_the_decoding_caps(clip):
    """Decoded frames, decoding time and frame size are bounded whatever the clip claims: typed errors."""
    with pytest.raises(VideoTooLargeError, match="more than 3 decoded frames"):
        _sample_all(clip, VideoLimits(max_decoded_frames=3))
    with pytest.raises(VideoTooLargeError, match="longer than 0.001 s"):
        _sample_all(clip, VideoLimits(max_decode_seconds=0.001))
    small = clips.write_clip(clip.with_name("small.mp4"), lambda i: np.zeros((240, 320, 3), np.uint8), 5)
    with pytest.raises(VideoTooLargeError, match="320x240 = 76,800 pixels"):
        VideoReader(small, VideoLimits(max_frame_pixels=320 * 240 - 1))


def test_no_video_to_sample(clip, tmp_path, detector):
    audio = sample_in_child(clips.audio_only(tmp_path / "audio.mp4"))
    assert audio["error"] == "NoVideoStreamError" and "only audio" in audio["message"], audio
    nested = sample_in_child(clips.nested(tmp_path / "nested.mkv", clip))
    assert nested["error"] == "NoVideoStreamError" and "attachment" in nested["message"], nested
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2\x00\x00\x00\x08moov")
    assert sample_in_child(empty)["error"] in ("NoVideoStreamError", "VideoDecodeError")
    archive = clips.zipped(tmp_path / "clip.zip", clip)
    assert not is_video(archive)
    with pytest.raises(ImageDecodeError):  # neither a video nor an image: the image path's typed error
        detector.predict(archive)
    with pytest.raises(NoVideoStreamError):
        detector.predict_video(tmp_path / "audio.mp4")


def test_paths_that_arent_clips(tmp_path, detector):
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    sniffed: list[bool] = []  # opening a FIFO for reading waits for a writer: sniffing must not
    sniffer = threading.Thread(target=lambda: sniffed.append(is_video(fifo)), daemon=True)
    sniffer.start()
    sniffer.join(10)
    assert sniffed == [False]
    # the images' open (media.open_regular_file): the file's kind named, and a symlink followed to what it is
    with pytest.raises(ImageNotFoundError, match=r"not a regular file \(a FIFO\); only video files are read"):
        VideoReader(fifo)
    (tmp_path / "zero.mp4").symlink_to("/dev/zero")
    assert not is_video(tmp_path / "zero.mp4")
    with pytest.raises(ImageNotFoundError, match=r"zero.mp4: not a regular file \(a character device\)"):
        VideoReader(tmp_path / "zero.mp4")
    with pytest.raises(ImageNotFoundError, match="directory"):
        VideoReader(tmp_path)
    with pytest.raises(InputError, match="empty"):
        VideoReader(b"")
    with pytest.raises(VideoTooLargeError, match="bytes"):
        VideoReader(b"\x1a\x45\xdf\xa3" + bytes(100), VideoLimits(max_bytes=64))


WITHOUT_AV = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "av":
                raise ImportError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    from fastvit_detect import Detector
    from fastvit_detect.errors import MissingExtraError
    detector = Detector.load(sys.argv[1], variant="fp32")
    print(detector.predict(sys.argv[2]).label)
    try:
        detector.predict_video(sys.argv[3])
    except MissingExtraError as exc:
        print("MISSING", exc)
""")


def test_without_pyav_images_work_and_videos_name_the_extra(detector, clip):
    image = clip.with_name("photo.png")
    image.write_bytes(clips.image_bytes())
    done = subprocess.run([sys.executable, "-c", WITHOUT_AV, str(detector.package.root), str(image), str(clip)],
                          capture_output=True, text=True, timeout=120, env=child_environment())
    assert done.returncode == 0, done.stderr[-2000:]
    label, missing = done.stdout.splitlines()[-2:]
    assert label == detector.predict(image).label
    assert missing.startswith("MISSING") and "fastvit-detect[video]" in missing


# --- scan -------------------------------------------------------------------------------------------------------


def test_scan_gives_each_video_one_record_and_its_frames_a_line_each(detector, clip, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "photo.png").write_bytes(clips.image_bytes())
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    (folder / "renamed.jpg").write_bytes(clip.read_bytes())  # a video by content
    (folder / "notes.txt").write_text("not picked up")
    results, frames = tmp_path / "results.jsonl", tmp_path / "frames.jsonl"
    argv = ["scan", str(folder), "--model", str(detector.package.root), "--variant", "fp32", "-o", str(results),
            "--video-frames", str(frames)]
    assert main(argv) == 0
    records = {Path(record["image"]).name: record for record in map(json.loads, results.read_text().splitlines())}
    assert set(records) == {"photo.png", "clip.mp4", "renamed.jpg"}
    assert "video" not in records["photo.png"]
    for name in ("clip.mp4", "renamed.jpg"):
        assert records[name]["video"] is True and records[name]["label"] == "Fake"
        assert records[name]["suspicious_ranges"] == [[3.0, 5.0]] and records[name]["sampled_frames"] == 8
    lines = [json.loads(line) for line in frames.read_text().splitlines()]
    assert len(lines) == 16 and {Path(line["video"]).name for line in lines} == {"clip.mp4", "renamed.jpg"}
    capsys.readouterr()
    assert main(argv) == 0  # resumed: everything is done already
    assert len(results.read_text().splitlines()) == 3 and "2 already in the output" not in capsys.readouterr().out


@pytest.mark.parametrize("output", ["results.jsonl", "results.csv"])
def test_a_faces_scan_with_videos_resumes(detector, clip, tmp_path, output):
    """A faces scan writes a record per face, then the image's, and a video's record after them; the video's
    ``decided_by`` (how its clip was decided) must not make the resume take the file for another kind of scan."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    (folder / "photo.png").write_bytes(clips.image_bytes())
    results = tmp_path / output
    argv = ["scan", str(folder), "--model", str(detector.package.root), "--variant", "fp32", "-o", str(results),
            "--faces"]
    assert main(argv) == 0
    written = results.read_text()
    assert "clip.mp4" in written and "photo.png" in written
    assert main(argv) == 0  # resumed: nothing left, nothing refused
    assert results.read_text() == written
    assert main([*argv[:-1], "--no-faces"]) == 2  # a plain scan into a faces scan's file is still refused


def test_a_csv_scan_without_faces_keeps_a_videos_common_columns(detector, clip, tmp_path):
    """A video's record says how its clip was decided; a CSV without the faces columns has no place for that and
    drops it, rather than failing the scan at the first video."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    results = tmp_path / "results.csv"
    assert main(["scan", str(folder), "--model", str(detector.package.root), "--variant", "fp32", "-o", str(results),
                 "--no-faces"]) == 0
    with open(results, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(Path(row["image"]).name, row["label"]) for row in rows] == [("clip.mp4", "Fake")]


# --- POST /api/v1/video -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_app(detector):
    pytest.importorskip("fastapi")
    from fastvit_detect.server import ServeSettings, create_app
    from fastvit_detect.server.video import VideoServeSettings

    app = create_app(detector, ServeSettings(max_upload_bytes=2_000_000),
                     VideoServeSettings(max_upload_bytes=3_000_000, max_duration=20, max_frames=50, queue=0))
    yield app
    app.state.batcher.close()
    app.state.videos.close()


def _post(app, requests: list[dict]) -> list:
    import asyncio

    import httpx

    async def send() -> list:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return list(await asyncio.gather(*(client.request(**request) for request in requests)))

    return asyncio.run(send())


def _upload(data: bytes, name: str = "clip.mp4", url: str = "/api/v1/video") -> dict:
    return {"method": "POST", "url": url, "files": {"file": (name, data)}}


def test_server_answers_a_video_with_its_verdict_and_timeline(video_app, clip):
    (response,) = _post(video_app, [_upload(clip.read_bytes())])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["video"] == "clip.mp4" and body["label"] == "Fake" and body["decided_by"] == "face track"
    assert body["suspicious_ranges"] == [[3.0, 5.0]] and len(body["timeline"]) == 8
    (raw,) = _post(video_app, [{"method": "POST", "url": "/api/v1/video?fps=2", "content": clip.read_bytes()}])
    assert raw.status_code == 200 and len(raw.json()["timeline"]) == 16


def test_server_video_caps_answer_with_the_cause(video_app, clip, tmp_path):
    image, too_big, long = (_upload(clips.image_bytes(), "photo.mp4"), _upload(bytes(3_100_000)),
                            _upload(clips.repeated_packets(tmp_path / "long.mkv", 300, 100).read_bytes(), "long.mkv"))
    frames = {**_upload(clip.read_bytes()), "url": "/api/v1/video?max_frames=51"}
    answers = _post(video_app, [image])
    answers += _post(video_app, [too_big])
    answers += _post(video_app, [long])
    answers += _post(video_app, [frames])
    assert [answer.status_code for answer in answers] == [415, 413, 413, 422]
    assert [answer.json()["error"]["type"] for answer in answers] == [
        "VideoDecodeError", "UploadTooLargeError", "VideoTooLargeError", "InvalidOptionError"]
    assert "not a video container" in answers[0].json()["error"]["message"]
    assert "20 s" in answers[2].json()["error"]["message"] and "max_frames" in answers[3].json()["error"]["message"]


@pytest.mark.parametrize("query", ["fps=nan", "fps=inf", "fps=-inf", "fps=1e309", "fps=0", "fps=abc", "fps=",
                                   "max_frames=1e9", "max_frames=-1", "max_frames=10000000000000000000000",
                                   "max_frames=2.5", "fps=1&fps=2", "frames_per_second=1"])
def test_hostile_video_parameters_are_422_before_the_clip_is_decoded(video_app, clip, query):
    """Non-finite, huge, negative, fractional, empty, repeated and unknown values: a typed 422 naming the cause,
    never a 500 and never a clip sampled at a rate or count nobody allowed."""
    (answer,) = _post(video_app, [{**_upload(clip.read_bytes()), "url": f"/api/v1/video?{query}"}])
    assert answer.status_code == 422, (query, answer.status_code, answer.text[:200])
    assert answer.json()["error"]["type"] in ("InvalidOptionError", "BadRequestError")


def test_a_video_at_work_never_stalls_image_requests_and_extra_videos_get_503(video_app, clip, monkeypatch):
    stage = video_app.state.videos
    entered, release = threading.Event(), threading.Event()
    run = stage._run

    def held(*args):
        entered.set()
        release.wait(30)
        return run(*args)

    monkeypatch.setattr(stage, "_run", held)
    photo = clips.image_bytes()
    import asyncio

    import httpx

    async def scenario() -> tuple:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=video_app), base_url="http://test") as client:
            first = asyncio.ensure_future(client.request(**_upload(clip.read_bytes())))
            assert await asyncio.to_thread(entered.wait, 30)
            second = await client.request(**_upload(clip.read_bytes()))  # concurrency 1, queue 0: busy
            image = await client.request(**_upload(photo, "photo.png", "/api/v1/predict"))
            release.set()
            return await first, second, image

    first, second, image = asyncio.run(scenario())
    assert second.status_code == 503 and second.json()["error"]["type"] == "ServerBusyError"
    assert image.status_code == 200 and image.json()["label"] == detector_label(video_app, photo)
    assert first.status_code == 200 and first.json()["label"] == "Fake"


def detector_label(app, data: bytes) -> str:
    import io

    return app.state.detector.predict(io.BytesIO(data)).label


def test_serve_video_flags_accept_exactly_what_the_video_settings_accept():
    pytest.importorskip("fastapi")
    from fastvit_detect.cli import build_parser, video_serve_settings

    args = build_parser().parse_args(["serve", "--model", "m", "--max-video-mb", "10", "--max-video-seconds", "30",
                                      "--max-video-frames", "20"])
    settings = video_serve_settings(args)
    assert (settings.max_upload_bytes, settings.max_duration, settings.max_frames) == (10 * 2**20, 30.0, 20)
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    for flag in ("--max-video-mb", "--max-video-seconds", "--max-video-frames"):
        action = next(action for action in commands.choices["serve"]._actions if flag in action.option_strings)
        low, high = action.type.bounds
        for value in (low, high) if getattr(action.type, "low_inclusive", True) else (high,):
            video_serve_settings(parser.parse_args(["serve", "--model", "m", flag, str(value)]))


def test_scan_video_frames_is_refused_with_the_ray_engine(tmp_path, capsys):
    code = main(["scan", str(tmp_path), "--model", str(tmp_path / "absent"), "--engine", "ray", "--video-frames",
                 str(tmp_path / "frames.jsonl")])
    assert code == 2 and "--video-frames needs --engine local" in capsys.readouterr().err


def test_a_scans_summary_counts_each_video_once(detector, clip, tmp_path):
    from fastvit_detect.scan import scan

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "photo.png").write_bytes(clips.image_bytes())
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    (folder / "torn.mp4").write_bytes(clip.read_bytes()[:3000])  # an MP4 by its content, cut short: an error record
    summary = scan(detector, folder, tmp_path / "results.jsonl")
    assert (summary.found, summary.classified, summary.failed) == (3, 2, 1)
    assert sum(summary.labels.values()) == 2 and summary.labels["Fake"] >= 1  # the clip's verdict is Fake
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [Path(record["image"]).name for record in records if "error" in record] == ["torn.mp4"]


def test_a_video_scan_puts_each_clips_lines_on_disk_before_the_next_and_closes_its_frames_file(detector, clip,
                                                                                               tmp_path, monkeypatch):
    """What a scan killed between two clips leaves: the first clip's record and its frame lines are on disk before
    the second clip is decoded (a resume skips it); and the frames file is closed when the scan ends."""
    import warnings

    from test_mutants_scan import open_descriptors_to

    from fastvit_detect.scan import scan

    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (folder / name).write_bytes(clip.read_bytes())
    results, frames = tmp_path / "results.jsonl", tmp_path / "frames.jsonl"
    on_disk: list[tuple[str, str]] = []
    predict_video = detector.predict_video

    def watched(path, **options):
        on_disk.append((results.read_text(), frames.read_text()))
        return predict_video(path, **options)

    monkeypatch.setattr(detector, "predict_video", watched)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)  # a file left for the garbage collector to close
        scan(detector, folder, results, video_frames=frames)
    assert [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)] == []
    assert on_disk[0] == ("", "")
    records, frame_lines = (text.splitlines() for text in on_disk[1])
    assert [Path(json.loads(line)["image"]).name for line in records] == ["a.mp4"]
    assert len(frame_lines) == 8 and {Path(json.loads(line)["video"]).name for line in frame_lines} == {"a.mp4"}
    assert open_descriptors_to(frames) == []


def test_a_clip_without_a_decodable_frame_gets_a_record_without_a_verdict(detector, clip, tmp_path, monkeypatch):
    """scan.video_record's contract: a clip with no decodable frame gets a record with no verdict (label None, no
    probabilities, 0 sampled frames); it counts neither as classified nor as failed."""
    import dataclasses

    from fastvit_detect.scan import scan

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(clip.read_bytes())
    predict_video = detector.predict_video
    monkeypatch.setattr(detector, "predict_video", lambda path, **options: dataclasses.replace(
        predict_video(path, **options), frames=[], tracks=[], prediction=None, decided_by="none", decisive=None))
    summary = scan(detector, folder, tmp_path / "results.jsonl")
    (record,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert Path(record.pop("image")).name == "a.mp4"
    assert record == {"video": True, "label": None, "score": None, "fake_probability": None, "probabilities": {},
                      "sampled_frames": 0}
    assert (summary.found, summary.classified, summary.failed) == (1, 0, 0)


@pytest.mark.parametrize("fps", [10.0, 30.0, 100.0, 120.0])
def test_sampling_above_a_clips_own_rate_decodes_each_frame_once(fps, tmp_path):
    """Asking for more frames a second than the clip has gives each of its frames once, at the cost of decoding
    it once: the windows after the last frame hold nothing and cost nothing. (They used to seek back to the
    keyframe and decode up to the end again, each: 660 frames decoded for 80 at fps=100, growing with the rate
    asked for, so a long clip with few keyframes could hit max_decoded_frames.)"""
    from video_clips import fake_segment_clip

    from fastvit_detect.video import VideoReader

    with VideoReader(fake_segment_clip(tmp_path / "clip.mp4")) as reader:  # 8 s at 10 fps, one keyframe
        times = [round(frame.time, 6) for frame in reader.frames(fps, 10_000)]
        assert times == [round(index / 10, 6) for index in range(80)]
        assert (reader.decoded_frames, reader.seeks) == (80, 1)
