"""Small hand-built packages and inputs for the hostile-input tests: graphs with the wrong input type or a fixed
batch, graphs that return NaN, graphs that load weights from files nobody vouches for.

The graphs are built with ``onnx.helper`` (the export extra) and are tiny: mean colour per channel -> a 3x2
matrix -> two logits, so every package here loads and runs in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SIDE = 32
PROCESSOR = {
    "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": SIDE, "width": SIDE},
    "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
}
CONFIG = {"model_type": "vit", "image_size": SIDE, "id2label": {"0": "Fake", "1": "Real"},
          "label2id": {"Fake": 0, "Real": 1}}
# Red pushes towards Fake, blue towards Real: the tiny graph's verdict follows the image's colour.
WEIGHTS = np.array([[4.0, -4.0], [0.0, 0.0], [-4.0, 4.0]], dtype=np.float32)


def tiny_graph(input_type: str = "float", batch: int | str = "batch_size", nan_output: bool = False,
               external: str | None = None):
    """The graph as an onnx ModelProto. ``input_type``: the input's element type (float, double, float16,
    uint8); ``batch``: the batch axis (a name: dynamic); ``nan_output``: logits multiplied by NaN;
    ``external``: keep the weights in that external-data file."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    element = {"float": TensorProto.FLOAT, "double": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
               "uint8": TensorProto.UINT8}[input_type]
    nodes = []
    source = "pixel_values"
    if input_type != "float":
        nodes.append(helper.make_node("Cast", [source], ["as_float"], to=TensorProto.FLOAT))
        source = "as_float"
    nodes.append(helper.make_node("ReduceMean", [source, "axes"], ["mean4"], keepdims=0))
    nodes.append(helper.make_node("MatMul", ["mean4", "weights"], ["raw"]))
    last = "raw"
    if nan_output:
        nodes.append(helper.make_node("Mul", ["raw", "nan"], ["poisoned"]))
        last = "poisoned"
    nodes.append(helper.make_node("Identity", [last], ["logits"]))
    initializers = [numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
                    numpy_helper.from_array(WEIGHTS, "weights"),
                    numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "nan")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("pixel_values", element, [batch, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if external is not None:
        from onnx.external_data_helper import convert_model_to_external_data

        convert_model_to_external_data(model, all_tensors_to_one_file=True, location=external, size_threshold=0)
    else:
        onnx.checker.check_model(model)
    return model


def write_package(directory: Path, graph=None, config: dict | None = None, processor: dict | None = None,
                  graph_name: str = "model.onnx") -> Path:
    """An Optimum-layout package (no manifest) around ``graph`` (default: the plain tiny graph)."""
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or CONFIG))
    (directory / "preprocessor_config.json").write_text(json.dumps(processor or PROCESSOR))
    onnx.save_model(graph if graph is not None else tiny_graph(), str(directory / graph_name))
    return directory


def colour(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> np.ndarray:
    return np.full((size[1], size[0], 3), rgb, dtype=np.uint8)


# --- decoding bombs: cost that grows with something other than pixels ----------------------------------------
# Each takes a count, so a test can build one just over a cap (cheap) or one as large as an attacker's.


def jpeg_bytes(side: int = 32, flat: bool = False, **options) -> bytes:
    """A greyscale JPEG from Pillow; ``flat``: one grey level, so each progressive AC scan is a few bytes."""
    import io

    from PIL import Image

    pixels = np.full((side, side), 128, np.uint8) if flat else np.random.default_rng(0).integers(
        0, 256, (side, side), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a well-formed JPEG up to EOI; a scan's entropy data is in its SOS."""
    import re
    import struct

    position, segments = 2, []
    while data[position + 1] != 0xD9:
        marker = data[position + 1]
        end = position + 2 + struct.unpack_from(">H", data, position + 2)[0]
        if marker == 0xDA:
            end = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]").search(data, end).start()
        segments.append((marker, position, end))
        position = end
    return segments


def jpeg_scan_bomb(scans: int, side: int = 1000) -> bytes:
    """A progressive JPEG whose last AC scan (12 bytes for a flat image) is repeated until it has ``scans``."""
    data = jpeg_bytes(side, flat=True, progressive=True)
    segments = jpeg_segments(data)
    found = [segment for segment in segments if segment[0] == 0xDA]
    _marker, start, end = found[-1]
    eoi = segments[-1][2]
    return data[:eoi] + data[start:end] * (scans - len(found)) + data[eoi:]


def jpeg_segment_bomb(count: int, marker: int = 0xE1, payload: bytes = b"") -> bytes:
    """A 32x32 JPEG carrying ``count`` extra segments (APP1 by default; 0xFE: COM) of ``payload`` after SOI."""
    import struct

    data = jpeg_bytes()
    segment = bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment * count + data[2:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunk_bomb(count: int, kind: bytes = b"prVt", payload: bytes = b"", after_data: bool = False) -> bytes:
    """A 32x32 PNG carrying ``count`` extra chunks: private ancillary ones by default, before its image data (parsed
    by ``Image.open``) or, ``after_data``, after it (parsed when the pixels load). ``kind=b"IDAT"`` with no payload:
    empty image-data chunks, which are legal."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buffer, "PNG")
    data = buffer.getvalue()
    where = data.index(b"IEND" if after_data or kind == b"IDAT" else b"IDAT") - 4
    return data[:where] + png_chunk(kind, payload) * count + data[where:]


def gif_extension_bomb(count: int) -> bytes:
    """A 32x32 GIF with ``count`` empty comment extensions before its only frame."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("P", (32, 32), 1).save(buffer, "GIF")
    data = buffer.getvalue()
    where = data.index(b",")  # the image descriptor: a fixed 0x2C byte after the header and colour table
    return data[:where] + b"\x21\xfe\x00" * count + data[where:]


def tiff_directory_bomb(entries: int, value_bytes: int = 0) -> bytes:
    """A little-endian 1x1 greyscale TIFF whose first directory has ``entries`` private tags (32768 and up), each
    an UNDEFINED value of ``value_bytes`` bytes, all of them pointing at the same bytes of the file."""
    import struct

    pixel_at = 8
    shared_at = pixel_at + 1
    directory_at = shared_at + value_bytes + (value_bytes & 1)
    tags = [(256, 3, 1, 1), (257, 3, 1, 1), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, pixel_at),
            (277, 3, 1, 1), (278, 3, 1, 1), (279, 4, 1, 1)]
    private = [(32768 + index, 7, value_bytes, shared_at if value_bytes > 4 else 0) for index in range(entries)]
    body = b"".join(struct.pack("<HHII", *entry) for entry in sorted(tags + private))
    header = b"II*\x00" + struct.pack("<I", directory_at)
    return (header + b"\x80" + b"\x00" * (value_bytes + (value_bytes & 1)) + struct.pack("<H", len(tags) + entries)
            + body + b"\x00\x00\x00\x00")


def webp_chunk_bomb(count: int) -> bytes:
    """A 32x32 lossless WebP in the extended format (VP8X), carrying ``count`` empty unknown RIFF chunks, which
    libwebp's demuxer lists one by one (8 MB of them: +44 MB)."""
    import io
    import struct

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, "WEBP", lossless=True)
    extended = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (31).to_bytes(3, "little") * 2
    body = extended + (b"XYZW" + bytes(4)) * count + buffer.getvalue()[12:]
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
