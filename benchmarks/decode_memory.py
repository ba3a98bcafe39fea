"""Memory per pixel of decoding each image format the server opens: the measurement behind ``DECODE_COST``.

    python benchmarks/decode_memory.py                      # 1500x1000, 4000x4000 and 6000x6000
    python benchmarks/decode_memory.py --sizes 4000x4000 --cases png_rgba webp_lossy

Each case decodes one image in a fresh Python process, the way the server's decode stage does (``open_image``,
``decode_opened``, then the resize), and reports the rise of that process's peak RSS (``VmHWM``: libwebp's and
Pillow's own allocations included, which ``tracemalloc`` can't see) per pixel. The images are flat 100x100 blocks
of random colours, so every encoder compresses them well, as it would a bomb. Results on 2026-11-27 (Pillow 13,
AMD EPYC, 2 cores): RGBA PNG 8.2-8.8 bytes/pixel, RGB PNG/JPEG/BMP/TIFF 4.2-5.2, GIF 5.3, WebP 16.1-18.7 (lossy or
lossless, RGB or RGBA), AVIF 9.3-15.8.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from PIL import Image

CASES: dict[str, tuple[str, str, dict]] = {
    "png_rgb": ("PNG", "RGB", {}), "png_rgba": ("PNG", "RGBA", {}), "jpeg": ("JPEG", "RGB", {"quality": 90}),
    "gif": ("GIF", "P", {}), "bmp": ("BMP", "RGB", {}), "tiff": ("TIFF", "RGB", {}),
    "webp_lossless": ("WEBP", "RGB", {"lossless": True}), "webp_lossless_rgba": ("WEBP", "RGBA", {"lossless": True}),
    "webp_lossy": ("WEBP", "RGB", {"quality": 80}), "webp_lossy_rgba": ("WEBP", "RGBA", {"quality": 80}),
    "avif": ("AVIF", "RGB", {"quality": 60, "speed": 10}), "avif_rgba": ("AVIF", "RGBA", {"quality": 60, "speed": 10}),
}

CHILD = r"""
import sys
from fastvit_detect.preprocess import Resize, decode_opened, open_image

def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))

data = open(sys.argv[1], "rb").read()
before = peak()
opened = open_image(data, max_pixels=None, max_bytes=None)
pixels = opened.pixels
Resize(224, 224, resample=2)(decode_opened(opened))
print(opened.image.format, pixels, peak() - before)
"""


def encode(format: str, mode: str, width: int, height: int, options: dict) -> bytes:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 255, (height // 100 + 1, width // 100 + 1, 4), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((100, 100, 1), np.uint8))[:height, :width]
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").convert(mode).save(buffer, format, **options)
    return buffer.getvalue()


def measure(name: str, width: int, height: int, folder: Path) -> tuple[str, int, int]:
    """(format, pixels, bytes of peak RSS the decode added) for one case, in a fresh process."""
    format, mode, options = CASES[name]
    path = folder / f"{name}-{width}x{height}"
    path.write_bytes(encode(format, mode, width, height, options))
    done = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
    decoded, pixels, added = done.stdout.split()
    return decoded, int(pixels), int(added)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1500x1000", "4000x4000", "6000x6000"])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    args = parser.parse_args()
    if not Path("/proc/self/status").exists():
        sys.exit("needs Linux: peak RSS is read from /proc/self/status")
    with TemporaryDirectory() as folder:
        for size in args.sizes:
            width, height = (int(side) for side in size.split("x"))
            for name in args.cases:
                decoded, pixels, added = measure(name, width, height, Path(folder))
                print(f"{size:>10} {name:20} {decoded:5} +{added / 2**20:7.1f} MiB {added / pixels:6.2f} bytes/pixel",
                      flush=True)


if __name__ == "__main__":
    main()
