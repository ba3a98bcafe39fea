"""Bounds on what an image's structure costs beyond its pixels, checked over the raw bytes before Pillow sees them.

Pillow parses headers in Python, one loop turn per segment, chunk, block or stray byte, and keeps what it reads:
a 32x32 JPEG carrying 5.2 M empty APP1 segments (20 MiB) cost 5.7 s of CPU and 660 MB inside ``Image.open``,
before any pixel cap applied. libjpeg then decodes a progressive JPEG one scan at a time, each scan a pass over
the coefficients: 1 MP with 100 k repeated scans took 5.9 s. Neither cost grows with the pixels the caps count.

:func:`check_headers` walks the container structure of JPEG, PNG, GIF, TIFF and WebP and refuses, with the counts
and the caps, an image that has more than a real encoder ever writes. The walk stops at the first cap it passes,
so it costs O(cap), not O(file): markers inside JPEG entropy data are found by one regular expression running in
C, and every Python loop turn counts against a cap. It never decodes anything and never raises for malformed data
it can't follow: it stops there, and the decoder gives its own error for what it can't read.

EXIF blocks inside JPEG, PNG and WebP (and an MPO's frame index) count as metadata bytes but aren't walked: a
directory holds at most 65,535 entries by the format (Pillow parsed that many in 0.55 s), and Pillow 13 copies no
more value bytes than the block holds, so their cost is bounded already; and a photo whose EXIF is corrupt must
still decode.
"""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ImageDecodeError, ImageTooLargeError

MAX_SEGMENTS = 4096
"""Marker segments of a JPEG, chunks of a PNG (not counting image data), extension blocks of a GIF before its first
frame, RIFF chunks of a WebP, entries of a TIFF file's directories. Real photos carry 10-150 (EXIF, XMP and
extended XMP, an ICC profile split over APP2 segments, MPF, Huffman tables before each progressive scan): 4096 is
far above them, and Pillow parses that many in a few milliseconds."""

MAX_DATA_BLOCKS = 65_536
"""PNG image-data chunks (IDAT, fdAT, fcTL) and the sub-blocks of GIF extensions before the first frame. libpng
writes 8 KiB IDAT chunks, so this admits a 512 MiB PNG, twice the library's byte cap; Pillow spends a few
microseconds per chunk or sub-block (an empty chunk costs as much as a full one), so the cap bounds that to a
fraction of a second."""

MAX_METADATA_BYTES = 8 * 1024 * 1024
"""Bytes of metadata Pillow reads and keeps: JPEG APPn and COM payloads, PNG ancillary chunks, GIF extensions,
EXIF blocks, out-of-line TIFF values, WebP chunks other than the image. EXIF is at most 64 KiB, ICC profiles rarely over
1 MiB; extended XMP (a phone's depth map) reaches a few MiB. Each byte counts in the server's decode budget
(:data:`METADATA_PIXEL_COST`)."""

MAX_COMPRESSED_TEXT = 16
"""PNG zTXt, iTXt and iCCP chunks: Pillow inflates each, up to ``PngImagePlugin.MAX_TEXT_CHUNK`` (1 MiB), so a few
KiB of compressed text could otherwise hold 64 MiB (its ``MAX_TEXT_MEMORY``). 16 bounds that to 16 MiB."""

MAX_JPEG_SCANS = 100
"""SOS markers (scans) in a JPEG. Each scan is a pass over the image's coefficients, so a file repeating one tiny
scan costs scans x pixels: 1.1 s of CPU for 100 scans of a flat 16 MP image, 2.8 s for 256, where an honest 16 MP
progressive photo (10 scans) took 0.5 s. Encoders write 1-3 scans (baseline), 6 or 10 (libjpeg's and Pillow's
progressive script, grey or colour), 18 for CMYK; a hand-made ``jpegtran -scans`` script rarely passes a few
dozen. At 100, the worst case at the server's 40 MP cap is about 3 s of one decode thread, like the slowest format
the server opens (BMP RLE, 4.6 s)."""

MAX_STRAY_BYTES = 65_536
"""Bytes between JPEG segments or GIF blocks that belong to none: Pillow skips them one loop turn each. Encoders
write none; a few padding bytes are seen in the wild."""

METADATA_PIXEL_COST = 0.375
"""What one byte of metadata counts for in a server's decode budget, in pixels of a JPEG or PNG (8 bytes of memory
each, see ``preprocess.DECODE_COST``): 3 bytes. Pillow keeps a copy of each segment or chunk (0.9-1.0 bytes per
byte measured, 8 MiB in 128-4000 APP1, COM or private PNG chunks) and joins an ICC profile split over APP2 segments
into one more (2.95 measured, 8 MiB in 128 segments). :attr:`~fastvit_detect.preprocess.OpenedImage.cost` adds
it for the bytes beyond :data:`METADATA_FREE_BYTES`."""

METADATA_FREE_BYTES = 64 * 1024
"""Metadata that costs nothing extra in the decode budget: what an ordinary photo carries (EXIF's own maximum is
64 KiB), already inside the bytes per pixel that ``DECODE_COST`` was measured at."""


