"""What media's survivors of the automatic mutation run showed untested: how an in-memory input with no name is
named in errors, and the default byte cap. The expected values come from docs/guides/python-api.md (an input with
neither a path nor a ``name`` is named by its type, ``<BytesIO>``; ``max_bytes=256 MiB`` by default, checked before
reading), not from media.py."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from fastvit_detect.errors import ImageDecodeError, ImageTooLargeError
from fastvit_detect.media import open_image

DOCS = Path(__file__).resolve().parents[1] / "docs" / "guides" / "python-api.md"


def test_an_in_memory_file_object_without_a_name_is_named_by_its_type():
    with pytest.raises(ImageDecodeError) as raised:
        open_image(io.BytesIO(b"not an image"))
    assert raised.value.source == "<BytesIO>"
    assert str(raised.value).startswith("<BytesIO>: ")


def test_the_default_byte_cap_is_the_documented_256_mib():
    mib = int(re.search(r"max_bytes=(\d+) MiB", DOCS.read_text(encoding="utf-8")).group(1))
    assert mib == 256
    cap = mib * 1024 * 1024
    with pytest.raises(ImageTooLargeError) as raised:
        open_image(bytearray(cap + 1))  # one byte over: refused by its size, before any decoding
    assert f"{cap + 1:,} bytes exceeds the cap of {cap:,} bytes" in str(raised.value)


def test_a_directory_given_as_an_image_or_a_video_is_named_with_its_article(tmp_path):
    """The message reads as English: "not an image file", "not a video file"."""
    pytest.importorskip("av")
    from fastvit_detect.errors import ImageNotFoundError
    from fastvit_detect.video import VideoReader

    with pytest.raises(ImageNotFoundError, match=r"is a directory, not an image file$"):
        open_image(tmp_path)
    with pytest.raises(ImageNotFoundError, match=r"is a directory, not a video file$"):
        VideoReader(tmp_path)
