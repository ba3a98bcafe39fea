"""The command line: readable table, JSON lines, per-image errors, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import sample_photos

from fastvit_detect.cli import main


def test_predict_table(vit_package, reference, capsys):
    photos = sample_photos()
    assert main(["predict", "--model", str(vit_package), *map(str, photos)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["image", "label", "score", "p(fake)"]
    rows = [line.split() for line in lines[1:]]
    assert all(row[0].endswith(photo.name) for row, photo in zip(rows, photos)) and len(rows) == len(photos)
    assert [row[1] for row in rows] == reference.labels("vit", photos)
    # int8 against PyTorch: within 0.05 on these models (test_detector); the table prints 4 decimals.
    expected = reference.probabilities("vit", photos)
    assert [float(row[3]) for row in rows] == pytest.approx(expected[:, 0], abs=0.05)
    assert [float(row[2]) for row in rows] == pytest.approx(expected.max(1), abs=0.05)
    assert f"{len(photos)} image(s), 0 failed; variant int8" in err


def test_predict_json_lines_with_a_bad_image(vit_package, bad_inputs, reference, capsys):
    photo = str(sample_photos()[0])
    code = main(["predict", "--model", str(vit_package), "--variant", "fp32", "--json", photo,
                 str(bad_inputs["truncated.jpg"]), photo])
    assert code == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["image"] for record in records] == [photo, str(bad_inputs["truncated.jpg"]), photo]
    good = records[0]
    assert set(good) == {"image", "label", "score", "probabilities", "fake_probability", "logits"}
    assert good["score"] == max(good["probabilities"].values()) and len(good["logits"]) == 2
    assert good["label"] == reference.label("vit", sample_photos()[0])
    assert good["logits"] == pytest.approx(reference.logits("vit", sample_photos()[:1])[0], abs=1e-4)
    assert records[1]["error"]["type"] == "ImageDecodeError" and "truncated" in records[1]["error"]["message"]
    assert records[2]["logits"] == good["logits"]


def test_model_errors_exit_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastvit_detect", "predict", "--model", str(tmp_path / "none"),
                             "x.jpg"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "error: model package" in result.stderr and "Traceback" not in result.stderr


def test_bad_images_never_print_tracebacks(vit_package, bad_inputs):
    result = subprocess.run([sys.executable, "-m", "fastvit_detect", "predict", "--model", str(vit_package),
                             *map(str, bad_inputs.values())], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout.count("ERROR") == len(bad_inputs)


def test_usage_errors(vit_package, capsys):
    for argv in (["predict", "--model", str(vit_package)], ["predict", "--model", str(vit_package),
                                                            "--batch-size", "0", "x.jpg"], []):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, f"{argv} should be a usage error"


def test_info_lists_the_candidates_optimize_auto_tried(package_copy, capsys):
    manifest_path = package_copy / "fastvit_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["variants"]["int8"]["quantization"]["selection"] = {"chosen": "b", "candidates": [
        {"candidate": "a", "latency_ms": 2.5, "max_abs_probability_diff": 0.02},
        {"candidate": "b", "latency_ms": 2.4, "max_abs_probability_diff": "garbled"}]}
    manifest_path.write_text(json.dumps(manifest))
    assert main(["info", str(package_copy)]) == 0
    out = capsys.readouterr().out
    assert "chosen from  2 candidates" in out and "  a: 2.5 ms, max |dp| 0.0200" in out
    assert "* b: 2.4 ms, max |dp| ?" in out and '"selection"' not in out


def test_info(vit_package, capsys):
    assert main(["info", str(vit_package)]) == 0
    out = capsys.readouterr().out
    for expected in ("fastvit-detect-model-package v3", "0=Fake, 1=Real", "ViTImageProcessor, resize 224x224",
                     "sha256       configs, graphs and weights", "weights      model_quantized.onnx_data",
                     "fp32     model.onnx", "int8     model_quantized.onnx", "max_abs_logit_diff", "default      int8"):
        assert expected in out
    assert main(["info", "--json", str(vit_package)]) == 0
    assert json.loads(capsys.readouterr().out)["variants"]["int8"]["quantization"]["method"] == "dynamic"
