"""argparse types for numeric options: finite and in range, or a clear usage error.

An operator's typo (``inf``, ``nan``, ``1e300``, a negative number, a 20-digit integer) must fail at the command
line with a message naming the option's range, never as an ``OverflowError`` in a worker thread hours later.
Every command of the project (the runtime CLI and the build-side scripts) takes its numbers through these.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip()) if len(text) <= 30 else None
        except ValueError:
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low:,} to {high:,}, got {value:,}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its messages
    return parse


def finite_number(low: float, high: float, low_inclusive: bool = True) -> Callable[[str], float]:
    """A finite number from ``low`` to ``high`` (``low`` itself excluded unless ``low_inclusive``)."""

    def parse(text: str) -> float:
        try:
            value = float(text) if len(text) <= 40 else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text[:40]!r}")
        if not (low <= value if low_inclusive else low < value) or value > high:
            bound = "from" if low_inclusive else "above"
            raise argparse.ArgumentTypeError(f"expected a number {bound} {low:g} up to {high:g}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = whole_number(1, 2**31 - 1)
"""A whole number >= 1 (and below 2**31, so it fits every C int it may reach)."""
