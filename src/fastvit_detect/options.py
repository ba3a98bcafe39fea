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
from pathlib import Path


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
    parse.bounds = (low, high)  # type: ignore[attr-defined]  # tests hold each flag's range to the code below it
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
    parse.bounds = (low, high)  # type: ignore[attr-defined]
    parse.low_inclusive = low_inclusive  # type: ignore[attr-defined]
    return parse


def non_empty_text(text: str) -> str:
    """Any text but an empty or blank one: ``--target ''`` or ``-o ''`` is a slip (an unset shell variable, say),
    never a choice, and taken silently it means a default or the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a non-empty value, got {text!r}")
    return text


non_empty_text.__name__ = "text"


def refuse_empty_text(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Refuse empty text in every option and positional argument of ``parser`` and its sub-commands that takes
    free text or a path (no ``type``, or ``str`` / ``Path``; ``Path('')`` is the current folder): one rule for all
    of them, the ones added later included. Numbers and choices refuse it already."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in set(action.choices.values()):
                refuse_empty_text(command)
        elif action.nargs not in (0, argparse.REMAINDER) and action.choices is None:
            if action.type in (None, str):
                action.type = non_empty_text
            elif action.type is Path:
                action.type = non_empty_path
    return parser


def non_empty_path(text: str) -> Path:
    return Path(non_empty_text(text))


non_empty_path.__name__ = "path"


positive_int = whole_number(1, 2**31 - 1)
"""A whole number >= 1 (and below 2**31, so it fits every C int it may reach)."""
