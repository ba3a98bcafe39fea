"""Cost that grows with something other than pixels: scan bombs, header bombs, and stalled decode threads.

A progressive JPEG repeating one scan costs scans x pixels in libjpeg; a JPEG of millions of empty APP1 or COM
segments, a PNG of millions of private chunks, a GIF of millions of extensions cost a Python loop turn (and a kept
object) each in Pillow's parsers, before any pixel cap. ``fastvit_detect.headers`` counts them over the raw bytes
first and refuses what passes a cap. Bombs are built here, just over a cap (cheap), or as large as an attacker's
where a test bounds the CPU time of refusing one.
"""

from __future__ import annotations

import asyncio
import io
import math
import struct
import threading
import time
import warnings

import httpx
import numpy as np
import pytest
from conftest import sample_photos
from hostile import (
    colour,
    gif_extension_bomb,
    jpeg_bytes,
    jpeg_scan_bomb,
    jpeg_segment_bomb,
    jpeg_segments,
    png_chunk,
    png_chunk_bomb,
    tiff_directory_bomb,
    webp_chunk_bomb,
    write_package,
)
from PIL import Image

from fastvit_detect import Detector, headers
from fastvit_detect.errors import ImageDecodeError, ImageTooLargeError
from fastvit_detect.headers import check_headers
from fastvit_detect.preprocess import open_image
from fastvit_detect.server import ServeSettings, create_app

CAP_CPU_S = 0.5  # refusing any bomb here: the walk stops at a cap, a few thousand loop turns at most


def cpu_seconds(work) -> tuple[float, object]:
    """CPU time of this process while ``work()`` runs, and its result or the exception it raised."""
    started = time.process_time()
    try:
        outcome = work()
    except Exception as exc:  # noqa: BLE001 - the outcome is what the test looks at
        outcome = exc
    return time.process_time() - started, outcome


# --- the library refuses bombs, quickly ---------------------------------------------------------------------


def test_a_scan_bomb_is_refused_before_libjpeg_runs_its_scans():
    """1 MP with 20,000 repeated 12-byte scans (244 KB): 11 s of CPU decoding on main, here a refusal."""
    seconds, outcome = cpu_seconds(lambda: open_image(jpeg_scan_bomb(20_000)))
    assert isinstance(outcome, ImageDecodeError), outcome
    assert "more than 100 scans" in str(outcome) and outcome.source == "<244118 bytes>"
    assert seconds < CAP_CPU_S


def test_scans_up_to_the_cap_decode():
    at_cap = open_image(jpeg_scan_bomb(headers.MAX_JPEG_SCANS, side=64))
    at_cap.image.load()
    with pytest.raises(ImageDecodeError, match="more than 100 scans"):
        open_image(jpeg_scan_bomb(headers.MAX_JPEG_SCANS + 1, side=64))


@pytest.mark.parametrize("marker, name", [(0xE1, "APP1"), (0xFE, "COM"), (0xED, "APP13")])
def test_a_segment_bomb_is_refused_before_pillow_parses_it(marker, name):
    """1 M empty segments (4 MB): about 1 s of CPU and +100 MB in Image.open on main, here a refusal."""
    seconds, outcome = cpu_seconds(lambda: open_image(jpeg_segment_bomb(1_000_000, marker), max_bytes=None))
    assert isinstance(outcome, ImageDecodeError), (name, outcome)
    assert "JPEG has more than 4,096 marker segments" in str(outcome)
    assert seconds < CAP_CPU_S


def test_segments_up_to_the_cap_are_parsed():
    below = headers.MAX_SEGMENTS - 20  # the JPEG's own segments count too
    assert open_image(jpeg_segment_bomb(below, 0xFE)).image.size == (32, 32)
    with pytest.raises(ImageDecodeError, match="4,096 marker segments"):
        open_image(jpeg_segment_bomb(headers.MAX_SEGMENTS + 1, 0xFE))


