"""What an ONNX graph file makes onnxruntime read besides itself: the external-data files its tensors name.

A graph can name any number of external-data files, in any initializer, in sparse initializers, in constant
tensors inside node attributes and subgraphs, in functions. Verifying only the file a manifest lists would let a
graph load weights nobody vouched for, so the package check reads every ``location`` the graph names. The runtime
has no ``onnx`` package (it is a build-time dependency), so this walks the protobuf wire format directly; it reads
only the message structure and skips tensor payloads by their length, so it costs little even for a graph that
holds its weights inline.
"""

from __future__ import annotations

import mmap
import os

# Which length-delimited fields of which ONNX message hold which message (onnx/onnx.proto, IR version 10).
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},  # ModelProto.graph, .training_info, .functions
    "training": {1: "graph", 2: "graph"},  # TrainingInfoProto.initialization, .algorithm
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # GraphProto.node, .initializer, .sparse_initializer
    "function": {7: "node"},  # FunctionProto.node
    "node": {5: "attribute"},  # NodeProto.attribute
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto.values, .indices
    "tensor": {13: "entry"},  # TensorProto.external_data
}
_ENTRY_KEY, _ENTRY_VALUE = 1, 2  # StringStringEntryProto
_MAX_DEPTH = 64  # subgraphs nest (If/Loop bodies); a file nesting deeper than any real model is refused


class GraphFormatError(ValueError):
    """The file isn't a well-formed ONNX protobuf."""


def external_data_locations(path: str | os.PathLike[str]) -> set[str]:
    """Every external-data ``location`` that tensors of the graph at ``path`` name (empty: weights inline)."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise GraphFormatError("empty file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            found: set[str] = set()
            _walk(buffer, 0, len(buffer), "model", found, 0)
            return found


def _varint(buffer: mmap.mmap, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise GraphFormatError("truncated or overlong varint")
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _walk(buffer: mmap.mmap, position: int, end: int, kind: str, found: set[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise GraphFormatError(f"messages nested deeper than {_MAX_DEPTH} levels")
    children = _CHILDREN.get(kind, {})
    entry: dict[int, bytes] = {}
    while position < end:
        key, position = _varint(buffer, position, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = _varint(buffer, position, end)
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        elif wire_type == 2:
            length, position = _varint(buffer, position, end)
            if position + length > end:
                raise GraphFormatError("a field runs past the end of its message")
            if kind == "entry" and number in (_ENTRY_KEY, _ENTRY_VALUE):
                entry[number] = buffer[position:position + length]
            elif number in children:
                _walk(buffer, position, position + length, children[number], found, depth + 1)
            position += length
        else:  # groups (3, 4) are not used by ONNX; anything else is not protobuf
            raise GraphFormatError(f"unexpected wire type {wire_type}")
        if position > end:
            raise GraphFormatError("a field runs past the end of its message")
    if kind == "entry" and entry.get(_ENTRY_KEY) == b"location":
        found.add(entry.get(_ENTRY_VALUE, b"").decode("utf-8", errors="replace"))
