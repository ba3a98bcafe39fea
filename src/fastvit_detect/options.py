"""Numeric options, finite and in range, or a clear error: argparse types for the command lines, and the same
checks for arguments given in Python.

An operator's typo (``inf``, ``nan``, ``1e300``, a negative number, a 20-digit integer) must fail at the command
line with a message naming the option's range, never as an ``OverflowError`` in a worker thread hours later.
Every command of the project (the runtime CLI and the build-side scripts) takes its numbers through these, and
every API argument that sizes work (threads, workers, batch sizes, caps, server limits) through
:func:`check_whole` / :func:`check_finite`.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable


def check_whole(name: str, value: object, low: int, high: int | None = None,
                error: type[Exception] = ValueError) -> int:
    """``value`` as an int from ``low`` to ``high`` (no upper bound when None), else ``error`` naming it. Bools,
    floats (4.0 as much as inf or nan) and strings are refused, never rounded or parsed."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low
            or (high is not None and int(value) > high)):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise error(f"{name} must be a whole number {bound}, got {value!r}")
    return int(value)


def check_finite(name: str, value: object, low: float, high: float, error: type[Exception] = ValueError) -> float:
    """``value`` as a float from ``low`` to ``high``, else ``error`` naming it (bools, nan and inf refused)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value))
            or not low <= float(value) <= high):
        raise error(f"{name} must be a finite number from {low:g} to {high:g}, got {value!r}")
    return float(value)


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