def test_stray_bytes_between_jpeg_segments_are_bounded():
    """Pillow skips a byte that belongs to no segment one loop turn at a time, 0xFF fill bytes too."""
    data = jpeg_bytes()
    after = jpeg_segments(data)[0][2]  # Pillow wants a marker right after SOI
    for junk in (b"\x00", b"\xff"):
        bomb = data[:after] + junk * (headers.MAX_STRAY_BYTES + 10) + data[after:]
        with pytest.raises(ImageDecodeError, match="stray bytes"):
            open_image(bomb)
    assert open_image(data[:after] + b"\x00" * 8 + data[after:]).image.size == (32, 32)  # a little padding is seen


def test_a_run_of_ff_bytes_is_read_once():
    """0xFF bytes inside a scan's data, or as fill before a marker: the walk must not restart in the run at each of
    its bytes (a pattern like ``\\xff+`` did: 16 KB of them took 2.9 s, 1 MB would take hours)."""
    data = jpeg_bytes()
    first_scan = next(start for marker, start, _end in jpeg_segments(data) if marker == 0xDA)
    scan_header_end = first_scan + 2 + struct.unpack_from(">H", data, first_scan + 2)[0]
    inside_scan = data[:scan_header_end] + b"\xff" * 1_000_000 + b"\x00" + data[scan_header_end:]
    seconds, outcome = cpu_seconds(lambda: check_headers(inside_scan, "ff-run"))
    assert outcome.scans == 1 and seconds < CAP_CPU_S, (outcome, seconds)


@pytest.mark.parametrize("after_data", [False, True], ids=["before-IDAT", "after-IDAT"])
def test_a_png_chunk_bomb_is_refused(after_data):
    """Private chunks before the image data are parsed by Image.open, those after it when the pixels load."""
    seconds, outcome = cpu_seconds(lambda: open_image(png_chunk_bomb(300_000, after_data=after_data)))
    assert isinstance(outcome, ImageDecodeError), outcome
    assert "PNG has more than 4,096 chunks besides image data" in str(outcome)
    assert seconds < CAP_CPU_S


def test_empty_image_data_chunks_are_bounded_separately():
    """Real PNGs split their data into 8-64 KiB IDAT chunks: a generous cap of its own, as empty ones cost as much."""
    assert open_image(png_chunk_bomb(headers.MAX_SEGMENTS * 2, kind=b"IDAT")).image.size == (32, 32)
    with pytest.raises(ImageDecodeError, match="more than 65,536 image-data chunks"):
        open_image(png_chunk_bomb(headers.MAX_DATA_BLOCKS + 1, kind=b"IDAT"))


def test_compressed_text_chunks_are_bounded():
    """Pillow inflates each zTXt up to 1 MiB: a few KiB of them could hold 64 MiB."""
    import zlib

    text = png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b" " * 1_000_000))
    data = png_chunk_bomb(1)
    where = data.index(b"IDAT") - 4
    assert open_image(data[:where] + text * headers.MAX_COMPRESSED_TEXT + data[where:]).image.size == (32, 32)
    with pytest.raises(ImageDecodeError, match="compressed text"):
        open_image(data[:where] + text * (headers.MAX_COMPRESSED_TEXT + 1) + data[where:])


def test_a_gif_extension_bomb_is_refused():
    seconds, outcome = cpu_seconds(lambda: open_image(gif_extension_bomb(1_000_000), max_bytes=None))
    assert isinstance(outcome, ImageDecodeError), outcome
    assert "GIF has more than 4,096 extension blocks" in str(outcome)
    assert seconds < CAP_CPU_S
    assert open_image(gif_extension_bomb(100)).image.size == (32, 32)


