"""What progress's survivors of the automatic mutation run showed untested (every test that used it ran a whole
eval or scan, minutes of tests a mutant): the two forms of stderr_progress, as its docstring gives them. In a log
or a pipe, a plain line each time another tenth of the work is done; on a terminal, a 30-cell bar redrawn in place
and ended with a newline. Each write is flushed at once: the stream here shows only what was flushed, as a
block-buffered stderr (a wrapper's, or a terminal's for a line without a newline) would."""

from __future__ import annotations

import io
import sys

from fastvit_detect.progress import stderr_progress


class Stream(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal, self.shown = terminal, ""

    def isatty(self) -> bool:
        return self.terminal

    def flush(self) -> None:
        self.shown = self.getvalue()


def run(stream: Stream, show, calls) -> None:
    for done, total in calls:
        show(done, total)
        assert stream.shown == stream.getvalue(), f"{done}/{total} written but not flushed"


def test_in_a_log_a_line_is_written_each_time_another_tenth_is_done(monkeypatch):
    log = Stream(terminal=False)
    monkeypatch.setattr(sys, "stderr", log)
    run(log, stderr_progress("eval"), [(done, 20) for done in range(21)])
    assert log.getvalue().splitlines() == [f"eval: {done}/20 images" for done in range(0, 21, 2)]
    log.seek(0), log.truncate()
    # a new run starts counting afresh, and a tenth may pass in one step
    run(log, stderr_progress("scan"), [(done, 34) for done in (0, 1, 7, 7, 33, 34)])
    assert log.getvalue().splitlines() == ["scan: 0/34 images", "scan: 7/34 images", "scan: 33/34 images",
                                           "scan: 34/34 images"]


def test_on_a_terminal_a_bar_is_redrawn_in_place_and_ended_with_a_newline(monkeypatch):
    terminal = Stream(terminal=True)
    monkeypatch.setattr(sys, "stderr", terminal)
    run(terminal, stderr_progress("eval"), [(done, 4) for done in (0, 1, 3, 4)])
    frames = terminal.getvalue().split("\r")[1:]
    assert frames == [
        "eval           [" + "." * 30 + "] 0/4",
        "eval           [" + "#" * 7 + "." * 23 + "] 1/4",  # 30 x 1/4 = 7.5 cells: whole cells only
        "eval           [" + "#" * 22 + "." * 8 + "] 3/4",
        "eval           [" + "#" * 30 + "] 4/4\n",
    ]


def test_the_first_call_always_writes_a_line_whatever_the_count(monkeypatch):
    log = Stream(terminal=False)
    monkeypatch.setattr(sys, "stderr", log)
    run(log, stderr_progress("eval"), [(-1, 10), (-1, 10)])  # a caller's odd count still gets its first line
    assert log.getvalue().splitlines() == ["eval: -1/10 images"]
