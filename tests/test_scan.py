"""fastvit-detect scan and the streaming path under it: order, errors, resumption, both file formats."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_photos

from fastvit_detect import Detector
from fastvit_detect.cli import main
from fastvit_detect.errors import FastVitDetectError, InputError
from fastvit_detect.scan import scan


@pytest.fixture
def folder(tmp_path, bad_inputs):
    root = tmp_path / "photos"
    (root / "nested" / "deeper").mkdir(parents=True)
    for index, photo in enumerate(sample_photos()):
        shutil.copyfile(photo, (root if index % 2 else root / "nested" / "deeper") / photo.name)
    shutil.copyfile(bad_inputs["truncated.png"], root / "nested" / "broken.PNG")
    (root / "readme.txt").write_text("not an image suffix: ignored")
    return root


def test_predict_iter_matches_predict_batch_in_order(vit_package, bad_inputs, reference):
    images = [*sample_photos(), bad_inputs["text.jpg"], *sample_photos()[:3]]
    detector = Detector.load(vit_package, variant="fp32")
    expected = detector.predict_batch(images, batch_size=4, errors="return")
    for prefetch in (0, 1, 3):
        streamed = list(detector.predict_iter(iter(images), batch_size=4, prefetch=prefetch, errors="return"))
        assert [type(r) for r in streamed] == [type(r) for r in expected]
        for got, want in zip(streamed, expected):
            if isinstance(want, InputError):
                assert str(got) == str(want)
            else:
                np.testing.assert_array_equal(got.logits, want.logits)
        photos = [image for image in images if image != bad_inputs["text.jpg"]]
        assert [r.label for r in streamed if not isinstance(r, InputError)] == reference.labels("vit", photos)


def test_scan_jsonl_then_resume(vit_package, folder, tmp_path, reference):
    detector = Detector.load(vit_package)
    output = tmp_path / "out" / "results.jsonl"
    first = scan(detector, folder, output, batch_size=3)
    photos = len(sample_photos())
    assert (first.found, first.classified, first.failed, first.already_done) == (photos + 1, photos, 1, 0)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["image"] for r in records) == sorted(str(p) for p in folder.rglob("*") if p.suffix != ".txt"
                                                         and p.is_file())
    broken = next(r for r in records if r["image"].endswith("broken.PNG"))
    assert broken["error"]["type"] == "ImageDecodeError"
    good = [r for r in records if "error" not in r]
    assert [r["label"] for r in good] == reference.labels("vit", [Path(r["image"]) for r in good])
    assert first.labels == Counter(r["label"] for r in good)
    # Interrupted run: drop the last two records and leave a torn line, then resume.
    lines = output.read_text().splitlines(keepends=True)
    output.write_text("".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])
    second = scan(detector, folder, output, batch_size=3)
    assert (second.already_done, second.classified + second.failed) == (photos - 1, 2)
    resumed = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["image"] for r in resumed) == sorted(r["image"] for r in records)  # each image once
    # The same verdicts (int8 logits may shift a little with the batch's other images; the labels don't).
    def verdicts(rows: list[dict]) -> list[tuple]:
        return sorted((row["image"], row.get("label")) for row in rows)

    assert verdicts(resumed) == verdicts(records)


def test_scan_csv_and_overwrite(vit_package, folder, tmp_path, reference):
    detector = Detector.load(vit_package, variant="fp32")
    output = tmp_path / "results.csv"
    scan(detector, folder, output)
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == len(sample_photos()) + 1
    good = [row for row in rows if row["label"]]
    paths = [Path(row["image"]) for row in good]
    assert [row["label"] for row in good] == reference.labels("vit", paths)
    for row, expected in zip(good, reference.probabilities("vit", paths)):
        assert [float(row["p_Fake"]), float(row["p_Real"])] == pytest.approx(expected, abs=1e-5)
        assert float(row["fake_probability"]) == pytest.approx(expected[0], abs=1e-5)
        assert float(row["score"]) == pytest.approx(expected.max(), abs=1e-5)
    assert [row["error_type"] for row in rows if not row["label"]] == ["ImageDecodeError"]
    again = scan(detector, folder, output, overwrite=True)
    assert again.already_done == 0 and len(list(csv.DictReader(output.open()))) == len(rows)


def test_scan_refuses_a_foreign_output_file(vit_package, folder, tmp_path):
    output = tmp_path / "notes.jsonl"
    output.write_text("my notes\n")
    with pytest.raises(FastVitDetectError, match="not a scan record"):
        scan(Detector.load(vit_package), folder, output)
    assert output.read_text() == "my notes\n"


def test_scan_command(vit_package, folder, tmp_path, capsys):
    output = tmp_path / "cli.jsonl"
    assert main(["scan", str(folder), "--model", str(vit_package), "-o", str(output)]) == 1  # one bad image
    err = capsys.readouterr().err
    assert f"{len(sample_photos()) + 1} image(s) found" in err and "1 failed" in err
    assert main(["scan", str(tmp_path / "missing"), "--model", str(vit_package), "-o", str(output)]) == 2


def test_resume_with_the_folder_spelled_differently(vit_package, folder, tmp_path, monkeypatch):
    detector = Detector.load(vit_package)
    output = tmp_path / "results.jsonl"
    scan(detector, folder, output)
    monkeypatch.chdir(folder.parent)
    again = scan(detector, folder.name, output)  # relative this time
    assert again.already_done == again.found and again.classified == 0
    assert len(output.read_text().splitlines()) == again.found


def test_csv_of_another_model_is_not_appended_to(vit_package, folder, tmp_path):
    output = tmp_path / "results.csv"
    output.write_text("image,label,score,fake_probability,p_Cat,p_Dog,error_type,error_message\n")
    with pytest.raises(FastVitDetectError, match="aren't this model's"):
        scan(Detector.load(vit_package), folder, output)


def test_unwritable_output_is_a_clean_error(vit_package, folder, tmp_path, capsys):
    (tmp_path / "a-dir.jsonl").mkdir()
    assert main(["scan", str(folder), "--model", str(vit_package), "-o", str(tmp_path / "a-dir.jsonl")]) == 2
    assert "error:" in capsys.readouterr().err
