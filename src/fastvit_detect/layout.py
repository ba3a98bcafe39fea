"""How batch work is spread over the cores: ``workers`` session calls at once, ``threads_per_worker`` intra-op
threads each.

One onnxruntime session with every core is the right shape for one image, and for batches on a small machine.
On a larger one a transformer's operators don't keep many threads busy (each GEMM splits into few enough tiles
that threads wait at every operator's end), so several calls with a few threads each get more images per
second. docs/guides/performance-tuning.md has the measurements behind the rule below.

A layout is chosen, in order: from the caller's ``workers`` / ``threads_per_worker``; from a calibration this
machine ran for this model variant (``fastvit-detect info DIR --calibrate``, cached in the user's cache
directory); from the rule. Nothing here imports the detector: it sits beside the session.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import FastVitDetectError
from .options import check_whole
from .session import MAX_THREADS, cpu_flags, cpuinfo, physical_core_count

MAX_WORKERS = 256
# On up to this many cores one session with all of them wins: measured on 2 cores (1 x 2 beats 2 x 1).
SINGLE_SESSION_MAX_CORES = 3
# Above it, 2 threads per session call: the best of 1, 2, 4, 8 and 16 on the 16-core machine measured.
RULE_THREADS_PER_WORKER = 2
# OpenVINO: a stream per core up to this many cores (measured on 2), then streams of 2 threads (not yet measured
# above 2 cores: `info --calibrate` times the candidates on the machine at hand).
OPENVINO_SINGLE_THREAD_STREAMS_MAX_CORES = 4
OPENVINO_RULE_THREADS_PER_STREAM = 2

CACHE_FORMAT = 1
CACHE_MAX_BYTES = 64 * 1024  # a calibration file is a few hundred bytes; anything larger isn't ours
CACHE_MAX_AGE_S = 180 * 24 * 3600  # a new onnxruntime or kernel changes the figures: recalibrate now and then


@dataclass(frozen=True)
class Layout:
    """``workers`` concurrent session calls with ``threads_per_worker`` intra-op threads each, and why."""

    workers: int
    threads_per_worker: int
    source: str  # "caller", "rule" or "calibrated"
    reason: str = ""

    def __post_init__(self) -> None:
        # Plain ints whatever integral type the caller gave (numpy's): the layout is written as JSON.
        object.__setattr__(self, "workers", check_whole("workers", self.workers, 1, MAX_WORKERS))
        object.__setattr__(self, "threads_per_worker",
                           check_whole("threads_per_worker", self.threads_per_worker, 1, MAX_THREADS))
        if self.workers * self.threads_per_worker > MAX_THREADS:
            raise ValueError(f"workers x threads_per_worker must be at most {MAX_THREADS} threads, got "
                             f"{self.workers} x {self.threads_per_worker}")

    @property
    def threads(self) -> int:
        return self.workers * self.threads_per_worker

    def describe(self) -> str:
        plural = ("s" if self.workers > 1 else "", "s" if self.threads_per_worker > 1 else "")
        shape = f"{self.workers} worker{plural[0]} x {self.threads_per_worker} thread{plural[1]}"
        return f"{shape} ({self.source}{': ' + self.reason if self.reason else ''})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_layout_arguments(workers: object, threads_per_worker: object) -> None:
    """Refuse bad ``workers`` / ``threads_per_worker`` (None: not given) before anything is loaded."""
    if workers is not None:
        workers = check_whole("workers", workers, 1, MAX_WORKERS)
    if threads_per_worker is not None:
        threads_per_worker = check_whole("threads_per_worker", threads_per_worker, 1, MAX_THREADS)
    if isinstance(workers, int) and isinstance(threads_per_worker, int) and workers * threads_per_worker > MAX_THREADS:
        raise ValueError(f"workers x threads_per_worker must be at most {MAX_THREADS} threads, got "
                         f"{workers} x {threads_per_worker}")


def _derived_workers(cores: int, threads_per_worker: int) -> int:
    """Workers that fill ``cores`` at ``threads_per_worker`` each, at most MAX_WORKERS: a layout derived from any
    core count the options accept (up to MAX_THREADS) must be one the Layout accepts."""
    return min(MAX_WORKERS, max(1, cores // threads_per_worker))


def rule_layout(cores: int, runtime: str = "onnxruntime") -> Layout:
    """The default for ``cores`` physical cores and ``runtime``, from the measurements in
    docs/guides/performance-tuning.md."""
    check_whole("cores", cores, 1, MAX_THREADS)
    if runtime == "openvino":
        # OpenVINO runs a layout as streams of one compiled model; its own THROUGHPUT machinery (2 streams on 2
        # cores) beat one stream of both cores on the AMX Xeon (68 vs 46 images/s, ViT-B int8, batch 8).
        threads = OPENVINO_RULE_THREADS_PER_STREAM if cores > OPENVINO_SINGLE_THREAD_STREAMS_MAX_CORES else 1
        workers = _derived_workers(cores, threads)
        return Layout(workers, threads, "rule", f"{cores} core{'s' if cores > 1 else ''}: OpenVINO streams of "
                      f"{threads} thread{'s' if threads > 1 else ''}")
    if cores <= SINGLE_SESSION_MAX_CORES:
        return Layout(1, cores, "rule", f"{cores} core{'s' if cores > 1 else ''}: one session with all of them")
    workers = _derived_workers(cores, RULE_THREADS_PER_WORKER)
    return Layout(workers, RULE_THREADS_PER_WORKER, "rule",
                  f"{cores} cores: {RULE_THREADS_PER_WORKER} threads per session call")


def choose_layout(cores: int | None = None, workers: int | None = None, threads_per_worker: int | None = None,
                  calibrated: Layout | None = None, runtime: str = "onnxruntime") -> Layout:
    """The layout for ``cores`` (default: the physical cores this process may use).

    Either of ``workers`` / ``threads_per_worker`` given alone takes the other from ``cores``; both given are
    used as they are (more threads than cores is the caller's choice). A ``calibrated`` layout is used when the
    caller names neither; otherwise the rule.
    """
    check_layout_arguments(workers, threads_per_worker)
    cores = physical_core_count() if cores is None else cores
    check_whole("cores", cores, 1, MAX_THREADS)
    if workers is None and threads_per_worker is None:
        return calibrated if calibrated is not None else rule_layout(cores, runtime)
    if workers is None:
        assert threads_per_worker is not None
        workers = _derived_workers(cores, threads_per_worker)
    elif threads_per_worker is None:
        threads_per_worker = max(1, cores // workers)
    return Layout(workers, threads_per_worker, "caller")


# --- calibration --------------------------------------------------------------------------------------------


def candidate_layouts(cores: int) -> list[Layout]:
    """Layouts worth timing on ``cores`` cores: threads per worker a power of two (1, 2, 4, ... cores)."""
    check_whole("cores", cores, 1, MAX_THREADS)
    threads = sorted({1 << power for power in range(cores.bit_length()) if 1 << power <= cores} | {cores})
    return [Layout(_derived_workers(cores, count), count, "calibrated") for count in reversed(threads)]


def machine_key() -> str:
    """What a calibration is valid for: CPU model and flags, the cores this process may use, onnxruntime."""
    import onnxruntime

    processors = cpuinfo()
    model = processors[0].get("model name", "") if processors else platform.processor()
    text = json.dumps([model, sorted(cpu_flags()), physical_core_count(), onnxruntime.__version__,
                       platform.machine()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_directory() -> Path:
    """$FASTVIT_DETECT_CACHE, else $XDG_CACHE_HOME/fastvit-detect, else ~/.cache/fastvit-detect."""
    explicit = os.environ.get("FASTVIT_DETECT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastvit-detect"


def cache_path(model_sha256: str, directory: Path | None = None, runtime: str = "onnxruntime",
               runtime_version: str | None = None) -> Path:
    """One file per machine and model variant (its graph's sha256, so a re-export is recalibrated); a runtime other
    than onnxruntime (already in :func:`machine_key`) adds its name and version."""
    key = f"{machine_key()}:{model_sha256}"
    if runtime != "onnxruntime":
        key += f":{runtime}:{runtime_version}"
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    return (directory or cache_directory()) / f"layout-{name}.json"


def read_cache_record(path: Path) -> dict[str, Any] | None:
    """A record this machine wrote into the cache (:func:`write_cache_record`), or None when there is none usable:
    missing, not a small regular file owned by this user (a symlink isn't followed), not our JSON, another
    machine's, or stale. A bad cache is ignored, never fatal."""
    try:
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK)) as fh:
            info = os.fstat(fh.fileno())
            import stat

            if not stat.S_ISREG(info.st_mode) or info.st_size > CACHE_MAX_BYTES:
                return None
            if hasattr(os, "getuid") and info.st_uid != os.getuid():
                return None  # someone else's file in our cache: not to be trusted
            data = json.loads(fh.read(CACHE_MAX_BYTES + 1))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("machine") != machine_key():
        return None
    created = data.get("created")
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created) \
            or not 0 <= time.time() - created <= CACHE_MAX_AGE_S:
        return None
    return data


