"""fastvit_detect.build.export (export/export.py, fastvit-detect export): the package it writes, and every way it
refuses a bad checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import ROOT, VIT_PROCESSOR, make_checkpoint, sample_photos

from fastvit_detect.package import MANIFEST_FILE, file_sha256


def quiet(_text: str) -> None:
    pass


def test_manifest_records_files_hashes_and_validation(vit_package):
    manifest = json.loads((vit_package / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 3 and manifest["default_variant"] == "int8"
    # Every file the runtime reads is vouched for, the configs included (format 3).
    assert manifest["configs"] == [{"file": name, "sha256": file_sha256(vit_package / name),
                                    "size_bytes": (vit_package / name).stat().st_size}
                                   for name in ("config.json", "preprocessor_config.json")]
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


@pytest.mark.parametrize("kind", ["vit", "deit-arch"])
def test_hf_configs_are_copied_byte_for_byte(kind, checkpoints, packages):
    for name in ("config.json", "preprocessor_config.json"):
        assert (packages[kind] / name).read_bytes() == (checkpoints[kind] / name).read_bytes(), name


def test_batch_axis_is_dynamic_and_image_axes_fixed(vit_package):
    import onnx

    dims = onnx.load(str(vit_package / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]


def test_pickle_weights_are_refused_unless_trusted(exporter, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "pickled", VIT_PROCESSOR, safetensors=False)
    assert (checkpoint / "pytorch_model.bin").is_file()
    with pytest.raises(exporter.ExportError, match="--trust-pickle"):
        exporter.export_package(exporter.ExportSettings(str(checkpoint), tmp_path / "out"), log=quiet)
    assert not (tmp_path / "out").exists()
    settings = exporter.ExportSettings(str(checkpoint), tmp_path / "out", quantize="none", trust_pickle=True)
    exporter.export_package(settings, log=quiet)
    assert (tmp_path / "out" / MANIFEST_FILE).is_file()


def test_validation_images_from_a_folder(exporter, checkpoints, odd_images, tmp_path):
    settings = exporter.ExportSettings(str(checkpoints["vit"]), tmp_path / "out", quantize="none",
                                       validation_dirs=[next(iter(odd_images.values())).parent])
    manifest = exporter.export_package(settings, log=quiet).to_dict()
    assert "cmyk.jpg" in manifest["validation"]["images"]


def test_existing_output_is_kept_unless_overwrite(exporter, checkpoints, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "precious.txt").write_text("keep me")
    with pytest.raises(exporter.ExportError, match="--overwrite"):
        exporter.export_package(exporter.ExportSettings(str(checkpoints["vit"]), output), log=quiet)
    assert (output / "precious.txt").read_text() == "keep me"
    settings = exporter.ExportSettings(str(checkpoints["vit"]), output, quantize="none", overwrite=True)
    exporter.export_package(settings, log=quiet)
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
        exporter.export_package(exporter.ExportSettings(str(checkpoint), tmp_path / "out"), log=quiet)


def test_unsupported_architecture(exporter, tmp_path):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    checkpoint = tmp_path / "convnext"
    config = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 8, 8])
    ConvNextForImageClassification(config).save_pretrained(checkpoint)
    (checkpoint / "preprocessor_config.json").write_text(json.dumps(VIT_PROCESSOR))
    with pytest.raises(exporter.ExportError, match="model_type 'convnext' isn't supported"):
        exporter.export_package(exporter.ExportSettings(str(checkpoint), tmp_path / "out"), log=quiet)


def test_missing_weights_and_bad_sources(exporter, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(exporter.ExportError, match="no model weights"):
        exporter.export_package(exporter.ExportSettings(str(tmp_path / "empty"), tmp_path / "out"), log=quiet)
    with pytest.raises(exporter.ExportError, match="not a Hub id"):
        exporter.export_package(exporter.ExportSettings(str(tmp_path / "nowhere"), tmp_path / "out"), log=quiet)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(exporter.ExportError, match="can't download .* Offline"):
        exporter.export_package(exporter.ExportSettings("nobody-here/no-such-model", tmp_path / "out"), log=quiet)


def test_unusable_preprocessor_config_and_bad_limits_exit_cleanly(exporter, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "clip", {"image_processor_type": "CLIPImageProcessor"})
    assert exporter.main([str(checkpoint), "--output", str(tmp_path / "out")]) == 1
    assert "CLIPImageProcessor" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        exporter.main([str(checkpoint), "--output", str(tmp_path / "out"), "--validation-limit", "0"])
    assert exit_.value.code == 2


# --- int8 recipes -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory, odd_images):
    """A folder of ordinary photos in sub-folders, the way a training split looks."""
    from PIL import Image

    root = tmp_path_factory.mktemp("calibration")
    for index, photo in enumerate(sample_photos()):
        folder = root / ("Real" if index % 2 else "Fake")
        folder.mkdir(exist_ok=True)
        Image.open(photo).convert("RGB").save(folder / f"{photo.stem}.jpg", quality=90)
    (root / "Fake" / "broken.jpg").write_bytes(b"not an image")  # skipped, not fatal
    return root


def test_static_int8_is_calibrated_and_independent_of_batch_companions(exporter, checkpoints, calibration_dir,
                                                                        tmp_path):
    import fastvit_detect as fd

    export_settings = exporter.ExportSettings(str(checkpoints["vit"]), tmp_path / "static", quantize="static",
                                              calibration_dir=calibration_dir, calibration_method="percentile")
    manifest = exporter.export_package(export_settings, log=quiet).to_dict()
    settings = manifest["variants"]["int8"]["quantization"]
    assert settings["method"] == "static" and settings["calibration_method"] == "percentile"
    assert settings["calibration_images"] == len(sample_photos())  # the unreadable file was skipped
    assert manifest["variants"]["int8"]["validation"]["top1_agreement"] >= 0.9
    detector = fd.Detector.load(tmp_path / "static", variant="int8")
    photos = sample_photos()
    alone = detector.predict(photos[0]).logits
    # Activation ranges are fixed: an image's logits don't change with what else is in its batch.
    in_batch = detector.predict_batch([photos[0], photos[3], photos[5]])[0].logits
    np.testing.assert_array_equal(alone, in_batch)


def test_optimize_auto_times_candidates_and_records_the_choice(exporter, checkpoints, calibration_dir, tmp_path):
    import fastvit_detect as fd

    lines: list[str] = []
    settings = exporter.ExportSettings(str(checkpoints["vit"]), tmp_path / "auto", optimize="auto",
                                       calibration_dir=calibration_dir)
    manifest = exporter.export_package(settings, log=lines.append).to_dict()
    selection = manifest["variants"]["int8"]["quantization"]["selection"]
    names = [row["candidate"] for row in selection["candidates"]]
    assert len(names) == 3 and any(name.startswith("static") for name in names)  # 2 dynamic + 1 calibrated
    assert not any("VNNI" in name for name in names)  # CPU-specific recipes only when asked for
    assert selection["chosen"] in names and "most faithful" in selection["rule"]
    for row in selection["candidates"]:
        assert row["latency_ms"] > 0 and 0 <= row["max_abs_probability_diff"] <= 1
    chosen = next(row for row in selection["candidates"] if row["candidate"] == selection["chosen"])
    faithful = [row for row in selection["candidates"] if row["max_abs_probability_diff"] <= 0.05
                and row["top1_agreement"] >= 0.995]
    assert chosen in faithful
    assert chosen["latency_ms"] <= 1.03 * min(row["latency_ms"] for row in faithful)
    assert any("kept:" in line for line in lines)
    assert fd.Detector.load(tmp_path / "auto").variant.name == "int8"
    assert [p.name for p in tmp_path.iterdir()] == ["auto"]  # candidates cleaned up


def test_optimize_auto_with_static_chooses_among_calibration_methods(exporter, checkpoints, calibration_dir,
                                                                      tmp_path):
    settings = exporter.ExportSettings(str(checkpoints["vit"]), tmp_path / "auto", quantize="static",
                                       optimize="auto", calibration_dir=calibration_dir)
    manifest = exporter.export_package(settings, log=quiet).to_dict()
    quantization = manifest["variants"]["int8"]["quantization"]
    tried = {row["quantization"]["calibration_method"] for row in quantization["selection"]["candidates"]}
    assert tried == {"minmax", "percentile", "entropy"}
    assert quantization["method"] == "static" and quantization["calibration_method"] in tried


@pytest.mark.parametrize("options, message", [
    ({"quantize": "static"}, "needs --calibration DIR"),
    ({"quantize": "none", "optimize": "auto"}, "can't be combined with --quantize none"),
    ({"quantize": "static", "calibration_method": "guess"}, "--calibration-method 'guess'"),
    ({"quantize": "static", "calibration_dir": "{tmp}/missing"}, "not a directory"),
    ({"quantize": "static", "calibration_dir": "{tmp}", "calibration_limit": 0}, "--calibration-limit 0"),
    ({"calibration_dir": "{tmp}"}, "--calibration is used by --quantize static, --optimize auto or --openvino only"),
    ({"cpu_specific": True}, "--cpu-specific widens --optimize auto's choice"),
    ({"optimize": "auto", "per_channel": False}, "chooses per-channel scales and the weight range itself"),
    ({"optimize": "auto", "max_probability_diff": 2.0}, "between 0 and 1"),
])
def test_int8_option_errors(exporter, checkpoints, tmp_path, options, message):
    # Folders under tmp_path only: an absolute path assumed missing (/nonexistent) can exist on a shared machine.
    options = {key: value.format(tmp=tmp_path) if isinstance(value, str) and "{tmp}" in value else value
               for key, value in options.items()}
    settings = exporter.ExportSettings(str(checkpoints["vit"]), tmp_path / "out", **options)
    with pytest.raises(exporter.ExportError, match=message):
        exporter.export_package(settings, log=quiet)
    assert not (tmp_path / "out").exists()


def test_cpu_specific_candidates_only_where_this_cpu_has_vnni(exporter, monkeypatch):
    from fastvit_detect.build.quantize import Int8Options, int8_candidates

    options = Int8Options(optimize="auto", cpu_specific=True)
    monkeypatch.setattr("fastvit_detect.session.cpu_flags", lambda: frozenset({"avx2", "avx_vnni"}))
    assert any("8-bit" in name for name in int8_candidates(options, has_calibration=False))
    monkeypatch.setattr("fastvit_detect.session.cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not any("8-bit" in name for name in int8_candidates(options, has_calibration=False))
    static = Int8Options(method="static", optimize="auto", cpu_specific=True)
    assert len(int8_candidates(static, has_calibration=True)) == 3  # the calibration methods only


def test_full_8bit_weights_are_refused_on_a_cpu_without_vnni(exporter, checkpoints, calibration_dir, tmp_path,
                                                             monkeypatch, capsys):
    import fastvit_detect as fd
    import fastvit_detect.choice as detector_module  # where the variant choice reads the CPU flags
    from fastvit_detect.cli import main

    settings = exporter.ExportSettings(str(checkpoints["vit"]), tmp_path / "full", reduce_range=False)
    exporter.export_package(settings, log=quiet)
    monkeypatch.setattr(detector_module, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    with pytest.raises(fd.IncompatibleModelError, match="avx512_vnni or avx_vnni"):
        fd.Detector.load(tmp_path / "full", variant="int8")
    with pytest.warns(RuntimeWarning, match="using variant 'fp32' instead"):
        assert fd.Detector.load(tmp_path / "full").variant.name == "fp32"
    # eval over all variants reports the one this CPU can't run and evaluates the others.
    assert main(["eval", "--model", str(tmp_path / "full"), "--data", str(calibration_dir), "--json"]) == 0
    captured = capsys.readouterr()
    assert [row["variant"] for row in json.loads(captured.out)["variants"]] == ["fp32"]
    assert "skipping variant 'int8' needs a CPU with avx512_vnni or avx_vnni" in captured.err
    monkeypatch.setattr(detector_module, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    assert fd.Detector.load(tmp_path / "full").variant.name == "int8"


# --- fastvit-detect export: the same exporter from the installed command -------------------------------------

# What may differ between two exports of one checkpoint: when they ran and how long they took.
TIMESTAMPS = ("created", "export_seconds")


def package_contents(package) -> tuple[dict, dict[str, bytes]]:
    """The manifest less its timestamps, and every other file's bytes."""
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    files = {path.name: path.read_bytes() for path in sorted(package.iterdir()) if path.name != MANIFEST_FILE}
    return {key: value for key, value in manifest.items() if key not in TIMESTAMPS}, files


