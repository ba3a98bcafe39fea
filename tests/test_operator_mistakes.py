"""Operator mistakes at the command line (issue 22, items 8, 10, 12, 13): each one gets a clear usage error or a
documented outcome, found before any slow work, and never "internal error" or a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, sample_photos

from fastvit_detect import cli
from fastvit_detect.cli import build_parser, main
from fastvit_detect.detector import Detector
from fastvit_detect.layout import MAX_WORKERS, candidate_layouts, choose_layout, rule_layout
from fastvit_detect.session import MAX_THREADS

CLI = [sys.executable, "-m", "fastvit_detect"]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if a detector is loaded: a mistake in the inputs must be found before seconds of loading."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(Detector, "load", refuse)
    monkeypatch.setattr(Detector, "from_pretrained", refuse)


# --- numeric flags: the parser's range is what the code below it accepts -------------------------------------


def test_every_core_count_threads_accepts_has_a_layout():
    # --threads 514 to 1024 used to pass the parser and fail as "internal error: ValueError: workers ... 257".
    assert cli.threads_type.bounds == (1, MAX_THREADS)
    for cores in range(1, MAX_THREADS + 1):
        assert rule_layout(cores).workers <= MAX_WORKERS
        assert choose_layout(cores, threads_per_worker=1).workers <= MAX_WORKERS
        assert all(layout.threads <= MAX_THREADS for layout in candidate_layouts(cores))
    assert rule_layout(MAX_THREADS).workers == MAX_WORKERS


def test_serve_flags_accept_exactly_what_the_server_settings_accept():
    serve = subcommands(build_parser())["serve"]
    checked = []
    for action in serve._actions:
        bounds = getattr(action.type, "bounds", None)
        if bounds is None or not action.option_strings:
            continue
        low, high = bounds
        for value in (low, high) if getattr(action.type, "low_inclusive", True) else (high,):
            text = repr(value) if isinstance(value, float) else str(value)
            args = build_parser().parse_args(["serve", "--model", "m", action.option_strings[0], text])
            cli.serve_settings(args)  # raised ValueError for --max-upload-mb 5000 and --max-pixels 2**33
        checked.append(action.option_strings[0])
    assert {"--max-upload-mb", "--max-pixels", "--max-batch", "--queue-size", "--explain-max-passes"} <= set(checked)


@pytest.mark.parametrize("argv", [
    ["predict", "--model", "m", "--max-image-mb", "0", "x.jpg"],
    ["serve", "--model", "m", "--max-upload-mb", "0"],
    ["predict", "--model", "m", "--max-pixels", "0", "x.jpg"],
])
def test_a_size_cap_of_zero_is_a_usage_error(argv, capsys):
    # Decided: 0 isn't "no cap" (never safe) nor "refuse everything" (never meant): argparse says so, exit 2.
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and ("expected a number above 0" in err or "expected a whole number from 1" in err)


# --- empty text -----------------------------------------------------------------------------------------------


def test_every_text_option_of_every_command_refuses_empty_text():
    from fastvit_detect.build.export import build_parser as export_parser

    parsers = {**subcommands(build_parser()), "export (build)": export_parser()}
    checked = 0
    for name, parser in parsers.items():
        for action in parser._actions:
            if action.nargs in (0, argparse.REMAINDER) or action.choices is not None:
                continue
            if action.type is None or action.type in (str, Path):
                pytest.fail(f"{name} {action.option_strings or action.dest} takes empty text")
            with pytest.raises(argparse.ArgumentTypeError):
                action.type("")
            checked += 1
    assert checked > 30


def test_choices_and_flags_keep_argparses_own_handling(capsys):
    """The empty-text rule leaves options with choices to argparse's own check (its message lists the choices)
    and flags (which take no value) alone."""
    with pytest.raises(SystemExit) as exit_:
        main(["scan", "photos", "--model", "m", "--engine", ""])
    assert exit_.value.code == 2 and "invalid choice: ''" in capsys.readouterr().err
    for name, parser in {**subcommands(build_parser())}.items():
        for action in parser._actions:
            if action.nargs == 0:
                assert action.type is None, f"{name} {action.option_strings}: a flag given a type"


@pytest.mark.parametrize("argv", [
    ["explain", "--model", "m", "--target", "", "-o", "out", "x.jpg"],
    ["predict", "--model", "m", "--explain", "", "x.jpg"],
    ["explain", "--model", "m", "-o", "", "x.jpg"],
    ["scan", "photos", "--model", "m", "-o", ""],
    ["predict", "--model", "", "x.jpg"],
    ["predict", "--model", "m", " "],
])
def test_empty_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "expected a non-empty value" in capsys.readouterr().err


def test_export_refuses_an_empty_output_folder(capsys):
    # Path("") is the current folder: with --overwrite, an export would have replaced it.
    assert main(["export", "some/model", "-o", "", "--overwrite"]) == 2
    assert "argument --output/-o: expected a non-empty value" in capsys.readouterr().err


def test_the_build_side_commands_refuse_empty_paths_too(monkeypatch, capsys):
    # The same rule for the project's other commands: an empty --output is the current folder to all of them.
    from benchmarks.__main__ import build_parser as benchmark_parser
    from examples import demo
    from fastvit_detect.build import seeded
    from train import finetune

    monkeypatch.setattr(sys, "argv", ["demo.py", "--workdir", ""])
    for run in (lambda: seeded.main(["--output", ""]), lambda: benchmark_parser().parse_args(["--output", ""]),
                lambda: finetune.parse_args(["--data", "", "--base", "tiny", "--output", "out"]), demo.main):
        with pytest.raises(SystemExit) as exit_:
            run()
        assert exit_.value.code == 2 and "expected a non-empty value" in capsys.readouterr().err


def test_non_empty_text_keeps_what_it_is_given():
    from fastvit_detect.options import non_empty_text

    assert non_empty_text(" photo 1.jpg ") == " photo 1.jpg "


# --- standard output closed or gone ---------------------------------------------------------------------------


def shell(command: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_closed_standard_output_is_a_clear_usage_error(vit_package, tmp_path):
    photo = sample_photos()[0]
    result = shell(f"{' '.join(CLI)} predict --model {vit_package} {photo} >&-", tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("fastvit-detect: error: standard output is closed, so the results would be lost; "
                             "redirect it instead (> FILE, or > /dev/null to discard them)\n")


def test_a_reader_that_stops_early_gets_no_traceback(vit_package, tmp_path):
    photos = " ".join(map(str, sample_photos()[:3]))
    # `true` reads nothing and exits at once, so the pipe is broken by the time the results are written.
    result = shell(f"{' '.join(CLI)} predict --model {vit_package} --json {photos} 2>err.txt | true; "
                   "echo ${PIPESTATUS[0]}", tmp_path)
    err = (tmp_path / "err.txt").read_text()
    assert "Traceback" not in err and "Exception ignored" not in err and "error" not in err, err
    assert result.stdout.strip() == str(cli.EXIT_BROKEN_PIPE)


def test_closed_standard_error_discards_diagnostics_and_keeps_the_results(vit_package, tmp_path):
    photo = sample_photos()[0]
    result = shell(f"{' '.join(CLI)} predict --model {vit_package} --json {photo} 2>&-", tmp_path)
    assert result.returncode == 0 and result.stdout.count('"label"') == 1
    assert "variant" not in result.stdout  # the summary line went nowhere, not into the results


# --- scan: output format and inputs checked before loading ----------------------------------------------------


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sample_photos()[:2]:
        shutil.copyfile(photo, folder / photo.name)
    return folder


@pytest.mark.parametrize("output, options, message", [
    ("x.parquet", [], "parquet results (from its .parquet suffix) can't be written here"),
    ("x.jsonl", ["--format", "parquet"], "the name says jsonl but --format says parquet"),
    ("x", ["--format", "parquet"], "parquet results (from --format parquet) can't be written here"),
    ("x.parquet", ["--format", "jsonl"], "the name says parquet but --format says jsonl"),
])
def test_local_scan_refuses_parquet_however_it_is_asked_for(photo_folder, tmp_path, output, options, message,
                                                            no_model_loading, capsys):
    # -o x.parquet used to get JSON lines and exit 0, while --format parquet was refused.
    code = main(["scan", str(photo_folder), "--model", "m", "-o", str(tmp_path / output), *options])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / output).exists()


def test_scan_of_a_missing_folder_fails_before_the_model_loads(tmp_path, no_model_loading, capsys):
    assert main(["scan", str(tmp_path / "nosuchdir"), "--model", "m", "-o", str(tmp_path / "x.jsonl")]) == 2
    assert capsys.readouterr().err == f"fastvit-detect: error: {tmp_path / 'nosuchdir'}: not a directory to scan\n"


def test_scan_into_a_directory_fails_before_the_model_loads(photo_folder, tmp_path, no_model_loading, capsys):
    assert main(["scan", str(photo_folder), "--model", "m", "-o", str(tmp_path)]) == 2
    assert "a directory; scan writes a resumable results file" in capsys.readouterr().err


# --- info --calibrate: an unwritable cache is found before the timing ------------------------------------------


def test_calibrate_checks_the_cache_folder_before_timing(vit_package, tmp_path, monkeypatch, capsys):
    from fastvit_detect import pool

    timed = []
    monkeypatch.setattr(pool, "measure_layout", lambda *args, **kwargs: timed.append(args) or 1.0)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FASTVIT_DETECT_CACHE", str(blocker / "cache"))  # under a file: unwritable, even for root
    assert main(["info", str(vit_package), "--calibrate"]) == 2
    err = capsys.readouterr().err
    assert f"{blocker / 'cache'}: can't write the layout calibration there" in err and "FASTVIT_DETECT_CACHE" in err
    assert timed == []


# --- the server's start-up line --------------------------------------------------------------------------------


def test_server_start_up_line_shows_the_effective_decode_budget(vit_package, monkeypatch, caplog):
    server = pytest.importorskip("fastvit_detect.server")
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    settings = server.ServeSettings(max_pixels=1_000_000)
    sock = server.bind_socket("127.0.0.1", 0)
    try:
        with caplog.at_level(logging.INFO, logger="fastvit_detect.server"):  # every server module logs there
            server.serve(Detector.load(vit_package), settings=settings, sock=sock)
    finally:
        sock.close()
    started = next(record.getMessage() for record in caplog.records if record.getMessage().startswith("serving "))
    assert "decode_budget_pixels=1500000" in started and "decode_budget_pixels=None" not in started
    detector = Detector.load(vit_package)
    chosen = [record.getMessage() for record in caplog.records if record.getMessage().startswith("variant chosen")]
    assert chosen == [f"variant chosen: {detector.choice.describe()}"]
    import inspect

    defaults = {name: parameter.default for name, parameter in inspect.signature(server.serve).parameters.items()}
    assert (defaults["host"], defaults["port"]) == ("127.0.0.1", 8000)  # the serving guide's, as the CLI's


# --- the demo's suggestions run as printed (item 10) ----------------------------------------------------------


def test_the_demos_suggested_commands_run_in_a_shell_without_the_environment(vit_package, tmp_path):
    from examples import demo

    fakes = tmp_path / "data" / "Test" / "Fake"
    fakes.mkdir(parents=True)
    for photo in sample_photos()[:2]:
        shutil.copyfile(photo, fakes / f"{photo.stem}.jpg")
    commands = demo.try_commands(vit_package, fakes)
    assert [command.split()[1] for command in commands] == ["info", "predict"]
    # A fresh shell: the environment's bin/ isn't on the PATH, as after `bash scripts/demo.sh`.
    bin_folder = str(Path(sys.executable).parent)
    path = os.pathsep.join(part for part in os.environ.get("PATH", "").split(os.pathsep) if part != bin_folder)
    for command in commands:
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PATH": path})
        assert result.returncode == 0, f"{command}: {result.stderr}"


def test_the_demo_prints_each_steps_time_with_the_cpu(monkeypatch):
    from examples import demo

    monkeypatch.setattr(demo, "STEP_SECONDS", {})
    with demo.step("a step"):
        pass
    lines: list[str] = []
    demo.print_step_times(lines.append)
    assert "step times on" in lines[0] and "physical cores" in lines[0]
    assert re.fullmatch(r"\s+\d+ s  a step", lines[1]) and lines[-1].endswith("in all")


def test_benchmark_help_states_its_memory_need():
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0 and "about 5 GB at the peak with --quick" in " ".join(result.stdout.split())


# --- the test suite's own house rules (item 13) ---------------------------------------------------------------


def test_no_test_edits_sys_path_or_assumes_an_absolute_path_is_missing():
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        text = path.read_text()
        for pattern in (r"sys\.path\.(insert|append|extend)", r"syspath_prepend", r"[\"']/nonexistent"):
            if re.search(pattern, text) and path.name != Path(__file__).name:
                offenders.append(f"{path.name}: {pattern}")
    assert offenders == []
