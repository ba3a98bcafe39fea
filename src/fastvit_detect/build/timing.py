"""Timing: interleaved measurement in blocks, percentiles, and paired ratios. The exporter's --optimize auto times
its int8 candidates with it, and the benchmark its systems.

The machine is shared and noisy (other processes, turbo, thermal drift). Measuring system A for a minute and then
system B would fold that drift into the A/B ratio, so systems take turns in short blocks, in an order that rotates
from block to block, and a ratio is the median of per-trial ratios, in which slow drift cancels.

Turns are blocks, not single calls, and each block opens with an untimed settling call, because systems that share
a process disturb each other: after a call, onnxruntime's and OpenMP's thread pools keep spinning on the cores for
a while, and the next system's weights must be pulled back into the cache. With sessions alternating call by
call, a graph runs far slower than alone; within a block only the first call pays that, the calls after it match
the alone figure. A deployment runs one model over and over, which is what the timed calls see.
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
    block: int = 1,
    rotation: int = 0,
    warmup: Sequence[Trial] = (),
    progress: Callable[[str], None] | None = None,
    label: str = "",
) -> Interleaved[Trial]:
    """Time ``call(key, trial)`` for every key on every trial, ``rounds`` times, taking turns in blocks.

    The trials of all rounds are cut into blocks of ``block`` trials; for each block every key runs an untimed
    settling call on the block's first trial, then the block's trials timed, keys in an order that rotates from
    block to block, starting ``rotation`` places in (give successive calls different rotations so that a phase
    made of one-block calls still varies who goes first). ``warmup`` trials run first, untimed (first-call
    allocations, lazy initialisation, compilation). A key whose call raises is dropped from then on, its error
    kept in ``failures``: one broken system mustn't stop the run.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
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
    sequence = [trial for _ in range(rounds) for trial in trials]
    blocks = [sequence[start : start + block] for start in range(0, len(sequence), block)]
    done = 0
    for block_index, chunk in enumerate(blocks):
        shift = (block_index + rotation) % max(1, len(active))
        for key in active[shift:] + active[:shift]:
            if attempt(key, chunk[0]) is None:  # settling call, untimed
                continue
            for trial in chunk:
                seconds = attempt(key, trial)
                if seconds is None:
                    break
                samples[key].append(seconds)
        done += len(chunk)
        if progress and (block_index == len(blocks) - 1 or (block_index + 1) % max(1, len(blocks) // 4) == 0):
            progress(f"{label}: {done}/{len(sequence)} trials ({rounds} round(s), blocks of {block})")
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
