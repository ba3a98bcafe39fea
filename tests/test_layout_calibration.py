"""Calibration gives the right answer, not just an answer: which layout it keeps (from a fake measure of known
speeds), which candidates it times on core counts that aren't powers of two (through the layout functions'
``cores`` parameter, since this machine has 2), and which cache files it trusts.

Expected values are written out by hand from the rule in layout.py's docstrings, never computed by the code under
test."""

from __future__ import annotations

import json
import os
import time

import pytest

import fastvit_detect as fd
from fastvit_detect import layout, pool
from fastvit_detect.layout import Layout, cache_path, calibrate, candidate_layouts, read_calibration, rule_layout

SHA = "cd" * 32


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVIT_DETECT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def shapes(layouts):
    return [(chosen.workers, chosen.threads_per_worker) for chosen in layouts]


# Threads per worker: the powers of two up to the cores, and the cores themselves; workers fill the cores.
@pytest.mark.parametrize("cores, expected", [
    (1, [(1, 1)]),
    (2, [(1, 2), (2, 1)]),
    (3, [(1, 3), (1, 2), (3, 1)]),
    (5, [(1, 5), (1, 4), (2, 2), (5, 1)]),
    (6, [(1, 6), (1, 4), (3, 2), (6, 1)]),
    (7, [(1, 7), (1, 4), (3, 2), (7, 1)]),
    (8, [(1, 8), (2, 4), (4, 2), (8, 1)]),
    (12, [(1, 12), (1, 8), (3, 4), (6, 2), (12, 1)]),
    (24, [(1, 24), (1, 16), (3, 8), (6, 4), (12, 2), (24, 1)]),
])
def test_candidates_on_any_core_count(cores, expected):
    found = candidate_layouts(cores)
    assert shapes(found) == expected
    assert all(chosen.source == "calibrated" and chosen.threads <= cores for chosen in found)


@pytest.mark.parametrize("cores, expected", [(5, (2, 2)), (6, (3, 2)), (7, (3, 2)), (12, (6, 2)), (24, (12, 2))])
def test_rule_on_core_counts_that_are_not_powers_of_two(cores, expected):
    assert (rule_layout(cores).workers, rule_layout(cores).threads_per_worker) == expected


def known_speeds(speeds: dict[tuple[int, int], list[float]]):
    """A fake measure: each layout's images/s, round by round, and the order it was asked in."""
    asked: list[tuple[int, int]] = []

    def measure(chosen: Layout) -> float:
        shape = (chosen.workers, chosen.threads_per_worker)
        asked.append(shape)
        return speeds[shape][sum(1 for seen in asked if seen == shape) - 1]

    return measure, asked


def test_calibrate_keeps_the_fastest_by_its_best_round_and_takes_turns():
    candidates = candidate_layouts(6)  # 1x6, 1x4, 3x2, 6x1
    # 3x2 is the fastest, but only in its second round (a slow phase of the machine hit its first);
    # 6x1 has the best first round; 1x6 is steady.
    measure, asked = known_speeds({(1, 6): [30.0, 30.0], (1, 4): [20.0, 21.0], (3, 2): [10.0, 45.0],
                                   (6, 1): [40.0, 5.0]})
    best, figures = calibrate(measure, candidates, rounds=2)
    assert (best.workers, best.threads_per_worker) == (3, 2)
    assert figures == {"1x6": 30.0, "1x4": 21.0, "3x2": 45.0, "6x1": 40.0}
    assert asked == [(1, 6), (1, 4), (3, 2), (6, 1)] * 2  # round by round, not one layout's rounds in a row


def test_calibrate_with_one_round_keeps_the_fastest_even_when_it_is_last():
    measure, asked = known_speeds({(1, 5): [1.0], (1, 4): [2.0], (2, 2): [3.0], (5, 1): [9.5]})
    best, figures = calibrate(measure, candidate_layouts(5), rounds=1)
    assert (best.workers, best.threads_per_worker) == (5, 1) and figures["5x1"] == 9.5 and len(asked) == 4


def test_calibrate_layout_times_the_candidates_of_the_given_cores_and_caches_the_winner(vit_package, monkeypatch,
                                                                                        private_cache):
    speeds = {(1, 6): 11.0, (1, 4): 12.0, (3, 2): 13.0, (6, 1): 17.0}
    timed: list[tuple[int, int]] = []

    def fake_measure(chosen, backend, path, image_size, seconds=pool.CALIBRATION_SECONDS):
        timed.append((chosen.workers, chosen.threads_per_worker))
        assert image_size == (224, 224)  # read from the graph's input
        return speeds[timed[-1]]

    monkeypatch.setattr(pool, "measure_layout", fake_measure)
    model = fd.ModelPackage.open(vit_package).variant("fp32")
    best, figures, path = pool.calibrate_layout(model.path, model.sha256, cores=6, rounds=3)
    assert timed == [(1, 6), (1, 4), (3, 2), (6, 1)] * 3
    assert (best.workers, best.threads_per_worker) == (6, 1)
    assert figures == {"1x6": 11.0, "1x4": 12.0, "3x2": 13.0, "6x1": 17.0}
    assert path == cache_path(model.sha256) and path.parent == private_cache
    stored = json.loads(path.read_text())
    assert (stored["workers"], stored["threads_per_worker"]) == (6, 1)
    cached = read_calibration(path, cores=6)
    assert cached is not None and (cached.workers, cached.threads_per_worker) == (6, 1)
    assert read_calibration(path, cores=5) is None  # 6 threads don't fit 5 cores