def test_cli_export_and_the_checkout_script_write_byte_identical_packages(exporter, checkpoints, tmp_path):
    from fastvit_detect.cli import main

    checkpoint = str(checkpoints["vit"])
    filters = list(warnings.filters)
    assert main(["export", checkpoint, "-o", str(tmp_path / "cli"), "--description", "seeded tiny ViT"]) == 0
    assert warnings.filters == filters  # the libraries' chatter was hidden for the export only
    script = subprocess.run([sys.executable, str(ROOT / "export" / "export.py"), checkpoint, "--output",
                             str(tmp_path / "script"), "--description", "seeded tiny ViT"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert script.returncode == 0, script.stderr
    cli_manifest, cli_files = package_contents(tmp_path / "cli")
    script_manifest, script_files = package_contents(tmp_path / "script")
    assert sorted(cli_files) == ["config.json", "model.onnx", "model.onnx_data", "model_quantized.onnx",
                                 "model_quantized.onnx_data", "preprocessor_config.json"]
    for name, data in cli_files.items():
        assert data == script_files[name], f"{name} differs between two exports of the same checkpoint"
    assert cli_manifest == script_manifest
    assert cli_manifest["description"] == "seeded tiny ViT"


def test_cli_export_help_and_usage_errors(capsys):
    from fastvit_detect.cli import main

    assert main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fastvit-detect export") and "--optimize" in out and "--calibration" in out
    assert main(["export", "some/model"]) == 2  # --output is required
    assert "the following arguments are required: --output" in capsys.readouterr().err


def test_library_warnings_are_hidden_inside_the_block_only():
    from fastvit_detect.build.chatter import library_warnings_hidden

    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with library_warnings_hidden():
            for module in ("torch.onnx.utils", "optimum.exporters.onnx", "onnxruntime", "fastvit_detect.build",
                           "torchvision.io"):
                warnings.warn_explicit(f"from {module}", DeprecationWarning, "x.py", 1, module=module)
        warnings.warn_explicit("after the block", DeprecationWarning, "x.py", 1, module="torch")
    assert [str(w.message) for w in caught] == ["from fastvit_detect.build", "from torchvision.io", "after the block"]
    assert warnings.filters == filters
