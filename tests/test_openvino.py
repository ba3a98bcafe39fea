"""The OpenVINO backend: the openvino-int8 variant behind the same Detector, chosen by measurement or rule.

Both runtimes run the same weights here: the ``vit-openvino`` fixture is the ``vit`` model exported with
``--openvino``, so PyTorch's answers (``reference``) are the expected values for each. The hostile packages are
hand-built (tests/hostile.py): a graph whose logits turn NaN for some images, a graph OpenVINO can't compile.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import BRIGHT, DARK, noise_image, sample_photos
from hostile import PROCESSOR, SIDE, colour

pytest.importorskip("openvino")
pytest.importorskip("nncf")

import fastvit_detect as fd
from fastvit_detect import choice as choice_module
from fastvit_detect.cli import main
from fastvit_detect.manifest import FileEntry, Manifest, VariantEntry
from fastvit_detect.openvino_session import OpenVinoSession, openvino_version, usable_cache_directory
from fastvit_detect.package import MANIFEST_FILE, ModelPackage, file_sha256

KIND = "vit-openvino"
VNNI = frozenset({"avx2", "avx512f", "avx512_vnni"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own cache (layout, choice, compiled models), so none sees another's calibration."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTVIT_DETECT_CACHE", str(cache))
    return cache


@pytest.fixture
def package(packages) -> Path:
    return packages[KIND]


@pytest.fixture
def package_copy(package, tmp_path) -> Path:
    copy = tmp_path / "package"
    shutil.copytree(package, copy)
    return copy


def images(odd_images) -> list:
    return sample_photos() + list(odd_images.values())


def probabilities(predictions, labels) -> np.ndarray:
    return np.array([[p.probabilities[label] for label in labels] for p in predictions])


# --- fidelity: both runtimes on the same images -------------------------------------------------------------


def test_openvino_int8_agrees_with_pytorch_on_every_image(package, reference, odd_images):
    detector = fd.Detector.load(package, variant="openvino-int8")
    assert detector.runtime == "openvino" and detector.variant.runtime == "openvino"
    pictures = images(odd_images)
    predictions = detector.predict_batch(pictures, batch_size=8)
    assert [p.label for p in predictions] == reference.labels(KIND, pictures)
    assert np.abs(probabilities(predictions, detector.labels) - reference.probabilities(KIND, pictures)).max() < 0.05


def test_openvino_runs_the_fp32_graph_with_pytorchs_logits(package, reference, odd_images):
    """The OpenVINO session itself, in f32: logits within float rounding of PyTorch's, as onnxruntime's are."""
    opened = ModelPackage.open(package)
    fp32 = opened.variant("fp32")
    session = OpenVinoSession(fp32.path, config={"INFERENCE_PRECISION_HINT": "f32"})
    detector = fd.Detector(opened, fp32, session, fd.Detector.load(package, variant="fp32").preprocessor)
    pictures = images(odd_images)
    logits = np.stack([p.logits for p in detector.predict_batch(pictures, batch_size=5)])
    assert np.abs(logits - reference.logits(KIND, pictures)).max() <= 1e-4


def test_the_manifest_records_the_variant_its_runtime_and_its_fidelity(package):
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    entry = manifest["variants"]["openvino-int8"]
    assert entry["runtime"] == "openvino" and entry["file"] == "model_openvino_int8.onnx"
    assert entry["data_file"] == "model_openvino_int8.onnx_data"
    assert entry["quantization"]["model_type"] == "TRANSFORMER"
    assert entry["validation"]["top1_agreement"] >= 0.995 and entry["validation"]["max_abs_probability_diff"] <= 0.05
    assert "runtime" not in manifest["variants"]["int8"]  # onnxruntime variants are written as before
    assert manifest["default_variant"] == "int8"  # auto decides by measurement, not by the manifest


def test_batches_streams_and_layouts_keep_input_order_and_isolate_a_bad_image(package, reference, odd_images):
    pictures = [noise_image(40, 50, seed, level=DARK if seed % 2 else BRIGHT) for seed in range(9)]
    pictures.insert(4, b"not an image")
    expected = fd.Detector.load(package, variant="openvino-int8").predict_batch(
        [p for p in pictures if not isinstance(p, bytes)], batch_size=1)
    for workers in (1, 2):
        detector = fd.Detector.load(package, variant="openvino-int8", workers=workers, threads_per_worker=1)
        for results in (detector.predict_batch(pictures, batch_size=3, errors="return"),
                        list(detector.predict_iter(pictures, batch_size=2, errors="return"))):
            assert isinstance(results[4], fd.ImageDecodeError)
            good = [r for r in results if not isinstance(r, fd.FastVitDetectError)]
            assert [p.label for p in good] == [p.label for p in expected]
            assert len({p.label for p in good}) == 2  # both verdicts occur: order mistakes can't hide
            # One compiled model for every worker, with a stream each: OpenVINO's own throughput machinery.
            sessions = {id(s) for s in detector.pool.sessions}
            assert len(sessions) == 1 and detector.pool.sessions[0].streams == workers


# --- choice by measurement ----------------------------------------------------------------------------------


def test_auto_follows_the_rule_for_the_cpu_class(package, monkeypatch):
    monkeypatch.setattr(choice_module, "cpu_flags", lambda: VNNI)
    detector = fd.Detector.load(package)
    assert (detector.variant.name, detector.choice.source) == ("openvino-int8", "rule")
    assert "avx512_vnni" in detector.choice.reason and "openvino" in repr(detector)
    monkeypatch.setattr(choice_module, "cpu_flags", lambda: AVX2)
    detector = fd.Detector.load(package)
    assert (detector.variant.name, detector.runtime, detector.choice.source) == ("int8", "onnxruntime", "rule")


@pytest.mark.parametrize("winner", ["int8", "openvino-int8"])
def test_a_cached_calibration_overrides_the_rule_both_ways(package, monkeypatch, winner):
    monkeypatch.setattr(choice_module, "cpu_flags", lambda: VNNI if winner == "int8" else AVX2)  # rule says other
    opened = ModelPackage.open(package)
    path = choice_module.choice_cache_path(opened.variants["int8"], opened.variants["openvino-int8"],
                                           openvino_version())
    loser = "openvino-int8" if winner == "int8" else "int8"
    assert choice_module.write_choice(path, {winner: 20.0, loser: 10.0}) == winner
    detector = fd.Detector.load(package)
    assert (detector.variant.name, detector.choice.source) == (winner, "calibrated")
    assert "20.0 img/s" in detector.choice.reason


def test_info_calibrate_times_both_runtimes_and_auto_takes_the_faster(package, capsys, monkeypatch):
    measured = {"onnxruntime": 10.0, "openvino": 30.0}
    monkeypatch.setattr("fastvit_detect.pool.measure_layout",
                        lambda layout, backend, path, size, seconds=0: measured[backend.runtime] / layout.workers)
    assert main(["info", str(package), "--calibrate"]) == 0
    out = capsys.readouterr().out
    assert "auto: openvino-int8 (30.0 vs 10.0 images/s)" in out
    assert fd.Detector.load(package).choice.source == "calibrated"
    assert main(["info", str(package)]) == 0
    assert "auto         openvino-int8 (calibrated" in capsys.readouterr().out
    measured.update(onnxruntime=40.0)
    assert main(["info", str(package), "--calibrate"]) == 0
    assert fd.Detector.load(package).variant.name == "int8"  # never a loser: the new measurement decides


def test_a_package_without_the_variant_runs_onnxruntime_without_a_warning(vit_package, monkeypatch):
    monkeypatch.setattr(choice_module, "cpu_flags", lambda: VNNI)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector = fd.Detector.load(vit_package)
    assert detector.runtime == "onnxruntime"
    with pytest.raises(fd.VariantNotFoundError, match="no variant 'openvino-int8'"):
        fd.Detector.load(vit_package, variant="openvino-int8")


# --- hostile classes ----------------------------------------------------------------------------------------


def test_openvino_missing_names_the_extra_and_auto_falls_back(package, monkeypatch):
    monkeypatch.setattr(choice_module, "cpu_flags", lambda: VNNI)
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(fd.MissingExtraError, match=r'pip install "fastvit-detect\[openvino\]"'):
        fd.Detector.load(package, variant="openvino-int8")
    with pytest.warns(RuntimeWarning, match="OpenVINO variant .* isn't installed"):
        detector = fd.Detector.load(package)
    assert (detector.variant.name, detector.runtime) == ("int8", "onnxruntime")


def test_a_tampered_openvino_file_is_caught_by_sha256(package_copy, monkeypatch):
    monkeypatch.setattr(choice_module, "cpu_flags", lambda: VNNI)
    data = package_copy / "model_openvino_int8.onnx_data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    for variant in ("openvino-int8", "auto"):  # tampering is an error, never a reason to fall back quietly
        with pytest.raises(fd.ChecksumMismatchError, match="model_openvino_int8.onnx_data has sha256"):
            fd.Detector.load(package_copy, variant=variant)


def _hand_built(directory: Path, graph, name: str = "openvino-int8") -> Path:
    """A manifest package whose only variants are ``graph`` on OpenVINO and the same graph on onnxruntime."""
    import onnx

    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "vit", "image_size": SIDE,
                                                       "id2label": {"0": "Fake", "1": "Real"}}))
    (directory / "preprocessor_config.json").write_text(json.dumps(PROCESSOR))
    variants = {}
    for variant, file, runtime in ((name, "model_openvino_int8.onnx", "openvino"),
                                   ("int8", "model_quantized.onnx", "onnxruntime")):
        onnx.save_model(graph, str(directory / file))
        entry = FileEntry(file, file_sha256(directory / file), (directory / file).stat().st_size)
        variants[variant] = VariantEntry(variant, entry, precision="int8", runtime=runtime)
    manifest = Manifest(format_version=2, variants=variants, labels=("Fake", "Real"), default_variant="int8")
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict()))
    return directory


def _nan_for_dark_red_graph():
    """Logits from the mean colour; NaN where the mean red is below mid-grey (sqrt of a negative)."""
    from hostile import WEIGHTS
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["pixel_values", "axes"], ["mean"], keepdims=0),
             helper.make_node("MatMul", ["mean", "weights"], ["raw"]),
             helper.make_node("Slice", ["mean", "start", "end", "axis"], ["red"]),
             helper.make_node("Sqrt", ["red"], ["root"]),
             helper.make_node("Mul", ["root", "zero"], ["poison"]),  # 0 where finite, NaN where the root is
             helper.make_node("Add", ["raw", "poison"], ["logits"])]
    constants = [numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
                 numpy_helper.from_array(WEIGHTS, "weights"),
                 numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
                 numpy_helper.from_array(np.array([1], dtype=np.int64), "end"),
                 numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
                 numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero")]
    graph = helper.make_graph(
        nodes, "nan-when-dark-red", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                                                   ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_nan_logits_from_openvino_are_a_model_output_error_for_that_image_alone(tmp_path):
    package = _hand_built(tmp_path / "nan", _nan_for_dark_red_graph())
    detector = fd.Detector.load(package, variant="openvino-int8")
    results = detector.predict_batch([colour((250, 0, 0)), colour((0, 0, 250)), colour((250, 0, 5))],
                                     errors="return")
    assert [type(r).__name__ for r in results] == ["Prediction", "ModelOutputError", "Prediction"]
    assert results[0].label == "Fake" and "non-finite logits" in str(results[1])
    with pytest.raises(fd.ModelOutputError, match="non-finite"):
        detector.predict(colour((0, 0, 250)))


def test_a_graph_openvino_cant_compile_is_a_typed_error_and_auto_falls_back(tmp_path, monkeypatch):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("NoSuchOp", ["pixel_values"], ["logits"], domain="com.example")],
                              "bogus", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                                                      ["batch", 3, SIDE, SIDE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.example", 1)])
    package = _hand_built(tmp_path / "bogus", model)
    (package / "model_quantized.onnx").unlink()  # the fallback: a working onnxruntime graph
    import onnx
    from hostile import tiny_graph

    onnx.save_model(tiny_graph(), str(package / "model_quantized.onnx"))
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    manifest["variants"]["int8"].update(sha256=file_sha256(package / "model_quantized.onnx"),
                                        size_bytes=(package / "model_quantized.onnx").stat().st_size)
    (package / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(fd.BackendError, match="OpenVINO .* can't compile this graph"):
        fd.Detector.load(package, variant="openvino-int8")
    monkeypatch.setattr(choice_module, "cpu_flags", lambda: VNNI)
    with pytest.warns(RuntimeWarning, match="running variant 'int8' instead"):
        detector = fd.Detector.load(package)
    assert (detector.variant.name, detector.choice.source) == ("int8", "fallback")
    assert detector.predict(colour((250, 0, 0))).label == "Fake"


def test_an_unknown_runtime_is_a_typed_error_naming_it(package_copy):
    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    manifest["variants"]["openvino-int8"]["runtime"] = "tpu-magic"
    (package_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(fd.BackendError, match="'tpu-magic', which this fastvit-detect doesn't know"):
        fd.Detector.load(package_copy, variant="openvino-int8")
    assert fd.Detector.load(package_copy).runtime == "onnxruntime"  # auto never picks what it can't run


# --- the compiled-model cache -------------------------------------------------------------------------------


def test_compiled_models_are_cached_and_a_corrupt_cache_is_bypassed(package, private_cache, odd_images):
    pictures = list(odd_images.values())[:4]
    first = fd.Detector.load(package, variant="openvino-int8").predict_batch(pictures)
    blobs = list((private_cache / "openvino").iterdir())
    assert blobs, "the compiled model was not cached"
    for blob in blobs:  # a corrupt cache: garbage where the compiled model was
        os.chmod(blob, 0o600)
        blob.write_bytes(b"\x00garbage" * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OpenVINO may recompile silently or we warn: either way, never fatal
        again = fd.Detector.load(package, variant="openvino-int8").predict_batch(pictures)
    assert [p.label for p in again] == [p.label for p in first]
    np.testing.assert_allclose([p.logits for p in again], [p.logits for p in first], atol=1e-5)


def test_a_hostile_cache_directory_is_never_used(package, private_cache, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    private_cache.mkdir()
    (private_cache / "openvino").symlink_to(elsewhere)  # a link planted where the cache would go
    with pytest.warns(RuntimeWarning, match="compiling without it"):
        detector = fd.Detector.load(package, variant="openvino-int8")
    assert detector.predict(colour((250, 0, 0))).label in detector.labels
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    (private_cache / "openvino").unlink()
    (private_cache / "openvino").mkdir(mode=0o777)
    os.chmod(private_cache / "openvino", 0o777)  # writable by anyone: a blob planted there would run
    assert usable_cache_directory(private_cache / "openvino") is None
    os.chmod(private_cache / "openvino", 0o700)
    assert usable_cache_directory(private_cache / "openvino") == private_cache / "openvino"
    if os.getuid() == 0:
        os.chown(private_cache / "openvino", 65534, 65534)  # someone else's
        assert usable_cache_directory(private_cache / "openvino") is None
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    assert usable_cache_directory(blocker / "openvino") is None  # can't be created: no cache, no error


class _CacheRefusingCore:
    """OpenVINO's Core, except that any compile asking for a compiled-model cache raises (a full disk, a cache
    written by another OpenVINO), and, with ``broken``, every compile does."""

    def __init__(self, core, broken: bool = False):
        self._core, self._broken, self.configs = core, broken, []

    def __getattr__(self, name):
        return getattr(self._core, name)

    def compile_model(self, path, device, config):
        self.configs.append(dict(config))
        if "CACHE_DIR" in config:
            raise RuntimeError("Exception from src/inference/src/cache_manager.hpp: No space left on device")
        if self._broken:
            raise RuntimeError("the plugin gave up")
        return self._core.compile_model(path, device, config)


def test_a_cache_openvino_cant_use_is_warned_about_and_compiled_without(package, private_cache, monkeypatch,
                                                                         tmp_path):
    from fastvit_detect import openvino_session

    core = _CacheRefusingCore(openvino_session._core())
    monkeypatch.setattr(openvino_session, "_core", lambda: core)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")  # as a user sees them: once per place in the code
        detector = fd.Detector.load(package, variant="openvino-int8")
    told = [str(warning.message) for warning in shown if "compiled-model cache" in str(warning.message)]
    assert len(told) == 1, told  # once for the load, not once per session it opens
    assert re.search(r"compiled-model cache .*openvino failed \(RuntimeError: .*No space left on device\); "
                     r"compiled without it", told[0]), told[0]
    assert detector.predict(colour((250, 0, 0))).label in detector.labels
    assert "CACHE_DIR" not in core.configs[-1]  # each compile tried with it, then without
    # Both cache warnings (this one, and a directory that can't be used at all) name the same place, the backend
    # that opened the session: one filter (-W ignore::RuntimeWarning:fastvit_detect.backends) silences both.
    shutil.rmtree(private_cache / "openvino")
    (private_cache / "openvino").symlink_to(tmp_path)  # planted: never used
    with warnings.catch_warnings(record=True) as unusable:
        warnings.simplefilter("default")
        fd.Detector.load(package, variant="openvino-int8")
    places = {Path(warning.filename).name for warning in [*shown, *unusable] if "cache" in str(warning.message)}
    assert places == {"backends.py"}, places


def test_a_compile_that_fails_without_the_cache_too_reports_the_first_failure(package, private_cache, monkeypatch):
    from fastvit_detect import openvino_session

    core = _CacheRefusingCore(openvino_session._core(), broken=True)
    monkeypatch.setattr(openvino_session, "_core", lambda: core)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compiled without it" for a compile that never succeeded
        with pytest.raises(fd.BackendError, match="can't compile this graph for the CPU: RuntimeError: .*No space"):
            fd.Detector.load(package, variant="openvino-int8")


def test_the_cache_can_be_switched_off_with_ov_config(package, private_cache):
    fd.Detector.load(package, variant="openvino-int8", ov_config={"CACHE_DIR": ""}).predict(colour((9, 9, 9)))
    assert not (private_cache / "openvino").exists()


# --- everywhere: the server, scan, eval, explain, the exporter ----------------------------------------------


def test_the_server_batches_on_openvino_and_reports_the_choice(package, monkeypatch):
    import asyncio

    import httpx

    from fastvit_detect.server import ServeSettings, create_app

    monkeypatch.setattr(choice_module, "cpu_flags", lambda: VNNI)
    detector = fd.Detector.load(package)
    app = create_app(detector, ServeSettings(max_batch=4, max_wait_ms=20))
    photos = [path.read_bytes() for path in sample_photos()[:4]]

    async def requests() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            answers = await asyncio.gather(*(client.post("/api/v1/predict", content=photo) for photo in photos))
            answers.append(await client.post("/api/v1/predict", content=b"garbage"))
            return [*answers, await client.get("/healthz"), await client.get("/api/v1/model")]

    try:
        *predicted, bad, health, model = asyncio.run(requests())
    finally:
        app.state.batcher.close()
    local = detector.predict_batch(sample_photos()[:4], batch_size=1)
    assert [answer.json()["label"] for answer in predicted] == [p.label for p in local]
    assert bad.status_code == 415 or bad.status_code == 422
    for body in (health.json(), model.json()):
        assert body["runtime"] == "openvino"
        assert body["variant_choice"]["variant"] == "openvino-int8" and body["variant_choice"]["source"] == "rule"


def test_scan_eval_and_explain_run_on_openvino(package, tmp_path, capsys, monkeypatch, odd_images, reference):
    monkeypatch.setattr(choice_module, "cpu_flags", lambda: VNNI)
    folder = tmp_path / "photos"
    folder.mkdir()
    pictures = sample_photos()[:4]
    for path in pictures:
        shutil.copy(path, folder / path.name)
    output = tmp_path / "scan.jsonl"
    assert main(["scan", str(folder), "--model", str(package), "-o", str(output)]) == 0
    records = {Path(row["image"]).name: row for row in map(json.loads, output.read_text().splitlines())}
    assert {name: row["label"] for name, row in records.items()} == {
        path.name: label for path, label in zip(pictures, reference.labels(KIND, pictures))}
    data = tmp_path / "data"
    for label, path in zip(reference.labels(KIND, pictures), pictures):
        (data / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, data / label / path.name)
    capsys.readouterr()
    assert main(["eval", "--model", str(package), "--data", str(data), "--variant", "all", "--json"]) == 0
    accuracy = {row["variant"]: row["accuracy"] for row in json.loads(capsys.readouterr().out)["variants"]}
    assert accuracy == {"fp32": 1.0, "int8": 1.0, "openvino-int8": 1.0}
    explanation = fd.Detector.load(package).explain(pictures[0], grid=2)
    assert explanation.heatmap.shape == (224, 224) and np.isfinite(explanation.heatmap).all()


def test_export_without_nncf_names_the_extras(checkpoints, tmp_path, monkeypatch):
    from fastvit_detect.build import ExportError
    from fastvit_detect.build.export import ExportSettings, export_package

    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ExportError, match=r'pip install "fastvit-detect\[export,openvino\]"'):
        export_package(ExportSettings(str(checkpoints["vit"]), tmp_path / "out", openvino=True), log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_the_export_gate_leaves_out_an_openvino_variant_that_strays(checkpoints, tmp_path):
    from fastvit_detect.build.export import ExportSettings, export_package

    lines: list[str] = []
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sample_photos()[:3]:
        shutil.copy(path, photos / path.name)
    manifest = export_package(ExportSettings(str(checkpoints["vit"]), tmp_path / "strict", openvino=True,
                                             calibration_dir=photos, max_probability_diff=0.0, min_agreement=1.0),
                              log=lines.append)
    assert any("with NNCF on photos/ (3 images, --calibration)" in line for line in lines)  # dynamic int8 + it
    assert "openvino-int8" not in manifest.variants
    assert any("openvino-int8 LEFT OUT" in line for line in lines)
    assert not list((tmp_path / "strict").glob("model_openvino_int8*"))
    assert fd.Detector.load(tmp_path / "strict").runtime == "onnxruntime"


@pytest.mark.parametrize("cores, expected", [(1, (1, 1)), (2, (2, 1)), (3, (3, 1)), (4, (4, 1)), (5, (2, 2)),
                                             (6, (3, 2)), (16, (8, 2))])
def test_openvinos_rule_runs_streams_and_onnxruntimes_is_unchanged(cores, expected):
    from fastvit_detect.layout import rule_layout

    layout = rule_layout(cores, "openvino")
    assert (layout.workers, layout.threads_per_worker) == expected and layout.source == "rule"
    assert (rule_layout(2).workers, rule_layout(2).threads_per_worker) == (1, 2)  # onnxruntime's, as measured


def test_the_default_layout_follows_the_runtime(package, monkeypatch):
    monkeypatch.setattr("fastvit_detect.detector.physical_core_count", lambda: 2)
    openvino = fd.Detector.load(package, variant="openvino-int8")
    onnx = fd.Detector.load(package, variant="int8")
    assert (openvino.layout.workers, openvino.layout.threads_per_worker) == (2, 1)
    assert (onnx.layout.workers, onnx.layout.threads_per_worker) == (1, 2)
    assert openvino.session.threads == 2  # predict() still has every core, on a latency-hinted model


@pytest.mark.parametrize("config, cause", [
    ("INFERENCE_NUM_THREADS=2", "must be a mapping"), ({1: 2}, "property names are non-empty strings"),
    ({"": 1}, "property names are non-empty strings"), ({"NUM_STREAMS": float("inf")}, "not a finite number"),
    ({"NUM_STREAMS": float("nan")}, "not a finite number"), ({"NUM_STREAMS": [2]}, "a string, number or bool"),
])
def test_a_malformed_ov_config_is_an_invalid_option_naming_it(package, config, cause):
    with pytest.raises(fd.InvalidOptionError, match=cause):
        fd.Detector.load(package, variant="openvino-int8", ov_config=config)


def test_a_property_openvino_refuses_is_a_backend_error_naming_the_config(package):
    with pytest.raises(fd.BackendError, match=r"with ov_config \{'INFERENCE_NUM_THREADS': -5\}"):
        fd.Detector.load(package, variant="openvino-int8", ov_config={"INFERENCE_NUM_THREADS": -5})


def test_a_planted_or_malformed_choice_cache_is_ignored(package, monkeypatch, tmp_path):
    """The cached choice decides which runtime runs: a symlink, someone else's file, a foreign winner or a
    non-JSON file there is ignored (the rule decides), never followed or fatal."""
    import json as json_module

    monkeypatch.setattr(choice_module, "cpu_flags", lambda: VNNI)  # the rule says openvino-int8
    opened = ModelPackage.open(package)
    path = choice_module.choice_cache_path(opened.variants["int8"], opened.variants["openvino-int8"],
                                           openvino_version())
    choice_module.write_choice(path, {"int8": 50.0, "openvino-int8": 10.0})
    record = path.read_text()
    assert fd.Detector.load(package).variant.name == "int8"  # the genuine record is followed
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text(record)
    path.unlink()
    path.symlink_to(elsewhere)
    assert fd.Detector.load(package).choice.source == "rule"
    path.unlink()
    for text in ("not json", json_module.dumps({**json_module.loads(record), "winner": "fp32"}),
                 json_module.dumps({**json_module.loads(record), "machine": "another"})):
        path.write_text(text)
        assert fd.Detector.load(package).choice.source == "rule"
    if os.getuid() == 0:
        path.write_text(record)
        os.chown(path, 65534, 65534)
        assert fd.Detector.load(package).choice.source == "rule"
