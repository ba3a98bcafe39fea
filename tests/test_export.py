"""export/export.py: the package it writes, and every way it refuses a bad checkpoint."""

from __future__ import annotations

import json

import pytest
from conftest import VIT_PROCESSOR, make_checkpoint

from fastvit_detect.package import MANIFEST_FILE, file_sha256


def quiet(_text: str) -> None:
    pass


def test_manifest_records_files_hashes_and_validation(vit_package):
    manifest = json.loads((vit_package / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 2 and manifest["default_variant"] == "int8"
    assert manifest["input"] == {"name": "pixel_values", "shape": ["batch_size", 3, 224, 224], "dtype": "float32"}
    assert manifest["labels"] == ["Fake", "Real"] and manifest["opset"] == 18
    assert {"torch", "transformers", "onnxruntime", "fastvit_detect"} <= set(manifest["exporter"])
    for name, file in (("fp32", "model.onnx"), ("int8", "model_quantized.onnx")):
        entry = manifest["variants"][name]
        assert entry["file"] == file
        assert entry["sha256"] == file_sha256(vit_package / file)
        assert entry["size_bytes"] == (vit_package / file).stat().st_size
        # Weights sit in Optimum's <graph>_data file, vouched for like the graph.
        assert entry["data_file"] == file + "_data"
        assert entry["data_sha256"] == file_sha256(vit_package / entry["data_file"])
        assert entry["data_size_bytes"] == (vit_package / entry["data_file"]).stat().st_size
        assert entry["data_size_bytes"] > entry["size_bytes"]  # the graph file holds structure, not weights
        assert entry["validation"]["images"] == len(manifest["validation"]["images"]) >= 10
    assert manifest["variants"]["fp32"]["validation"]["max_abs_logit_diff"] <= 1e-4
    assert manifest["variants"]["fp32"]["preprocess_max_abs_diff"] == 0.0
    assert manifest["variants"]["int8"]["quantization"]["reduce_range"] is True
    # The HF configs are copied byte for byte, so Optimum and transformers read them as before.
    assert json.loads((vit_package / "preprocessor_config.json").read_text()) == VIT_PROCESSOR


def test_batch_axis_is_dynamic_and_image_axes_fixed(vit_package):
    import onnx

    dims = onnx.load(str(vit_package / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]


def test_pickle_weights_are_refused_unless_trusted(exporter, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "pickled", VIT_PROCESSOR, safetensors=False)
    assert (checkpoint / "pytorch_model.bin").is_file()
    with pytest.raises(exporter.ExportError, match="--trust-pickle"):
        exporter.export_package(str(checkpoint), tmp_path / "out", log=quiet)
    assert not (tmp_path / "out").exists()
    exporter.export_package(str(checkpoint), tmp_path / "out", quantize="none", trust_pickle=True, log=quiet)
    assert (tmp_path / "out" / MANIFEST_FILE).is_file()


def test_validation_images_from_a_folder(exporter, checkpoints, odd_images, tmp_path):
    manifest = exporter.export_package(str(checkpoints["vit"]), tmp_path / "out", quantize="none", log=quiet,
                                       validation_dirs=[next(iter(odd_images.values())).parent])
    assert "cmyk.jpg" in manifest["validation"]["images"]


def test_existing_output_is_kept_unless_overwrite(exporter, checkpoints, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "precious.txt").write_text("keep me")
    with pytest.raises(exporter.ExportError, match="--overwrite"):
        exporter.export_package(str(checkpoints["vit"]), output, log=quiet)
    assert (output / "precious.txt").read_text() == "keep me"
    exporter.export_package(str(checkpoints["vit"]), output, quantize="none", overwrite=True, log=quiet)
    assert not (output / "precious.txt").exists() and (output / "model.onnx").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging directory left behind


def test_fp32_bound_failure_exits_non_zero_and_keeps_staging(exporter, checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(exporter, "FP32_MAX_ABS_LOGIT_DIFF", -1.0)
    code = exporter.main([str(checkpoints["vit"]), "--output", str(tmp_path / "out"), "--quantize", "none"])
    assert code == 1
    err = capsys.readouterr().err
    assert "NOT usable" in err and "Staging directory kept" in err
    assert not (tmp_path / "out").exists()


def test_missing_preprocessor_config(exporter, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt", VIT_PROCESSOR)
    (checkpoint / "preprocessor_config.json").unlink()
    with pytest.raises(exporter.ExportError, match="preprocessor_config.json is missing"):
        exporter.export_package(str(checkpoint), tmp_path / "out", log=quiet)


def test_unsupported_architecture(exporter, tmp_path):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    checkpoint = tmp_path / "convnext"
    ConvNextForImageClassification(ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 8, 8])).save_pretrained(checkpoint)
    (checkpoint / "preprocessor_config.json").write_text(json.dumps(VIT_PROCESSOR))
    with pytest.raises(exporter.ExportError, match="model_type 'convnext' isn't supported"):
        exporter.export_package(str(checkpoint), tmp_path / "out", log=quiet)


def test_missing_weights_and_bad_sources(exporter, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(exporter.ExportError, match="no model weights"):
        exporter.export_package(str(tmp_path / "empty"), tmp_path / "out", log=quiet)
    with pytest.raises(exporter.ExportError, match="not a Hub id"):
        exporter.export_package(str(tmp_path / "nowhere"), tmp_path / "out", log=quiet)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(exporter.ExportError, match="can't download .* Offline"):
        exporter.export_package("nobody-here/no-such-model", tmp_path / "out", log=quiet)


def test_unusable_preprocessor_config_and_bad_limits_exit_cleanly(exporter, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "clip", {"image_processor_type": "CLIPImageProcessor"})
    assert exporter.main([str(checkpoint), "--output", str(tmp_path / "out")]) == 1
    assert "CLIPImageProcessor" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        exporter.main([str(checkpoint), "--output", str(tmp_path / "out"), "--validation-limit", "0"])
    assert exit_.value.code == 2