def read_calibration(path: Path, cores: int) -> Layout | None:
    """The cached layout, or None when there is none usable (see :func:`read_cache_record`) or it doesn't fit
    ``cores``."""
    data = read_cache_record(path)
    if data is None:
        return None
    try:
        workers, threads = data["workers"], data["threads_per_worker"]
        layout = Layout(workers, threads, "calibrated",
                        f"measured {time.strftime('%Y-%m-%d', time.gmtime(data['created']))}")
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if layout.threads > cores:
        return None
    return layout


def check_cache_writable(directory: Path) -> None:
    """Refuse a cache folder a calibration can't be written to (read-only, a file, no permission), naming it:
    checked before the timing, which takes seconds on 2 cores and about a minute on 16."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle, probe = tempfile.mkstemp(prefix=".layout-", suffix=".probe", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise FastVitDetectError(f"{directory}: can't write the layout calibration there ({exc.strerror or exc}); "
                                 "set FASTVIT_DETECT_CACHE to a writable folder") from exc


def write_cache_record(path: Path, record: Mapping[str, Any]) -> None:
    """Write ``record`` with this machine's key and the time, atomically (a temporary file renamed into place), so
    a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {"format": CACHE_FORMAT, "machine": machine_key(), "created": time.time(), **record}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(record, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_calibration(path: Path, layout: Layout, figures: Mapping[str, float]) -> None:
    write_cache_record(path, {"workers": layout.workers, "threads_per_worker": layout.threads_per_worker,
                              "images_per_s": {key: round(value, 3) for key, value in figures.items()}})


def calibrate(measure: Callable[[Layout], float], candidates: Sequence[Layout], rounds: int = 2) -> tuple[
        Layout, dict[str, float]]:
    """The candidate with the most images per second; ``measure`` times one layout once. Candidates take turns
    round by round, so a slow phase of a shared machine doesn't land on one of them; each keeps its best round."""
    figures: dict[str, float] = {}
    for _ in range(rounds):
        for layout in candidates:
            key = f"{layout.workers}x{layout.threads_per_worker}"
            figures[key] = max(figures.get(key, 0.0), measure(layout))
    best = max(candidates, key=lambda layout: figures[f"{layout.workers}x{layout.threads_per_worker}"])
    return best, figures
