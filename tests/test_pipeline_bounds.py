"""The ordered pipeline's promises with several workers, checked from the outside with a counting generator: it
yields from an endless input, it never has more than ``workers + ahead`` chunks in flight, every worker runs at
once, and results come back in input order."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from fastvit_detect.pool import ordered_pipeline

RUNAWAY = 10_000  # far beyond any bound below: reaching it means the pipeline reads without limit


class Counting:
    """An endless input that counts what was taken from it, and stops a runaway reader instead of eating memory."""

    def __init__(self) -> None:
        self.taken = 0

    def __iter__(self):
        for value in itertools.count():
            if value >= RUNAWAY:
                raise RuntimeError("the pipeline read ahead without a bound")
            self.taken += 1
            yield value


def consume(stream, count: int, seconds: float = 30.0) -> list:
    """The first ``count`` results, or a failure if they don't come in ``seconds`` (a pipeline that waits for the
    end of an endless input never yields)."""
    results: list = []
    failure: list[BaseException] = []

    def take() -> None:
        try:
            results.extend(itertools.islice(stream, count))
        except BaseException as exc:  # noqa: BLE001 - reported in the test's thread
            failure.append(exc)

    reader = threading.Thread(target=take, daemon=True)
    reader.start()
    reader.join(seconds)
    assert not reader.is_alive(), f"no {count} results in {seconds} s from an endless input"
    if failure:
        raise failure[0]
    return results


@pytest.mark.parametrize("workers, decoders, ahead", [(3, 2, 2), (4, 1, 0), (2, 3, 5)])
def test_an_endless_input_yields_in_order_with_bounded_look_ahead(workers, decoders, ahead):
    source = Counting()
    stream = ordered_pipeline(source, decode=lambda n: n * 10, classify=lambda n, decoded: (n, decoded),
                              workers=workers, decoders=decoders, ahead=ahead)
    seen_in_flight = []
    for expected in range(50):
        number, decoded = next(stream)
        assert (number, decoded) == (expected, expected * 10)
        # In flight when this result was handed out: taken from the input and not handed out before it.
        seen_in_flight.append(source.taken - expected)
    stream.close()
    assert max(seen_in_flight) <= workers + ahead
    assert min(seen_in_flight) >= workers  # it does read ahead: every worker gets a chunk


def test_every_worker_runs_at_once():
    workers = 3
    together = threading.Barrier(workers, timeout=10)  # broken unless 3 classify calls overlap

    def classify(chunk, decoded):
        if chunk < workers:
            together.wait()
        return chunk

    results = consume(ordered_pipeline(Counting(), decode=lambda n: n, classify=classify, workers=workers,
                                       decoders=1, ahead=1), 12)
    assert results == list(range(12))


def test_slow_early_chunks_still_come_first():
    def classify(chunk, decoded):
        time.sleep(0.05 if chunk % 3 == 0 else 0.0)  # the first of every three is the slowest
        return chunk

    results = consume(ordered_pipeline(Counting(), decode=lambda n: n, classify=classify, workers=3, decoders=2,
                                       ahead=2), 30)
    assert results == list(range(30))


def test_closing_early_stops_reading_the_input():
    source = Counting()
    stream = ordered_pipeline(source, decode=lambda n: n, classify=lambda n, _d: n, workers=3, decoders=2, ahead=2)
    assert consume(stream, 5) == list(range(5))
    stream.close()
    taken = source.taken
    time.sleep(0.1)
    assert source.taken == taken <= 5 + 3 + 2
