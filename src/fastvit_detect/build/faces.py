"""The face detector's graphs: MTCNN's P-, R- and O-nets from facenet-pytorch's wheel, exported to ONNX.

The weights come from a registry package at export time, since nothing here reaches a model hub: facenet-pytorch
2.6.0's wheel ships them as ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` (MIT). The wheel is fetched with
``pip download --no-deps`` (its torch pin is never installed) and read as the zip it is; its sha256 is pinned, so a
registry that serves other bytes is refused. The nets are defined here as facenet-pytorch defines them (same
layer names, so its state dicts load unchanged), and the wheel's licence travels beside the converted files.

The runtime side (numpy pre- and post-processing, onnxruntime) is :mod:`fastvit_detect.faces`.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..faces import FACE_FILES, FACE_LICENSE_FILE, FaceDetector
from ..package import file_sha256
from . import ExportError, Log

WHEEL_NAME = "facenet_pytorch-2.6.0-py3-none-any.whl"
WHEEL_REQUIREMENT = "facenet-pytorch==2.6.0"
WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
WEIGHTS = {net: f"facenet_pytorch/data/{net}.pt" for net in FACE_FILES}
LICENSE_MEMBER = "facenet_pytorch-2.6.0.dist-info/LICENSE.md"
FACE_OPSET = 17
MAX_ONNX_ABS_DIFF = 1e-4  # fp32 graphs differ from PyTorch by rounding only


class PNet(nn.Module):
    """MTCNN's proposal net: fully convolutional, so one pass scores every 12x12 window of a pyramid level."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    """MTCNN's refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)  # the Caffe original's (W, H, C) flattening order
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    """MTCNN's output net on 48x48 crops: box regression, five landmarks, face probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


NETS: Mapping[str, type[nn.Module]] = {"pnet": PNet, "rnet": RNet, "onet": ONet}


class MixedPReLU(nn.Module):
    """PReLU written as ``a * x + (1 - a) * relu(x)``: the same function (to a rounding), which onnxruntime runs
    faster than its ``PRelu`` kernel (a broadcast it computes element by element, outside the blocked layout of the
    convolutions around it). Measured on one Zen 4 core, CPU ms per call on a 1 MP photo's first pyramid level and
    its proposals: P-net 46 -> 37, R-net 41 -> 31, O-net 31 -> 16; ``relu(x) + a * min(x, 0)`` and ``where`` were
    slower."""

    slope: torch.Tensor
    rest: torch.Tensor

    def __init__(self, slope: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("slope", slope.detach().clone())
        self.register_buffer("rest", 1 - self.slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *([1] * (x.dim() - 2)))
        return x * self.slope.view(shape) + torch.relu(x) * self.rest.view(shape)


class PooledPReLU(nn.Module):
    """``pool(prelu(conv(x)))`` computed as a PReLU after the pooling, on a quarter of the pixels.

    Max pooling commutes with an increasing function; a PReLU channel with a negative slope decreases below zero,
    so its window's largest PReLU value is that of the window's maximum or of its minimum. The convolution also
    outputs those channels negated (the P-net's 10 channels and 6 negated ones still fit one 16-wide block of
    onnxruntime's blocked layout, so the convolution costs the same), one pooling gives each window's maximum and
    (negated) minimum, and the larger of the two PReLU values is kept. Exact but for rounding: measured on the P-net,
    26 instead of 33 CPU ms on a 1 MP photo's first level; on the R- and O-net, whose wider layers grow by a block,
    slower, so only the P-net uses it.
    """

    slope: torch.Tensor
    negative_slope: torch.Tensor
    restore: torch.Tensor

    def __init__(self, conv: nn.Conv2d, slope: torch.Tensor, pool: nn.MaxPool2d) -> None:
        super().__init__()
        slope = slope.detach()
        negative, rest = torch.nonzero(slope < 0).flatten(), torch.nonzero(slope >= 0).flatten()
        order = torch.cat([negative, rest])  # the negative-slope channels first, then put back by ``restore``
        self.channels, self.negatives = len(slope), len(negative)
        weight, bias = conv.weight.detach(), _bias(conv)
        self.conv = _conv_with(conv, torch.cat([weight[order], -weight[negative]]),
                               torch.cat([bias[order], -bias[negative]]))
        self.pool = copy.deepcopy(pool)
        self.largest, self.smallest = MixedPReLU(slope[order]), MixedPReLU(slope[negative])
        self.register_buffer("restore", torch.argsort(order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.conv(x))
        largest = self.largest(pooled[:, : self.channels])
        smallest = self.smallest(-pooled[:, self.channels :])
        both = torch.cat([torch.maximum(largest[:, : self.negatives], smallest), largest[:, self.negatives :]], 1)
        return both[:, self.restore]


def sigmoid_head(conv: nn.Conv2d) -> nn.Conv2d:
    """A two-class logit convolution whose softmax is replaced by a sigmoid: for logits (z0, z1), softmax is
    (sigmoid(z0 - z1), sigmoid(z1 - z0)), so the convolution outputs the differences and onnxruntime fuses the
    sigmoid into it (its Softmax over two channels took 6 % of the P-net's time)."""
    weight, bias = conv.weight.detach(), _bias(conv)
    return _conv_with(conv, torch.stack([weight[0] - weight[1], weight[1] - weight[0]]),
                      torch.stack([bias[0] - bias[1], bias[1] - bias[0]]))


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    if conv.bias is None:
        raise ExportError(f"--faces: {conv} has no bias, unlike MTCNN's convolutions")
    return conv.bias.detach()


def _conv_with(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """``conv``'s geometry with other weights (and as many outputs as they have)."""
    changed = copy.deepcopy(conv)
    changed.out_channels = len(weight)
    changed.weight = nn.Parameter(weight.clone(), requires_grad=False)
    changed.bias = nn.Parameter(bias.clone(), requires_grad=False)
    return changed


def for_export(name: str, net: nn.Module) -> nn.Module:
    """A copy of ``net`` as it is exported, faster on onnxruntime and the same function: every PReLU a
    :class:`MixedPReLU`; the P-net's first PReLU pooled (:class:`PooledPReLU`) and its softmax a sigmoid
    (:func:`sigmoid_head`). The copy keeps the layer names and ``forward`` (a fused layer's partners become
    identities), and the export is checked against ``net`` itself (:func:`max_onnx_difference`)."""
    exported = copy.deepcopy(net)
    if isinstance(exported, PNet):
        exported.conv1 = PooledPReLU(exported.conv1, exported.prelu1.weight, exported.pool1)  # type: ignore[assignment]
        exported.prelu1 = exported.pool1 = nn.Identity()  # type: ignore[assignment]
        exported.conv4_1 = sigmoid_head(exported.conv4_1)
        exported.softmax4_1 = nn.Sigmoid()  # type: ignore[assignment]
    for child_name, child in list(exported.named_children()):
        if isinstance(child, nn.PReLU):
            setattr(exported, child_name, MixedPReLU(child.weight))
    return exported.eval()


CROP_SIDES = {"rnet": 24, "onet": 48}
OUTPUT_NAMES = {"pnet": ["regression", "probabilities"], "rnet": ["regression", "probabilities"],
                "onet": ["regression", "landmarks", "probabilities"]}


def wheel_cache() -> Path:
    """Where fetched wheels are kept between exports: $XDG_CACHE_HOME/fastvit-detect/wheels."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastvit-detect" / "wheels"


def fetch_wheel(cache_dir: Path, log: Log = print) -> Path:
    """facenet-pytorch's wheel in ``cache_dir``, downloaded with ``pip download --no-deps`` if absent; its sha256
    checked against the pinned one either way."""
    wheel = cache_dir / WHEEL_NAME
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        log(f"           downloading {WHEEL_REQUIREMENT} (weights only; --no-deps) into {cache_dir}")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                   WHEEL_REQUIREMENT, "-d", str(cache_dir)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0 or not wheel.is_file():
            raise ExportError(f"--faces: couldn't download {WHEEL_REQUIREMENT}: {done.stderr.strip()[-500:]} "
                              f"(or pass --faces-wheel PATH to a copy of {WHEEL_NAME})")
    return check_wheel(wheel)


def check_wheel(wheel: Path) -> Path:
    """``wheel``, once its sha256 is the pinned one."""
    if not wheel.is_file():
        raise ExportError(f"--faces-wheel {wheel}: no such file")
    digest = file_sha256(wheel)
    if digest != WHEEL_SHA256:
        raise ExportError(f"--faces: {wheel} has sha256 {digest}, not {WHEEL_NAME}'s {WHEEL_SHA256}; refusing its "
                          "weights")
    return wheel


def load_nets(wheel: Path) -> dict[str, nn.Module]:
    """The three nets with the wheel's weights, in eval mode; read straight from the zip (no install)."""
    nets: dict[str, nn.Module] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name, member in WEIGHTS.items():
            state = torch.load(io.BytesIO(archive.read(member)), map_location="cpu", weights_only=True)
            net = NETS[name]()
            net.load_state_dict(state)
            nets[name] = net.eval()
    return nets


def _example(name: str, batch: int = 2) -> torch.Tensor:
    side = CROP_SIDES.get(name, 37)  # P-net: any size >= 12; odd on purpose, so ceil-mode pooling is exercised
    return torch.randn(batch, 3, side, side + 5 if name == "pnet" else side, generator=torch.Generator().manual_seed(0))


def export_net(name: str, net: nn.Module, destination: Path) -> None:
    axes: dict[str, Any] = {"input": {0: "batch_size", 2: "height", 3: "width"} if name == "pnet"
                            else {0: "batch_size"}}
    for output in OUTPUT_NAMES[name]:
        axes[output] = {0: "batch_size", 2: "rows", 3: "columns"} if name == "pnet" else {0: "batch_size"}
    with torch.no_grad():
        torch.onnx.export(net, (_example(name),), str(destination), input_names=["input"],
                          output_names=OUTPUT_NAMES[name], dynamic_axes=axes, opset_version=FACE_OPSET, dynamo=False)


def max_onnx_difference(name: str, net: nn.Module, path: Path) -> float:
    """Largest |ONNX - PyTorch| over every output, on batches and (P-net) sizes other than the export example's."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    side = CROP_SIDES.get(name)
    sizes = ([(3, 3, 12, 12), (1, 3, 60, 41), (2, 3, 128, 97)] if side is None
             else [(1, 3, side, side), (5, 3, side, side)])
    for size in sizes:
        x = torch.rand(size, generator=torch.Generator().manual_seed(sum(size))) * 2 - 1
        with torch.no_grad():
            expected = [t.numpy() for t in net(x)]
        actual = session.run(None, {"input": x.numpy()})
        worst = max([worst, *(float(np.abs(a - e).max()) for a, e in zip(actual, expected))])
    return worst


def add_face_detector(staging: Path, wheel: Path, log: Log = print) -> dict[str, Any]:
    """Write the three face graphs and the licence into ``staging``; returns their figures for the manifest."""
    check_wheel(wheel)
    nets = load_nets(wheel)
    differences = {}
    for name, net in nets.items():
        path = staging / FACE_FILES[name]
        export_net(name, for_export(name, net), path)
        differences[name] = max_onnx_difference(name, net, path)
        if differences[name] > MAX_ONNX_ABS_DIFF:
            raise ExportError(f"--faces: {path.name} differs from PyTorch by {differences[name]:.3g} (bound "
                              f"{MAX_ONNX_ABS_DIFF:g}); the face graph is not usable")
    with zipfile.ZipFile(wheel) as archive:
        license_text = archive.read(LICENSE_MEMBER).decode("utf-8")
    (staging / FACE_LICENSE_FILE).write_text(
        f"MTCNN P-, R- and O-net weights converted to ONNX from {WHEEL_NAME} (sha256 {WHEEL_SHA256}),\n"
        f"facenet_pytorch/data/*.pt. Their licence, as the wheel ships it ({LICENSE_MEMBER}):\n\n{license_text}")
    FaceDetector.open({name: staging / file for name, file in FACE_FILES.items()})  # the runtime opens what we wrote
    log(f"           face detector: MTCNN from {WHEEL_NAME}, max |ONNX - PyTorch| "
        + ", ".join(f"{name} {value:.2g}" for name, value in differences.items()))
    return {"source": WHEEL_NAME, "source_sha256": WHEEL_SHA256,
            "validation": {"max_abs_output_diff": differences, "bound": MAX_ONNX_ABS_DIFF}}