@dataclass(frozen=True)
class HeaderCost:
    """What an image's structure costs to parse: counted by :func:`check_headers`, every count within its cap."""

    segments: int = 0
    metadata_bytes: int = 0
    scans: int = 0


class _Counter:
    """Counts, and refuses the image the moment a count passes its cap, so every walk costs O(cap)."""

    def __init__(self, kind: str, source: str) -> None:
        self.kind, self.source = kind, source
        self.segments = self.data_blocks = self.metadata = self.scans = self.stray = self.compressed = 0

    def segment(self, what: str, metadata: int = 0) -> None:
        self.segments += 1
        if self.segments > MAX_SEGMENTS:
            self._refuse(f"more than {MAX_SEGMENTS:,} {what}")
        self.add_metadata(metadata)

    def add_metadata(self, size: int) -> None:
        self.metadata += size
        if self.metadata > MAX_METADATA_BYTES:
            raise ImageTooLargeError(
                f"{self.source}: {self.kind} carries more than {MAX_METADATA_BYTES:,} bytes of metadata (at least "
                f"{self.metadata:,}); images are refused above that, before their headers are parsed", self.source)

    def data_block(self, what: str) -> None:
        self.data_blocks += 1
        if self.data_blocks > MAX_DATA_BLOCKS:
            self._refuse(f"more than {MAX_DATA_BLOCKS:,} {what}")

    def scan(self) -> None:
        self.scans += 1
        if self.scans > MAX_JPEG_SCANS:
            self._refuse(f"more than {MAX_JPEG_SCANS:,} scans (SOS markers)",
                         "encoders write at most a few dozen, and each costs libjpeg a pass over every pixel")

    def stray_bytes(self, count: int) -> None:
        self.stray += count
        if self.stray > MAX_STRAY_BYTES:
            self._refuse(f"more than {MAX_STRAY_BYTES:,} stray bytes between its segments")

    def compressed_text(self) -> None:
        self.compressed += 1
        if self.compressed > MAX_COMPRESSED_TEXT:
            self._refuse(f"more than {MAX_COMPRESSED_TEXT} compressed text or ICC chunks (zTXt, iTXt, iCCP)")

    def _refuse(self, what: str,
                why: str = "no encoder writes that many, and each is parsed before any pixel cap applies") -> None:
        raise ImageDecodeError(f"{self.source}: {self.kind} has {what}; {why} (refused as a decoding bomb)",
                               self.source)

    def result(self) -> HeaderCost:
        return HeaderCost(self.segments, self.metadata, self.scans)


def check_headers(data: bytes, source: str) -> HeaderCost:
    """Walk an encoded image's structure and refuse it if it holds more segments, scans or metadata than the caps
    above (:class:`~fastvit_detect.errors.ImageDecodeError`, or :class:`~fastvit_detect.errors.ImageTooLargeError`
    for metadata bytes, naming the input, the count and the cap). Formats other than JPEG/MPO, PNG, GIF, TIFF and
    WebP aren't walked: their cost is 0 here."""
    kind, walk = _walker(data)
    if walk is None:
        return HeaderCost()
    counter = _Counter(kind, source)
    with contextlib.suppress(IndexError, struct.error):  # malformed where the walk reads: the decoder will say so
        walk(data, counter)
    return counter.result()


def _walker(data: bytes) -> tuple[str, Callable[[bytes, _Counter], None] | None]:
    if data.startswith(b"\xff\xd8"):
        return "JPEG", _walk_jpeg
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG", _walk_png
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF", _walk_gif
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF", _walk_tiff
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP", _walk_webp
    return "", None


def _present(size: int, data: bytes, start: int) -> int:
    """How many of ``size`` bytes from ``start`` the data holds: a truncated segment keeps only what is there."""
    return max(0, min(size, len(data) - start))


# --- JPEG ---------------------------------------------------------------------------------------------------

# A marker: 0xFF and a code that isn't 0xFF (a fill byte; the match then starts at the run's last 0xFF) and, inside
# entropy-coded data (which libjpeg reads, not Python), not a stuffed zero or a restart marker either. Two fixed bytes,
# so a long run of 0xFF is read once; a pattern like \xff+ would try the run again from each of its bytes.
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_MARKER_IN_HEADER = re.compile(rb"\xff[^\xff]")
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field
_SOS, _EOI, _COM = 0xDA, 0xD9, 0xFE


