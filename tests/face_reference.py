"""The face detector's reference: facenet-pytorch 2.6.0's own ``MTCNN``, run in torch at test time.

Its wheel is fetched with ``pip download --no-deps`` (the registry is reachable where the tests run; the old torch pin
is never installed) into the test cache, unpacked beside it and imported from there. facenet-pytorch imports
torchvision for two things only: ``batched_nms`` (which ``MTCNN.detect`` uses) and ``to_tensor`` (which it doesn't).
Where torchvision isn't installed (this project's environment), those two come from a stand-in written here on
torch, with torchvision's documented semantics (greedy NMS, highest score first, boxes with IoU > threshold dropped,
per image). The reference runs in a child process whose PYTHONPATH holds the unpacked wheel and the stand-in, so
neither is ever importable by the tests themselves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

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


STAND_IN = {
    "torchvision/__init__.py": "from . import ops, transforms\n",
    "torchvision/ops/__init__.py": "from . import boxes\n",
    "torchvision/transforms/__init__.py": "from . import functional\n",
    "torchvision/transforms/functional.py": (
        "import numpy as np\nimport torch\n\n\n"
        "def to_tensor(picture):\n"
        "    return torch.as_tensor(np.asarray(picture)).permute(2, 0, 1).float() / 255\n"),
    "torchvision/ops/boxes.py": '''import torch


def batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision's semantics: per image (idxs), greedy, highest score first, IoU > threshold suppressed."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    shifted = boxes + (idxs.to(boxes) * (boxes.max() + 1))[:, None]
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
        order = rest[~(inter / (area[best] + area[rest] - inter) > iou_threshold)]
    return torch.as_tensor(keep, dtype=torch.int64)
''',
}

# Runs in a child process whose PYTHONPATH holds the unpacked wheel (and the stand-in): argv = image, output.
DETECT = """
import sys
import numpy as np
from PIL import Image
from facenet_pytorch import MTCNN
boxes, scores, points = MTCNN(keep_all=True, device="cpu").detect(Image.open(sys.argv[1]).convert("RGB"),
                                                                  landmarks=True)
if boxes is None:
    boxes, scores, points = np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
np.savez(sys.argv[2], boxes=np.asarray(boxes, dtype=np.float64), scores=np.asarray(scores, dtype=np.float64),
         points=np.asarray(points, dtype=np.float64))
"""


class ReferenceMTCNN:
    """facenet-pytorch's ``MTCNN`` (its defaults: min face 20, thresholds 0.6/0.7/0.7, factor 0.709), run on CPU
    in a child process that imports it from the unpacked wheel."""

    def __init__(self, wheel: Path) -> None:
        self.unpacked = wheel.with_suffix(".unpacked")
        if not (self.unpacked / "facenet_pytorch").is_dir():
            staging = Path(tempfile.mkdtemp(dir=wheel.parent))
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(staging)
            with contextlib.suppress(OSError):  # another session unpacked it first
                staging.rename(self.unpacked)
        self.path = [str(self.unpacked)]
        if importlib.util.find_spec("torchvision") is None:
            stand_in = wheel.parent / "torchvision-stand-in"
            for name, text in STAND_IN.items():
                (stand_in / name).parent.mkdir(parents=True, exist_ok=True)
                (stand_in / name).write_text(text)
            self.path.append(str(stand_in))

    def detect(self, picture) -> tuple:
        with tempfile.TemporaryDirectory() as scratch:
            image, output = Path(scratch) / "image.png", Path(scratch) / "faces.npz"
            picture.save(image)
            environment = {**os.environ, "PYTHONPATH": os.pathsep.join(self.path)}
            subprocess.run([sys.executable, "-c", DETECT, str(image), str(output)], env=environment, check=True,
                           capture_output=True, timeout=600)
            with np.load(output) as stored:
                return stored["boxes"], stored["scores"], stored["points"]


def reference_mtcnn(wheel: Path) -> ReferenceMTCNN:
    return ReferenceMTCNN(wheel)


def reference_faces(mtcnn: ReferenceMTCNN, picture) -> tuple:
    """The reference's boxes (N x 4), scores (N) and landmarks (N x 5 x 2), cached in the test cache by the
    picture's pixels: the reference takes seconds per photo."""
    import hashlib

    pixels = np.asarray(picture.convert("RGB"))
    key = hashlib.sha256(f"{WHEEL} {pixels.shape}".encode() + pixels.tobytes()).hexdigest()[:24]
    cached = cache_folder() / "mtcnn-reference" / f"{key}.npz"
    if cached.is_file():
        with np.load(cached) as stored:
            return stored["boxes"], stored["scores"], stored["points"]
    result = mtcnn.detect(picture.convert("RGB"))
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = cached.with_suffix(f".{os.getpid()}.npz")
    np.savez(staging, boxes=result[0], scores=result[1], points=result[2])
    staging.replace(cached)
    return result
