"""The server's format allowlist and per-format decode cost (issue 10).

A fuzz campaign found Pillow decoders that are pure Python and slow per pixel (QOI, DDS, BLP, ...) and that WebP
decoding costs about twice the memory per pixel of a PNG. A server opens only ``SERVER_FORMATS`` and charges a
WebP's pixels their measured cost; the library's default stays permissive, the allowlist an option.
"""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image, features

import fastvit_detect as fd
from fastvit_detect.cli import main
from fastvit_detect.errors import ImageDecodeError, InvalidOptionError, UnsupportedInputError
from fastvit_detect.preprocess import DECODE_COST, SERVER_FORMATS, load_image, open_image, server_formats


def encoded(format: str, size: tuple[int, int] = (40, 30), mode: str = "RGB", **options) -> bytes:
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def mpo() -> bytes:
    buffer = io.BytesIO()
    first, second = Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (40, 30), (10, 200, 10))
    first.save(buffer, format="MPO", save_all=True, append_images=[second])
    return buffer.getvalue()


# Formats Pillow opens (and writes, so the test can make them) that a server refuses, slow decoders first.
REFUSED = {"QOI": lambda: encoded("QOI"), "DDS": lambda: encoded("DDS"), "PPM": lambda: encoded("PPM"),
           "PCX": lambda: encoded("PCX"), "SGI": lambda: encoded("SGI"), "ICO": lambda: encoded("ICO")}
ALLOWED = {"JPEG": lambda: encoded("JPEG"), "MPO": mpo, "PNG": lambda: encoded("PNG"),
           "WEBP": lambda: encoded("WEBP", lossless=True), "GIF": lambda: encoded("GIF"), "BMP": lambda: encoded("BMP"),
           "TIFF": lambda: encoded("TIFF")}
if features.check("avif"):
    ALLOWED["AVIF"] = lambda: encoded("AVIF", speed=10)


def test_server_formats_are_the_documented_photo_formats():
    assert SERVER_FORMATS == ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
    assert set(server_formats()) == set(ALLOWED)  # AVIF where this Pillow has it


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_allowed_formats_open(name):
    opened = open_image(ALLOWED[name](), formats=SERVER_FORMATS)
    assert opened.image.format == name
    assert load_image(ALLOWED[name](), formats=SERVER_FORMATS).size == (40, 30)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_other_formats_are_refused_by_name_with_the_allowlist_and_decode_without(name):
    data = REFUSED[name]()
    with pytest.raises(UnsupportedInputError, match=rf"{name} images aren't accepted here \(accepted: JPEG, MPO"):
        open_image(data, formats=SERVER_FORMATS)
    assert load_image(data).mode == "RGB"  # the library's default: every format Pillow opens


def test_no_pixel_of_a_refused_format_is_decoded(monkeypatch):
    """The allowlist refuses from the header: a refused format's decoder never runs (the library's default runs it)."""
    from PIL import QoiImagePlugin

    data = encoded("QOI")

    def never(*_args, **_kwargs):
        raise AssertionError("the QOI decoder ran")

    monkeypatch.setattr(QoiImagePlugin.QoiDecoder, "decode", never)
    with pytest.raises(UnsupportedInputError, match="QOI images aren't accepted here"):
        load_image(data, formats=SERVER_FORMATS)
    with pytest.raises(ImageDecodeError, match="the QOI decoder ran"):
        load_image(data)


def test_a_refused_format_declaring_too_many_pixels_for_pillow_is_still_named():
    """A QOI header declaring 65535 x 65535: Pillow's bomb check stops reading it, the refusal still names QOI."""
    header = b"qoif" + (65535).to_bytes(4, "big") * 2 + b"\x03\x00" + b"\xfe\x10\x20\x30" + b"\x00" * 7 + b"\x01"
    with pytest.raises(UnsupportedInputError, match="QOI images aren't accepted here"):
        open_image(header, formats=SERVER_FORMATS)


def test_an_mpo_needs_its_own_name_and_unknown_data_names_the_allowlist():
    with pytest.raises(UnsupportedInputError, match="MPO images aren't accepted"):
        open_image(mpo(), formats=["JPEG"])
    with pytest.raises(ImageDecodeError, match=r"not a recognised image format \(accepted: PNG\)"):
        open_image(b"neither an image nor empty", formats=["png"])


@pytest.mark.parametrize("bad", ["PNG", [], ["PNG", "NOPE"], ["EPS"], [3], [["PNG"]], 5])
def test_formats_must_be_known_names(bad):
    with pytest.raises(InvalidOptionError):
        open_image(encoded("PNG"), formats=bad)


