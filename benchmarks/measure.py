"""Timing: interleaved round-robin measurement, percentiles, and paired ratios.

The machine is shared and noisy (other processes, turbo, thermal drift). Measuring system A for a minute and then
system B would fold that drift into the A/B ratio. Instead every trial (one image, one batch) runs every system
back to back, in an order that rotates from trial to trial, so neighbouring samples of two systems saw the same
machine state; a ratio is then the median of per-trial ratios, in which slow drift cancels.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

Trial = TypeVar("Trial")


@dataclass
class Interleaved(Generic[Trial]):
    """Seconds per call, per system, aligned by trial index so samples pair up across systems."""

    samples: dict[str, list[float]]
    failures: dict[str, str] = field(default_factory=dict)


def interleave(
    keys: Sequence[str],
    trials: Sequence[Trial],
    call: Callable[[str, Trial], object],
    *,
    rounds: int = 1,
    warmup: Sequence[Trial] = (),
    progress: Callable[[str], None] | None = None,
    label: str = "",
) -> Interleaved[Trial]:
    """Time ``call(key, trial)`` for every key on every trial, ``rounds`` times, rotating the order of keys.

    ``warmup`` trials run first, untimed (first-call allocations, lazy initialisation, compilation). A key whose
    call raises is dropped from then on, its error kept in ``failures``: one broken system mustn't stop the run.
    """
    active = list(keys)
    failures: dict[str, str] = {}
    samples: dict[str, list[float]] = {key: [] for key in keys}

    def attempt(key: str, trial: Trial) -> float | None:
        started = time.perf_counter()
        try:
            call(key, trial)
        except Exception as exc:  # noqa: BLE001 - reported as this system's failure, the others go on
            failures[key] = f"{type(exc).__name__}: {exc}"
            active.remove(key)
            return None
        return time.perf_counter() - started

    for trial in warmup:
        for key in list(active):
            attempt(key, trial)
    # Garbage from loading and warm-up would otherwise be collected inside some unlucky system's timed call.
    gc.collect()
    total = rounds * len(trials)
    step = 0
    for round_index in range(rounds):
        for trial_index, trial in enumerate(trials):
            shift = step % max(1, len(active))
            for key in active[shift:] + active[:shift]:
                seconds = attempt(key, trial)
                if seconds is not None:
                    samples[key].append(seconds)
            step += 1
            if progress and (step == total or step % max(1, total // 4) == 0):
                progress(f"{label}: {step}/{total} trials (round {round_index + 1}/{rounds}, trial {trial_index + 1})")
    for key in failures:
        samples.pop(key, None)
    return Interleaved(samples, failures)


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """p50/p90/p99 (linear interpolation), mean and min in milliseconds. With few samples p99 is near the max."""
    values = np.asarray(seconds, dtype=np.float64) * 1000
    if values.size == 0:
        return {"n": 0}
    return {
        "n": int(values.size),
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
    }


def paired_ratio(baseline: Sequence[float], candidate: Sequence[float]) -> dict[str, float | int] | None:
    """Speed-up of ``candidate`` over ``baseline``: median (p10-p90) of per-trial time ratios; > 1 is faster."""
    pairs = min(len(baseline), len(candidate))
    if pairs == 0:
        return None
    ratios = np.asarray(baseline[:pairs], dtype=np.float64) / np.asarray(candidate[:pairs], dtype=np.float64)
    return {
        "median": float(np.median(ratios)),
        "p10": float(np.percentile(ratios, 10)),
        "p90": float(np.percentile(ratios, 90)),
        "pairs": int(pairs),
    }
