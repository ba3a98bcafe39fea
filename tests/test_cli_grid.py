"""Every subcommand against every class of bad argument: exit code 2 (or 1 for images that failed), a message that
names the problem, and never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from hostile import write_package

from fastvit_detect.cli import main

NUMERIC_OPTIONS = {
    "predict": ["--batch-size", "--threads", "--max-pixels", "--max-image-mb", "--fps", "--max-frames",
                "--max-video-seconds", "--threshold"],
    "eval": ["--batch-size", "--limit", "--threads", "--max-pixels", "--max-image-mb"],
    "scan": ["--batch-size", "--threads", "--max-pixels", "--max-image-mb"],
    "serve": ["--port", "--max-upload-mb", "--max-batch", "--max-wait-ms", "--queue-size", "--decode-workers",
              "--max-connections", "--header-timeout", "--body-timeout", "--threads", "--max-pixels",
              "--max-image-mb", "--max-video-mb", "--max-video-seconds", "--max-video-frames"],
}
BAD_NUMBERS = ["inf", "-inf", "nan", "1e300", "-1", "100000000000000000000", "abc", "", "9" * 5000]


def base_arguments(command: str, package: str, folder: str) -> list[str]:
    return {"predict": ["predict", "--model", package, "x.png"],
            "eval": ["eval", "--model", package, "--data", folder],
            "scan": ["scan", folder, "--model", package],
            "serve": ["serve", "--model", package]}[command]


def run(argv: list[str], capsys) -> tuple[int, str]:
    """main() as the console script runs it: argparse's exits included."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command, option", [(command, option) for command, options in NUMERIC_OPTIONS.items()
                                             for option in options])
def test_every_numeric_option_refuses_every_bad_number(command, option, vit_package, tmp_path, capsys):
    for value in BAD_NUMBERS:
        code, err = run([*base_arguments(command, str(vit_package), str(tmp_path)), option, value], capsys)
        assert code == 2, (option, value, err)
        assert f"argument {option}" in err and "Traceback" not in err, (option, value, err)
        assert len(err) < 2000  # a 5000-digit value isn't echoed back whole


@pytest.mark.parametrize("command", ["predict", "eval", "scan", "serve", "info"])
def test_every_command_refuses_a_bad_model_cleanly(command, tmp_path, capsys):
    not_a_package = tmp_path / "file.txt"
    not_a_package.write_text("hello")
    hostile = write_package(tmp_path / "hostile", config={"id2label": {"0": None}})
    for model in (tmp_path / "absent", not_a_package, tmp_path, hostile):
        argv = ["info", str(model)] if command == "info" else base_arguments(command, str(model), str(tmp_path))
        code, err = run(argv, capsys)
        assert code == 2 and "fastvit-detect: error:" in err and "Traceback" not in err, (model, err)


def test_predict_reports_bad_images_and_exits_1(vit_package, bad_inputs, tmp_path, capsys):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    images = [*map(str, bad_inputs.values()), str(fifo), "/dev/zero", str(tmp_path / "missing.png")]
    code, err = run(["predict", "--model", str(vit_package), "--json", *images], capsys)
    assert code == 1 and "Traceback" not in err
    assert f"{len(images)} image(s), {len(images)} failed" in err


def test_eval_reference_that_is_a_file_fails_before_any_work(vit_package, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "Real").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(data / "Real" / "a.png")
    reference = tmp_path / "weights.bin"
    reference.write_bytes(b"\0" * 10)
    code, err = run(["eval", "--model", str(vit_package), "--data", str(data), "--reference", str(reference)], capsys)
    assert code == 2 and "not a directory" in err and "Traceback" not in err
    assert "evaluating" not in err  # the check came first


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers"}:
            raise ImportError(f"blocked import of {name}")
sys.meta_path.insert(0, Block())
from fastvit_detect.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_eval_reference_without_torch_fails_before_evaluating(vit_package, tmp_path):
    data = tmp_path / "data"
    (data / "Real").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(data / "Real" / "a.png")
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "eval", "--model", str(vit_package), "--data",
                             str(data), "--reference", str(tmp_path)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 2 and "pip install 'fastvit-detect[export]'" in result.stderr
    assert "evaluating" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("host", ["999.1.1.1", "no-such-host.invalid", "::zz"])
def test_serve_bad_host_exits_2(vit_package, host, capsys):
    code, err = run(["serve", "--model", str(vit_package), "--host", host, "--port", "0"], capsys)
    assert code == 2 and f"--host {host!r}" in err and "Traceback" not in err


def test_serve_port_in_use_exits_2(vit_package, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run(["serve", "--model", str(vit_package), "--port", str(port)], capsys)
    assert code == 2 and f"can't listen on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_unexpected_failures_are_one_line_not_a_traceback(vit_package, monkeypatch, capsys):
    from fastvit_detect import cli

    def explode(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise KeyError("a bug somewhere")

    monkeypatch.setattr(cli.Detector, "load", explode)
    code, err = run(["predict", "--model", str(vit_package), "x.png"], capsys)
    assert code == 2 and "internal error: KeyError" in err and "FASTVIT_DETECT_DEBUG" in err
    assert "Traceback" not in err
    monkeypatch.setenv("FASTVIT_DETECT_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["predict", "--model", str(vit_package), "x.png"])
