"""What decoding bombs cost the library: CPU time and peak RSS of ``load_image`` on each, in a fresh process.

    python tests/bomb_cost.py                       # this checkout's fastvit_detect
    python tests/bomb_cost.py --src OTHER/src       # another tree's (e.g. before a change), same bombs

The bombs are those of the tests (``hostile.py``) at an attacker's size, under the server's 20 MiB upload limit:
cost that grows with something other than pixels (scans, segments, chunks, extensions). CPU time (user + system)
is the robust figure on a shared machine; wall time follows the load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

from hostile import gif_extension_bomb, jpeg_scan_bomb, jpeg_segment_bomb, png_chunk_bomb

BOMBS = {
    "scan bomb: 1000x1000 grey JPEG, 20,000 scans": lambda: jpeg_scan_bomb(20_000),
    "APP1 bomb: 32x32 JPEG, 5.2 M empty APP1 segments": lambda: jpeg_segment_bomb(5_200_000, 0xE1),
    "COM bomb: 32x32 JPEG, 5.2 M empty COM segments": lambda: jpeg_segment_bomb(5_200_000, 0xFE),
    "PNG chunk bomb: 32x32 PNG, 1.7 M private chunks": lambda: png_chunk_bomb(1_700_000),
    "GIF bomb: 32x32 GIF, 5 M empty comment extensions": lambda: gif_extension_bomb(5_000_000),
}

CHILD = r"""
import resource, sys, time
from fastvit_detect.preprocess import load_image

def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field))

data = open(sys.argv[1], "rb").read()
before = status("VmRSS")
started, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
try:
    image = load_image(data)
    outcome = f"decoded {image.width}x{image.height}"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {str(exc).split(': ', 1)[-1][:70]}"
ended = resource.getrusage(resource.RUSAGE_SELF)
cpu = ended.ru_utime - started.ru_utime + ended.ru_stime - started.ru_stime
print(f"{cpu:.2f}\t{time.perf_counter() - wall:.2f}\t{(status('VmHWM') - before) / 2**20:.0f}\t{outcome}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, help="the src/ folder whose fastvit_detect to measure (default: this one)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per bomb (default 300)")
    args = parser.parse_args()
    src = (args.src or Path(__file__).resolve().parent.parent / "src").resolve()
    environment = {**os.environ, "PYTHONPATH": str(src)}
    print(f"fastvit_detect from {src}\n{'bomb':<52}{'bytes':>12}{'CPU s':>8}{'wall s':>8}{'+RSS MB':>9}  outcome")
    with TemporaryDirectory() as folder:
        for name, build in BOMBS.items():
            path = Path(folder) / "bomb"
            path.write_bytes(build())
            try:
                done = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=environment, capture_output=True,
                                      text=True, timeout=args.timeout, check=True)
                cpu, wall, rss, outcome = done.stdout.strip().split("\t")
            except subprocess.TimeoutExpired:
                cpu, wall, rss, outcome = "-", f">{args.timeout:g}", "-", "timed out"
            print(f"{name:<52}{path.stat().st_size:>12,}{cpu:>8}{wall:>8}{rss:>9}  {outcome}", flush=True)


if __name__ == "__main__":
    main()