def _walk_jpeg(data: bytes, counter: _Counter) -> None:
    """Segments and metadata up to the first scan (what Pillow parses in Python), then scans up to EOI (what
    libjpeg reads). MPO frames after the first EOI are only parsed when a caller seeks to them."""
    position = 2
    in_scans = False
    while position < len(data):
        if in_scans:
            found = _MARKER_IN_SCAN.search(data, position)
            if found is None:
                return
            position = found.start()
        else:
            # Pillow skips bytes before a marker, fill bytes included, one loop turn each: look no further than
            # the cap allows, so a file of nothing but stray bytes costs O(cap) too.
            found = _MARKER_IN_HEADER.search(data, position, position + MAX_STRAY_BYTES + 2)
            if found is None:
                counter.stray_bytes(min(len(data), position + MAX_STRAY_BYTES + 2) - position)
                return
            counter.stray_bytes(found.start() - position)
            position = found.start()
        marker = data[position + 1]
        if marker == _EOI:
            return
        if marker == 0x00 or marker in _STANDALONE:
            counter.segment("markers")
            position += 2
            continue
        length = struct.unpack_from(">H", data, position + 2)[0]
        if length < 2:
            return
        payload = _present(length - 2, data, position + 4)
        if marker == _SOS:
            counter.scan()
            in_scans = True
        elif in_scans:
            counter.segment("marker segments")  # libjpeg reads these (tables between scans) in C, keeping nothing
        elif 0xE0 <= marker <= 0xEF or marker == _COM:
            counter.segment("marker segments", payload)
        else:
            counter.segment("marker segments")
        position += 2 + length


# --- PNG ----------------------------------------------------------------------------------------------------

_PNG_DATA = frozenset({b"IDAT", b"fdAT", b"fcTL"})  # image data and frame control: as many as the pixels need
_PNG_COMPRESSED = frozenset({b"zTXt", b"iTXt", b"iCCP"})


def _walk_png(data: bytes, counter: _Counter) -> None:
    """Every chunk up to IEND: Pillow parses those before the image data at open, and those after it at load."""
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind in _PNG_DATA:
            counter.data_block("image-data chunks (IDAT, fdAT, fcTL)")
        elif kind == b"IEND":
            return
        else:
            counter.segment("chunks besides image data", _present(length, data, position + 8))
            if kind in _PNG_COMPRESSED:
                counter.compressed_text()
        position += 12 + length


# --- GIF ----------------------------------------------------------------------------------------------------


def _walk_gif(data: bytes, counter: _Counter) -> None:
    """Extension blocks and stray bytes up to the first frame: what Pillow's ``_seek(0)`` reads in Python."""
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    while position < len(data):
        introducer = data[position]
        if introducer in (0x2C, 0x3B):  # an image descriptor (the frame's pixels: read in C) or the trailer
            return
        if introducer != 0x21:
            counter.stray_bytes(1)
            position += 1
            continue
        counter.segment("extension blocks")
        position += 2  # the introducer and the label
        while (size := data[position]) != 0:
            counter.data_block("extension sub-blocks")
            counter.add_metadata(size)
            position += 1 + size
        position += 1


# --- TIFF ---------------------------------------------------------------------------------------------------

_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8,
                    18: 8}
_SUB_DIRECTORIES = frozenset({34665, 34853, 40965})  # EXIF, GPS and interoperability directories: Pillow reads them


def _walk_tiff(data: bytes, counter: _Counter) -> None:
    """The first directory and the EXIF/GPS directories it points to: the entries Pillow parses in Python, and the
    out-of-line values it copies (each entry may point anywhere in the file; Pillow 13 copies at most the file's
    size per directory)."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        return
    (version,) = struct.unpack_from(order + "H", data, 2)
    if version == 42:
        count_format, entry_format, pointer_format = order + "H", order + "HHI4s", order + "I"
    elif version == 43:  # BigTIFF
        count_format, entry_format, pointer_format = order + "Q", order + "HHQ8s", order + "Q"
    else:
        return
    inline = struct.calcsize(pointer_format)  # values up to this size sit in the entry itself
    pending, seen = [struct.unpack_from(pointer_format, data, 4 if inline == 4 else 8)[0]], set()
    while pending:
        offset = pending.pop()
        if offset in seen or not 0 < offset < len(data):
            continue
        seen.add(offset)
        (entries,) = struct.unpack_from(count_format, data, offset)
        position = offset + struct.calcsize(count_format)
        copied = 0
        for _ in range(entries):
            tag, kind, count, value = struct.unpack_from(entry_format, data, position)
            size = _TIFF_TYPE_SIZES.get(kind, 0) * count
            pointer = struct.unpack_from(pointer_format, value)[0]
            counter.segment("directory entries")
            # Pillow copies an out-of-line value only when all of it is there: a corrupt count costs nothing.
            if inline < size <= len(data) - pointer:
                counter.add_metadata(min(size, len(data) - copied))
                copied = min(len(data), copied + size)
            if tag in _SUB_DIRECTORIES:
                pending.append(pointer)
            position += struct.calcsize(entry_format)


# --- WebP ---------------------------------------------------------------------------------------------------


def _walk_webp(data: bytes, counter: _Counter) -> None:
    """RIFF chunks: libwebp's demuxer lists every one before the first frame decodes."""
    end = min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])
    position = 12
    while position + 8 <= end:
        kind, size = struct.unpack_from("<4sI", data, position)
        if kind in (b"VP8 ", b"VP8L", b"ANMF", b"ALPH"):
            counter.data_block("image chunks")
        else:
            counter.segment("RIFF chunks", _present(size, data, position + 8))
        position += 8 + size + (size & 1)

