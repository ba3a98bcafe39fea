"""What the numbers were measured on: CPU, instruction set, cores, clock, memory and library versions."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastvit_detect.session import cpu_flags, cpuinfo, physical_core_count

# The flags that decide which kernels the libraries run; the rest of /proc/cpuinfo's list is noise here.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
                  "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
LIBRARIES = ("numpy", "pillow", "onnxruntime", "torch", "transformers", "optimum", "optimum-onnx", "onnx",
             "fastvit-detect", "openvino", "nncf", "matplotlib")


def physical_cores() -> int:
    return physical_core_count()


def _lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


# A chain of dependent 64-bit multiplies: 3 cycles each on every x86 core since Sandy Bridge and Zen, so
# multiplies per second / 3 is the clock the core actually runs at, turbo included.
_CLOCK_PROBE_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec a, b; unsigned long x = 3; const long n = 100000000L;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        __asm__ volatile("imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0" : "+r"(x));
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", 4.0 * 3.0 * n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9) / 1e6);
    return (int)(x & 0);
}
"""


@lru_cache(maxsize=1)
def measured_clock_mhz() -> float | None:
    """The sustained clock with every core busy, from a compiled probe; None without a C compiler or on non-x86."""
    import shutil
    import tempfile

    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or platform.machine() not in ("x86_64", "AMD64"):
        return None
    with tempfile.TemporaryDirectory() as scratch:
        source, binary = os.path.join(scratch, "probe.c"), os.path.join(scratch, "probe")
        with open(source, "w", encoding="ascii") as handle:
            handle.write(_CLOCK_PROBE_C)
        try:
            subprocess.run([compiler, "-O2", "-o", binary, source], check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
        # One probe per core at once: the all-core clock is the one a 2-thread GEMM gets.
        probes: list[subprocess.Popen[str]] = []
        try:
            probes = [subprocess.Popen([binary], stdout=subprocess.PIPE, text=True) for _ in range(physical_cores())]
            readings = [float(probe.communicate(timeout=60)[0]) for probe in probes]
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
        finally:
            for probe in probes:  # none may outlive a failure and skew what is measured next
                if probe.poll() is None:
                    probe.kill()
                    probe.wait()
    return min(readings) if readings else None


def clock_mhz() -> tuple[float | None, str]:
    """The clock used for the peak: measured when a C compiler is at hand, else lscpu's max MHz when the
    hypervisor exposes it, else /proc/cpuinfo's (often the nominal, turbo-less) MHz."""
    measured = measured_clock_mhz()
    if measured is not None:
        return round(measured), "measured: dependent-imul probe on every core at once"
    lscpu = _lscpu()
    for key in ("CPU max MHz", "CPU MHz"):
        try:
            return float(lscpu[key]), f"lscpu '{key}'"
        except (KeyError, ValueError):
            pass
    info = cpuinfo()
    try:
        return float(info[0]["cpu MHz"]), "/proc/cpuinfo 'cpu MHz' (nominal; turbo unknown)"
    except (IndexError, KeyError, ValueError):
        pass
    match = re.search(r"@\s*([\d.]+)GHz", info[0].get("model name", "") if info else "")
    return (float(match.group(1)) * 1000, "model name") if match else (None, "unknown")


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def scheduling() -> str:
    """This process's priority as the scheduler sees it. With autogroup scheduling (Linux's default for desktop and
    many VM kernels) ``nice`` only ranks processes within one session; between sessions the autogroup's nice
    counts, so a timed run on a shared machine raises its own (setsid, then ``echo -20 > /proc/self/autogroup``)."""
    try:
        autogroup = Path("/proc/self/autogroup").read_text().strip()
    except OSError:
        autogroup = "no autogroup"
    return f"nice {os.nice(0)}, {autogroup}"


def describe() -> dict[str, Any]:
    info = cpuinfo()
    first = info[0] if info else {}
    lscpu = _lscpu()
    mhz, mhz_source = clock_mhz()
    flags = cpu_flags()
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        memory_kb = int(next(line.split()[1] for line in meminfo if line.startswith("MemTotal")))
    except (OSError, StopIteration, ValueError):
        memory_kb = 0
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "cpu_model": first.get("model name") or platform.processor(),
        "vendor": first.get("vendor_id"),
        "family_model_stepping": f"{first.get('cpu family')}/{first.get('model')}/{first.get('stepping')}",
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "clock_mhz": mhz,
        "clock_source": mhz_source,
        "flags": [flag for flag in RELEVANT_FLAGS if flag in flags],
        "caches": {key: lscpu[key] for key in ("L1d cache", "L2 cache", "L3 cache") if key in lscpu},
        "memory_gib": round(memory_kb / 2**20, 1),
        "load_average_at_start": [round(value, 2) for value in load],
        "scheduling": scheduling(),
        "os": platform.platform(),
        "libraries": library_versions(),
    }


class ForeignLoad:
    """CPU time other processes took while a phase ran, in cores (0 = we had the machine to ourselves).

    A shared machine's drift cancels in interleaved ratios, but contention doesn't only add noise: an OpenMP
    runtime (PyTorch) whose threads outnumber the free cores can slow down several-fold at barriers, while
    another runtime barely notices. So the report flags phases measured under foreign load.
    """

    def __init__(self) -> None:
        self.started = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
            busy = (user + nice + system + irq + softirq + steal) / ticks
        except (OSError, ValueError):
            busy = float("nan")
        own = os.times()
        return time.monotonic(), busy, own.user + own.system + own.children_user + own.children_system

    def cores(self) -> float | None:
        """Average cores busy with other processes since this monitor started."""
        wall0, busy0, own0 = self.started
        wall1, busy1, own1 = self._sample()
        if wall1 - wall0 <= 0 or busy1 != busy1:
            return None
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0))