# --- whose files it trusts ----------------------------------------------------------------------------------


def write_record(path, **overrides):
    record = {"format": layout.CACHE_FORMAT, "machine": layout.machine_key(), "created": time.time(),
              "workers": 3, "threads_per_worker": 2, "images_per_s": {}, **overrides}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def test_a_file_owned_by_another_user_is_not_trusted(monkeypatch):
    path = write_record(cache_path(SHA))
    assert read_calibration(path, cores=6) is not None
    owner = path.stat().st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)  # the same file, read by someone else
    assert read_calibration(path, cores=6) is None


def test_a_layout_that_fills_the_cores_exactly_is_kept_and_one_over_is_not():
    path = write_record(cache_path(SHA), workers=3, threads_per_worker=2)
    assert read_calibration(path, cores=6) is not None
    assert read_calibration(path, cores=7) is not None
    assert read_calibration(path, cores=5) is None


def test_a_calibration_is_trusted_for_180_days_and_not_a_minute_more():
    days_180 = 180 * 24 * 3600
    assert read_calibration(write_record(cache_path(SHA), created=time.time() - days_180 + 60), cores=6) is not None
    assert read_calibration(write_record(cache_path(SHA), created=time.time() - days_180 - 60), cores=6) is None
    assert read_calibration(write_record(cache_path(SHA), created=time.time() + 60), cores=6) is None


def test_a_calibration_from_another_machine_or_format_is_not_trusted():
    assert read_calibration(write_record(cache_path(SHA), machine="0" * 24), cores=6) is None
    assert read_calibration(write_record(cache_path(SHA), format=layout.CACHE_FORMAT + 1), cores=6) is None
    cached = read_calibration(write_record(cache_path(SHA)), cores=6)
    assert cached is not None and cached.source == "calibrated" and cached.reason.startswith("measured ")


def test_a_calibration_file_of_format_1_is_read():
    """Files written by every release so far say format 1: a new format must keep reading them or say why."""
    assert read_calibration(write_record(cache_path(SHA), format=1), cores=6) is not None


def test_a_file_just_under_the_size_cap_is_read_and_one_over_is_not():
    assert layout.CACHE_MAX_BYTES == 64 * 1024  # the documented cap: a calibration file is a few hundred bytes
    record = json.dumps({"format": layout.CACHE_FORMAT, "machine": layout.machine_key(), "created": time.time(),
                         "workers": 3, "threads_per_worker": 2, "images_per_s": {}})
    path = cache_path(SHA)
    path.parent.mkdir(parents=True)
    path.write_text(record + " " * (layout.CACHE_MAX_BYTES - len(record)))
    assert path.stat().st_size == layout.CACHE_MAX_BYTES and read_calibration(path, cores=6) is not None
    path.write_text(record + " " * (layout.CACHE_MAX_BYTES + 1 - len(record)))
    assert read_calibration(path, cores=6) is None


def test_the_cache_key_differs_by_model_and_by_core_count(monkeypatch):
    assert cache_path("aa" * 32) != cache_path("bb" * 32)
    name = cache_path("aa" * 32).name  # the name earlier calibrations were written under: found again
    assert name.startswith("layout-") and name.endswith(".json") and len(name) == len("layout-.json") + 32
    before = cache_path(SHA)
    monkeypatch.setattr(layout, "physical_core_count", lambda: 64)  # another machine shape: another file
    assert cache_path(SHA) != before


# --- the layout's own bounds --------------------------------------------------------------------------------

MAX_THREADS = 1024  # session.MAX_THREADS, as docs/guides/python-api.md states it
MAX_WORKERS = 256


