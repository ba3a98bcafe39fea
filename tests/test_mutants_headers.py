"""What headers' survivors of the automatic mutation run showed untested: that the GIF walk follows the format's
sub-block chain exactly (a size byte, that many bytes, until a zero size). The expected counts come from the bytes
the test inserts, laid out by hand from the GIF89a specification, not from headers.py."""

from __future__ import annotations

import io

from PIL import Image

from fastvit_detect.headers import check_headers


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
