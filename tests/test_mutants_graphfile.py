"""What graphfile's survivors of the automatic mutation run showed untested: that the walk finds an external-data
location wherever ONNX lets a tensor sit. The graphs are serialized by the onnx library itself (its field numbers
are the independent source), each hiding a tensor that names ``hidden-<place>.bin`` in one place."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from fastvit_detect.graphfile import external_data_locations  # noqa: E402


def external(name: str) -> TensorProto:
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", f"hidden-{name}.bin"
    return tensor


def sparse(name: str, where: str):
    values = external(name) if where == "values" else helper.make_tensor(f"{name}-v", TensorProto.FLOAT, [1], [1.0])
    indices = external(name) if where == "indices" else helper.make_tensor(f"{name}-i", TensorProto.INT64, [1], [0])
    if where == "indices":
        indices.data_type = TensorProto.INT64
    return helper.make_sparse_tensor(values, indices, [4])


def graph(name: str, **parts) -> onnx.GraphProto:
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    return helper.make_graph(parts.get("nodes", []), name, [], [output], initializer=parts.get("initializer", []),
                             sparse_initializer=parts.get("sparse", []))





def attribute(name: str, kind: str, value) -> onnx.AttributeProto:
    made = onnx.AttributeProto()
    made.name = name
    if kind == "t":
        made.type = onnx.AttributeProto.TENSOR
        made.t.CopyFrom(value)
    elif kind == "g":
        made.type = onnx.AttributeProto.GRAPH
        made.g.CopyFrom(value)
    elif kind == "tensors":
        made.type = onnx.AttributeProto.TENSORS
        made.tensors.extend([value])
    elif kind == "graphs":
        made.type = onnx.AttributeProto.GRAPHS
        made.graphs.extend([value])
    elif kind == "sparse_tensor":
        made.type = onnx.AttributeProto.SPARSE_TENSOR
        made.sparse_tensor.CopyFrom(value)
    elif kind == "sparse_tensors":
        made.type = onnx.AttributeProto.SPARSE_TENSORS
        made.sparse_tensors.extend([value])
    return made


def node_carrying(name: str, kind: str, value) -> onnx.NodeProto:
    node = helper.make_node("Custom", [], ["y"], domain="test")
    node.attribute.extend([attribute(name, kind, value)])
    return node


def model_with(place: str) -> onnx.ModelProto:
    inner = graph("inner", initializer=[external(place)])
    main = {
        "initializer": lambda: graph("g", initializer=[external(place)]),
        "sparse-values": lambda: graph("g", sparse=[sparse(place, "values")]),
        "sparse-indices": lambda: graph("g", sparse=[sparse(place, "indices")]),
        "attribute-t": lambda: graph("g", nodes=[node_carrying("a", "t", external(place))]),
        "attribute-g": lambda: graph("g", nodes=[node_carrying("a", "g", inner)]),
        "attribute-tensors": lambda: graph("g", nodes=[node_carrying("a", "tensors", external(place))]),
        "attribute-graphs": lambda: graph("g", nodes=[node_carrying("a", "graphs", inner)]),
        "attribute-sparse": lambda: graph("g", nodes=[node_carrying("a", "sparse_tensor", sparse(place, "values"))]),
        "attribute-sparses": lambda: graph("g", nodes=[node_carrying("a", "sparse_tensors",
                                                                    sparse(place, "values"))]),
    }.get(place, lambda: graph("g"))()
    model = helper.make_model(main)
    if place == "function":
        function = onnx.FunctionProto()
        function.name, function.domain = "f", "test"
        function.node.extend([node_carrying("a", "t", external(place))])
        model.functions.extend([function])
    elif place in ("training-initialization", "training-algorithm"):
        training = model.training_info.add()
        training.algorithm.CopyFrom(inner if place == "training-algorithm" else graph("empty"))
        training.initialization.CopyFrom(inner if place == "training-initialization" else graph("empty"))
    return model


PLACES = ["initializer", "sparse-values", "sparse-indices", "attribute-t", "attribute-g", "attribute-tensors",
          "attribute-graphs", "attribute-sparse", "attribute-sparses", "function", "training-initialization",
          "training-algorithm"]


@pytest.mark.parametrize("place", PLACES)
def test_an_external_data_location_is_found_wherever_a_tensor_may_sit(place, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(model_with(place).SerializeToString())
    assert external_data_locations(path) == {f"hidden-{place}.bin"}


def nested_model(ifs: int, innermost) -> onnx.ModelProto:
    """A model whose graph holds ``ifs`` If-like nodes nested one inside the other's graph attribute; the
    innermost graph is ``innermost``. Message levels: model 0, its graph 1, and each nesting adds a node, an
    attribute and a graph (3 levels), so the innermost graph sits at level 1 + 3 * ifs."""
    inner = innermost
    for level in range(ifs):
        inner = graph(f"level-{level}", nodes=[node_carrying("body", "g", inner)])
    return helper.make_model(inner)


@pytest.mark.parametrize(("deepest", "innermost"), [
    # the innermost graph at level 61: a sparse initializer (62), its values tensor (63), the location entry (64)
    (64, lambda: graph("g", sparse=[sparse("deep", "values")])),
    # a node (62) whose tensor attribute (63) holds a tensor (64) naming its location in an entry at level 65
    (65, lambda: graph("g", nodes=[node_carrying("a", "t", external("deep"))])),
])
def test_messages_nested_64_levels_deep_are_read_and_65_are_refused(deepest, innermost, tmp_path):
    """The documented cap (python-api guide: a graph nesting its messages over 64 levels is refused), held at both
    sides of the line: real models nest a handful of If/Loop bodies, so the cap costs them nothing."""
    from fastvit_detect.graphfile import GraphFormatError

    path = tmp_path / "model.onnx"
    path.write_bytes(nested_model(20, innermost()).SerializeToString())
    if deepest == 64:
        assert external_data_locations(path) == {"hidden-deep.bin"}
    else:
        with pytest.raises(GraphFormatError, match="deeper than 64 levels"):
            external_data_locations(path)