def test_layouts_at_the_thread_and_worker_limits():
    assert Layout(2, MAX_THREADS // 2, "caller").threads == MAX_THREADS  # exactly at the limit: allowed
    assert Layout(MAX_WORKERS, 1, "caller").workers == MAX_WORKERS
    layout.check_layout_arguments(2, MAX_THREADS // 2)
    layout.check_layout_arguments(MAX_WORKERS, None)
    with pytest.raises(ValueError, match="workers"):
        layout.check_layout_arguments(MAX_WORKERS + 1, None)
    with pytest.raises(ValueError, match="workers"):
        Layout(MAX_WORKERS + 1, 1, "caller")
    with pytest.raises(ValueError, match="at most 1024 threads"):
        layout.check_layout_arguments(3, MAX_THREADS // 2)
    with pytest.raises(ValueError, match="at most 1024 threads"):
        Layout(3, MAX_THREADS // 2, "caller")


def test_a_layout_is_frozen():
    chosen = Layout(2, 1, "caller")
    with pytest.raises(AttributeError):
        chosen.workers = 4  # type: ignore[misc]


@pytest.mark.parametrize("shape, text", [((1, 1), "1 worker x 1 thread (rule)"),
                                         ((2, 1), "2 workers x 1 thread (rule)"),
                                         ((1, 2), "1 worker x 2 threads (rule)")])
def test_describe_counts_in_words(shape, text):
    assert Layout(*shape, "rule").describe() == text


def test_core_counts_out_of_range_are_refused_naming_cores():
    for call in (lambda: rule_layout(0), lambda: layout.choose_layout(cores=0, workers=2),
                 lambda: layout.choose_layout(cores=0, threads_per_worker=2),
                 lambda: layout.choose_layout(cores=MAX_THREADS + 1, workers=2), lambda: candidate_layouts(0)):
        with pytest.raises(ValueError, match="cores"):
            call()
    with pytest.raises(ValueError, match="workers"):
        layout.choose_layout(cores=4, workers=0)  # refused before it divides the cores by it


# --- the cache file as written ------------------------------------------------------------------------------


def test_the_machine_key_is_24_hex_digits_of_the_first_processors_model(monkeypatch):
    """24 hex digits: the key every calibration file written so far holds."""
    monkeypatch.setattr(layout, "cpuinfo", lambda: [{"model name": "CPU A"}])
    first = layout.machine_key()
    assert len(first) == 24 and int(first, 16) >= 0
    monkeypatch.setattr(layout, "cpuinfo", lambda: [{"model name": "CPU B"}, {"model name": "CPU A"}])
    assert layout.machine_key() != first  # the first processor's model counts


def test_a_calibration_is_written_in_a_private_folder_made_on_the_way(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "er" / "layout-x.json"
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        synced.append(os.fstat(descriptor).st_size)  # what is on its way to the disk when it is synced
        real_fsync(descriptor)

    monkeypatch.setattr(layout.os, "fsync", fsync)
    layout.write_calibration(path, Layout(3, 2, "calibrated"), {"3x2": 12.34567, "6x1": 9.0})
    layout.write_calibration(path, Layout(6, 1, "calibrated"), {"3x2": 12.34567, "6x1": 13.0004})  # again, same folder
    stored = json.loads(path.read_text())
    assert stored["images_per_s"] == {"3x2": 12.346, "6x1": 13.0}
    assert (stored["workers"], stored["threads_per_worker"], stored["format"]) == (6, 1, 1)
    assert len(synced) == 2 and synced[0] > 0 and synced[1] == path.stat().st_size  # synced whole, not empty
    assert (path.parent.stat().st_mode & 0o777) == 0o700  # nobody else can plant a file in it


def test_calibrate_takes_two_rounds_by_default():
    measure, asked = known_speeds({(1, 2): [1.0, 2.0], (2, 1): [3.0, 1.0]})
    best, figures = calibrate(measure, candidate_layouts(2))
    assert len(asked) == 4 and figures == {"1x2": 2.0, "2x1": 3.0} and (best.workers, best.threads_per_worker) == (2, 1)


def test_calibrate_keeps_figures_below_one_image_per_second():
    """A slow machine measures under 1 image/s: each candidate's figure is its best round, not a floor."""
    measure, _asked = known_speeds({(1, 2): [0.25, 0.5], (2, 1): [0.75, 0.125]})
    best, figures = calibrate(measure, candidate_layouts(2), rounds=2)
    assert figures == {"1x2": 0.5, "2x1": 0.75} and (best.workers, best.threads_per_worker) == (2, 1)


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def refuse(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(layout.os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        layout.write_calibration(tmp_path / "layout-x.json", Layout(1, 2, "calibrated"), {})
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_a_layout_cant_be_changed_once_made():
    """Layouts are shared (the detector's, the pool's, /healthz's): one changed in place would change them all."""
    import dataclasses

    layout = Layout(2, 1, "rule")
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.workers = 3  # type: ignore[misc]
    assert (layout.workers, layout.threads_per_worker) == (2, 1)


def test_the_writability_probe_leaves_a_private_folder_and_nothing_else(tmp_path):
    """info --calibrate's early check: an existing folder is fine, a new one is private (0700), and the probe
    leaves neither its file nor an open descriptor behind."""
    import os

    from fastvit_detect.layout import check_cache_writable

    fresh = tmp_path / "new" / "cache"
    before = len(os.listdir("/proc/self/fd"))
    check_cache_writable(fresh)
    check_cache_writable(fresh)  # again, now that it exists
    assert len(os.listdir("/proc/self/fd")) == before
    assert list(fresh.iterdir()) == []
    assert fresh.stat().st_mode & 0o777 == 0o700
