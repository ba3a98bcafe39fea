"""Seeded fuzzing of the image-decoding boundary: a generator of hostile inputs, and a harness that runs them.

The generator builds valid seed images in every format Pillow opens here (written by Pillow, or crafted byte by
byte where Pillow can't write the format), then mutates them: bit flips, byte runs, insertions, truncation at
random and at structure boundaries, duplicated, dropped and swapped chunks/segments/boxes, header fields set to
edge values (huge or zero sizes, bit depths, colour types, compression, palette sizes, frame counts), splices of
two formats. Beside mutated files it makes crafted headers with huge or zero dimensions, bogus EXIF and ICC
blocks, highly compressed images of many megapixels, hostile numpy arrays, PIL images in odd modes, and file
objects, paths and bytes-likes that misbehave.

Every case is a pure function of ``(seed, index)``: ``plan`` picks what to build from a ``random.Random`` seeded
with that pair, ``build_case`` builds it. The harness runs each case in a long-lived worker process that calls the
runtime the way a user does (``load_image``, ``Preprocessor.to_pixels`` with the default caps, and, given a model
package, ``Detector.predict_batch``/``predict_iter`` with ``errors="return"`` between two good images). The parent
kills a worker that overruns a case's CPU time, wall time or RSS limit, and counts every outcome: ``ok``, each
``FastVitDetectError`` class, and the failures (``escaped:<class>``, ``timeout``, ``memory``, ``crash:<signal>``,
``neighbour-failed``, ``raised:<class>``, ``bad-output``, ``generator-error``).

A larger run, from the repository root (exit status 1 when any case failed)::

    python tests/fuzzing.py --cases 20000 --workers 2 [--package DIR] [--seed 0] [--json report.json]
    python tests/fuzzing.py --cases 20000 --workers 2 --formats server   # the server's allowlist
    python tests/fuzzing.py --replay 1234            # one case, in this process, with its traceback
    python tests/fuzzing.py --save 1234 case.bin     # one case's bytes (file-like cases only)

Imports only the standard library, numpy, Pillow and fastvit_detect, so the suite and the script share it.
Seeds are deterministic for a given Pillow and codec-library build; a different libwebp or libavif may encode the
same picture to other bytes, so a case index reproduces exactly only on the same versions.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import fastvit_detect
from fastvit_detect import FastVitDetectError, ImageTooLargeError, Preprocessor
from fastvit_detect.detector import FacesResult
from fastvit_detect.preprocess import DEFAULT_MAX_PIXELS, PreprocessConfig, server_formats

# ============================================================================================================
# Seed images
# ============================================================================================================

WIDTH, HEIGHT = 48, 40  # small and not square, so swapped width/height fields are visible


def picture(width: int = WIDTH, height: int = HEIGHT, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A smooth gradient with noise: compresses like a photo, not like flat colour or pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) * 127 / max(width + height, 1)],
                    axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([pixels, (x * 5 % 256).astype(np.uint8)]))
    if mode in ("I;16", "I;16B"):
        return Image.fromarray((pixels[..., 0].astype(np.uint16) * 257).astype("<u2" if mode == "I;16" else ">u2"))
    return image if mode == "RGB" else image.convert(mode)


def saved(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_raw(width: int, height: int, depth: int, colour: int, interlace: int = 0, seed: int = 0,
            extra: Iterable[bytes] = ()) -> bytes:
    """A PNG of any depth/colour type/interlace Pillow can't write, with random rows (every byte value is valid)."""
    rng = random.Random(seed)
    bits = depth * _PNG_CHANNELS[colour]
    raw = bytearray()
    for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
        columns, rows = max(0, -(-(width - x0) // dx)), max(0, -(-(height - y0) // dy))
        if columns and rows:
            for _ in range(rows):
                raw += bytes([rng.randrange(5)]) + rng.randbytes((columns * bits + 7) // 8)
    chunks = [png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))]
    if colour == 3:
        chunks.append(png_chunk(b"PLTE", rng.randbytes(3 * (1 << depth))))
        chunks.append(png_chunk(b"tRNS", rng.randbytes(min(4, 1 << depth))))
    chunks.extend(extra)
    chunks += [png_chunk(b"IDAT", zlib.compress(bytes(raw))), png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


_ZERO_BLOCK_SIZE = 1 << 20
_zero_blocks: dict[int, bytes] = {}


def _raw_deflate_zeros(size: int) -> bytes:
    if size not in _zero_blocks:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        _zero_blocks[size] = compressor.compress(bytes(size)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return _zero_blocks[size]


def zlib_zeros(count: int) -> bytes:
    """A zlib stream of ``count`` zero bytes, built without ever holding them: full-flushed deflate blocks repeat."""
    whole, rest = divmod(count, _ZERO_BLOCK_SIZE)
    body = _raw_deflate_zeros(_ZERO_BLOCK_SIZE) * whole + (_raw_deflate_zeros(rest) if rest else b"")
    adler = ((count % 65521) << 16) | 1  # adler32 of zeros: a stays 1, b counts the bytes
    return b"\x78\xda" + body + b"\x03\x00" + struct.pack(">I", adler)  # \x03\x00: an empty final block


def tiff_strip(width: int, height: int, strip: bytes, compression: int = 8, bits: int = 8, samples: int = 1,
               photometric: int = 1) -> bytes:
    """A little-endian TIFF with one strip, as plain as the format allows."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, compression),
               (262, 3, 1, photometric), (273, 4, 1, 0), (277, 3, 1, samples), (278, 4, 1, height),
               (279, 4, 1, len(strip))]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = data_offset if tag == 273 else value
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                        else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + strip


def _bmp_rle(width: int, height: int, bits: int, payload: bytes) -> bytes:
    palette = b"".join(bytes([i, 255 - i, (i * 7) % 256, 0]) for i in range(1 << bits))
    offset = 14 + 40 + len(palette)
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 1 if bits == 8 else 2, len(payload), 2835, 2835,
                         1 << bits, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(payload), 0, 0, offset) + header + palette + payload


def _rle8_rows(width: int, height: int, rng: random.Random) -> bytes:
    out = bytearray()
    for _ in range(height):
        left = width
        while left:
            run = min(left, rng.randrange(1, 40))
            out += bytes([run, rng.randrange(256)])
            left -= run
        out += b"\x00\x00"  # end of line
    return bytes(out + b"\x00\x01")  # end of bitmap


def _psd(width: int, height: int, channels: int, mode: int, compression: int, seed: int = 0,
         colour_data: bytes = b"", layers: bytes = b"") -> bytes:
    rng = random.Random(seed)
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, channels, height, width, 8, mode)
    sections = struct.pack(">I", len(colour_data)) + colour_data + struct.pack(">I", 0)
    sections += struct.pack(">I", len(layers)) + layers
    if compression == 0:
        data = rng.randbytes(channels * width * height)
    else:  # PackBits rows: a literal run of up to 128 bytes is (count - 1) then the bytes
        rows = []
        for _ in range(channels * height):
            row, left = b"", width
            while left:
                run = min(left, 128)
                row += bytes([run - 1]) + rng.randbytes(run)
                left -= run
            rows.append(row)
        data = b"".join(struct.pack(">H", len(row)) for row in rows) + b"".join(rows)
    return header + sections + struct.pack(">H", compression) + data


def _psd_layer_section() -> bytes:
    record = struct.pack(">iiiiH", 0, 0, 4, 4, 3) + b"".join(struct.pack(">hI", c, 2 + 16) for c in range(3))
    record += b"8BIMnorm" + bytes([255, 0, 0, 0]) + struct.pack(">I", 12) + struct.pack(">II", 0, 0)
    record += b"\x03abc"
    channel_data = b"".join(struct.pack(">H", 0) + bytes(16) for _ in range(3))
    info = struct.pack(">h", 1) + record + channel_data
    info += b"\0" * (-len(info) % 2)
    return struct.pack(">I", len(info)) + info + struct.pack(">I", 0)


def _sun(width: int, height: int, depth: int, kind: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    stride = ((width * depth + 15) // 16) * 2
    if kind == 2:  # RLE: 0x80 escapes; any other byte is literal
        data = bytes(b if b != 0x80 else 0x81 for b in rng.randbytes(stride * height))
    else:
        data = rng.randbytes(stride * height)
    palette = b""
    if depth == 8:
        palette = bytes(range(256)) + bytes(range(255, -1, -1)) + bytes(256)
    return struct.pack(">8I", 0x59A66A95, width, height, depth, len(data), kind, 1 if palette else 0,
                       len(palette)) + palette + data


def _sgi_rle(width: int, height: int, channels: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    rows = []
    for _ in range(height * channels):  # literal runs: a count byte with the high bit set, then the bytes
        row, left = b"", width
        while left:
            run = min(left, 127)
            row += bytes([0x80 | run]) + rng.randbytes(run)
            left -= run
        rows.append(row + b"\0")
    header = struct.pack(">HBBHHHHII", 474, 1, 1, 3, width, height, channels, 0, 255)
    header += bytes(512 - len(header))
    tables_end = 512 + 8 * len(rows)
    starts, position = [], tables_end
    for row in rows:
        starts.append(position)
        position += len(row)
    tables = struct.pack(f">{len(rows)}I", *starts) + struct.pack(f">{len(rows)}I", *(len(row) for row in rows))
    return header + tables + b"".join(rows)


def _fits(width: int, height: int, bitpix: int, seed: int = 0) -> bytes:
    cards = [f"SIMPLE  = {'T':>20}", f"BITPIX  = {bitpix:>20}", f"NAXIS   = {2:>20}", f"NAXIS1  = {width:>20}",
             f"NAXIS2  = {height:>20}", "END"]
    header = "".join(card.ljust(80) for card in cards).encode()
    header += b" " * (-len(header) % 2880)
    data = random.Random(seed).randbytes(width * height * abs(bitpix) // 8)
    if bitpix < 0:  # random bits make NaNs; write finite floats
        floats = np.random.default_rng(seed).random(width * height) * 100
        data = floats.astype(">f4" if bitpix == -32 else ">f8").tobytes()
    return header + data + b"\0" * (-len(data) % 2880)


def _xpm(width: int, height: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    keys = "abcdefgh"
    lines = [f'"{width} {height} {len(keys)} 1",']
    lines += [f'"{key} c #{rng.randrange(1 << 24):06X}",' for key in keys]
    lines += ['"' + "".join(rng.choice(keys) for _ in range(width)) + '",' for _ in range(height)]
    return ("/* XPM */\nstatic char *image[] = {\n" + "\n".join(lines) + "\n};\n").encode()


def _gbr(width: int, height: int, depth: int, seed: int = 0) -> bytes:
    name = b"brush\0"
    return struct.pack(">IIIII", 28 + len(name), 2, width, height, depth) + b"GIMP" + struct.pack(">I", 10) + name + \
        random.Random(seed).randbytes(width * height * depth)


def _fli(width: int, height: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    colours = struct.pack("<H", 1) + bytes([0, 0]) + rng.randbytes(768)  # one packet: skip 0, 256 colours
    chunks = [(4, colours), (16, rng.randbytes(width * height))]  # COLOR_256, FLI_COPY
    second = [(13, b"")]  # BLACK
    frames = b""
    for frame_chunks in (chunks, second):
        body = b"".join(struct.pack("<IH", 6 + len(data), kind) + data for kind, data in frame_chunks)
        frames += struct.pack("<IHH8x", 16 + len(body), 0xF1FA, len(frame_chunks)) + body
    header = struct.pack("<IHHHHHHI", 128 + len(frames), 0xAF12, 2, width, height, 8, 3, 5)
    return header + bytes(128 - len(header)) + frames


def _ftex(width: int, height: int, kind: int, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(width * height * 3 if kind == 1 else width * height // 2)
    return b"FTEX" + struct.pack("<iiiiiii", 0, width, height, 1, 1, kind, 32) + struct.pack("<i", len(data)) + data


def _pixar(width: int, height: int, seed: int = 0) -> bytes:
    header = bytearray(1024)
    header[:4] = b"\200\350\000\000"
    struct.pack_into("<HHHHHH", header, 416, height, width, 0, 0, 14, 2)
    return bytes(header) + random.Random(seed).randbytes(width * height * 3)


def _mcidas(width: int, height: int, seed: int = 0) -> bytes:
    words = [0] * 64
    words[1] = 4
    words[8], words[9], words[10], words[13], words[14], words[33] = height, width, 1, 1, 0, 256
    return struct.pack(">64i", *words) + random.Random(seed).randbytes(width * height)


def _icns(png: bytes) -> bytes:
    entry = b"icp4" + struct.pack(">I", 8 + len(png)) + png  # 16x16, stored as PNG
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def _dcx(pcx: bytes) -> bytes:
    return struct.pack("<II", 0x3ADE68B1, 12) + struct.pack("<I", 0) + pcx


def _dds_dx10(width: int, height: int, dxgi: int, seed: int = 0) -> bytes:
    """A DX10-header DDS with BCn blocks of random bits (every bit pattern is a valid block)."""
    blocks = -(-width // 4) * -(-height // 4)
    block_bytes = 8 if dxgi in (71, 72, 80, 81) else 16
    header = struct.pack("<4sIIIIIII44xII4sIIIIIIIIII", b"DDS ", 124, 0x1007, height, width, blocks * block_bytes,
                         0, 1, 32, 4, b"DX10", 0, 0, 0, 0, 0, 0x1000, 0, 0, 0, 0)
    return header + struct.pack("<IIIII", dxgi, 3, 0, 1, 0) + random.Random(seed).randbytes(blocks * block_bytes)


def _gif_screen(width: int, height: int) -> bytes:
    """A GIF whose logical screen is width x height and whose only frame is one pixel."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00\x3b")


def _wmf() -> bytes:
    header = struct.pack("<IHhhhhHI", 0x9AC6CDD7, 0, 0, 0, 4800, 4000, 1440, 0)
    checksum = 0
    for (word,) in struct.iter_unpack("<H", header):
        checksum ^= word
    return header + struct.pack("<H", checksum) + b"\x01\x00\x09\x00" + bytes(18)


def _emf() -> bytes:
    return struct.pack("<II4i4i4s", 1, 88, 0, 0, 47, 39, 0, 0, 1270, 1050, b" EMF") + bytes(44)


def _icc_srgb() -> bytes:
    try:
        from PIL import ImageCms

        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    except Exception:  # noqa: BLE001 - Pillow without littlecms: a fixed profile-shaped header does
        return struct.pack(">I", 132) + bytes(32) + b"acsp" + bytes(92)


@dataclass(frozen=True)
class Seed:
    name: str
    format: str  # what Pillow reports; the per-format tables group by it
    data: bytes
    loads: bool = True  # False: Pillow identifies it but can't decode it here (stubs, EPS without Ghostscript)


def _seed_builders() -> list[tuple[str, str, Callable[[], bytes], bool]]:
    # Fresh images for every seed: Pillow keeps encoder options on an image (and its append_images) between saves.
    def rgb() -> Image.Image:
        return picture()

    def rgba() -> Image.Image:
        return picture(mode="RGBA")

    def frames() -> list[Image.Image]:
        return [picture(seed=i) for i in range(1, 3)]

    exif = Image.Exif()
    exif[0x0112] = 6
    icc = _icc_srgb()
    small_png = saved(picture(16, 16, 5), "PNG")
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "plain")
    text.add_text("Software", "compressed " * 20, zip=True)
    text.add_itxt("Title", "international", lang="en", tkey="Title")
    ico_bmp = saved(rgb(), "ICO", sizes=[(32, 32)], bitmap_format="bmp")

    def cur() -> bytes:
        data = bytearray(ico_bmp)
        data[2] = 2  # ICO type 1 -> cursor type 2; the directory entry's planes/bpp become the hotspot
        return bytes(data)

    def tiff_tiled() -> bytes:
        return saved(rgb(), "TIFF", tiffinfo={322: 16, 323: 16}, compression="tiff_adobe_deflate")

    seeds: list[tuple[str, str, Callable[[], bytes], bool]] = [
        ("jpeg", "JPEG", lambda: saved(rgb(), "JPEG", quality=90), True),
        ("jpeg-progressive", "JPEG", lambda: saved(rgb(), "JPEG", progressive=True, optimize=True), True),
        ("jpeg-gray", "JPEG", lambda: saved(rgb().convert("L"), "JPEG"), True),
        ("jpeg-cmyk", "JPEG", lambda: saved(rgb().convert("CMYK"), "JPEG"), True),
        ("jpeg-444-exif-icc", "JPEG", lambda: saved(rgb(), "JPEG", subsampling=0, exif=exif.tobytes(), icc_profile=icc),
         True),
        ("jpeg-restart", "JPEG", lambda: saved(rgb(), "JPEG", restart_marker_blocks=2), True),
        ("mpo", "MPO", lambda: saved(rgb(), "MPO", save_all=True, append_images=frames()[:1]), True),
        ("png-rgb", "PNG", lambda: saved(rgb(), "PNG"), True),
        ("png-rgba", "PNG", lambda: saved(rgba(), "PNG"), True),
        ("png-palette-trns", "PNG", lambda: saved(rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG",
                                                  transparency=2), True),
        ("png-gray16", "PNG", lambda: saved(picture(mode="I;16"), "PNG"), True),
        ("png-la", "PNG", lambda: saved(rgb().convert("LA"), "PNG"), True),
        ("png-bilevel", "PNG", lambda: saved(rgb().convert("1"), "PNG"), True),
        ("png-meta", "PNG", lambda: saved(rgb(), "PNG", pnginfo=text, exif=exif.tobytes(), icc_profile=icc), True),
        ("png-rgb16-adam7", "PNG", lambda: png_raw(WIDTH, HEIGHT, 16, 2, interlace=1, seed=1), True),
        ("png-palette4-adam7", "PNG", lambda: png_raw(WIDTH, HEIGHT, 4, 3, interlace=1, seed=2), True),
        ("png-gray2", "PNG", lambda: png_raw(WIDTH, HEIGHT, 2, 0, seed=3), True),
        ("png-ga16", "PNG", lambda: png_raw(WIDTH, HEIGHT, 16, 4, seed=4), True),
        ("png-rgba16-adam7", "PNG", lambda: png_raw(WIDTH, HEIGHT, 16, 6, interlace=1, seed=5), True),
        ("apng", "PNG", lambda: saved(rgb(), "PNG", save_all=True, append_images=frames(), duration=[40, 50, 60],
                                      disposal=[0, 1, 2], blend=[0, 1, 0]), True),
        ("gif", "GIF", lambda: saved(rgb(), "GIF", interlace=False), True),
        ("gif-animated", "GIF", lambda: saved(rgb(), "GIF", save_all=True, append_images=frames(), duration=50, loop=0,
                                              transparency=0, disposal=2), True),
        ("gif-interlaced", "GIF", lambda: saved(rgb().convert("L"), "GIF", interlace=True), True),
        ("webp-lossy", "WEBP", lambda: saved(rgb(), "WEBP", quality=70), True),
        ("webp-lossless", "WEBP", lambda: saved(rgb(), "WEBP", lossless=True), True),
        ("webp-alpha", "WEBP", lambda: saved(rgba(), "WEBP", quality=60), True),
        ("webp-animated", "WEBP", lambda: saved(rgb(), "WEBP", save_all=True, append_images=frames(), duration=50),
         True),
        ("webp-meta", "WEBP", lambda: saved(rgb(), "WEBP", exif=exif.tobytes(), icc_profile=icc), True),
        ("tiff-raw", "TIFF", lambda: saved(rgb(), "TIFF"), True),
        ("tiff-lzw", "TIFF", lambda: saved(rgb(), "TIFF", compression="tiff_lzw"), True),
        ("tiff-deflate-tiled", "TIFF", tiff_tiled, True),
        ("tiff-jpeg", "TIFF", lambda: saved(rgb(), "TIFF", compression="jpeg"), True),
        ("tiff-packbits", "TIFF", lambda: saved(rgb(), "TIFF", compression="packbits"), True),
        ("tiff-g4", "TIFF", lambda: saved(rgb().convert("1"), "TIFF", compression="group4"), True),
        ("tiff-16", "TIFF", lambda: saved(picture(mode="I;16"), "TIFF"), True),
        ("tiff-16be", "TIFF", lambda: saved(picture(mode="I;16B"), "TIFF"), True),
        ("tiff-float", "TIFF", lambda: saved(rgb().convert("F"), "TIFF", compression="tiff_deflate"), True),
        ("tiff-multipage", "TIFF", lambda: saved(rgb(), "TIFF", save_all=True, append_images=frames()), True),
        ("tiff-cmyk", "TIFF", lambda: saved(rgb().convert("CMYK"), "TIFF"), True),
        ("tiff-ycbcr", "TIFF", lambda: saved(rgb().convert("YCbCr"), "TIFF"), True),
        ("tiff-lab", "TIFF", lambda: saved(rgb().convert("LAB"), "TIFF"), True),
        ("bigtiff", "TIFF", lambda: saved(rgb(), "TIFF", big_tiff=True), True),
        ("bmp-24", "BMP", lambda: saved(rgb(), "BMP"), True),
        ("bmp-32", "BMP", lambda: saved(rgba(), "BMP"), True),
        ("bmp-8", "BMP", lambda: saved(rgb().convert("P"), "BMP"), True),
        ("bmp-1", "BMP", lambda: saved(rgb().convert("1"), "BMP"), True),
        ("bmp-rle8", "BMP", lambda: _bmp_rle(WIDTH, HEIGHT, 8, _rle8_rows(WIDTH, HEIGHT, random.Random(1))), True),
        ("bmp-rle4", "BMP", lambda: _bmp_rle(WIDTH, HEIGHT, 4, _rle8_rows(WIDTH, HEIGHT, random.Random(2))), True),
        ("dib", "DIB", lambda: saved(rgb(), "DIB"), True),
        ("ico", "ICO", lambda: saved(rgb(), "ICO", sizes=[(16, 16), (32, 32)]), True),
        ("ico-bmp", "ICO", lambda: ico_bmp, True),
        ("cur", "CUR", cur, True),
        ("icns", "ICNS", lambda: _icns(small_png), True),
        ("psd-rgb-raw", "PSD", lambda: _psd(WIDTH, HEIGHT, 3, 3, 0, seed=1), True),
        ("psd-gray-rle", "PSD", lambda: _psd(WIDTH, HEIGHT, 1, 1, 1, seed=2), True),
        ("psd-rgba-layers", "PSD", lambda: _psd(WIDTH, HEIGHT, 4, 3, 1, seed=3, layers=_psd_layer_section()), True),
        ("psd-indexed", "PSD", lambda: _psd(WIDTH, HEIGHT, 1, 2, 0, seed=4, colour_data=bytes(range(256)) * 3), True),
        ("dds-rgb", "DDS", lambda: saved(rgb(), "DDS"), True),
        ("dds-rgba", "DDS", lambda: saved(rgba(), "DDS"), True),
        ("dds-dxt1", "DDS", lambda: saved(rgba(), "DDS", pixel_format="DXT1"), True),
        ("dds-dxt3", "DDS", lambda: saved(rgba(), "DDS", pixel_format="DXT3"), True),
        ("dds-dxt5", "DDS", lambda: saved(rgba(), "DDS", pixel_format="DXT5"), True),
        ("dds-l", "DDS", lambda: saved(rgb().convert("L"), "DDS"), True),
        ("dds-bc7", "DDS", lambda: _dds_dx10(WIDTH, HEIGHT, 98, seed=1), True),
        ("dds-bc6h", "DDS", lambda: _dds_dx10(WIDTH, HEIGHT, 95, seed=2), True),
        ("dds-bc4", "DDS", lambda: _dds_dx10(WIDTH, HEIGHT, 80, seed=3), True),
        ("avif", "AVIF", lambda: saved(rgb(), "AVIF", quality=60), True),
        ("avif-animated", "AVIF", lambda: saved(rgb(), "AVIF", save_all=True, append_images=frames(), duration=50),
         True),
        ("avif-meta", "AVIF", lambda: saved(rgb(), "AVIF", exif=exif.tobytes(), icc_profile=icc), True),
        ("qoi-rgb", "QOI", lambda: saved(rgb(), "QOI"), True),
        ("qoi-rgba", "QOI", lambda: saved(rgba(), "QOI"), True),
        ("tga", "TGA", lambda: saved(rgb(), "TGA"), True),
        ("tga-rle", "TGA", lambda: saved(rgba(), "TGA", compression="tga_rle"), True),
        ("tga-palette", "TGA", lambda: saved(rgb().convert("P"), "TGA"), True),
        ("ppm", "PPM", lambda: saved(rgb(), "PPM"), True),
        ("pgm", "PPM", lambda: saved(rgb().convert("L"), "PPM"), True),
        ("pbm", "PPM", lambda: saved(rgb().convert("1"), "PPM"), True),
        ("pgm-16", "PPM", lambda: saved(rgb().convert("I"), "PPM"), True),
        ("pfm", "PPM", lambda: saved(rgb().convert("F"), "PPM"), True),
        ("ppm-plain", "PPM", lambda: b"P3\n# plain\n4 2\n255\n" + b" ".join(b"%d" % v for v in range(24)) + b"\n",
         True),
        ("pcx-rgb", "PCX", lambda: saved(rgb(), "PCX"), True),
        ("pcx-palette", "PCX", lambda: saved(rgb().convert("P"), "PCX"), True),
        ("pcx-1", "PCX", lambda: saved(rgb().convert("1"), "PCX"), True),
        ("dcx", "DCX", lambda: _dcx(saved(rgb().convert("P"), "PCX")), True),
        ("sgi-rgb", "SGI", lambda: saved(rgb(), "SGI"), True),
        ("sgi-l", "SGI", lambda: saved(rgb().convert("L"), "SGI"), True),
        ("sgi-16", "SGI", lambda: saved(rgb().convert("L"), "SGI", bpc=2), True),
        ("sgi-rle", "SGI", lambda: _sgi_rle(WIDTH, HEIGHT, 3, seed=1), True),
        ("jp2", "JPEG2000", lambda: saved(rgb(), "JPEG2000"), True),
        ("j2k-tiled", "JPEG2000", lambda: saved(rgb(), "JPEG2000", tile_size=(16, 16), irreversible=True, no_jp2=True),
         True),
        ("jp2-layers", "JPEG2000", lambda: saved(rgb(), "JPEG2000", quality_mode="dB", quality_layers=[30, 40],
                                                 progression="RPCL", num_resolutions=3), True),
        ("blp2", "BLP", lambda: saved(rgb().convert("P"), "BLP"), True),
        ("blp1", "BLP", lambda: saved(rgb().convert("P"), "BLP", blp_version="BLP1"), True),
        ("im", "IM", lambda: saved(rgb(), "IM"), True),
        ("msp", "MSP", lambda: saved(rgb().convert("1"), "MSP"), True),
        ("spider", "SPIDER", lambda: saved(rgb().convert("F"), "SPIDER"), True),
        ("xbm", "XBM", lambda: saved(rgb().convert("1"), "XBM"), True),
        ("xpm", "XPM", lambda: _xpm(WIDTH, HEIGHT), True),
        ("sun", "SUN", lambda: _sun(WIDTH, HEIGHT, 24, 1, seed=1), True),
        ("sun-rle-palette", "SUN", lambda: _sun(WIDTH, HEIGHT, 8, 2, seed=2), True),
        ("fits", "FITS", lambda: _fits(WIDTH, HEIGHT, 8, seed=1), True),
        ("fits-float", "FITS", lambda: _fits(WIDTH, HEIGHT, -32, seed=2), True),
        ("gbr", "GBR", lambda: _gbr(WIDTH, HEIGHT, 4, seed=1), True),
        ("fli", "FLI", lambda: _fli(WIDTH, HEIGHT, seed=1), True),
        ("ftex", "FTEX", lambda: _ftex(WIDTH, HEIGHT, 1, seed=1), True),
        ("ftex-dxt1", "FTEX", lambda: _ftex(WIDTH, HEIGHT, 0, seed=2), True),
        ("imt", "IMT", lambda: b"width 48\nheight 40\npixel n8\n\x0c" + random.Random(1).randbytes(WIDTH * HEIGHT),
         True),
        ("xvthumb", "XVThumb", lambda: b"P7 332\n#XVVERSION:Version 2.28\n#END_OF_COMMENTS\n48 40 255\n"
         + random.Random(2).randbytes(WIDTH * HEIGHT), True),
        ("pixar", "PIXAR", lambda: _pixar(WIDTH, HEIGHT, seed=1), True),
        ("mcidas", "MCIDAS", lambda: _mcidas(WIDTH, HEIGHT, seed=1), True),
        ("pcd", "PCD", lambda: bytes(2048) + b"PCD_IPI" + bytes(1531) + bytes(96 * 2048 - 2048 - 1538)
         + random.Random(3).randbytes(768 * 512 * 3 // 2), True),
        ("eps", "EPS", lambda: saved(rgb(), "EPS"), False),
        ("wmf", "WMF", _wmf, False),
        ("emf", "WMF", _emf, False),
        ("mpeg", "MPEG", lambda: b"\x00\x00\x01\xb3" + bytes([0x03, 0x00, 0x28, 0x13]) + bytes(60), False),
        ("bufr", "BUFR", lambda: b"BUFR" + bytes(60), False),
        ("grib", "GRIB", lambda: b"GRIB\0\0\0\x01" + bytes(60), False),
        ("hdf5", "HDF5", lambda: b"\x89HDF\r\n\x1a\n" + bytes(60), False),
    ]
    return seeds


_SEEDS: list[Seed] | None = None


def seed_corpus() -> list[Seed]:
    """The seed images, built once per process; seeds a Pillow build can't write are left out."""
    global _SEEDS
    if _SEEDS is None:
        from PIL import features

        # Codecs a Pillow build may lack; everything else must build.
        optional = {fmt for fmt, feature in (("WEBP", "webp"), ("AVIF", "avif"), ("JPEG2000", "jpg_2000"))
                    if not features.check(feature)}
        _SEEDS = [Seed(name, fmt, build(), loads) for name, fmt, build, loads in _seed_builders()
                  if fmt not in optional]
    return _SEEDS


# ============================================================================================================
# Structure: where chunks, segments, boxes and header fields are
# ============================================================================================================


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str


@dataclass(frozen=True)
class Field:
    offset: int
    size: int  # bytes; 3 for 24-bit fields
    endian: str = "<"
    role: str = ""  # "w"/"h" for dimensions, else a short name
    crc: Span | None = None  # PNG: the chunk whose CRC must follow the edit


def png_spans(data: bytes) -> list[Span]:
    spans, position = [], 8
    while position + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        kind = data[position + 4:position + 8].decode("latin-1")
        end = min(position + 12 + length, len(data))
        spans.append(Span(position, end, kind))
        if end <= position or kind == "IEND":
            break
        position = end
    return spans


def fix_png_crc(data: bytearray, span: Span) -> None:
    if span.end - span.start >= 12 and span.end <= len(data):
        struct.pack_into(">I", data, span.end - 4, zlib.crc32(bytes(data[span.start + 4:span.end - 4])))


def fix_all_png_crcs(data: bytes) -> bytes:
    out = bytearray(data)
    if out.startswith(b"\x89PNG"):
        for span in png_spans(bytes(out)):
            fix_png_crc(out, span)
    return bytes(out)


def jpeg_spans(data: bytes) -> list[Span]:
    spans, position = [Span(0, 2, "SOI")], 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            spans.append(Span(position, position + 2, f"{marker:02X}"))
            position += 2
            continue
        if marker == 0xD9:
            spans.append(Span(position, position + 2, "EOI"))
            break
        (length,) = struct.unpack_from(">H", data, position + 2)
        end = min(position + 2 + length, len(data))
        spans.append(Span(position, end, f"{marker:02X}"))
        if marker == 0xDA:  # entropy-coded data follows, up to the next marker that isn't a stuffed or RST byte
            scan = end
            while scan + 1 < len(data) and not (data[scan] == 0xFF and data[scan + 1] not in (0, *range(0xD0, 0xD8))):
                scan += 1
            spans.append(Span(end, scan, "ECS"))
            end = scan
        if end <= position:
            break
        position = end
    return spans


def riff_spans(data: bytes) -> list[Span]:
    spans, position = [Span(0, 12, "RIFF")], 12
    while position + 8 <= len(data):
        (length,) = struct.unpack_from("<I", data, position + 4)
        end = min(position + 8 + length + (length & 1), len(data))
        spans.append(Span(position, end, data[position:position + 4].decode("latin-1")))
        if data[position:position + 4] == b"ANMF":  # frames nest their image chunks after a 16-byte header
            spans.extend(riff_inner(data, position + 24, end))
        if end <= position:
            break
        position = end
    return spans


def riff_inner(data: bytes, position: int, stop: int) -> list[Span]:
    spans = []
    while position + 8 <= stop:
        (length,) = struct.unpack_from("<I", data, position + 4)
        end = min(position + 8 + length + (length & 1), stop)
        spans.append(Span(position, end, data[position:position + 4].decode("latin-1")))
        if end <= position:
            break
        position = end
    return spans


_BMFF_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0, b"jp2h": 0, b"res ": 0, b"moov": 0, b"trak": 0, b"mdia": 0,
                    b"minf": 0, b"stbl": 0, b"dinf": 0, b"iinf": 6, b"stsd": 8, b"uuid": -1}


def bmff_spans(data: bytes, position: int = 0, stop: int | None = None, depth: int = 0) -> list[Span]:
    """ISO base media boxes (AVIF, JP2), nested containers included."""
    stop = len(data) if stop is None else stop
    spans = []
    while position + 8 <= stop:
        (size,) = struct.unpack_from(">I", data, position)
        kind = data[position + 4:position + 8]
        header = 8
        if size == 1 and position + 16 <= stop:
            (size,) = struct.unpack_from(">Q", data, position + 8)
            header = 16
        elif size == 0:
            size = stop - position
        end = min(position + max(size, header), stop)
        spans.append(Span(position, end, kind.decode("latin-1")))
        skip = _BMFF_CONTAINERS.get(kind)
        if skip is not None and skip >= 0 and depth < 6:
            spans.extend(bmff_spans(data, position + header + skip, end, depth + 1))
        if kind == b"jp2c":
            spans.extend(j2k_spans(data, position + header, end))
        position = end
    return spans


def j2k_spans(data: bytes, position: int = 0, stop: int | None = None) -> list[Span]:
    stop = len(data) if stop is None else stop
    spans = []
    while position + 2 <= stop and data[position] == 0xFF:
        marker = data[position + 1]
        if marker in (0x4F, 0x93, 0xD9):  # SOC, SOD, EOC have no length
            spans.append(Span(position, position + 2, f"{marker:02X}"))
            if marker == 0x93:  # tile data up to the next SOT or EOC
                nxt = data.find(b"\xff\x90", position + 2, stop)
                eoc = data.find(b"\xff\xd9", position + 2, stop)
                ends = [value for value in (nxt, eoc) if value > 0]
                end = min(ends) if ends else stop
                spans.append(Span(position + 2, end, "tile-data"))
                position = end
                continue
            if marker == 0xD9:
                break
            position += 2
            continue
        if position + 4 > stop:
            break
        (length,) = struct.unpack_from(">H", data, position + 2)
        end = min(position + 2 + length, stop)
        spans.append(Span(position, end, f"{marker:02X}"))
        if end <= position + 2:
            break
        position = end
    return spans


def gif_spans(data: bytes) -> list[Span]:
    if len(data) < 13:
        return []
    spans = [Span(0, 13, "header")]
    position = 13
    if data[10] & 0x80:
        end = position + 3 * (2 << (data[10] & 7))
        spans.append(Span(position, end, "palette"))
        position = end

    def sub_blocks(position: int) -> int:
        while position < len(data) and data[position]:
            position += 1 + data[position]
        return position + 1

    while position < len(data):
        start, code = position, data[position]
        if code == 0x21 and position + 2 <= len(data):
            position = sub_blocks(position + 2)
            spans.append(Span(start, min(position, len(data)), f"ext{data[start + 1]:02X}"))
        elif code == 0x2C and position + 10 <= len(data):
            position += 10
            if data[start + 9] & 0x80:
                position += 3 * (2 << (data[start + 9] & 7))
            spans.append(Span(start, min(position, len(data)), "descriptor"))
            data_start = position
            position = sub_blocks(position + 1)
            spans.append(Span(data_start, min(position, len(data)), "lzw"))
        else:
            spans.append(Span(position, position + 1, "trailer" if code == 0x3B else "junk"))
            break
    return spans


@dataclass(frozen=True)
class TiffLayout:
    endian: str
    big: bool  # BigTIFF: 8-byte counts and offsets, 20-byte entries
    offset: int  # of the first IFD
    entries: list[int]

    @property
    def entry_size(self) -> int:
        return 20 if self.big else 12


def tiff_ifd(data: bytes) -> TiffLayout | None:
    """Where a TIFF's (or BigTIFF's) first IFD and its entries are."""
    endian = {b"II": "<", b"MM": ">"}.get(data[:2])
    if endian is None or len(data) < 16:
        return None
    (version,) = struct.unpack_from(endian + "H", data, 2)
    if version not in (42, 43):
        return None
    big = version == 43
    (offset,) = struct.unpack_from(endian + ("Q" if big else "I"), data, 8 if big else 4)
    head, size = (8, 20) if big else (2, 12)
    if offset + head > len(data):
        return None
    (count,) = struct.unpack_from(endian + ("Q" if big else "H"), data, offset)
    entries = [offset + head + size * i for i in range(min(count, 4096)) if offset + head + size * (i + 1) <= len(data)]
    return TiffLayout(endian, big, offset, entries)


def tiff_spans(data: bytes) -> list[Span]:
    layout = tiff_ifd(data)
    if not layout:
        return []
    size = layout.entry_size
    spans = [Span(0, 16 if layout.big else 8, "header"),
             Span(layout.offset, layout.offset + (8 if layout.big else 2) + size * len(layout.entries), "ifd")]
    spans += [Span(entry, entry + size, "entry") for entry in layout.entries]
    for entry in layout.entries:
        tag, kind = struct.unpack_from(layout.endian + "HH", data, entry)
        count, value = struct.unpack_from(layout.endian + ("QQ" if layout.big else "II"), data, entry + 4)
        if tag in (273, 324) and count == 1 and kind in (4, 16) and value < len(data):
            spans.append(Span(value, len(data), "strip"))
    return spans


def container(data: bytes) -> str | None:
    """Which chunked layout the bytes start with, if any."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data.startswith(b"RIFF"):
        return "riff"
    if data[4:8] in (b"ftyp", b"jP  "):
        return "bmff"
    if data.startswith(b"\xff\x4f"):
        return "j2k"
    if data.startswith(b"GIF"):
        return "gif"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def structure(seed: Seed, data: bytes) -> list[Span]:
    """The seed's chunks/segments/boxes, or just its fixed-size header where the format has no chunks."""
    layout = container(data)
    if layout:
        parse = {"png": png_spans, "jpeg": jpeg_spans, "riff": riff_spans, "bmff": bmff_spans, "j2k": j2k_spans,
                 "gif": gif_spans, "tiff": tiff_spans}[layout]
        try:
            return parse(data)
        except struct.error:
            return []
    header = _HEADER_SIZES.get(seed.format)
    if header and header < len(data):
        return [Span(0, header, "header"), Span(header, len(data), "data")]
    return []


_HEADER_SIZES = {"BMP": 54, "DIB": 40, "TGA": 18, "PCX": 128, "SGI": 512, "QOI": 14, "DDS": 128, "PSD": 26,
                 "SUN": 32, "GBR": 28, "FLI": 128, "FTEX": 40, "PIXAR": 1024, "MCIDAS": 256, "ICO": 22, "CUR": 22,
                 "BLP": 148, "MSP": 32, "SPIDER": 1024, "IM": 512, "FITS": 2880}


def header_fields(seed: Seed, data: bytes) -> list[Field]:
    """Header fields worth setting to edge values: sizes, depths, types, counts, offsets."""
    layout = container(data)
    if layout is None:
        return _FIXED_FIELDS.get(seed.format, [])
    parse = {"png": _png_fields, "jpeg": _jpeg_fields, "riff": _webp_fields, "bmff": _bmff_fields,
             "j2k": _bmff_fields, "gif": _gif_fields, "tiff": _tiff_fields}[layout]
    try:
        return parse(data)
    except struct.error:
        return []


def _png_fields(data: bytes) -> list[Field]:
    fields = []
    for span in png_spans(data):
        at = span.start + 8
        fields.append(Field(span.start, 4, ">", "chunk-length", span))
        if span.kind == "IHDR":
            fields += [Field(at, 4, ">", "w", span), Field(at + 4, 4, ">", "h", span)]
            fields += [Field(at + 8 + i, 1, ">", name, span)
                       for i, name in enumerate(("depth", "colour", "compression", "filter", "interlace"))]
        elif span.kind == "acTL":
            fields += [Field(at, 4, ">", "frames", span), Field(at + 4, 4, ">", "plays", span)]
        elif span.kind == "fcTL":
            fields += [Field(at + 4, 4, ">", "w", span), Field(at + 8, 4, ">", "h", span),
                       Field(at + 12, 4, ">", "x", span), Field(at + 16, 4, ">", "y", span),
                       Field(at + 24, 1, ">", "dispose", span), Field(at + 25, 1, ">", "blend", span)]
        elif span.kind == "iCCP":
            fields.append(Field(at + 4, 1, ">", "icc-method", span))
    return fields


def _jpeg_fields(data: bytes) -> list[Field]:
    fields = []
    for span in jpeg_spans(data):
        if span.kind in ("SOI", "EOI", "ECS") or span.end - span.start < 4:
            continue
        fields.append(Field(span.start + 2, 2, ">", "segment-length"))
        marker = int(span.kind, 16)
        at = span.start + 4
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            fields += [Field(at, 1, ">", "precision"), Field(at + 1, 2, ">", "h"), Field(at + 3, 2, ">", "w"),
                       Field(at + 5, 1, ">", "components")]
            components = min(data[at + 5], 4) if at + 5 < len(data) else 0
            fields += [Field(at + 7 + 3 * i, 1, ">", "sampling") for i in range(components)]
            fields += [Field(at + 8 + 3 * i, 1, ">", "quant-table") for i in range(components)]
            fields.append(Field(span.start + 1, 1, ">", "sof-type"))
        elif marker == 0xDA:
            fields += [Field(at, 1, ">", "scan-components"), Field(at + 2, 1, ">", "huffman-tables")]
        elif marker == 0xDD:
            fields.append(Field(at, 2, ">", "restart-interval"))
        elif marker == 0xC4:
            fields.append(Field(at, 1, ">", "huffman-class-id"))
        elif marker == 0xDB:
            fields.append(Field(at, 1, ">", "quant-precision-id"))
        elif marker == 0xE2 and data[at:at + 12] == b"ICC_PROFILE\0":
            fields += [Field(at + 12, 1, ">", "icc-sequence"), Field(at + 13, 1, ">", "icc-count")]
        elif marker == 0xE2 and data[at:at + 4] == b"MPF\0":
            fields += [Field(at + 8 + i, 4, "<" if data[at + 4:at + 6] == b"II" else ">", "mpf")
                       for i in range(0, 40, 4)]
        elif marker == 0xEE:
            fields.append(Field(span.end - 1, 1, ">", "adobe-transform"))
    return [f for f in fields if f.offset + f.size <= len(data)]


def _webp_fields(data: bytes) -> list[Field]:
    fields = [Field(4, 4, "<", "riff-size")]
    for span in riff_spans(data)[1:]:
        at = span.start + 8
        fields.append(Field(span.start + 4, 4, "<", "chunk-size"))
        if span.kind == "VP8X":
            fields += [Field(at, 1, "<", "flags"), Field(at + 4, 3, "<", "w-1"), Field(at + 7, 3, "<", "h-1")]
        elif span.kind == "VP8 ":
            fields += [Field(at + 6, 2, "<", "w"), Field(at + 8, 2, "<", "h")]
        elif span.kind == "VP8L":
            fields.append(Field(at + 1, 4, "<", "vp8l-dims"))
        elif span.kind == "ANMF":
            fields += [Field(at + 6, 3, "<", "w-1"), Field(at + 9, 3, "<", "h-1"), Field(at, 3, "<", "x"),
                       Field(at + 15, 1, "<", "frame-flags")]
        elif span.kind == "ANIM":
            fields.append(Field(at + 4, 2, "<", "loops"))
        elif span.kind == "ALPH":
            fields.append(Field(at, 1, "<", "alpha-flags"))
    return [f for f in fields if f.offset + f.size <= len(data)]


def _bmff_fields(data: bytes) -> list[Field]:
    fields = []
    spans = bmff_spans(data) if not data.startswith(b"\xff\x4f") else j2k_spans(data)
    for span in spans:
        if len(span.kind) == 4:  # a box: its size field
            fields.append(Field(span.start, 4, ">", "box-size"))
        at = span.start + 8
        if span.kind == "ispe":
            fields += [Field(at + 4, 4, ">", "w"), Field(at + 8, 4, ">", "h")]
        elif span.kind == "ihdr":
            fields += [Field(at, 4, ">", "h"), Field(at + 4, 4, ">", "w"), Field(at + 8, 2, ">", "components"),
                       Field(at + 10, 1, ">", "depth")]
        elif span.kind == "pixi":
            fields.append(Field(at + 4, 1, ">", "channels"))
        elif span.kind == "av1C":
            fields.append(Field(at + 1, 1, ">", "av1-profile"))
        elif span.kind == "51":  # SIZ
            at = span.start + 4
            fields += [Field(at, 2, ">", "rsiz"), Field(at + 2, 4, ">", "w"), Field(at + 6, 4, ">", "h"),
                       Field(at + 10, 4, ">", "x-offset"), Field(at + 14, 4, ">", "y-offset"),
                       Field(at + 18, 4, ">", "tile-w"), Field(at + 22, 4, ">", "tile-h"),
                       Field(at + 34, 2, ">", "components"), Field(at + 36, 1, ">", "depth"),
                       Field(at + 37, 1, ">", "x-subsampling"), Field(at + 38, 1, ">", "y-subsampling")]
        elif span.kind == "52":  # COD
            at = span.start + 4
            fields += [Field(at + 1, 1, ">", "progression"), Field(at + 2, 2, ">", "layers"),
                       Field(at + 5, 1, ">", "levels"), Field(at + 6, 1, ">", "block-w"),
                       Field(at + 7, 1, ">", "block-h"), Field(at + 9, 1, ">", "wavelet")]
        elif span.kind == "90":  # SOT
            at = span.start + 4
            fields += [Field(at, 2, ">", "tile-index"), Field(at + 2, 4, ">", "tile-length"),
                       Field(at + 7, 1, ">", "tile-parts")]
    return [f for f in fields if f.offset + f.size <= len(data)]


def _gif_fields(data: bytes) -> list[Field]:
    fields = [Field(6, 2, "<", "w"), Field(8, 2, "<", "h"), Field(10, 1, "<", "palette-flags"),
              Field(11, 1, "<", "background")]
    for span in gif_spans(data):
        if span.kind == "descriptor":
            at = span.start
            fields += [Field(at + 1, 2, "<", "x"), Field(at + 3, 2, "<", "y"), Field(at + 5, 2, "<", "frame-w"),
                       Field(at + 7, 2, "<", "frame-h"), Field(at + 9, 1, "<", "frame-flags")]
        elif span.kind == "lzw":
            fields.append(Field(span.start, 1, "<", "lzw-min-code"))
        elif span.kind == "extF9":
            fields += [Field(span.start + 3, 1, "<", "disposal"), Field(span.start + 6, 1, "<", "transparent")]
        elif span.kind == "extFF":
            fields.append(Field(span.start + 16, 2, "<", "loops"))
    return [f for f in fields if f.offset + f.size <= len(data)]


_TIFF_TAGS = {256: "w", 257: "h", 258: "bits", 259: "compression", 262: "photometric", 273: "strip-offsets",
              277: "samples", 278: "rows-per-strip", 279: "strip-bytes", 284: "planar", 317: "predictor",
              320: "colormap", 322: "tile-w", 323: "tile-h", 324: "tile-offsets", 325: "tile-bytes",
              338: "extra-samples", 339: "sample-format", 530: "ycbcr-subsampling", 34665: "exif-ifd",
              34675: "icc"}


def _tiff_fields(data: bytes) -> list[Field]:
    layout = tiff_ifd(data)
    if not layout:
        return []
    endian, wide = layout.endian, 8 if layout.big else 4
    fields = [Field(8 if layout.big else 4, wide, endian, "ifd-offset"),
              Field(layout.offset, 8 if layout.big else 2, endian, "entry-count")]
    for entry in layout.entries:
        tag, kind = struct.unpack_from(endian + "HH", data, entry)
        name = _TIFF_TAGS.get(tag)
        if name:
            value_size = {3: 2, 16: 8}.get(kind, 4)
            fields += [Field(entry + 4 + wide, value_size, endian, name),
                       Field(entry + 4, wide, endian, name + "-count"), Field(entry + 2, 2, endian, name + "-type")]
    return [f for f in fields if f.offset + f.size <= len(data)]


_FIXED_FIELDS: dict[str, list[Field]] = {
    "BMP": [Field(2, 4, "<", "file-size"), Field(10, 4, "<", "data-offset"), Field(14, 4, "<", "header-size"),
            Field(18, 4, "<", "w"), Field(22, 4, "<", "h"), Field(26, 2, "<", "planes"), Field(28, 2, "<", "bits"),
            Field(30, 4, "<", "compression"), Field(34, 4, "<", "image-size"), Field(46, 4, "<", "colours")],
    "DIB": [Field(0, 4, "<", "header-size"), Field(4, 4, "<", "w"), Field(8, 4, "<", "h"),
            Field(14, 2, "<", "bits"), Field(16, 4, "<", "compression"), Field(32, 4, "<", "colours")],
    "ICO": [Field(4, 2, "<", "count"), Field(6, 1, "<", "w"), Field(7, 1, "<", "h"), Field(8, 1, "<", "colours"),
            Field(12, 2, "<", "bits"), Field(14, 4, "<", "size"), Field(18, 4, "<", "offset")],
    "TGA": [Field(0, 1, "<", "id-length"), Field(1, 1, "<", "colormap-type"), Field(2, 1, "<", "image-type"),
            Field(3, 2, "<", "colormap-first"), Field(5, 2, "<", "colormap-length"), Field(7, 1, "<", "colormap-depth"),
            Field(12, 2, "<", "w"), Field(14, 2, "<", "h"), Field(16, 1, "<", "bits"), Field(17, 1, "<", "descriptor")],
    "PCX": [Field(1, 1, "<", "version"), Field(2, 1, "<", "encoding"), Field(3, 1, "<", "bits"),
            Field(4, 2, "<", "x-min"), Field(6, 2, "<", "y-min"), Field(8, 2, "<", "w-1"), Field(10, 2, "<", "h-1"),
            Field(65, 1, "<", "planes"), Field(66, 2, "<", "stride"), Field(68, 2, "<", "palette-info")],
    "DCX": [Field(4, 4, "<", "offset"), Field(8, 4, "<", "offset-2"), Field(20, 2, "<", "w-1"),
            Field(22, 2, "<", "h-1"),
            Field(15, 1, "<", "bits"), Field(77, 1, "<", "planes")],
    "SGI": [Field(2, 1, ">", "storage"), Field(3, 1, ">", "bytes-per-channel"), Field(4, 2, ">", "dimension"),
            Field(6, 2, ">", "w"), Field(8, 2, ">", "h"), Field(10, 2, ">", "channels"),
            Field(104, 4, ">", "colormap")],
    "QOI": [Field(4, 4, ">", "w"), Field(8, 4, ">", "h"), Field(12, 1, ">", "channels"),
            Field(13, 1, ">", "colourspace")],
    "DDS": [Field(4, 4, "<", "header-size"), Field(8, 4, "<", "flags"), Field(12, 4, "<", "h"), Field(16, 4, "<", "w"),
            Field(20, 4, "<", "pitch"), Field(28, 4, "<", "mipmaps"), Field(80, 4, "<", "pixel-flags"),
            Field(84, 4, "<", "fourcc"), Field(88, 4, "<", "bits"), Field(92, 4, "<", "red-mask"),
            Field(128, 4, "<", "dxgi-format"), Field(140, 4, "<", "array-size")],
    "PSD": [Field(12, 2, ">", "channels"), Field(14, 4, ">", "h"), Field(18, 4, ">", "w"), Field(22, 2, ">", "depth"),
            Field(24, 2, ">", "mode"), Field(26, 4, ">", "colour-data-length")],
    "SUN": [Field(4, 4, ">", "w"), Field(8, 4, ">", "h"), Field(12, 4, ">", "depth"), Field(16, 4, ">", "length"),
            Field(20, 4, ">", "type"), Field(24, 4, ">", "palette-type"), Field(28, 4, ">", "palette-length")],
    "GBR": [Field(0, 4, ">", "header-size"), Field(4, 4, ">", "version"), Field(8, 4, ">", "w"),
            Field(12, 4, ">", "h"), Field(16, 4, ">", "depth")],
    "FLI": [Field(6, 2, "<", "frames"), Field(8, 2, "<", "w"), Field(10, 2, "<", "h"), Field(12, 2, "<", "depth"),
            Field(128, 4, "<", "frame-size"), Field(134, 2, "<", "chunks"), Field(144, 4, "<", "chunk-size"),
            Field(148, 2, "<", "chunk-type"), Field(150, 2, "<", "palette-packets")],
    "FTEX": [Field(8, 4, "<", "w"), Field(12, 4, "<", "h"), Field(20, 4, "<", "formats"), Field(24, 4, "<", "format"),
             Field(28, 4, "<", "where"), Field(32, 4, "<", "mip-size")],
    "PIXAR": [Field(416, 2, "<", "h"), Field(418, 2, "<", "w"), Field(424, 2, "<", "mode"),
              Field(426, 2, "<", "mode-2")],
    "MCIDAS": [Field(32, 4, ">", "h"), Field(36, 4, ">", "w"), Field(40, 4, ">", "bytes"), Field(52, 4, ">", "bands"),
               Field(56, 4, ">", "prefix"), Field(132, 4, ">", "data-offset")],
    "CUR": [Field(4, 2, "<", "count"), Field(6, 1, "<", "w"), Field(7, 1, "<", "h"), Field(14, 4, "<", "size"),
            Field(18, 4, "<", "offset")],
    "ICNS": [Field(4, 4, ">", "size"), Field(12, 4, ">", "entry-size")],
    "BLP": [Field(4, 4, "<", "compression"), Field(8, 1, "<", "encoding"), Field(9, 1, "<", "alpha-depth"),
            Field(10, 1, "<", "alpha-encoding"), Field(12, 4, "<", "w"), Field(16, 4, "<", "h"),
            Field(20, 4, "<", "mip-offset"), Field(84, 4, "<", "mip-length")],
    "MSP": [Field(4, 2, "<", "w"), Field(6, 2, "<", "h"), Field(24, 2, "<", "checksum")],
    "SPIDER": [Field(0, 4, ">", "f-slices"), Field(4, 4, ">", "f-rows"), Field(16, 4, ">", "f-type"),
               Field(44, 4, ">", "f-columns"), Field(48, 4, ">", "f-label-records")],
    "WMF": [Field(10, 2, "<", "bbox-right"), Field(12, 2, "<", "bbox-bottom"), Field(14, 2, "<", "inch"),
            Field(16, 4, "<", "emf-right"), Field(20, 4, "<", "emf-bottom"), Field(32, 4, "<", "frame-right")],
    "MPEG": [Field(4, 3, ">", "dims")],
}


# ============================================================================================================
# Mutations
# ============================================================================================================

DIMENSIONS = (0, 1, 2, 3, 4, 7, 8, 15, 16, 255, 256, 1023, 4096, 9999, 10_000, 10_001, 16_383, 16_384, 32_767,
              32_768, 46_341, 65_500, 65_535, 65_536, 100_000, 1 << 24, (1 << 31) - 1, 1 << 31, (1 << 32) - 1)
INTEGERS = (0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 1023, 1024, 4095, 32_767, 32_768,
            65_535, 65_536, (1 << 24) - 1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1)
FOURCCS = (b"DXT1", b"DXT2", b"DXT3", b"DXT4", b"DXT5", b"ATI1", b"ATI2", b"BC4U", b"BC5S", b"BC5U", b"DX10",
           b"RGBG", b"\0\0\0\0", b"\xff\xff\xff\xff")


def _pick_value(rng: random.Random, original: int, size: int, dimension: bool) -> int:
    limit = (1 << (8 * size)) - 1
    choice = rng.random()
    if choice < 0.6:
        value = rng.choice(DIMENSIONS if dimension else INTEGERS)
    elif choice < 0.8:
        value = original + rng.choice((-2, -1, 1, 2, original, -original))
    else:
        value = rng.randrange(limit + 1)
    return value & limit


def _write_field(data: bytearray, f: Field, value: int) -> None:
    if f.size == 3:
        data[f.offset:f.offset + 3] = (value & 0xFFFFFF).to_bytes(3, "little" if f.endian == "<" else "big")
    else:
        data[f.offset:f.offset + f.size] = value.to_bytes(f.size, "little" if f.endian == "<" else "big")


def _read_field(data: bytes, f: Field) -> int:
    return int.from_bytes(data[f.offset:f.offset + f.size], "little" if f.endian == "<" else "big")


def edit_field(data: bytes, f: Field, rng: random.Random, value: int | None = None,
               second: int | None = None) -> tuple[bytes, str]:
    out = bytearray(data)
    if f.role == "fourcc":
        out[f.offset:f.offset + 4] = rng.choice(FOURCCS)
        return bytes(out), f"fourcc={bytes(out[f.offset:f.offset + 4])!r}"
    if f.role.startswith("f-"):  # SPIDER keeps its header as floats
        number = rng.choice((0.0, -1.0, 1.0, 1e30, float("nan"), float("inf"), 65_535.0, 1e9))
        struct.pack_into(f.endian + "f", out, f.offset, number)
        return bytes(out), f"{f.role}={number}"
    if f.role == "vp8l-dims":  # 14 bits each of width-1 and height-1, then alpha and version bits
        word = _read_field(data, f)
        w = (value if value is not None else rng.choice(DIMENSIONS)) - 1
        h = (second if second is not None else rng.choice(DIMENSIONS)) - 1
        word = (word & ~0xFFFFFFF) | (w & 0x3FFF) | ((h & 0x3FFF) << 14)
        if value is None and rng.random() < 0.2:
            word ^= 1 << rng.randrange(28, 32)
        _write_field(out, f, word & 0xFFFFFFFF)
        return bytes(out), f"vp8l-dims={(w & 0x3FFF) + 1}x{(h & 0x3FFF) + 1}"
    if value is None:
        value = _pick_value(rng, _read_field(data, f), f.size, f.role in ("w", "h", "w-1", "h-1"))
    value &= (1 << (8 * f.size)) - 1
    _write_field(out, f, value)
    if f.crc is not None and rng.random() < 0.9:
        fix_png_crc(out, f.crc)
    return bytes(out), f"{f.role}@{f.offset}={value}"


def _spans_of(seed: Seed, data: bytes, rng: random.Random) -> list[Span]:
    spans = structure(seed, data)
    return spans or [Span(0, min(len(data), 64), "head"), Span(min(len(data), 64), len(data), "rest")]


def op_bitflip(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    count = rng.choice((1, 1, 2, 4, 8, 32))
    head = rng.random() < 0.5
    for _ in range(count):
        position = rng.randrange(min(len(out), 256) if head else len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out), f"bitflip x{count}{' head' if head else ''}"


def op_byte_run(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    length = rng.choice((1, 2, 4, 8, 16, 64, 256))
    start = rng.randrange(len(out))
    fill = rng.choice(("00", "ff", "7f", "80", "random", "copy"))
    if fill == "random":
        run = rng.randbytes(length)
    elif fill == "copy":
        source = rng.randrange(len(out))
        run = bytes(out[source:source + length])
    else:
        run = bytes.fromhex(fill) * length
    out[start:start + len(run)] = run
    return bytes(out[:len(data)]), f"run {fill} x{length} @{start}"


def op_insert(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    position = rng.randrange(len(data) + 1)
    run = rng.choice((rng.randbytes(rng.randrange(1, 64)), b"\0" * rng.randrange(1, 4096), b"\xff" * 16))
    return data[:position] + run + data[position:], f"insert {len(run)} @{position}"


def op_delete(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    position = rng.randrange(len(data))
    length = rng.choice((1, 2, 4, 16, 256))
    return data[:position] + data[position + length:], f"delete {length} @{position}"


def op_truncate(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.choice((0, 1, 2, 4, 8, 16, rng.randrange(len(data)), rng.randrange(len(data)), len(data) - 1))
    return data[:cut], f"truncate @{cut}"


def op_truncate_boundary(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    span = rng.choice(_spans_of(seed, data, rng))
    cut = rng.choice((span.start, span.end, span.start + 4, span.start + 8, span.end - 4))
    cut = max(0, cut + rng.choice((-1, 0, 0, 1)))
    return data[:cut], f"truncate at {span.kind} @{cut}"


def op_duplicate(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    span = rng.choice(_spans_of(seed, data, rng))
    copies = rng.choice((1, 1, 2, 50))
    chunk = data[span.start:span.end]
    return data[:span.end] + chunk * copies + data[span.end:], f"duplicate {span.kind} x{copies}"


def op_drop(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    span = rng.choice(_spans_of(seed, data, rng))
    return data[:span.start] + data[span.end:], f"drop {span.kind}"


def op_swap(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    spans = [s for s in _spans_of(seed, data, rng) if s.end > s.start]
    if len(spans) < 2:
        return op_drop(seed, data, rng)
    first, second = sorted(rng.sample(spans, 2), key=lambda s: s.start)
    if second.start < first.end:
        return op_drop(seed, data, rng)
    swapped = (data[:first.start] + data[second.start:second.end] + data[first.end:second.start]
               + data[first.start:first.end] + data[second.end:])
    return swapped, f"swap {first.kind}<->{second.kind}"


def op_field(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    fields = header_fields(seed, data)
    if not fields:
        return op_int_poke(seed, data, rng)
    return edit_field(data, rng.choice(fields), rng)


def op_int_poke(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    size = rng.choice((1, 2, 4))
    endian = rng.choice("<>")
    position = rng.randrange(max(1, min(len(data), 160) - size + 1))
    f = Field(position, size, endian, "int")
    if position + size > len(data):
        return op_bitflip(seed, data, rng)
    return edit_field(data, f, rng, _pick_value(rng, _read_field(data, f), size, rng.random() < 0.5))


def op_number_token(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Text headers (PPM, XPM, XBM, IM, FITS, IMT, XV): replace one decimal number."""
    import re

    head = data[:4096]
    numbers = list(re.finditer(rb"\d+", head))
    if not numbers:
        return op_bitflip(seed, data, rng)
    match = rng.choice(numbers)
    value = rng.choice((b"0", b"-1", b"99999", b"2147483648", b"18446744073709551616", b"1e9", b"9" * 30, b"", b"+0x10",
                        str(rng.choice(DIMENSIONS)).encode()))
    return data[:match.start()] + value + data[match.end():], f"number {match.group().decode()}->{value.decode()}"


def op_splice(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    other = rng.choice(seed_corpus())
    cut, other_cut = rng.randrange(len(data)), rng.randrange(len(other.data))
    return data[:cut] + other.data[other_cut:], f"splice {other.name}@{other_cut} @{cut}"


def op_fix_crc(seed: Seed, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out, detail = op_bitflip(seed, data, rng)
    return fix_all_png_crcs(out), detail + " +crc"


MUTATIONS: dict[str, Callable[[Seed, bytes, random.Random], tuple[bytes, str]]] = {
    "bitflip": op_bitflip, "byte-run": op_byte_run, "insert": op_insert, "delete": op_delete,
    "truncate": op_truncate, "truncate-boundary": op_truncate_boundary, "duplicate": op_duplicate, "drop": op_drop,
    "swap": op_swap, "field": op_field, "int-poke": op_int_poke, "number-token": op_number_token,
    "splice": op_splice,
}
_MUTATION_WEIGHTS = {"bitflip": 12, "byte-run": 8, "insert": 4, "delete": 4, "truncate": 8, "truncate-boundary": 8,
                     "duplicate": 6, "drop": 6, "swap": 3, "field": 20, "int-poke": 8, "number-token": 3, "splice": 3}
_TEXT_FORMATS = {"PPM", "XPM", "XBM", "IM", "FITS", "IMT", "XVThumb", "EPS"}


def mutate(seed: Seed, rng: random.Random) -> tuple[bytes, str]:
    data, details = seed.data, []
    weights = dict(_MUTATION_WEIGHTS)
    if seed.format in _TEXT_FORMATS:
        weights["number-token"] = 25
    names = list(weights)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        name = rng.choices(names, [weights[n] for n in names])[0]
        if not data:
            break
        data, detail = MUTATIONS[name](seed, data, rng)
        details.append(f"{name}: {detail}")
    if data.startswith(b"\x89PNG") and rng.random() < 0.3:
        data = fix_all_png_crcs(data)
        details.append("crc fixed")
    return data, "; ".join(details)


# --- crafted: dimensions, metadata, bombs ------------------------------------------------------------------


def set_dimensions(seed: Seed, width: int, height: int, rng: random.Random | None = None) -> bytes | None:
    """The seed with its declared width and height fields set (every such field, or with ``rng`` a random one of
    each), PNG CRCs kept valid; None where the format's header fields aren't known."""
    fields = header_fields(seed, seed.data)
    packed = [f for f in fields if f.role == "vp8l-dims"]
    if packed:
        return edit_field(seed.data, packed[0], random.Random(0), width, height)[0]
    widths = [f for f in fields if f.role in ("w", "w-1")]
    heights = [f for f in fields if f.role in ("h", "h-1")]
    if not widths or not heights:
        return None
    if rng is not None:
        widths, heights = [rng.choice(widths)], [rng.choice(heights)]
    out = bytearray(seed.data)
    for f, value in [(f, width) for f in widths] + [(f, height) for f in heights]:
        value -= f.role.endswith("-1")  # stored as size - 1
        _write_field(out, f, value & ((1 << (8 * f.size)) - 1))
        if f.crc is not None:
            fix_png_crc(out, f.crc)
    if seed.format == "MSP":  # the header's checksum: the XOR of its first twelve words
        checksum = 0
        for (word,) in struct.iter_unpack("<H", bytes(out[:24])):
            checksum ^= word
        struct.pack_into("<H", out, 24, checksum)
    return bytes(out)


DIMENSION_PAIRS = ((0, 0), (0, HEIGHT), (WIDTH, 0), (1, 1), (1, 99_999), (99_999, 1), (9_999, 9_999), (10_001, 10_000),
                   (16_384, 16_384), (46_341, 46_341), (65_535, 65_535), (1 << 31, 2), ((1 << 31) - 1, (1 << 31) - 1),
                   ((1 << 32) - 1, (1 << 32) - 1), (WIDTH * 4, HEIGHT * 4), (HEIGHT, WIDTH))


def crafted_dimensions(seed: Seed, rng: random.Random) -> tuple[bytes, str]:
    """The seed declaring a huge, zero or odd width and height: one field of each, or all of them."""
    width, height = rng.choice(DIMENSION_PAIRS)
    data = set_dimensions(seed, width, height, rng if rng.random() < 0.3 else None)
    if data is None:
        return mutate(seed, rng)
    return data, f"dimensions {width}x{height}"


def bogus_exif(rng: random.Random) -> bytes:
    """A TIFF-structured EXIF block with hostile entries: loops, huge counts, wild types and offsets."""
    endian = rng.choice("<>")
    count = rng.choice((0, 1, 2, 5, 20, 0xFFFF))
    entries = b""
    for _ in range(min(count, 24)):
        tag = rng.choice((0x0112, 0x0112, 0x8769, 0x8825, 0xA005, 0x927C, 0x0100, 0x0101, 0x0201, 0x0202,
                          0x0132, 0x02BC, rng.randrange(65536)))
        kind = rng.choice((1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13, 0, 14, 99, 0xFFFF))
        number = rng.choice((0, 1, 2, 4, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(100)))
        value = rng.choice((0, 1, 6, 8, 9, 0xFFFF, 0x7FFFFFFF, rng.randrange(200), 8))  # 8: the IFD itself, a loop
        entries += struct.pack(endian + "HHII", tag, kind, number, value)
    first = rng.choice((8, 8, 8, 0, 4, 0xFFFFFFFF, rng.randrange(64)))
    body = (b"II" if endian == "<" else b"MM") + struct.pack(endian + "HIH", 42, first, count)
    body += entries + struct.pack(endian + "I", rng.choice((0, 8, 0xFFFFFFFF))) + rng.randbytes(rng.randrange(64))
    return b"Exif\0\0" + body


def orientation_exif(rng: random.Random) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = rng.choice((0, 2, 3, 4, 5, 6, 7, 8, 9, 255, 65535))
    return exif.tobytes()


def bogus_icc(rng: random.Random) -> bytes:
    size = rng.choice((1, 16, 127, 128, 132, 1000, 70_000, 200_000))
    if rng.random() < 0.5:
        return rng.randbytes(size)
    header = bytearray(max(size, 132))
    struct.pack_into(">I", header, 0, rng.choice((size, 0, 0xFFFFFFFF, size * 2)))
    header[36:40] = b"acsp"
    header[12:16] = rng.choice((b"mntr", b"scnr", b"link", b"abst", b"\0\0\0\0"))
    header[16:20] = rng.choice((b"RGB ", b"GRAY", b"CMYK", b"Lab ", b"XYZ ", b"\xff\xff\xff\xff"))
    struct.pack_into(">I", header, 128, rng.choice((0, 1, 9, 0xFFFF, 0xFFFFFFFF)))
    for index in range(min(9, (len(header) - 132) // 12)):
        struct.pack_into(">4sII", header, 132 + 12 * index, rng.choice((b"rXYZ", b"rTRC", b"A2B0", b"desc")),
                         rng.choice((0, 132, 0xFFFFFFF0, rng.randrange(len(header)))),
                         rng.choice((0, 12, 0xFFFFFFFF, rng.randrange(len(header)))))
    return bytes(header)


def crafted_metadata(rng: random.Random) -> tuple[bytes, str, str]:
    """A small image carrying bogus EXIF or ICC, written by Pillow or spliced in by hand; (bytes, format, detail)."""
    fmt = rng.choice(("JPEG", "JPEG", "PNG", "PNG", "WEBP", "TIFF", "AVIF", "MPO"))
    kind = rng.choice(("exif", "orientation", "icc", "both", "icc-bomb", "text-bomb", "exif-chunk-big"))
    image = picture(seed=rng.randrange(4))
    if kind == "icc-bomb" or kind == "text-bomb":  # PNG only: zlib of 64 MiB of zeros in iCCP or zTXt
        name = b"ICC\0\0" if kind == "icc-bomb" else b"Comment\0\0"
        chunk = png_chunk(b"iCCP" if kind == "icc-bomb" else b"zTXt", name + zlib_zeros(64 << 20))
        png = saved(image, "PNG")
        return png[:33] + chunk + png[33:], "PNG", kind
    if kind == "exif-chunk-big":  # an eXIf chunk of many entries: parse cost under the byte cap
        exif = bogus_exif(rng)[6:] + rng.randbytes(rng.choice((1 << 16, 1 << 20)))
        png = saved(image, "PNG")
        return png[:33] + png_chunk(b"eXIf", exif) + png[33:], "PNG", kind
    options: dict[str, Any] = {}
    if kind in ("exif", "both"):
        options["exif"] = bogus_exif(rng)
    if kind == "orientation":
        options["exif"] = orientation_exif(rng)
    if kind in ("icc", "both"):
        options["icc_profile"] = bogus_icc(rng)
    if fmt == "MPO":
        options.update(save_all=True, append_images=[picture(seed=9)])
    try:
        data = saved(image, fmt, **options)
    except Exception:  # noqa: BLE001 - Pillow refuses to write this one (e.g. TIFF parsing the EXIF): splice it
        data = saved(image, "JPEG")
        segment = options.get("exif") or options.get("icc_profile") or b""
        marker = b"\xff\xe1" if "exif" in options else b"\xff\xe2"
        payload = segment[:65_000] if "exif" in options else b"ICC_PROFILE\0\x01\x01" + segment[:65_000]
        data = data[:2] + marker + struct.pack(">H", len(payload) + 2) + payload + data[2:]
        fmt = "JPEG"
    return data, fmt, kind


BOMB_SIZES = ((2_000, 2_000), (5_000, 5_000), (8_000, 8_000), (9_999, 9_999), (10_001, 10_000), (65_535, 65_535))


def bomb(kind: str, width: int, height: int) -> bytes:
    """A valid image of width x height that compresses to almost nothing."""
    if kind == "png-rgb":
        header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib_zeros(height * (1 + 3 * width))) + \
            png_chunk(b"IEND", b"")
    if kind == "png-rgba16":
        header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0))
        return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib_zeros(height * (1 + 8 * width))) + \
            png_chunk(b"IEND", b"")
    if kind == "tiff-deflate":
        return tiff_strip(width, height, zlib_zeros(width * height))
    if kind == "bmp-rle8-delta":  # delta escapes skip 255 rows each; Pillow fills what they skip with zeros
        return _bmp_rle(width, height, 8, b"\x00\x02\x00\xff" * (height // 255 + 1) + b"\x00\x01")
    if kind == "bmp-rle8-eol":  # one pixel, then end-of-line: Pillow pads the rest of each row in Python
        return _bmp_rle(width, height, 8, b"\x01\x07\x00\x00" * height + b"\x00\x01")
    if kind == "qoi-run":  # runs of 62 pixels per byte, decoded by Pillow in Python
        full, rest = divmod(width * height, 62)
        ops = b"\xfd" * full + (bytes([0xC0 | (rest - 1)]) if rest else b"")
        return b"qoif" + struct.pack(">IIBB", width, height, 3, 0) + ops + b"\0" * 7 + b"\x01"
    if kind == "gif-screen":
        return _gif_screen(min(width, 65_535), min(height, 65_535))
    if kind == "webp-lossless":
        seed = saved(Image.new("RGB", (16, 16), (200, 30, 90)), "WEBP", lossless=True)
        f = next(f for f in _webp_fields(seed) if f.role == "vp8l-dims")
        word = _read_field(seed, f)
        word = (word & ~0xFFFFFFF) | ((min(width, 16_384) - 1) & 0x3FFF) | (((min(height, 16_384) - 1) & 0x3FFF) << 14)
        out = bytearray(seed)
        _write_field(out, f, word)
        return bytes(out)
    raise ValueError(kind)


BOMB_KINDS = ("png-rgb", "png-rgba16", "tiff-deflate", "bmp-rle8-delta", "bmp-rle8-eol", "gif-screen",
              "webp-lossless", "qoi-run")
_BOMB_FORMATS = {"png-rgb": "PNG", "png-rgba16": "PNG", "tiff-deflate": "TIFF", "bmp-rle8-delta": "BMP",
                 "bmp-rle8-eol": "BMP", "gif-screen": "GIF", "webp-lossless": "WEBP", "qoi-run": "QOI"}


# --- hostile objects ---------------------------------------------------------------------------------------


class ReadRaises:
    def __init__(self, exception: BaseException):
        self.exception = exception

    def read(self, size: int = -1) -> bytes:
        raise self.exception


class ReadReturns:
    """read(n) returns the same value whatever n is: the wrong type, or more bytes than asked for."""

    def __init__(self, value: Any):
        self.value = value

    def read(self, size: int = -1) -> Any:
        return self.value


class EndlessStream:
    """A stream that never ends: every read gets as many bytes as it asks for."""

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise MemoryError("an endless stream can't be read whole")  # what a real one would do, eventually
        return b"\0" * size


class NameRaises:
    @property
    def name(self) -> str:
        raise RuntimeError("name property exploded")

    def read(self, size: int = -1) -> bytes:
        return b"\x89PNG\r\n\x1a\n"


class ReadPropertyRaises:
    @property
    def read(self) -> Any:
        raise KeyError("read")


class NoSizeArgument:
    def __init__(self, data: bytes):
        self.data = data

    def read(self) -> bytes:  # a file-like without the size parameter
        return self.data


class FspathRaises:
    def __init__(self, exception: BaseException):
        self.exception = exception

    def __fspath__(self) -> str:
        raise self.exception


class FspathReturns:
    def __init__(self, value: Any):
        self.value = value

    def __fspath__(self) -> Any:
        return self.value


class BrokenSize(Image.Image):
    """A PIL image subclass whose size lies."""

    def __init__(self, size: Any):
        super().__init__()
        self._fake = size
        self._mode = "RGB"

    @property
    def size(self) -> Any:  # type: ignore[override]
        return self._fake


class ExplodingLoad(Image.Image):
    def __init__(self, exception: BaseException):
        super().__init__()
        self._mode = "RGB"
        self._size = (8, 8)
        self.exception = exception

    def load(self) -> Any:
        raise self.exception


def released_memoryview() -> memoryview:
    view = memoryview(b"\x89PNG\r\n\x1a\n")
    view.release()
    return view


@dataclass
class Context:
    """What hostile-object builders need: valid encoded images and a scratch folder for paths."""

    png: bytes
    jpeg: bytes
    scratch: Path


def _array_cases() -> list[tuple[str, Callable[[random.Random, Context], Any]]]:
    u8 = np.uint8
    base = lambda rng: np.asarray(picture(seed=rng.randrange(8)))  # noqa: E731 - (40, 48, 3) uint8

    def structured(rng: random.Random, ctx: Context) -> Any:
        return np.zeros((4, 4), dtype=[("r", u8), ("g", u8), ("b", u8)])

    def masked(rng: random.Random, ctx: Context) -> Any:
        return np.ma.masked_array(base(rng), mask=np.zeros((40, 48, 3), bool))

    def strided(rng: random.Random, ctx: Context) -> Any:
        return np.lib.stride_tricks.as_strided(np.arange(64, dtype=u8), shape=(40, 48, 3), strides=(1, 1, 1))

    def memmapped(rng: random.Random, ctx: Context) -> Any:
        path = ctx.scratch / "array.mm"
        array = np.memmap(path, dtype=u8, mode="w+", shape=(40, 48, 3))
        array[:] = base(rng)
        return array

    cases: list[tuple[str, Callable[[random.Random, Context], Any]]] = [
        (f"dtype {dtype}", lambda rng, ctx, dtype=dtype: base(rng).astype(dtype))
        for dtype in ("bool", "int8", "uint16", "int32", "int64", "float16", "float32", "float64", "complex64", ">u2",
                      "U1", "S1", "datetime64[s]")
    ]
    cases += [
        ("float nan/inf", lambda rng, ctx: np.full((40, 48, 3), np.nan, np.float32)),
        ("object dtype", lambda rng, ctx: np.array([[picture()]], dtype=object)),
        ("object dtype of ints", lambda rng, ctx: base(rng).astype(object)),
        ("structured dtype", structured),
        ("void dtype", lambda rng, ctx: np.zeros((4, 4, 3), dtype="V1")),
    ]
    shapes = [(), (5,), (0,), (0, 0), (0, 5, 3), (5, 0, 3), (4, 4, 0), (4, 4, 1), (4, 4, 2), (4, 4, 4), (4, 4, 5),
              (1, 1, 3), (1, 1), (2, 2, 3, 1), (1, 4, 4, 3), (3, 4, 4), (1, 10_000, 3), (10_000, 1)]
    cases += [(f"shape {shape}", lambda rng, ctx, shape=shape: np.full(shape, 7, u8)) for shape in shapes]
    cases += [
        ("broadcast 100000x100000x3", lambda rng, ctx: np.broadcast_to(np.zeros(3, u8), (100_000, 100_000, 3))),
        ("broadcast 2^31x1x3", lambda rng, ctx: np.broadcast_to(np.zeros(3, u8), (1 << 31, 1, 3))),
        ("broadcast 2^40 rows x 0", lambda rng, ctx: np.broadcast_to(np.zeros((1, 0, 3), u8), (1 << 40, 0, 3))),
        ("broadcast 10001x10000 gray", lambda rng, ctx: np.broadcast_to(np.zeros(1, u8), (10_001, 10_000))),
        ("broadcast 3000x3000x3", lambda rng, ctx: np.broadcast_to(np.arange(3, dtype=u8), (3_000, 3_000, 3))),
        ("non-contiguous", lambda rng, ctx: base(rng)[::2, ::3]),
        ("negative strides", lambda rng, ctx: base(rng)[::-1, ::-1, ::-1]),
        ("fortran order", lambda rng, ctx: np.asfortranarray(base(rng))),
        ("transposed (3,W,H)", lambda rng, ctx: base(rng).T),
        ("read-only", lambda rng, ctx: _readonly(base(rng))),
        ("overlapping strides", strided),
        ("masked array", masked),
        ("matrix", lambda rng, ctx: np.asmatrix(base(rng)[..., 0])),
        ("memmap", memmapped),
        ("unaligned view", lambda rng, ctx: np.frombuffer(bytes(1 + 40 * 48 * 3), u8, offset=1).reshape(40, 48, 3)),
    ]
    return cases


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _pil_cases() -> list[tuple[str, Callable[[random.Random, Context], Any]]]:
    def odd_mode(mode: str) -> Callable[[random.Random, Context], Any]:
        def build(rng: random.Random, ctx: Context) -> Any:
            return picture(seed=rng.randrange(4)).convert("RGBA" if mode in ("RGBa", "La", "PA") else "RGB").convert(
                mode) if mode not in ("I;16", "I;16B", "I;16L", "I;16N", "HSV", "LAB") else _raw_mode(mode, rng)
        return build

    def no_palette(rng: random.Random, ctx: Context) -> Any:
        image = Image.frombytes("P", (WIDTH, HEIGHT), rng.randbytes(WIDTH * HEIGHT))
        image.palette = None
        return image

    def closed(rng: random.Random, ctx: Context) -> Any:
        image = Image.open(io.BytesIO(ctx.png))
        image.close()
        return image

    def closed_loaded(rng: random.Random, ctx: Context) -> Any:
        image = picture()
        image.close()
        return image

    def lazy(data_name: str) -> Callable[[random.Random, Context], Any]:
        def build(rng: random.Random, ctx: Context) -> Any:
            data = {"png": ctx.png, "truncated": ctx.png[: len(ctx.png) // 2], "bomb": bomb("png-rgb", 12_000, 12_000),
                    "big-under-cap": bomb("png-rgb", 5_000, 4_000)}[data_name]
            return Image.open(io.BytesIO(data))
        return build

    def lazy_file_closed(rng: random.Random, ctx: Context) -> Any:
        path = ctx.scratch / "lazy.png"
        path.write_bytes(ctx.png)
        with open(path, "rb") as handle:
            image = Image.open(handle)
        return image

    def bad_exif(rng: random.Random, ctx: Context) -> Any:
        image = picture()
        image.info["exif"] = bogus_exif(rng)
        return image

    def f_rotated(rng: random.Random, ctx: Context) -> Any:
        image = Image.open(io.BytesIO(saved(picture().convert("F"), "TIFF", exif=orientation_exif(rng))))
        return image

    modes = ("1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16",
             "I;16B", "I;16L", "I;16N")
    cases: list[tuple[str, Callable[[random.Random, Context], Any]]] = [(f"mode {m}", odd_mode(m)) for m in modes]
    cases += [
        ("P without palette", no_palette),
        ("zero size", lambda rng, ctx: Image.new("RGB", (0, 0))),
        ("zero width", lambda rng, ctx: Image.new("L", (0, 7))),
        ("1x1", lambda rng, ctx: Image.new("RGB", (1, 1))),
        ("1x20000", lambda rng, ctx: Image.new("RGB", (1, 20_000))),
        ("closed after open", closed),
        ("closed after load", closed_loaded),
        ("lazy", lazy("png")),
        ("lazy truncated", lazy("truncated")),
        ("lazy, over the pixel cap", lazy("bomb")),
        ("lazy 20MP", lazy("big-under-cap")),
        ("lazy, file closed", lazy_file_closed),
        ("bogus exif in info", bad_exif),
        ("F with orientation", f_rotated),
        ("size (-1, -1)", lambda rng, ctx: BrokenSize((-1, -1))),
        ("size strings", lambda rng, ctx: BrokenSize(("a", "b"))),
        ("size huge", lambda rng, ctx: BrokenSize((1 << 40, 1 << 40))),
        ("load raises RuntimeError", lambda rng, ctx: ExplodingLoad(RuntimeError("load"))),
        ("load raises ValueError", lambda rng, ctx: ExplodingLoad(ValueError("load"))),
        ("load raises MemoryError", lambda rng, ctx: ExplodingLoad(MemoryError())),
    ]
    return cases


def _raw_mode(mode: str, rng: random.Random) -> Image.Image:
    bands = {"HSV": 3, "LAB": 3}.get(mode, 2)
    return Image.frombytes(mode, (WIDTH, HEIGHT), rng.randbytes(WIDTH * HEIGHT * bands))


def _object_cases() -> list[tuple[str, Callable[[random.Random, Context], Any]]]:
    class Boom(Exception):
        pass

    def fifo(rng: random.Random, ctx: Context) -> Any:
        path = ctx.scratch / "fifo"
        if not path.exists():
            os.mkfifo(path)
        return str(path)

    def unix_socket(rng: random.Random, ctx: Context) -> Any:
        path = ctx.scratch / "socket"
        if not path.exists():
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(str(path))
            ctx.__dict__.setdefault("keep", []).append(listener)
        return path

    def symlink_loop(rng: random.Random, ctx: Context) -> Any:
        path = ctx.scratch / "loop"
        if not path.is_symlink():
            os.symlink(path, path)
        return path

    def dangling(rng: random.Random, ctx: Context) -> Any:
        path = ctx.scratch / "dangling.png"
        if not path.is_symlink():
            os.symlink(ctx.scratch / "nowhere", path)
        return path

    def sparse(size: int) -> Callable[[random.Random, Context], Any]:
        def build(rng: random.Random, ctx: Context) -> Any:
            path = ctx.scratch / f"sparse-{size}"
            with open(path, "wb") as handle:
                handle.truncate(size)
            return path
        return build

    def non_utf8(rng: random.Random, ctx: Context) -> Any:
        path = os.fsencode(ctx.scratch) + b"/\xff\xfe.png"
        with open(path, "wb") as handle:
            handle.write(ctx.png)
        return path

    def text_mode(rng: random.Random, ctx: Context) -> Any:
        path = ctx.scratch / "text.png"
        path.write_bytes(ctx.png)
        return open(path, encoding="utf-8")

    def pipe_reader(rng: random.Random, ctx: Context) -> Any:
        read, write = os.pipe()
        os.write(write, ctx.png)
        os.close(write)
        return os.fdopen(read, "rb")

    def closed_file(rng: random.Random, ctx: Context) -> Any:
        handle = io.BytesIO(ctx.png)
        handle.close()
        return handle

    def unreadable(rng: random.Random, ctx: Context) -> Any:
        path = ctx.scratch / "unreadable.png"
        path.unlink(missing_ok=True)
        path.write_bytes(ctx.png)
        path.chmod(0)  # root reads it anyway
        return path

    def noncontiguous_view(rng: random.Random, ctx: Context) -> Any:
        doubled = np.repeat(np.frombuffer(ctx.png, np.uint8), 2)
        return memoryview(doubled)[::2]

    exceptions: list[BaseException] = [RuntimeError("read"), KeyError("read"), Boom("custom"), OSError(5, "EIO"),
                                       ValueError("closed"), StopIteration(), RecursionError(), ZeroDivisionError(),
                                       AttributeError("read"), TypeError("read"), NotImplementedError(),
                                       UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), OverflowError(), IndexError()]
    cases: list[tuple[str, Callable[[random.Random, Context], Any]]] = [
        (f"read raises {type(e).__name__}", lambda rng, ctx, e=e: ReadRaises(e)) for e in exceptions
    ]
    cases += [
        ("read returns str", lambda rng, ctx: ReadReturns("\x89PNG")),
        ("read returns None", lambda rng, ctx: ReadReturns(None)),
        ("read returns int", lambda rng, ctx: ReadReturns(42)),
        ("read returns list", lambda rng, ctx: ReadReturns([1, 2, 3])),
        ("read returns ndarray", lambda rng, ctx: ReadReturns(np.frombuffer(ctx.png, np.uint8))),
        ("read returns bytearray", lambda rng, ctx: ReadReturns(bytearray(ctx.png))),
        ("read returns memoryview", lambda rng, ctx: ReadReturns(memoryview(ctx.jpeg))),
        ("read returns empty", lambda rng, ctx: ReadReturns(b"")),
        ("read ignores size (300 MB)", lambda rng, ctx: ReadReturns(bytes(300 << 20))),
        ("endless stream", lambda rng, ctx: EndlessStream()),
        ("read without size parameter", lambda rng, ctx: NoSizeArgument(ctx.png)),
        ("read property raises", lambda rng, ctx: ReadPropertyRaises()),
        ("read not callable", lambda rng, ctx: type("ReadAttr", (), {"read": 5})()),
        ("name property raises", lambda rng, ctx: NameRaises()),
        ("text-mode file", text_mode),
        ("pipe reader", pipe_reader),
        ("closed BytesIO", closed_file),
        ("fspath raises RuntimeError", lambda rng, ctx: FspathRaises(RuntimeError("fspath"))),
        ("fspath raises ValueError", lambda rng, ctx: FspathRaises(ValueError("fspath"))),
        ("fspath returns int", lambda rng, ctx: FspathReturns(3)),
        ("fspath returns bytes with NUL", lambda rng, ctx: FspathReturns(b"a\0b")),
        ("path with NUL", lambda rng, ctx: "image\0.png"),
        ("path too long", lambda rng, ctx: "x" * 5000 + ".png"),
        ("path component too long", lambda rng, ctx: str(ctx.scratch / ("y" * 300 + ".png"))),
        ("missing path", lambda rng, ctx: ctx.scratch / "missing.png"),
        ("directory", lambda rng, ctx: ctx.scratch),
        ("/dev/zero", lambda rng, ctx: "/dev/zero"),
        ("/dev/null", lambda rng, ctx: "/dev/null"),
        ("/dev/urandom", lambda rng, ctx: Path("/dev/urandom")),
        ("/proc/self/status", lambda rng, ctx: "/proc/self/status"),
        ("fifo", fifo),
        ("unix socket", unix_socket),
        ("symlink loop", symlink_loop),
        ("dangling symlink", dangling),
        ("sparse file over the byte cap", sparse((256 << 20) + 1)),
        ("sparse empty file", sparse(0)),
        ("non-UTF-8 bytes path", non_utf8),
        ("unreadable file", unreadable),
        ("released memoryview", lambda rng, ctx: released_memoryview()),
        ("non-contiguous memoryview", noncontiguous_view),
        ("2-D memoryview", lambda rng, ctx: memoryview(np.frombuffer(ctx.png[:len(ctx.png) // 2 * 2], np.uint8)
                                                        .reshape(2, -1))),
        ("memoryview of ints", lambda rng, ctx: memoryview(np.frombuffer(ctx.png[:len(ctx.png) // 4 * 4], "<u4"))),
        ("bytearray", lambda rng, ctx: bytearray(ctx.jpeg)),
        ("int", lambda rng, ctx: 12345),
        ("None", lambda rng, ctx: None),
        ("list of bytes", lambda rng, ctx: [ctx.png]),
        ("dict", lambda rng, ctx: {"image": ctx.png}),
    ]
    return cases


ARRAY_CASES = _array_cases()
PIL_CASES = _pil_cases()
OBJECT_CASES = _object_cases()


# ============================================================================================================
# Plans and cases
# ============================================================================================================

# One cycle of families; a case's family is CYCLE[index % len(CYCLE)], and within a family items go round robin,
# so any run of a few hundred consecutive cases covers every seed and every hostile object at least once.
CYCLE = ("mutate",) * 24 + ("dimensions",) * 4 + ("metadata",) * 2 + ("array", "pil", "object", "object") + \
    ("mutate", "dimensions", "array", "pil", "mutate", "bomb")
_FAMILY_SLOTS = {family: [i for i, f in enumerate(CYCLE) if f == family] for family in set(CYCLE)}

CALLS = ("to_pixels", "to_pixels_draft", "load_image", "predict_batch", "predict_iter")
DELIVERIES = ("bytes", "bytes", "bytes", "path", "path", "bytesio", "memoryview", "bytearray")


@dataclass(frozen=True)
class Plan:
    index: int
    family: str
    item: str  # seed name, hostile-object name, bomb kind
    format: str  # the per-format table's row
    call: str
    delivery: str
    size_class: str = ""


def _family_position(index: int) -> tuple[str, int]:
    family = CYCLE[index % len(CYCLE)]
    slots = _FAMILY_SLOTS[family]
    return family, (index // len(CYCLE)) * len(slots) + slots.index(index % len(CYCLE))


def family_index(family: str, position: int) -> int:
    """The case index of the ``position``-th case of ``family`` (the inverse of ``_family_position``)."""
    slots = _FAMILY_SLOTS[family]
    return (position // len(slots)) * len(CYCLE) + slots[position % len(slots)]


def coverage_indices() -> list[int]:
    """One case for every hostile array, PIL image and object, and every bomb kind at its smallest size."""
    items = {"array": len(ARRAY_CASES), "pil": len(PIL_CASES), "object": len(OBJECT_CASES), "bomb": len(BOMB_KINDS)}
    return sorted(family_index(family, position) for family, count in items.items() for position in range(count))


def case_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"fastvit-fuzz/{seed}/{index}")  # str seeds hash with SHA-512: stable across runs


def plan(seed: int, index: int, with_model: bool) -> tuple[Plan, random.Random]:
    """What case ``index`` is, cheaply (the parent labels timeouts with it); the rng continues into build_case."""
    rng = case_rng(seed, index)
    family, position = _family_position(index)
    seeds = seed_corpus()
    size_class = ""
    if family in ("mutate", "dimensions"):
        chosen = seeds[position % len(seeds)]
        item, fmt = chosen.name, chosen.format
    elif family == "metadata":
        item, fmt = "metadata", "(metadata)"
    elif family == "bomb":
        kind = BOMB_KINDS[position % len(BOMB_KINDS)]
        width, height = BOMB_SIZES[(position // len(BOMB_KINDS)) % len(BOMB_SIZES)]
        item, fmt, size_class = kind, _BOMB_FORMATS[kind], f"{width}x{height}"
    else:
        cases = {"array": ARRAY_CASES, "pil": PIL_CASES, "object": OBJECT_CASES}[family]
        item = cases[position % len(cases)][0]
        fmt = {"array": "ndarray", "pil": "PIL.Image", "object": "file/path/object"}[family]
    weights = (40, 15, 15, 22, 8) if with_model else (55, 20, 25, 0, 0)
    call = rng.choices(CALLS, weights)[0]
    delivery = rng.choice(DELIVERIES) if family in ("mutate", "dimensions", "metadata", "bomb") else "object"
    return Plan(index, family, item, fmt, call, delivery, size_class), rng


@dataclass
class Case:
    plan: Plan
    input: Any
    detail: str
    size: int  # encoded bytes, 0 for non-file inputs
    format: str
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    data: bytes = b""

    def close(self) -> None:
        for action in self.cleanup:
            with contextlib.suppress(Exception):  # best effort: a scratch file or handle
                action()


def build_case(the_plan: Plan, rng: random.Random, ctx: Context) -> Case:
    family, fmt = the_plan.family, the_plan.format
    if family in ("array", "pil", "object"):
        cases = {"array": ARRAY_CASES, "pil": PIL_CASES, "object": OBJECT_CASES}[family]
        builder = dict(cases)[the_plan.item]
        value = builder(rng, ctx)
        case = Case(the_plan, value, the_plan.item, 0, fmt)
        if hasattr(value, "close") and not isinstance(value, Image.Image):
            case.cleanup.append(value.close)
        return case
    if family == "mutate":
        seed = next(s for s in seed_corpus() if s.name == the_plan.item)
        data, detail = mutate(seed, rng)
    elif family == "dimensions":
        seed = next(s for s in seed_corpus() if s.name == the_plan.item)
        data, detail = crafted_dimensions(seed, rng)
    elif family == "metadata":
        data, fmt, detail = crafted_metadata(rng)
    else:
        width, height = (int(v) for v in the_plan.size_class.split("x"))
        data, detail = bomb(the_plan.item, width, height), f"{the_plan.item} {the_plan.size_class}"
    case = Case(the_plan, None, detail, len(data), fmt, data=data)
    case.input = deliver(data, the_plan.delivery, ctx, case)
    return case


def deliver(data: bytes, how: str, ctx: Context, case: Case) -> Any:
    if how == "path":
        path = ctx.scratch / f"case-{case.plan.index}.img"
        path.write_bytes(data)
        case.cleanup.append(path.unlink)
        return path if case.plan.index % 2 else str(path)
    if how == "bytesio":
        return io.BytesIO(data)
    if how == "memoryview":
        return memoryview(data)
    if how == "bytearray":
        return bytearray(data)
    return data


# ============================================================================================================
# Running one case (in a worker)
# ============================================================================================================

VIT_CONFIG = {"image_processor_type": "ViTImageProcessor"}
DEIT_CONFIG = {"image_processor_type": "DeiTImageProcessor"}


def _status_kb(key: str, pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat(5)
    except (OSError, ValueError, IndexError):
        return 0.0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class Runner:
    """Runs cases in this process: the worker's side of the harness, also used by ``--replay``."""

    def __init__(self, seed: int, package: str | None, scratch: Path, formats: list[str] | None = None,
                 faces: bool = False):
        """``formats``: open only these image formats (a server's allowlist), as every call's ``formats=``.
        ``faces``: the face stage (``package`` must hold the face detector): every case that isn't a batch goes
        through ``Detector.predict_faces``, and batches through a detector that decides by faces."""
        self.seed = seed
        self.formats = formats
        self.faces = faces
        self.preprocessors = {
            "vit": Preprocessor(PreprocessConfig.from_hf(VIT_CONFIG), formats=formats),
            "deit": Preprocessor(PreprocessConfig.from_hf(DEIT_CONFIG), formats=formats),
            "draft": Preprocessor(PreprocessConfig.from_hf(VIT_CONFIG), jpeg_draft=True, formats=formats),
        }
        seed_corpus()
        self.ctx = Context(saved(picture(seed=11), "PNG"), saved(picture(seed=12), "JPEG"), scratch)
        self.detector = None
        if package:
            self.detector = fastvit_detect.Detector.load(package, variant="fp32", threads=1, formats=formats,
                                                         faces=True if faces else "auto")
            self.neighbours = [np.asarray(picture(64, 48, seed=21)), np.asarray(picture(30, 70, seed=22))]
            self.alone = [self.detector.predict_batch([image])[0].logits for image in self.neighbours]

    def run(self, index: int) -> dict[str, Any]:
        if index < 0:
            return self._selftest(index)
        the_plan, rng = plan(self.seed, index, self.detector is not None)
        if self.faces and the_plan.call not in ("predict_batch", "predict_iter"):
            the_plan = replace(the_plan, call="predict_faces")
        record: dict[str, Any] = {"index": index, "family": the_plan.family, "item": the_plan.item,
                                  "format": the_plan.format, "call": the_plan.call, "delivery": the_plan.delivery,
                                  "size_class": the_plan.size_class}
        try:
            case = build_case(the_plan, rng, self.ctx)
        except Exception:  # noqa: BLE001 - a bug in the generator, not in the runtime: counted apart
            record.update(outcome="generator-error", traceback=traceback.format_exc(limit=8))
            return record
        record.update(detail=case.detail, bytes=case.size, format=case.format)
        _reset_peak_rss()
        record["rss_before_kb"] = _status_kb("VmRSS")  # the input is built: what grows from here is decoding
        wall, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        try:
            record.update(self._call(the_plan.call, case))
        finally:
            after = resource.getrusage(resource.RUSAGE_SELF)
            record["wall_s"] = round(time.perf_counter() - wall, 4)
            record["cpu_s"] = round(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime, 4)
            record["peak_rss_kb"] = _status_kb("VmHWM")
            case.close()
        record["rss_after_kb"] = _status_kb("VmRSS")
        if record["cpu_s"] > 0.1 and case.data:  # what the slow ones claimed to be
            try:
                with Image.open(io.BytesIO(case.data)) as header:
                    record["declared"] = f"{header.format} {header.mode} {header.width}x{header.height}"
            except Exception:  # noqa: BLE001 - the header itself is broken: nothing to say
                pass
        return record

    def _selftest(self, index: int) -> dict[str, Any]:
        """Misbehave on purpose, so a test can check the harness notices: -1 hangs, -2 eats memory, -3 raises
        outside the hierarchy, -4 crashes."""
        record: dict[str, Any] = {"index": index, "family": "selftest", "item": str(index), "format": "selftest",
                                  "call": "selftest", "delivery": ""}
        if index == -1:
            while True:
                time.sleep(0.01)
        if index == -2:
            hog = np.ones(1 << 30, np.uint8)  # 1 GiB, every page written
            record["outcome"] = f"ok {hog[::4096].sum()}"  # the parent's limit must have stopped this
        elif index == -3:
            the_plan = Plan(index, "selftest", "escape", "selftest", "selftest-escape", "object")
            record.update(self._call("selftest-escape", Case(the_plan, None, "selftest", 0, "selftest")))
        else:
            os.kill(os.getpid(), signal.SIGSEGV)
        record["peak_rss_kb"] = _status_kb("VmHWM")
        return record

    def _call(self, call: str, case: Case) -> dict[str, Any]:
        try:
            if call == "selftest-escape":
                raise RuntimeError("selftest: an exception outside the hierarchy")
            if call in ("predict_batch", "predict_iter"):
                return self._predict(call, case)
            if call == "predict_faces":
                return self._predict_faces(case)
            if call == "load_image":
                image = fastvit_detect.load_image(case.input, formats=self.formats)
                return {"outcome": "ok", "decoded": list(image.size)}
            preprocessor = self.preprocessors["draft" if call == "to_pixels_draft" else
                                              ("deit" if case.plan.index % 3 == 0 else "vit")]
            pixels = preprocessor.to_pixels(case.input)
            expected = (*preprocessor.output_size, 3)
            if pixels.shape != expected or pixels.dtype != np.uint8:
                return {"outcome": "bad-output", "message": f"pixels {pixels.dtype}{pixels.shape}, expected {expected}"}
            return {"outcome": "ok"}
        except FastVitDetectError as exc:
            return _classified(exc, case)
        except Exception as exc:  # noqa: BLE001 - the finding this harness exists for
            return {"outcome": f"escaped:{type(exc).__name__}", "message": str(exc)[:300],
                    "traceback": traceback.format_exc(limit=12)}

    def _predict(self, call: str, case: Case) -> dict[str, Any]:
        assert self.detector is not None
        images = [self.neighbours[0], case.input, self.neighbours[1]]
        batch_size = (1, 2, 3, 16)[case.plan.index % 4]
        try:
            if call == "predict_batch":
                results = self.detector.predict_batch(images, batch_size=batch_size, errors="return")
            else:
                results = list(self.detector.predict_iter(images, batch_size=batch_size, prefetch=1, errors="return"))
        except FastVitDetectError as exc:  # errors="return" must put it in the image's place, never raise
            return {"outcome": f"raised:{type(exc).__name__}", "message": str(exc)[:300]}
        if len(results) != 3:
            return {"outcome": "bad-output", "message": f"{len(results)} results for 3 images"}
        for position, alone in ((0, self.alone[0]), (2, self.alone[1])):
            neighbour = results[position]
            if not isinstance(neighbour, fastvit_detect.Prediction) or not np.allclose(
                    neighbour.logits, alone, rtol=1e-4, atol=1e-5):
                return {"outcome": "neighbour-failed", "message": repr(neighbour)[:300]}
        middle = results[1]
        if isinstance(middle, fastvit_detect.Prediction):
            if not np.isfinite(middle.logits).all():
                return {"outcome": "bad-output", "message": f"non-finite verdict {middle.logits}"}
            return {"outcome": "ok"}
        if isinstance(middle, FastVitDetectError):
            return _classified(middle, case)
        return {"outcome": "bad-output", "message": f"result of type {type(middle).__name__}"}


    def _predict_faces(self, case: Case) -> dict[str, Any]:
        assert self.detector is not None
        result = self.detector.predict_faces(case.input)
        if not isinstance(result, FacesResult) or result.prediction is None:
            return {"outcome": "bad-output", "message": f"predict_faces gave {result!r}"[:300]}
        predictions = [result.prediction, *(prediction for _, prediction in result.faces)]
        boxes = np.array([face.box for face, _ in result.faces], dtype=np.float64).reshape(-1, 4)
        if not all(np.isfinite(prediction.logits).all() for prediction in predictions) or not np.isfinite(
                boxes).all() or (boxes[:, 2:] <= boxes[:, :2]).any():
            return {"outcome": "bad-output", "message": f"a non-finite verdict or a degenerate box: {boxes.tolist()}"}
        return {"outcome": "ok", "faces": len(result.faces)}


def _classified(exc: FastVitDetectError, case: Case) -> dict[str, Any]:
    # Out of address space (the RLIMIT_AS backstop) inside a decoder is a memory failure, though the runtime
    # reports it as an oversized image; hostile objects that raise MemoryError on purpose say so in their name.
    if isinstance(exc, ImageTooLargeError) and isinstance(exc.__cause__, MemoryError) and \
            "MemoryError" not in case.plan.item and case.plan.item != "endless stream":
        return {"outcome": "memory-error", "message": str(exc)[:300]}
    return {"outcome": type(exc).__name__, "message": str(exc)[:200]}


# ============================================================================================================
# The harness: long-lived workers, time and memory limits, counting
# ============================================================================================================

FAILURES_PREFIXES = ("escaped:", "raised:", "timeout", "memory", "crash", "neighbour-failed", "bad-output",
                     "generator-error")


def is_failure(outcome: str) -> bool:
    return outcome.startswith(FAILURES_PREFIXES)


def default_rss_budget_kb(max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """How far one case may raise a worker's RSS: what decoding an image at the pixel cap may take. Growth, not the
    total, since a worker keeps memory it freed (the allocator's) from earlier cases and reuses it.

    16 bytes per pixel: WebP is the costliest path (Pillow's animation decoder keeps its own RGBA canvases beside the
    RGBA image it hands over, then the RGB conversion is made); plus 256 MiB, about 1.75 GiB at the default cap.
    """
    return 16 * max_pixels // 1024 + 256 * 1024


def worker_main(options: dict[str, Any]) -> None:
    """Read case indices from stdin, answer one JSON line each on the original stdout."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray prints from C libraries can't corrupt the protocol
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-worker-") as scratch:
        runner = Runner(options["seed"], options.get("package"), Path(scratch), options.get("formats"),
                        options.get("faces", False))
        baseline = _status_kb("VmRSS")
        if options.get("address_space_kb"):  # a backstop: the parent's RSS polling is the real limit
            limit = (_status_kb("VmSize") + options["address_space_kb"]) * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        protocol.write(json.dumps({"ready": True, "baseline_rss_kb": baseline, "vm_kb": _status_kb("VmSize"),
                                   "setup_s": round(time.perf_counter() - started, 3)}) + "\n")
        for line in sys.stdin:
            index = int(line)
            if index < 0 and not options.get("selftest"):
                raise ValueError(f"negative case index {index} outside a selftest")
            protocol.write(json.dumps(runner.run(index)) + "\n")


@dataclass
class _Worker:
    process: subprocess.Popen
    buffer: bytes = b""
    ready: bool = False
    baseline_kb: int = 0
    case: int | None = None
    since: float = 0.0
    cpu_since: float = 0.0
    rss_since: int = 0
    done: int = 0


@dataclass
class Settings:
    cases: int = 300
    start: int = 0
    seed: int = 0
    extra: tuple[int, ...] = ()  # case indices run besides start..start+cases-1
    workers: int = 2
    package: str | None = None
    formats: list[str] | None = None  # open only these formats (a server's allowlist); None: the library's default
    cpu_limit_s: float = 60.0  # per case: a decoder spinning; CPU time, so a busy machine doesn't trip it
    wall_limit_s: float = 300.0  # per case: a decoder blocked without spinning
    rss_budget_kb: int = field(default_factory=default_rss_budget_kb)  # how far one case may raise a worker's RSS
    selftest: bool = False  # workers accept the negative indices of Runner._selftest
    faces: bool = False  # the face stage: cases go through predict_faces, batches through a faces-first detector
    tasks_per_worker: int = 2000
    startup_timeout_s: float = 180.0
    poll_s: float = 0.05


class Pool:
    """Worker processes running cases, killed and replaced on a timeout, an RSS overrun or a crash."""

    def __init__(self, settings: Settings, log_dir: Path):
        self.settings = settings
        self.log_dir = log_dir
        self.selector = selectors.DefaultSelector()
        self.workers: list[_Worker] = []
        self.spawned = 0
        self.baselines: list[int] = []
        self.setup_times: list[float] = []

    def _spawn(self) -> _Worker:
        options = {"seed": self.settings.seed, "package": self.settings.package, "selftest": self.settings.selftest,
                   "address_space_kb": 8 * 1024 * 1024, "formats": self.settings.formats,
                   "faces": self.settings.faces}
        log = open(self.log_dir / f"worker-{self.spawned}.log", "wb")  # noqa: SIM115 - closed with the worker
        self.spawned += 1
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(options)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=environment,
                                   start_new_session=True)
        log.close()
        os.set_blocking(process.stdout.fileno(), False)
        worker = _Worker(process, since=time.monotonic())
        self.selector.register(process.stdout, selectors.EVENT_READ, worker)
        self.workers.append(worker)
        return worker

    def _retire(self, worker: _Worker, kill: bool) -> None:
        self.selector.unregister(worker.process.stdout)
        self.workers.remove(worker)
        if kill:
            worker.process.kill()
        else:
            with contextlib.suppress(OSError):
                worker.process.stdin.close()
        try:
            worker.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        worker.process.stdout.close()

    def run(self, indices: Iterable[int], labels: Callable[[int], dict[str, Any]]) -> Iterator[dict[str, Any]]:
        pending = list(indices)[::-1]
        while len(self.workers) < min(self.settings.workers, max(1, len(pending))):
            self._spawn()
        try:
            while pending or any(w.case is not None for w in self.workers):
                for worker in list(self.workers):
                    if worker.ready and worker.case is None:
                        if worker.done >= self.settings.tasks_per_worker:
                            self._retire(worker, kill=False)
                            self._spawn()
                        elif pending:
                            worker.case, worker.since = pending.pop(), time.monotonic()
                            worker.cpu_since = _cpu_s(worker.process.pid)
                            worker.rss_since = _status_kb("VmRSS", worker.process.pid)
                            worker.process.stdin.write(f"{worker.case}\n".encode())
                            worker.process.stdin.flush()
                for key, _ in self.selector.select(self.settings.poll_s):
                    yield from self._read(key.data, labels)
                yield from self._police(labels)
        finally:
            for worker in list(self.workers):
                self._retire(worker, kill=True)
            self.selector.close()

    def _read(self, worker: _Worker, labels: Callable[[int], dict[str, Any]]) -> Iterator[dict[str, Any]]:
        try:
            chunk = os.read(worker.process.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        if not chunk:  # the worker died
            code = worker.process.wait()
            case = worker.case
            self._retire(worker, kill=False)
            if case is None:
                if not worker.ready:
                    log = (self.log_dir / f"worker-{self.spawned - 1}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"a fuzz worker died while starting (exit {code}):\n{log}")
            else:
                name = signal.Signals(-code).name if code < 0 else f"exit {code}"
                yield {**labels(case), "outcome": f"crash:{name}", "message": f"worker died ({name})"}
            self._spawn()
            return
        worker.buffer += chunk
        *lines, worker.buffer = worker.buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if message.get("ready"):
                worker.ready, worker.baseline_kb = True, message["baseline_rss_kb"]
                self.baselines.append(message["baseline_rss_kb"])
                self.setup_times.append(message["setup_s"])
                continue
            worker.case = None
            worker.done += 1
            budget = self.settings.rss_budget_kb
            if _growth_kb(message) > budget and not is_failure(message["outcome"]):
                message["message"] = (f"RSS grew by {_growth_kb(message)} kB, over the budget of {budget} kB "
                                      f"(outcome was {message['outcome']})")
                message["outcome"] = "memory"
            yield message

    def _police(self, labels: Callable[[int], dict[str, Any]]) -> Iterator[dict[str, Any]]:
        now = time.monotonic()
        for worker in list(self.workers):
            if not worker.ready and now - worker.since > self.settings.startup_timeout_s:
                raise RuntimeError(f"a fuzz worker didn't start within {self.settings.startup_timeout_s} s")
            if worker.case is None:
                continue
            rss = _status_kb("VmRSS", worker.process.pid)
            outcome = None
            cpu = _cpu_s(worker.process.pid) - worker.cpu_since
            if rss - worker.rss_since > self.settings.rss_budget_kb:
                outcome = "memory"
                message = f"RSS grew by {rss - worker.rss_since} kB, over the budget of {self.settings.rss_budget_kb}"
                message += " kB"
            elif cpu > self.settings.cpu_limit_s:
                outcome, message = "timeout", f"no answer after {cpu:.0f} s of CPU"
            elif now - worker.since > self.settings.wall_limit_s:
                outcome, message = "timeout", f"no answer within {self.settings.wall_limit_s:g} s"
            if outcome:
                case, rss_since = worker.case, worker.rss_since
                self._retire(worker, kill=True)
                self._spawn()
                yield {**labels(case), "outcome": outcome, "message": message, "wall_s": round(now - worker.since, 3),
                       "cpu_s": round(cpu, 3), "peak_rss_kb": rss, "rss_before_kb": rss_since}


@dataclass
class Report:
    settings: Settings
    results: list[dict[str, Any]]
    wall_s: float
    baselines_kb: list[int]
    worker_setup_s: list[float]
    workers_started: int

    @property
    def counts(self) -> Counter:
        return Counter(result["outcome"] for result in self.results)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [result for result in self.results if is_failure(result["outcome"])]

    def by(self, key: str) -> dict[str, list[dict[str, Any]]]:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for result in self.results:
            groups[str(result.get(key, ""))].append(result)
        return groups

    def table(self, slowest: int = 15) -> str:
        extra = f" + {len(self.settings.extra)} more" if self.settings.extra else ""
        lines = [(f"fuzz: {len(self.results)} cases (seed {self.settings.seed}, indices {self.settings.start}-"
                  f"{self.settings.start + self.settings.cases - 1}{extra}), {self.settings.workers} workers, "
                  f"{self.wall_s:.1f} s wall; per-case limits: {self.settings.cpu_limit_s:g} s CPU, "
                  f"{self.settings.wall_limit_s:g} s wall, RSS growth {self.settings.rss_budget_kb / 1024:.0f} MiB "
                  f"(worker baseline {max(self.baselines_kb or [0]) / 1024:.0f} MiB); {self.workers_started} worker "
                  f"starts, {statistics_text(self.worker_setup_s)} s each"), "", f"{'outcome':<34}{'cases':>8}{'%':>8}"]
        total = len(self.results) or 1
        for outcome, count in sorted(self.counts.items(), key=lambda item: (is_failure(item[0]), -item[1])):
            lines.append(f"{outcome:<34}{count:>8}{100 * count / total:>8.2f}")
        lines.append(f"{'failures (must be 0)':<34}{len(self.failures):>8}")
        lines += ["", (f"{'format':<18}{'cases':>7}{'ok':>7}{'decode':>8}{'large':>7}{'other':>7}{'FAIL':>6}"
                       f"{'cpu ms mean':>12}{'p99':>8}{'max':>8}{'+MiB max':>9}")]
        for fmt, group in sorted(self.by("format").items()):
            outcomes = Counter(r["outcome"] for r in group)
            cpu = sorted(r.get("cpu_s", 0.0) * 1000 for r in group)
            decode = outcomes["ImageDecodeError"]
            large = outcomes["ImageTooLargeError"]
            fail = sum(c for o, c in outcomes.items() if is_failure(o))
            other = len(group) - outcomes["ok"] - decode - large - fail
            peak = max((_growth_kb(r) for r in group), default=0) / 1024
            lines.append(f"{fmt:<18}{len(group):>7}{outcomes['ok']:>7}{decode:>8}{large:>7}{other:>7}{fail:>6}"
                         f"{sum(cpu) / len(cpu):>12.1f}{_percentile(cpu, 99):>8.0f}{cpu[-1]:>8.0f}{peak:>9.0f}")
        lines += ["", f"{'family':<14}{'cases':>7}{'ok':>7}{'failures':>9}{'cpu ms mean':>12}{'max':>8}"]
        for family, group in sorted(self.by("family").items()):
            cpu = [r.get("cpu_s", 0.0) * 1000 for r in group]
            lines.append(f"{family:<14}{len(group):>7}{sum(r['outcome'] == 'ok' for r in group):>7}"
                         f"{sum(is_failure(r['outcome']) for r in group):>9}{sum(cpu) / len(cpu):>12.1f}"
                         f"{max(cpu):>8.0f}")
        lines += ["", f"{'call':<18}{'cases':>7}{'ok':>7}{'failures':>9}"]
        for call, group in sorted(self.by("call").items()):
            lines.append(f"{call:<18}{len(group):>7}{sum(r['outcome'] == 'ok' for r in group):>7}"
                         f"{sum(is_failure(r['outcome']) for r in group):>9}")
        bombs = [r for r in self.results if r["family"] == "bomb"]
        if bombs:
            lines += ["", (f"{'bomb (valid, highly compressed)':<34}{'cases':>6}{'bytes':>10}{'outcome':>20}"
                           f"{'cpu s max':>10}{'wall s max':>11}{'+MiB max':>9}{'B/px':>6}")]
            groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
            for result in bombs:
                groups[(result["item"], result["size_class"])].append(result)
            for (kind, size), group in sorted(groups.items(), key=lambda item: (item[0][0], _pixels(item[0][1]))):
                seen = "/".join(sorted({r["outcome"] for r in group}))
                lines.append(f"{kind + ' ' + size:<34}{len(group):>6}{max(r.get('bytes', 0) for r in group):>10,}"
                             f"{seen:>20}{max(r.get('cpu_s', 0) for r in group):>10.2f}"
                             f"{max(r.get('wall_s', 0) for r in group):>11.2f}"
                             f"{max(_growth_kb(r) for r in group) / 1024:>9.0f}"
                             f"{max(_growth_kb(r) for r in group) * 1024 / max(_pixels(size), 1):>6.1f}")
        lines += ["", (f"slowest {slowest} cases by CPU (index: format family item [detail] declared -> outcome; "
                       "bytes; CPU; RSS growth):")]
        for result in sorted(self.results, key=lambda r: -r.get("cpu_s", 0.0))[:slowest]:
            lines.append(f"  {result['index']}: {result['format']} {result['family']} {result['item']} "
                         f"[{result.get('detail', '')[:60]}] {result.get('declared', '')} -> {result['outcome']}; "
                         f"{result.get('bytes', 0):,} B; "
                         f"{result.get('cpu_s', 0):.2f} s; +{_growth_kb(result) / 1024:.0f} MiB")
        growth = [r.get("rss_after_kb", 0) for r in self.results if r.get("rss_after_kb")]
        if growth:
            lines.append(f"\nworker RSS after a case: median {sorted(growth)[len(growth) // 2] / 1024:.0f} MiB, "
                         f"max {max(growth) / 1024:.0f} MiB")
        if self.failures:
            lines += ["", "FAILURES:"]
            for result in self.failures[:50]:
                lines.append(f"  case {result['index']} ({result['format']} {result['family']} {result['item']} "
                             f"via {result['call']}/{result.get('delivery')}): {result['outcome']}: "
                             f"{result.get('message', '')}")
                if result.get("traceback"):
                    lines.append("    " + result["traceback"].strip().replace("\n", "\n    "))
        return "\n".join(lines)


def _growth_kb(result: dict[str, Any]) -> int:
    """How far a case took its worker's RSS above where it started (the worker keeps memory between cases)."""
    return max(0, result.get("peak_rss_kb", 0) - result.get("rss_before_kb", result.get("peak_rss_kb", 0)))


def _pixels(size_class: str) -> int:
    width, _, height = size_class.partition("x")
    return int(width or 0) * int(height or 0)


def statistics_text(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.1f} (median), {ordered[-1]:.1f} (max)"


def _percentile(ordered: list[float], percent: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, math.ceil(percent / 100 * len(ordered)) - 1)]


def run_campaign(settings: Settings, log_dir: Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Report:
    """Run ``settings.cases`` cases from ``settings.start`` in worker processes; every case gets one outcome."""
    with tempfile.TemporaryDirectory(prefix="fuzz-logs-") as default_logs:
        logs = log_dir or Path(default_logs)
        logs.mkdir(parents=True, exist_ok=True)
        pool = Pool(settings, logs)
        indices = sorted({*range(settings.start, settings.start + settings.cases), *settings.extra})
        with_model = settings.package is not None

        def labels(index: int) -> dict[str, Any]:
            if index < 0:
                return {"index": index, "family": "selftest", "item": str(index), "format": "selftest",
                        "call": "selftest", "delivery": "", "size_class": ""}
            the_plan, _ = plan(settings.seed, index, with_model)
            return {"index": index, "family": the_plan.family, "item": the_plan.item, "format": the_plan.format,
                    "call": the_plan.call, "delivery": the_plan.delivery, "size_class": the_plan.size_class}

        started = time.perf_counter()
        results = []
        for result in pool.run(indices, labels):
            results.append(result)
            if progress:
                progress(len(results), len(indices))
        results.sort(key=lambda r: r["index"])
        return Report(settings, results, time.perf_counter() - started, pool.baselines, pool.setup_times,
                      pool.spawned)


# ============================================================================================================
# Command line
# ============================================================================================================


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fuzz fastvit-detect's image decoding with seeded hostile inputs.")
    parser.add_argument("--cases", type=int, default=1000, help="number of cases (default 1000)")
    parser.add_argument("--start", type=int, default=0, help="first case index (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    parser.add_argument("--package", help="a model package: a share of the cases run through Detector.predict_batch")
    parser.add_argument("--cpu-limit", type=float, default=60.0, help="CPU seconds a case may take (default 60)")
    parser.add_argument("--wall-limit", type=float, default=300.0, help="wall seconds a case may take (default 300)")
    parser.add_argument("--rss-budget-mb", type=float, help="how far one case may raise a worker's RSS (default: 16 "
                        "bytes per pixel of the default pixel cap + 256 MiB)")
    parser.add_argument("--coverage", action="store_true",
                        help="also run one case of every hostile array, PIL image, object and bomb kind")
    parser.add_argument("--json", help="write every case's record to this file")
    parser.add_argument("--logs", help="keep the workers' stderr logs in this folder")
    parser.add_argument("--replay", type=int, metavar="INDEX", help="run one case in this process and show it")
    parser.add_argument("--save", nargs=2, metavar=("INDEX", "FILE"), help="write one case's bytes to FILE")
    parser.add_argument("--list-seeds", action="store_true", help="list the seed images and exit")
    parser.add_argument("--formats", help="open only these formats, comma-separated, or 'server' for the server's "
                        "allowlist (default: every format, the library's default)")
    parser.add_argument("--faces", action="store_true",
                        help="run the cases through the face stage (predict_faces; --package must hold the face "
                             "detector: export --faces)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    formats = None
    if args.formats:
        formats = list(server_formats() if args.formats == "server" else args.formats.split(","))
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    if args.list_seeds:
        for seed in seed_corpus():
            print(f"{seed.name:<22}{seed.format:<10}{len(seed.data):>9,} B")
        return 0
    if args.save:
        index, target = int(args.save[0]), args.save[1]
        the_plan, rng = plan(args.seed, index, args.package is not None)
        with tempfile.TemporaryDirectory() as scratch:
            case = build_case(the_plan, rng, Context(b"", b"", Path(scratch)))
            data = case.input
            if isinstance(data, (str, Path)):
                data = Path(data).read_bytes()
            elif hasattr(data, "getvalue"):
                data = data.getvalue()
            if not isinstance(data, (bytes, bytearray, memoryview)):
                parser.error(f"case {index} is a {type(case.input).__name__}, not bytes")
            Path(target).write_bytes(bytes(data))
            print(f"case {index}: {the_plan.format} {the_plan.family} {the_plan.item}: {case.detail} -> {target}")
        return 0
    if args.replay is not None:
        with tempfile.TemporaryDirectory() as scratch:
            runner = Runner(args.seed, args.package, Path(scratch), formats, args.faces)
            print(json.dumps(runner.run(args.replay), indent=2))
        return 0
    settings = Settings(cases=args.cases, start=args.start, seed=args.seed, workers=args.workers, package=args.package,
                        formats=formats, extra=tuple(coverage_indices()) if args.coverage else (),
                        cpu_limit_s=args.cpu_limit, wall_limit_s=args.wall_limit, faces=args.faces)
    if args.rss_budget_mb:
        settings.rss_budget_kb = int(args.rss_budget_mb * 1024)

    def progress(done: int, total: int) -> None:
        if done % 1000 == 0 or done == total:
            print(f"  {done}/{total}", file=sys.stderr, flush=True)

    report = run_campaign(settings, Path(args.logs) if args.logs else None, progress)
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings.__dict__, "counts": dict(report.counts),
                                               "wall_s": report.wall_s, "results": report.results}, indent=1))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
