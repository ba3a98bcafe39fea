"""The face detector's reference: facenet-pytorch 2.6.0's own ``MTCNN``, run in torch at test time.

Its wheel is fetched with ``pip download --no-deps`` (the registry is reachable where the tests run; the old torch pin
is never installed) into the test cache, unpacked beside it and imported from there. facenet-pytorch imports
torchvision for two things only: ``batched_nms`` (which ``MTCNN.detect`` uses) and ``to_tensor`` (which it doesn't).
Where torchvision isn't installed (this project's environment), those two come from a stand-in written here on
torch, with torchvision's documented semantics (greedy NMS, highest score first, boxes with IoU > threshold dropped,
per image); the stand-in is only visible while facenet-pytorch is imported.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

WHEEL = "facenet_pytorch-2.6.0-py3-none-any.whl"


def cache_folder() -> Path:
    cache = os.environ.get("FASTVIT_TEST_CACHE")
    return Path(cache) / "wheels" if cache else Path(tempfile.gettempdir()) / "fastvit-test-wheels"


def facenet_wheel() -> Path | None:
    """The wheel, downloaded on first use; None when the registry can't be reached."""
    folder = cache_folder()
    wheel = folder / WHEEL
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            "--disable-pip-version-check", "facenet-pytorch==2.6.0", "-d", str(folder)],
                           capture_output=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
    return wheel if wheel.is_file() else None


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    import torch

    def batched_nms(boxes, scores, idxs, iou_threshold):
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64)
        offsets = idxs.to(boxes) * (boxes.max() + 1)  # torchvision's trick: images never overlap
        shifted = boxes + offsets[:, None]
        x0, y0, x1, y1 = shifted.unbind(1)
        area = (x1 - x0) * (y1 - y0)
        order = torch.argsort(scores, descending=True, stable=True)
        keep = []
        while order.numel():
            best, rest = order[0], order[1:]
            keep.append(int(best))
            w = (torch.minimum(x1[best], x1[rest]) - torch.maximum(x0[best], x0[rest])).clamp(min=0)
            h = (torch.minimum(y1[best], y1[rest]) - torch.maximum(y0[best], y0[rest])).clamp(min=0)
            inter = w * h
            iou = inter / (area[best] + area[rest] - inter)
            order = rest[~(iou > iou_threshold)]
        return torch.as_tensor(keep, dtype=torch.int64)

    def to_tensor(picture):
        import numpy as np

        return torch.as_tensor(np.asarray(picture)).permute(2, 0, 1).float() / 255

    modules = {name: types.ModuleType(name) for name in (
        "torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms",
        "torchvision.transforms.functional")}
    modules["torchvision.ops.boxes"].batched_nms = batched_nms  # type: ignore[attr-defined]
    modules["torchvision.transforms.functional"].to_tensor = to_tensor  # type: ignore[attr-defined]
    modules["torchvision"].ops = modules["torchvision.ops"]  # type: ignore[attr-defined]
    modules["torchvision"].transforms = modules["torchvision.transforms"]  # type: ignore[attr-defined]
    modules["torchvision.ops"].boxes = modules["torchvision.ops.boxes"]  # type: ignore[attr-defined]
    modules["torchvision.transforms"].functional = modules[  # type: ignore[attr-defined]
        "torchvision.transforms.functional"]
    return modules


def reference_mtcnn(wheel: Path):
    """facenet-pytorch's ``MTCNN`` (its defaults: min face 20, thresholds 0.6/0.7/0.7, factor 0.709) on CPU."""
    unpacked = wheel.with_suffix(".unpacked")
    if not (unpacked / "facenet_pytorch").is_dir():
        staging = Path(tempfile.mkdtemp(dir=wheel.parent))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(staging)
        with contextlib.suppress(OSError):  # another session unpacked it first
            staging.rename(unpacked)
    stand_in = {}
    try:
        importlib.import_module("torchvision.ops.boxes")
    except ImportError:
        stand_in = _torchvision_stand_in()
    saved = {name: sys.modules.get(name) for name in stand_in}
    sys.modules.update(stand_in)
    sys.path.insert(0, str(unpacked))
    try:
        facenet = importlib.import_module("facenet_pytorch")
    finally:
        sys.path.remove(str(unpacked))
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return facenet.MTCNN(keep_all=True, device="cpu")


def reference_faces(mtcnn, picture) -> tuple:
    """``MTCNN.detect(picture, landmarks=True)`` as arrays (boxes N x 4, scores N, landmarks N x 5 x 2), cached in the
    test cache by the picture's pixels: the reference takes seconds per photo."""
    import hashlib

    import numpy as np

    pixels = np.asarray(picture.convert("RGB"))
    key = hashlib.sha256(f"{WHEEL} {pixels.shape}".encode() + pixels.tobytes()).hexdigest()[:24]
    cached = cache_folder() / "mtcnn-reference" / f"{key}.npz"
    if cached.is_file():
        with np.load(cached) as stored:
            return stored["boxes"], stored["scores"], stored["points"]
    boxes, scores, points = mtcnn.detect(picture.convert("RGB"), landmarks=True)
    if boxes is None:
        result = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
    else:
        result = (np.asarray(boxes, dtype=np.float64), np.asarray(scores, dtype=np.float64),
                  np.asarray(points, dtype=np.float64))
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = cached.with_suffix(f".{os.getpid()}.npz")
    np.savez(staging, boxes=result[0], scores=result[1], points=result[2])
    staging.replace(cached)
    return result
