"""Progress lines on stderr, stamped with the time since the run began, so a long run shows where it is."""

from __future__ import annotations

import sys
import time

_STARTED = time.perf_counter()


def log(text: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {text}", file=sys.stderr, flush=True)


def elapsed() -> float:
    return time.perf_counter() - _STARTED
