"""Cold start: a fresh interpreter from exec to its first printed label, and that process's peak memory.

This is what a serverless function, a CLI invocation or an autoscaled replica pays before its first answer:
imports, model load (and for some systems quantization or compilation), one image.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ColdStart:
    first_label_s: float  # exec -> first line on stdout
    total_s: float  # exec -> exit
    peak_rss_mib: float  # the child's VmHWM: its resident-set high-water mark
    label: str


class ColdStartError(RuntimeError):
    pass


# Runs the system's script as __main__, then writes the process's VmHWM to the file named in the environment.
# Why not wait4's ru_maxrss: Linux carries the high-water mark across fork+exec, so every child would report at
# least the benchmark process's own RSS at the moment it forked (hundreds of MiB with models loaded). VmHWM
# belongs to the address space that exec created, so it is the script's alone.
WRAPPER = """
import atexit, os, sys
def _report_peak():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    with open(os.environ["BENCHMARK_PEAK_FILE"], "w") as out:
        out.write(peak)
atexit.register(_report_peak)
code = sys.argv.pop(1)
exec(compile(code, "<coldstart>", "exec"), {"__name__": "__main__"})
"""


def run_cold(code: str, args: Sequence[str], timeout_s: float = 300) -> ColdStart:
    """Run ``code`` with ``args`` in a fresh interpreter; time its first stdout line; read its peak RSS."""
    # stderr goes to a file: a chatty library filling a stderr pipe would block the child before it prints.
    with tempfile.TemporaryFile(mode="w+") as errors, tempfile.NamedTemporaryFile(mode="r") as peak_file:
        environment = {**os.environ, "PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error",
                       "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "BENCHMARK_PEAK_FILE": peak_file.name}
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", WRAPPER, code, *args], stdout=subprocess.PIPE,
                                   stderr=errors, text=True, env=environment)
        watchdog = threading.Timer(timeout_s, process.kill)
        watchdog.start()
        try:
            assert process.stdout is not None
            first_line = process.stdout.readline()  # blocks until the script prints its label (or exits)
            first_label_s = time.perf_counter() - started
            process.stdout.read()
            process.wait()
            total_s = time.perf_counter() - started
        finally:
            watchdog.cancel()
            if process.stdout is not None:
                process.stdout.close()
        errors.seek(0)
        error_text = errors.read()
        peak_kib = peak_file.read().strip()
    if process.returncode != 0 or not first_line.strip():
        tail = error_text.strip().splitlines()[-3:]
        cause = "killed after the time limit" if process.returncode == -9 else f"exit code {process.returncode}"
        raise ColdStartError(f"{cause}: {' | '.join(tail) or 'no output'}")
    if not peak_kib:
        raise ColdStartError("the script exited without reporting its peak memory")
    return ColdStart(first_label_s, total_s, int(peak_kib) / 1024, first_line.strip())


def image_for_coldstart(photos: Sequence[Path]) -> Path:
    """A typical upload: the first sample photo (grace_hopper.jpg, 512x600 JPEG)."""
    return photos[0]