def test_tiff_directory_entries_are_bounded():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the private tags it skips
        assert open_image(tiff_directory_bomb(100, 16)).image.size == (1, 1)
        with pytest.raises(ImageDecodeError, match="TIFF has more than 4,096 directory entries"):
            open_image(tiff_directory_bomb(headers.MAX_SEGMENTS + 1))
        # Out-of-line values are copied: metadata, up to the file's size per directory (Pillow's own limit).
        shared = tiff_directory_bomb(9, 1 << 20)  # 9 entries, all pointing at the same 1 MiB
        assert open_image(shared).metadata_bytes <= len(shared)
        with pytest.raises(ImageTooLargeError, match="more than 8,388,608 bytes of metadata"):
            open_image(tiff_directory_bomb(1, 9 << 20))


def test_a_webp_chunk_bomb_is_refused():
    assert open_image(webp_chunk_bomb(100)).image.size == (32, 32)
    with pytest.raises(ImageDecodeError, match="WebP has more than 4,096 RIFF chunks"):
        open_image(webp_chunk_bomb(headers.MAX_SEGMENTS + 1))


def test_metadata_bytes_are_capped_and_charged():
    """Under the cap, metadata beyond an ordinary photo's counts in the decode budget (3 bytes a byte, a budget pixel
    being 8); over the cap, 413."""
    payload = b"x" * 65_000
    own = check_headers(jpeg_bytes(), "plain").metadata_bytes  # its JFIF segment
    opened = open_image(jpeg_segment_bomb(16, 0xFE, payload))
    assert opened.metadata_bytes == own + 16 * 65_000
    charged = opened.metadata_bytes - headers.METADATA_FREE_BYTES
    assert opened.cost == math.ceil(32 * 32 + charged * headers.METADATA_PIXEL_COST)
    assert open_image(jpeg_segment_bomb(1, 0xFE, payload)).cost == 32 * 32  # an ordinary photo's share: free
    over = headers.MAX_METADATA_BYTES // 65_000 + 1
    with pytest.raises(ImageTooLargeError, match="JPEG carries more than 8,388,608 bytes of metadata"):
        open_image(jpeg_segment_bomb(over, 0xE1, payload))


def test_a_photo_with_a_corrupt_exif_of_many_entries_still_decodes():
    """An EXIF block is metadata bytes, not walked: its directory holds at most 65,535 entries by the format, which
    Pillow parses in about half a second, and a photo whose EXIF is corrupt must still get a verdict."""
    entries = 20_000
    directory = struct.pack("<H", entries) + struct.pack("<HHIHH", 0x8000, 3, 1, 1, 0) * entries + bytes(4)
    exif = b"II*\x00" + struct.pack("<I", 8) + directory
    data = png_chunk_bomb(1)
    where = data.index(b"IDAT") - 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opened = open_image(data[:where] + png_chunk(b"eXIf", exif) + data[where:])
        opened.image.load()
    assert opened.image.size == (32, 32) and opened.metadata_bytes >= len(exif)


def test_a_truncated_chunk_counts_only_the_bytes_it_has():
    """A PNG chunk claiming 4 GB with 3 bytes present is a truncated file (the decoder's error), not 4 GB of
    metadata."""
    data = png_chunk_bomb(1)
    truncated = data[:data.index(b"IDAT") - 4] + struct.pack(">I", 0xFFFFFF00) + b"tEXtabc"
    assert check_headers(truncated, "truncated").metadata_bytes < 100
    with pytest.raises(ImageDecodeError):
        open_image(truncated)


def test_a_corrupt_exif_count_costs_nothing():
    """An EXIF entry claiming 4 G values that aren't there: Pillow skips it, so the walk mustn't refuse the photo."""
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x010E, 2, 0xFFFFFFF0, 26)
    data = jpeg_bytes()
    segment = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data"
        opened = open_image(data[:2] + segment + data[2:])
        opened.image.getexif()
    own = check_headers(data, "plain").metadata_bytes
    assert opened.image.size == (32, 32) and opened.metadata_bytes == own + len(exif)


# --- real photos still pass ---------------------------------------------------------------------------------


