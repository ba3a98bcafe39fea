"""Every command-line flag has the effect its help text promises, seen in the output (not just accepted)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import sample_photos
from PIL import Image

from fastvit_detect import Detector
from fastvit_detect.cli import main
from fastvit_detect.session import OnnxSession

PROBABILITY_TOLERANCE = 1e-5  # fp32 ONNX against PyTorch


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def session_calls(monkeypatch) -> list[int]:
    """The batch size of every onnxruntime call made in this test."""
    calls: list[int] = []
    run_session = OnnxSession.run

    def counted(self, pixel_values):
        calls.append(len(pixel_values))
        return run_session(self, pixel_values)

    monkeypatch.setattr(OnnxSession, "run", counted)
    return calls


def test_predict_json_answers_as_pytorch_does(vit_package, reference, capsys):
    photos = sample_photos()
    code, out, err = run(["predict", "--model", str(vit_package), "--variant", "fp32", "--json",
                          *map(str, photos)], capsys)
    assert code == 0 and "variant fp32" in err
    records = json_lines(out)
    expected = reference.probabilities("vit", photos)
    assert [record["image"] for record in records] == [str(photo) for photo in photos]
    assert [record["label"] for record in records] == reference.labels("vit", photos)
    for record, row, logits in zip(records, expected, reference.logits("vit", photos)):
        assert record["probabilities"] == pytest.approx({"Fake": row[0], "Real": row[1]}, abs=PROBABILITY_TOLERANCE)
        assert record["fake_probability"] == pytest.approx(row[0], abs=PROBABILITY_TOLERANCE)
        assert record["logits"] == pytest.approx(logits, abs=1e-4)


def test_variant_flag_picks_the_graph(vit_package, capsys):
    for variant in ("fp32", "int8"):
        code, _out, err = run(["predict", "--model", str(vit_package), "--variant", variant,
                               str(sample_photos()[0])], capsys)
        assert code == 0 and f"variant {variant};" in err


def test_max_pixels_flag(vit_package, tmp_path, reference, capsys):
    path = tmp_path / "400x300.png"
    Image.new("RGB", (400, 300), (230, 230, 230)).save(path)
    code, out, _err = run(["predict", "--model", str(vit_package), "--json", "--max-pixels", "119999", str(path)],
                          capsys)
    assert code == 1
    assert json_lines(out)[0]["error"]["type"] == "ImageTooLargeError"
    assert "exceeds the cap of 119,999" in json_lines(out)[0]["error"]["message"]
    code, out, _err = run(["predict", "--model", str(vit_package), "--json", "--max-pixels", "120000", str(path)],
                          capsys)
    assert code == 0 and json_lines(out)[0]["label"] == reference.label("vit", path)


def test_jpeg_draft_flag(vit_package, odd_images, reference, capsys):
    large = str(odd_images["large.jpg"])  # 2000x1500: libjpeg may decode it at 1/4
    argv = ["predict", "--model", str(vit_package), "--variant", "fp32", "--json", large]
    exact = json_lines(run(argv, capsys)[1])[0]
    drafted = json_lines(run([*argv, "--jpeg-draft"], capsys)[1])[0]
    assert exact["label"] == drafted["label"] == reference.label("vit", odd_images["large.jpg"])
    assert exact["logits"] == pytest.approx(reference.logits("vit", [odd_images["large.jpg"]])[0], abs=1e-4)
    assert drafted["logits"] != pytest.approx(exact["logits"], abs=1e-4)  # other pixels reached the model
    api = Detector.load(str(vit_package), variant="fp32", jpeg_draft=True).predict(large)
    np.testing.assert_allclose(drafted["logits"], api.logits, atol=1e-6)


def test_batch_size_flag_sets_the_images_per_session_call(vit_package, tmp_path, session_calls, capsys):
    photos = [str(photo) for photo in sample_photos()[:5]]
    assert run(["predict", "--model", str(vit_package), "--batch-size", "2", *photos], capsys)[0] == 0
    assert session_calls == [2, 2, 1]
    session_calls.clear()
    assert run(["predict", "--model", str(vit_package), *photos], capsys)[0] == 0
    assert session_calls == [5]  # the default, 16, holds them all
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos:
        shutil.copyfile(photo, folder / f"{len(list(folder.iterdir()))}.png")
    session_calls.clear()
    assert run(["scan", str(folder), "--model", str(vit_package), "-o", str(tmp_path / "r.jsonl"),
                "--batch-size", "3"], capsys)[0] == 0
    assert session_calls == [3, 2]


def test_format_flag_names_the_format_of_a_file_name_that_implies_none(vit_package, tmp_path, reference, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = sample_photos()[:3]
    for photo in photos:
        shutil.copyfile(photo, folder / photo.name)
    as_csv = tmp_path / "results.out"
    assert run(["scan", str(folder), "--model", str(vit_package), "-o", str(as_csv), "--format", "csv"], capsys)[0] == 0
    rows = list(csv.DictReader(as_csv.open(newline="")))
    by_image = {row["image"]: row["label"] for row in rows}
    assert by_image == {str(folder / photo.name): label
                        for photo, label in zip(photos, reference.labels("vit", photos))}
    as_jsonl = tmp_path / "results"
    assert run(["scan", str(folder), "--model", str(vit_package), "-o", str(as_jsonl), "--format", "jsonl"],
               capsys)[0] == 0
    assert {record["image"]: record["label"] for record in json_lines(as_jsonl.read_text())} == by_image
    # A name that says one format and a flag that says another: refused, rather than CSV in a .jsonl file.
    code, _out, err = run(["scan", str(folder), "--model", str(vit_package), "-o", str(tmp_path / "results.jsonl"),
                           "--format", "csv"], capsys)
    assert code == 2 and "the name says jsonl but --format says csv" in err
    assert not (tmp_path / "results.jsonl").exists()


def test_overwrite_flag_starts_afresh(vit_package, tmp_path, session_calls, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sample_photos()[:3]:
        shutil.copyfile(photo, folder / photo.name)
    output = tmp_path / "results.jsonl"
    argv = ["scan", str(folder), "--model", str(vit_package), "-o", str(output)]
    assert run(argv, capsys)[0] == 0
    first = output.read_text()
    session_calls.clear()
    code, _out, err = run(argv, capsys)  # resumes: nothing left to do
    assert code == 0 and "3 already in the output, skipped; 0 classified" in err and session_calls == []
    assert output.read_text() == first
    code, _out, err = run([*argv, "--overwrite"], capsys)
    assert code == 0 and "already in the output" not in err and "3 classified" in err and session_calls == [3]
    assert len(output.read_text().splitlines()) == 3


def test_limit_flag_evaluates_that_many_images(vit_package, tmp_path, capsys):
    for index, photo in enumerate(sample_photos()):
        folder = tmp_path / ("Fake" if index % 2 else "Real")
        folder.mkdir(exist_ok=True)
        shutil.copyfile(photo, folder / photo.name)
    code, out, _err = run(["eval", "--model", str(vit_package), "--data", str(tmp_path), "--variant", "fp32",
                           "--limit", "3", "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["images"] == 3 and report["variants"][0]["images"] == 3


def test_serve_flags_reach_the_server(vit_package, monkeypatch):
    from fastvit_detect import server

    served = {}
    monkeypatch.setattr(server, "serve", lambda detector, **options: served.update(detector=detector, **options))
    assert main(["serve", "--model", str(vit_package), "--variant", "fp32", "--threads", "1", "--max-pixels", "10000",
                 "--jpeg-draft", "--host", "127.0.0.2", "--port", "8123", "--max-upload-mb", "0.5", "--max-batch", "3",
                 "--max-wait-ms", "7.5", "--queue-size", "5", "--log-level", "warning"]) == 0
    detector, settings = served["detector"], served["settings"]
    assert (served["host"], served["port"], served["log_level"]) == ("127.0.0.2", 8123, "warning")
    assert detector.variant.name == "fp32" and detector.session.threads == 1
    assert detector.preprocessor.max_pixels == 10_000 and detector.preprocessor.draft_size == (224, 224)
    assert (settings.max_upload_bytes, settings.max_batch, settings.max_wait_ms, settings.queue_size,
            settings.max_pixels) == (524_288, 3, 7.5, 5, 10_000)
    app = server.create_app(detector, settings)
    try:
        batcher = app.state.batcher
        assert (batcher.max_batch, batcher.max_wait, batcher.queue_size) == (3, 0.0075, 5)
    finally:
        app.state.batcher.close()
        app.state.decoder.close()
