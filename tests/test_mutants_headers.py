"""What headers' survivors of the automatic mutation run showed untested: that the GIF walk follows the format's
sub-block chain exactly (a size byte, that many bytes, until a zero size); that the TIFF walk counts an EXIF
sub-directory's entries, 8 bytes per out-of-line RATIONAL and takes an offset of 0 for "no directory"; that a WebP
chunk's metadata is its size without the chunk header; that JPEG APP0-APP15 and COM payloads are metadata (and
0xF0 is not), a truncated one counting the bytes present; that a format not walked costs all zeros
(check_headers's docstring). The expected counts come from the bytes each test lays out by hand from the format's
specification (GIF89a, TIFF 6.0, RIFF/WebP, JPEG T.81), not from headers.py."""

from __future__ import annotations

import io
import struct

from PIL import Image

from fastvit_detect.headers import HeaderCost, check_headers


def _gif_with(extensions: bytes) -> bytes:
    """A Pillow GIF with ``extensions`` inserted before its first block (after the header and colour table)."""
    buffer = io.BytesIO()
    Image.new("P", (8, 8), 3).save(buffer, format="GIF")
    data = buffer.getvalue()
    flags = data[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    return data[:start] + extensions + data[start:]


def test_the_gif_walk_counts_each_extension_and_sub_block_byte_exactly():
    comment = b"\x21\xfe" + b"\x03abc" + b"\x05defgh" + b"\x00"  # a comment in two sub-blocks: 3 + 5 bytes
    application = b"\x21\xff" + b"\x0bNETSCAPE2.0" + b"\x03\x01\x00\x00" + b"\x00"  # 11 + 3 bytes
    plain = check_headers(_gif_with(b""), "plain.gif")
    extended = _gif_with(comment + application)
    cost = check_headers(extended, "extended.gif")
    assert cost.segments - plain.segments == 2
    assert cost.metadata_bytes - plain.metadata_bytes == 3 + 5 + 11 + 3
    assert Image.open(io.BytesIO(extended)).size == (8, 8)  # the file is a valid GIF: Pillow reads it too


# --- TIFF, WebP, JPEG and formats not walked: bytes laid out by hand from each format's specification ---------------
# TIFF 6.0: an 8-byte header ("II", 42, the first directory's offset), directories of a 2-byte entry count then
# 12-byte entries (tag, type, count, a 4-byte value or offset); type 3 is SHORT (2 bytes), 4 LONG, 5 RATIONAL (two
# LONGs: 8 bytes). RIFF/WebP: "RIFF", a 4-byte size, "WEBP", then chunks of a fourcc, a 4-byte size and that many
# bytes. JPEG: SOI, then marker segments of 0xFF, a code and a 2-byte length that counts itself but not the marker.

def _ifd(entries: list[tuple[int, int, int, int]]) -> bytes:
    body = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack("<HHII", tag, kind, count, value)
    return body + struct.pack("<I", 0)  # no next directory


def test_the_entries_of_a_tiff_exif_sub_directory_are_counted():
    # IFD0 at 8: one entry, ExifIFD (34665, LONG) pointing at the sub-directory right after IFD0 (8 + 2 + 12 + 4).
    sub_offset = 8 + 2 + 12 + 4
    data = b"II*\x00" + struct.pack("<I", 8) + _ifd([(34665, 4, 1, sub_offset)])
    data += _ifd([(36864, 7, 4, 0x30333230), (40961, 3, 1, 1)])  # ExifVersion, ColorSpace: both inline
    cost = check_headers(data, "exif.tif")
    assert cost.segments == 1 + 2
    assert cost.metadata_bytes == 0


def test_an_out_of_line_tiff_rational_counts_eight_bytes_per_value():
    # IFD0 at 8: XResolution (282, RATIONAL, count 1) and YResolution (283, RATIONAL, count 2), their values after it.
    values = 8 + 2 + 2 * 12 + 4
    data = b"II*\x00" + struct.pack("<I", 8) + _ifd([(282, 5, 1, values), (283, 5, 2, values + 8)])
    data += struct.pack("<6I", 72, 1, 72, 1, 72, 1)
    cost = check_headers(data, "rational.tif")
    assert cost.segments == 2
    assert cost.metadata_bytes == 8 * 1 + 8 * 2


def test_a_tiff_directory_offset_of_zero_points_nowhere():
    # ExifIFD with offset 0: TIFF's "no directory"; walking it would read the header as entries.
    data = b"II*\x00" + struct.pack("<I", 8) + _ifd([(34665, 4, 1, 0)])
    assert check_headers(data, "zero.tif") == HeaderCost(segments=1)
    # a first-directory offset of 0: nothing is walked
    assert check_headers(b"II*\x00" + struct.pack("<I", 0) + _ifd([(256, 3, 1, 8)]), "none.tif") == HeaderCost()


def _riff(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def test_a_webp_metadata_chunk_at_the_end_counts_its_size_without_the_chunk_header():
    image = b"VP8L" + struct.pack("<I", 4) + b"\x2f\x00\x00\x00"
    exif = b"EXIF" + struct.pack("<I", 10) + b"0123456789"  # even size: no pad byte, ends the file
    cost = check_headers(_riff(image + exif), "end.webp")
    assert cost == HeaderCost(segments=1, metadata_bytes=10)
    # truncated: a declared 10 bytes of which 6 are there count 6
    cost = check_headers(_riff(image + exif)[:-4], "cut.webp")
    assert cost.metadata_bytes == 6


def test_jpeg_app_segments_up_to_app15_count_their_payload_exactly():
    app15 = b"\xff\xef" + struct.pack(">H", 2 + 7) + b"private"
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 5) + b"Exif\x00"  # the last bytes of the file
    cost = check_headers(b"\xff\xd8" + app15 + app1, "app.jpg")
    assert cost == HeaderCost(segments=2, metadata_bytes=7 + 5)
    # the file cut 2 bytes into APP1's payload: those 2 count
    cost = check_headers(b"\xff\xd8" + app15 + app1[:6], "cut.jpg")
    assert cost == HeaderCost(segments=2, metadata_bytes=7 + 2)
    # 0xF0 (JPG0, a JPEG extension code just past APP15) is a segment but no metadata
    jpg0 = b"\xff\xf0" + struct.pack(">H", 2 + 3) + b"abc"
    assert check_headers(b"\xff\xd8" + jpg0 + app1, "jpg0.jpg") == HeaderCost(segments=2, metadata_bytes=5)


def test_a_format_not_walked_costs_nothing():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="BMP")
    cost = check_headers(buffer.getvalue(), "plain.bmp")
    assert (cost.segments, cost.metadata_bytes, cost.scans) == (0, 0, 0)