def camera_like_jpeg(progressive: bool = False) -> bytes:
    """What a camera or phone writes: EXIF with GPS, an ICC profile of 200 KB (split over 4 APP2 segments), XMP."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera maker"
    exif.get_ifd(0x8825)[1] = "N"
    icc = b"\x00" * 200_000
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), icc_profile=icc, xmp=b"<x:xmpmeta>" + b" " * 5000 + b"</x>",
               progressive=progressive, quality=85)
    return buffer.getvalue()


def mpo_bytes() -> bytes:
    frames = [Image.fromarray(colour((200, 10, 10), (64, 48))), Image.fromarray(colour((10, 10, 200), (64, 48)))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def test_real_photos_and_odd_images_pass(odd_images):
    inputs = {path.name: path.read_bytes() for path in [*sample_photos(), *odd_images.values()]}
    inputs |= {"camera.jpg": camera_like_jpeg(), "camera-progressive.jpg": camera_like_jpeg(progressive=True),
               "two-frames.mpo": mpo_bytes()}
    for name, data in inputs.items():
        cost = check_headers(data, name)
        assert cost.segments < 200 and cost.scans <= 10, (name, cost)
        opened = open_image(data)
        opened.image.load()
    assert open_image(inputs["two-frames.mpo"]).image.format == "MPO"
    assert check_headers(inputs["camera.jpg"], "camera.jpg").metadata_bytes > 200_000  # ICC, EXIF and XMP counted


# --- the server ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Detector:
    return Detector.load(write_package(tmp_path_factory.mktemp("tiny") / "package"), threads=1)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


async def _barrage(app, bombs: dict[str, bytes], honest: list[bytes]) -> tuple[dict, list, float]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        async def post(data: bytes) -> tuple[httpx.Response, float]:
            started = time.perf_counter()
            reply = await client.post("/api/v1/predict", content=data)
            return reply, time.perf_counter() - started

        started = time.process_time()
        replies = await asyncio.gather(*(post(data) for data in [*bombs.values(), *honest]))
        return dict(zip(bombs, replies[:len(bombs)])), replies[len(bombs):], time.process_time() - started


def test_the_server_answers_bombs_with_4xx_and_serves_honest_clients(detector):
    """Scan, APP1, COM and PNG chunk bombs as an attacker sends them (under the 20 MiB upload limit), beside honest
    uploads: each bomb gets its own 415 or 413, every honest upload its verdict, all within 2 s of this process's
    CPU (on main the scan bomb alone took 11 s of CPU, and every bomb was answered 200)."""
    app = create_app(detector, ServeSettings(decode_workers=2))
    bombs = {"scans": jpeg_scan_bomb(20_000), "app1": jpeg_segment_bomb(1_000_000, 0xE1),
             "com": jpeg_segment_bomb(1_000_000, 0xFE), "png-chunks": png_chunk_bomb(300_000),
             "metadata": jpeg_segment_bomb(130, 0xE1, b"x" * 65_000)}
    honest = [png(colour((250, 0, 0))), png(colour((0, 0, 250)))] * 3
    try:
        refused, answered, cpu = asyncio.run(_barrage(app, bombs, honest))
    finally:
        app.state.batcher.close()
    for name, (reply, _seconds) in refused.items():
        expected = (413, "ImageTooLargeError") if name == "metadata" else (415, "ImageDecodeError")
        assert (reply.status_code, reply.json()["error"]["type"]) == expected, (name, reply.text)
    assert "more than 100 scans" in refused["scans"][0].json()["error"]["message"]
    assert [reply.json()["label"] for reply, _seconds in answered] == ["Fake", "Real"] * 3
    assert cpu < 2.0


def test_the_decode_budget_is_charged_for_metadata(detector, monkeypatch):
    """An upload's metadata beyond an ordinary photo's is held while it decodes: the budget counts it, so the
    docs/reliability.md's memory bound holds whatever the mix of pixels and metadata."""
    app = create_app(detector, ServeSettings(decode_workers=2))
    charged: list[int] = []
    acquire = app.state.decoder.budget.acquire

    async def recording(pixels: int) -> None:
        charged.append(pixels)
        await acquire(pixels)

    monkeypatch.setattr(app.state.decoder.budget, "acquire", recording)
    upload = jpeg_segment_bomb(32, 0xFE, b"x" * 65_000)  # 2 MB of comments on a 32x32 JPEG

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post("/api/v1/predict", content=upload)

    try:
        reply = asyncio.run(post())
    finally:
        app.state.batcher.close()
    assert reply.status_code == 200, reply.text
    metadata = check_headers(upload, "upload").metadata_bytes
    assert charged == [math.ceil(32 * 32 + (metadata - headers.METADATA_FREE_BYTES) * headers.METADATA_PIXEL_COST)]
    assert app.state.decoder.budget.in_use == 0


