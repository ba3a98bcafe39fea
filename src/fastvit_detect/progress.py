"""Progress on stderr for long runs (eval, scan): a bar on a terminal, a few plain lines in logs and pipes."""

from __future__ import annotations

import sys
from collections.abc import Callable

Progress = Callable[[int, int], None]
"""Called with (done, total) as work completes."""


def stderr_progress(name: str) -> Progress:
    """A one-line progress bar on a terminal; occasional plain lines otherwise (CI logs, pipes)."""
    interactive = sys.stderr.isatty()
    last: list[int | None] = [None]  # the decile of the last line written: none yet

    def show(done: int, total: int) -> None:
        if interactive:
            filled = int(30 * done / total)
            sys.stderr.write(f"\r{name:<14} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        else:
            decile = 10 * done // total
            if decile != last[0]:
                last[0] = decile
                print(f"{name}: {done}/{total} images", file=sys.stderr, flush=True)

    return show