def test_detector_load_takes_the_allowlist(vit_package):
    strict = fd.Detector.load(vit_package, variant="fp32", threads=1, formats=SERVER_FORMATS)
    permissive = fd.Detector.load(vit_package, variant="fp32", threads=1)
    qoi, png = encoded("QOI"), encoded("PNG")
    results = strict.predict_batch([png, qoi], errors="return")
    assert results[0].label in strict.labels and isinstance(results[1], UnsupportedInputError)
    assert all(result.label in permissive.labels for result in permissive.predict_batch([png, qoi]))


def test_cost_is_pixels_times_the_formats_measured_factor():
    assert DECODE_COST == {"WEBP": 2.0, "AVIF": 1.5}
    assert open_image(encoded("PNG", (40, 30))).cost == 1200
    assert open_image(encoded("WEBP", (40, 30), lossless=True)).cost == 2400
    assert open_image(encoded("WEBP", (40, 30), quality=50)).cost == 2400


# --- the server ---------------------------------------------------------------------------------------------

server = pytest.importorskip("fastvit_detect.server", exc_type=ImportError)


@pytest.fixture(scope="module")
def detector(vit_package):
    return fd.Detector.load(vit_package, variant="fp32", threads=1)


def serving(detector, **settings):
    return server.create_app(detector, server.ServeSettings(**settings))


def close(app) -> None:
    app.state.batcher.close()
    app.state.decoder.close()


def post(app, data: bytes, url: str = "/api/v1/predict") -> httpx.Response:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            if url == "/predict/":
                return await client.post(url, json={"image": base64.b64encode(data).decode()})
            return await client.post(url, files={"file": ("upload", data)})

    return asyncio.run(send())


def test_the_server_refuses_other_formats_with_415_naming_them(detector):
    app = serving(detector)
    try:
        assert app.state.settings.formats == server_formats()
        for name in ("QOI", "DDS"):
            for url in ("/api/v1/predict", "/predict/"):
                response = post(app, REFUSED[name](), url)
                assert response.status_code == 415, (name, url, response.text)
                error = response.json()["error"]
                assert error["type"] == "UnsupportedInputError" and f"{name} images aren't accepted" in error["message"]
        for name, make in ALLOWED.items():
            response = post(app, make())
            assert response.status_code == 200, (name, response.text)
    finally:
        close(app)
    anything = serving(detector, formats=None)  # serve --formats any
    try:
        assert post(anything, REFUSED["QOI"]()).status_code == 200
    finally:
        close(anything)


def test_a_webp_is_charged_its_decoding_cost(detector, monkeypatch):
    """A lossless WebP of uniform pixels is a few dozen bytes whatever its size, and costs twice a PNG's memory per
    pixel to decode: the cap and the decode budget count it so."""
    webp_bomb = encoded("WEBP", (100, 80), lossless=True)  # 8,000 pixels, cost 16,000
    png = encoded("PNG", (100, 80))
    app = serving(detector, max_pixels=10_000, decode_budget_pixels=40_000)
    charged: list[int] = []
    acquire = app.state.decoder.budget.acquire

    async def recording(pixels: int) -> None:
        charged.append(pixels)
        await acquire(pixels)

    monkeypatch.setattr(app.state.decoder.budget, "acquire", recording)
    try:
        response = post(app, webp_bomb)
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["type"] == "ImageTooLargeError"
        assert "costs as much to decode as 16,000 pixels of a JPEG or PNG (2 x 8,000), over the cap of 10,000" \
            in error["message"]
        assert post(app, png).status_code == 200
        small_webp = encoded("WEBP", (60, 50), lossless=True)  # 3,000 pixels, cost 6,000: under the cap
        assert post(app, small_webp).status_code == 200
        assert charged == [8_000, 6_000]
        assert app.state.decoder.budget.in_use == 0
    finally:
        close(app)


def test_serve_formats_flag(vit_package, monkeypatch, capsys):
    served = {}
    monkeypatch.setattr(server, "serve", lambda detector, **options: served.update(detector=detector, **options))
    base = ["serve", "--model", str(vit_package), "--variant", "fp32", "--threads", "1"]
    assert main(base) == 0
    assert served["settings"].formats == server_formats()
    assert main([*base, "--formats", "png, jpeg,Png"]) == 0
    assert served["settings"].formats == ("PNG", "JPEG")
    assert main([*base, "--formats", "any"]) == 0
    assert served["settings"].formats is None
    for bad in ("qoi2", "eps", ","):
        with pytest.raises(SystemExit) as exited:
            main([*base, "--formats", bad])
        assert exited.value.code == 2
        assert "Traceback" not in capsys.readouterr().err