def slow_decoder(detector: Detector, release: threading.Event, started: threading.Semaphore):
    """A decoder that holds its thread on any image named stuck.png until ``release``: a deterministic stall."""
    decode = detector.preprocessor.opened_to_pixels

    def opened_to_pixels(opened):
        if opened.source == "stuck.png":
            started.release()
            release.wait(30)
        return decode(opened)

    return opened_to_pixels


def test_healthz_reports_stalled_decode_threads(detector, monkeypatch):
    """One thread of two stuck: /healthz 200, counting it, and other uploads served. Both stuck past
    decode_stall_s: /healthz 503 "stalled" with the reason, and a new upload 503 at once instead of queueing."""
    release, started = threading.Event(), threading.Semaphore(0)
    monkeypatch.setattr(detector.preprocessor, "opened_to_pixels", slow_decoder(detector, release, started))
    app = create_app(detector, ServeSettings(decode_workers=2, decode_stall_s=0.2))
    stuck = png(colour((250, 0, 0)))
    files = {"file": ("stuck.png", stuck, "image/png")}

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            first = asyncio.ensure_future(client.post("/api/v1/predict", files=files))
            await asyncio.to_thread(started.acquire, True, 10)
            await asyncio.sleep(0.3)
            one_stuck = await client.get("/healthz")
            served = await client.post("/api/v1/predict", content=png(colour((0, 0, 250))))
            second = asyncio.ensure_future(client.post("/api/v1/predict", files=files))
            await asyncio.to_thread(started.acquire, True, 10)
            await asyncio.sleep(0.3)
            both_stuck = await client.get("/healthz")
            turned_away_at = time.perf_counter()
            turned_away = await client.post("/api/v1/predict", content=png(colour((0, 0, 250))))
            turned_away_s = time.perf_counter() - turned_away_at
            release.set()
            stuck_replies = [await first, await second]
            after = await client.get("/healthz")
            return one_stuck, served, both_stuck, turned_away, turned_away_s, stuck_replies, after

    try:
        one_stuck, served, both_stuck, turned_away, turned_away_s, stuck_replies, after = asyncio.run(scenario())
    finally:
        release.set()
        app.state.batcher.close()
    health = one_stuck.json()
    assert one_stuck.status_code == 200 and health["status"] == "ok"
    assert (health["decode_threads"], health["decode_threads_busy"], health["decode_threads_stalled"]) == (2, 1, 1)
    assert health["longest_decode_s"] > 0.2
    assert served.status_code == 200 and served.json()["label"] == "Real"
    health = both_stuck.json()
    assert both_stuck.status_code == 503 and health["status"] == "stalled", health
    assert health["decode_threads_stalled"] == 2 and "every decode thread (2)" in health["reason"]
    assert turned_away.status_code == 503 and turned_away.json()["error"]["type"] == "ServerBusyError"
    assert turned_away_s < 5  # refused at once, not queued behind the stuck decodes (30 s)
    assert [reply.json()["label"] for reply in stuck_replies] == ["Fake", "Fake"]
    health = after.json()
    assert after.status_code == 200 and health["decode_threads_stalled"] == 0 and health["slow_decodes"] == 2


def test_decode_stall_setting_is_validated():
    for bad in (0, -1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="decode_stall_s"):
            ServeSettings(decode_stall_s=bad)
