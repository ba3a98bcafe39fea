"""What the CLI's survivors of the automatic mutation run showed untested. Expected values come from the CLI's
contract in the docs (docs/reference/cli.md, docs/guides/model-package.md: a package's ``intended_use`` is said
wherever its verdicts are printed), not from cli.py."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import sample_photos

from fastvit_detect.cli import main
from fastvit_detect.package import MANIFEST_FILE

INTENDED_USE = "demo only: trained on synthetic images"


def test_every_command_that_prints_verdicts_notes_the_models_intended_use(package_copy, tmp_path, capsys):
    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    manifest["intended_use"] = INTENDED_USE
    (package_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    photo = sample_photos()[0]
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photo, folder / photo.name)
    model = ["--model", str(package_copy), "--threads", "1"]
    commands = {"predict": ["predict", *model, str(photo)],
                "explain": ["explain", *model, "-o", str(tmp_path / "why"), "--grid", "2", str(photo)],
                "scan": ["scan", str(folder), *model, "-o", str(tmp_path / "results.jsonl")]}
    for name, argv in commands.items():
        assert main(argv) == 0, name
        notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
        assert len(notes) == 1 and notes[0].endswith(f": {INTENDED_USE}"), (name, notes)


def test_a_batch_of_one_is_the_smallest_batch(vit_package, capsys):
    """--batch-size takes whole numbers from 1 (one image per session call); 0 is a usage error."""
    photo = str(sample_photos()[0])
    assert main(["predict", "--model", str(vit_package), "--threads", "1", "--batch-size", "1", photo]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage:
        main(["predict", "--model", str(vit_package), "--threads", "1", "--batch-size", "0", photo])
    assert usage.value.code == 2
    assert "--batch-size" in capsys.readouterr().err


def test_a_faces_stage_of_one_thread_is_the_smallest(vit_package, monkeypatch):
    from fastvit_detect import server

    served = {}
    monkeypatch.setattr(server, "serve", lambda detector, **options: served.update(options))
    assert main(["serve", "--model", str(vit_package), "--threads", "1", "--faces-concurrency", "1"]) == 0
    assert served["settings"].faces_concurrency == 1


def test_a_bad_faces_argument_is_refused_before_the_package_is_opened(tmp_path):
    """Detector.load checks its arguments before seconds of loading: a typo is named even when the package path
    is wrong too."""
    from fastvit_detect import Detector
    from fastvit_detect.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="faces must be True, False or 'auto'"):
        Detector.load(tmp_path / "no-such-package", faces="yes")


def test_the_cli_samples_a_video_at_the_rates_the_library_takes(capsys):
    """--fps accepts what predict_video does (docs/guides/video.md: 0.0001 to 120 frames a second), no narrower: a
    value past either end is a usage error naming the option."""
    from fastvit_detect.cli import build_parser

    parser = build_parser()
    for fps in ("0.0001", "120"):
        assert parser.parse_args(["predict", "--model", "m", "--fps", fps, "clip.mp4"]).fps == float(fps)
    for fps in ("0.00009", "120.5"):
        with pytest.raises(SystemExit) as usage:
            parser.parse_args(["predict", "--model", "m", "--fps", fps, "clip.mp4"])
        assert usage.value.code == 2 and "--fps" in capsys.readouterr().err
