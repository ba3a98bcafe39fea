"""The benchmark harness (benchmarks/, issue 4): an end-to-end run on a tiny model, and its building blocks.

Numbers are never asserted, only the shape of what the harness writes: every system has every figure, measured
or skipped with a reason, and the report and plots exist.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BUILD_LIBRARIES, ROOT, cached_build
from face_reference import facenet_wheel
from PIL import Image

OPENVINO_INSTALLED = all(importlib.util.find_spec(name) for name in ("openvino", "nncf"))
# fastvit-detect/auto always; fastvit-detect/openvino-int8 where the package could be exported with --openvino.
EXPECTED_SYSTEMS = {
    "pytorch/fp32", "pytorch-pipeline/fp32", "pytorch/int8", "torch.compile/fp32", "pytorch/bf16", "optimum/fp32",
    "optimum/int8", "fastvit-detect/fp32", "fastvit-detect/int8", "fastvit-detect/auto", "openvino/fp32",
    "openvino/int8", *(["fastvit-detect/openvino-int8"] if OPENVINO_INSTALLED else []),
}


def must_run() -> set[str]:
    """Installed in the dev environment (the openvino extra where it is), so they must be measured, not skipped."""
    from benchmarks.systems import bf16_unavailable_reason
    from fastvit_detect.session import cpu_flags

    systems = {"pytorch/fp32", "pytorch-pipeline/fp32", "pytorch/int8", "optimum/fp32", "optimum/int8",
               "fastvit-detect/fp32", "fastvit-detect/int8", "fastvit-detect/auto"}
    if OPENVINO_INSTALLED:
        systems |= {"openvino/fp32", "openvino/int8", "fastvit-detect/openvino-int8"}
    if bf16_unavailable_reason(cpu_flags()) is None:
        systems.add("pytorch/bf16")
    return systems


MUST_RUN = must_run()
FIGURES = {
    "latency_e2e": ("p50_ms", "p90_ms", "p99_ms", "samples_ms", "speedup_vs_baseline"),
    "latency_model": ("p50_ms", "p90_ms", "p99_ms"),
    "throughput": ("images_per_s", "batch_latency", "speedup_vs_baseline"),
    "coldstart": ("first_label_s", "peak_rss_mib", "total_s", "label"),
    "footprint": ("total_bytes", "by_distribution"),
    "fidelity": ("top1_agreement", "max_abs_probability_diff"),
    "compute": ("peak_g_per_s",),
    "accuracy": ("accuracy", "images"),
}
BATCH_SIZES, THREADS = (1, 2), ("1", "all")
BENCH_LIBRARIES = (*BUILD_LIBRARIES, "optimum", "matplotlib", "scikit-image")


def key(row: dict) -> str:
    return f"{row['system']}/{row['variant']}"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> Path:
    """One end-to-end run of ``python -m benchmarks`` on the tiny preset, with a labelled folder for accuracy.

    With FASTVIT_TEST_CACHE set the run is kept there, keyed by the benchmark and runtime code and the libraries'
    versions (conftest.cached_build): the tests read its results, they don't time it."""
    pytest.importorskip("torch")
    pytest.importorskip("optimum.onnxruntime")

    wheel = facenet_wheel()  # the faces row's face detector; without it the row is skipped with the reason

    def build(base: Path) -> None:
        rng = np.random.default_rng(0)
        for label in ("Real", "Fake"):
            (base / "data" / label).mkdir(parents=True)
            for index in range(2):
                pixels = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(base / "data" / label / f"{index}.png")
        command = [sys.executable, "-m", "benchmarks", "--preset", "tiny", "--output", str(base / "out"),
                   "--cache-dir", str(base / "cache"), "--data", str(base / "data"), "--rounds", "1",
                   "--large-mp", "0.3", "--batch-sizes", ",".join(map(str, BATCH_SIZES)),
                   "--threads", ",".join(THREADS), "--coldstart-repeats", "1", "--no-compile",
                   *(["--faces-wheel", str(wheel)] if wheel else [])]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        (base / "stderr.txt").write_text(result.stderr)
        (base / "built-in.txt").write_text(str(base))  # results.json records paths under it (see relocated)

    base = cached_build("bench-run" if wheel else "bench-run-no-faces",
                        [ROOT / "benchmarks", ROOT / "src" / "fastvit_detect", Path(__file__)], build,
                        tmp_path_factory.mktemp("bench"), libraries=(*BENCH_LIBRARIES,))
    assert "end-to-end latency" in (base / "stderr.txt").read_text()  # progress goes to stderr while it runs
    return base / "out"


def relocated(bench_run: Path, recorded: str) -> Path:
    """A path results.json recorded, in this session's copy of the run (it may have been built in the cache)."""
    built_in = Path((bench_run.parent / "built-in.txt").read_text())
    return bench_run.parent / Path(recorded).relative_to(built_in)


@pytest.fixture(scope="module")
def results(bench_run) -> dict:
    return json.loads((bench_run / "results.json").read_text())


def test_every_system_is_listed_with_a_status(results):
    systems = {f"{s['system']}/{s['variant']}": s for s in results["systems"]}
    assert set(systems) == EXPECTED_SYSTEMS
    for name, system in systems.items():
        assert system["status"] in ("ok", "skipped"), name
        if system["status"] == "skipped":
            assert system["reason"], f"{name} skipped without a reason"
    assert {name for name, s in systems.items() if s["status"] == "ok"} >= MUST_RUN
    assert "--no-compile" in systems["torch.compile/fp32"]["reason"]


def test_every_system_has_every_figure_measured_or_skipped_with_reason(results):
    for figure, fields in FIGURES.items():
        rows = [row for row in results["rows"] if row["figure"] == figure]
        assert {key(row) for row in rows} == EXPECTED_SYSTEMS, figure
        for row in rows:
            if row["status"] == "skipped":
                assert row.get("reason"), f"{figure} {key(row)}: skipped without a reason"
                continue
            assert row["status"] == "ok"
            for field in fields:
                if field == "speedup_vs_baseline" or (figure == "latency_model" and key(row) not in MUST_RUN):
                    continue
                assert field in row, f"{figure} {key(row)} lacks {field}"
    measured = {(row["figure"], key(row)) for row in results["rows"] if row["status"] == "ok"}
    for name in MUST_RUN:
        for figure in ("latency_e2e", "throughput", "coldstart", "footprint", "fidelity", "accuracy"):
            assert (figure, name) in measured, f"{name} has no measured {figure}"


def test_throughput_covers_every_batch_size_and_thread_count(results):
    threads = results["plan"]["threads_resolved"]
    rows = [row for row in results["rows"] if row["figure"] == "throughput"]
    for name in EXPECTED_SYSTEMS:
        cells = {(row["batch_size"], row["threads"]) for row in rows if key(row) == name}
        assert cells == {(b, t) for b in BATCH_SIZES for t in threads}, name


def test_ratios_are_against_the_pytorch_baseline(results):
    for row in results["rows"]:
        if row["figure"] == "latency_e2e" and row["status"] == "ok":
            ratio = row["speedup_vs_baseline"]
            assert set(ratio) == {"median", "p10", "p90", "pairs"} and ratio["pairs"] >= 1
            if key(row) == "pytorch/fp32":
                assert ratio["median"] == pytest.approx(1.0)
        if row["figure"] == "fidelity" and key(row) == "pytorch/fp32":
            assert row["top1_agreement"] == 1.0 and row["max_abs_probability_diff"] == 0.0


def test_the_fastest_alternative_is_named_with_our_paired_ratio_to_it(bench_run, results):
    comparisons = results["versus_best_alternative"]
    figures = {(c["figure"], c["batch_size"], c["threads"]) for c in comparisons}
    assert ("latency_e2e", 1, results["machine"]["physical_cores"]) in figures
    assert {("throughput", b, t) for b in BATCH_SIZES for t in results["plan"]["threads_resolved"]} <= figures
    for comparison in comparisons:
        rows = [r for r in results["rows"] if r["figure"] == comparison["figure"] and r["status"] == "ok"
                and r["batch_size"] == comparison["batch_size"] and r["threads"] == comparison["threads"]]
        others = {key(r): float(np.median(r["samples_ms"])) for r in rows if r["system"] != "fastvit-detect"}
        ours = {key(r): float(np.median(r["samples_ms"])) for r in rows if r["system"] == "fastvit-detect"}
        assert comparison["alternative"] == min(others, key=others.get)
        assert comparison["ours"] == min(ours, key=ours.get)
        assert comparison["speedup"]["pairs"] >= 1
    report = (bench_run / "report.md").read_text()
    headline = report[report.index("## Headline"):report.index("## End-to-end latency")]
    assert "Against the fastest alternative" in headline
    e2e = next(c for c in comparisons if c["figure"] == "latency_e2e")
    assert f"{e2e['alternative']}: {e2e['alternative_ms']:.1f} ms" in headline
    assert f"**{e2e['speedup']['median']:.2f}x**" in headline


def test_accuracy_rows_carry_agreement_with_pytorch(results):
    rows = {key(r): r for r in results["rows"] if r["figure"] == "accuracy" and r["status"] == "ok"}
    assert rows["pytorch/fp32"]["top1_agreement"] == 1.0 and rows["pytorch/fp32"]["max_abs_probability_diff"] == 0
    for name, row in rows.items():
        assert row["reference"] == "pytorch/fp32" and 0 <= row["top1_agreement"] <= 1, name


@pytest.mark.skipif(not OPENVINO_INSTALLED, reason="the openvino extra isn't installed")
def test_openvino_reports_its_precision_and_int8_is_calibrated_like_static_int8(results):
    from benchmarks.images import CALIBRATION_PHOTO_FILES

    systems = {f"{s['system']}/{s['variant']}": s for s in results["systems"]}
    chosen = systems["openvino/fp32"]["notes"]["inference_precision"]
    assert chosen.split()[0] in ("f32", "bf16", "f16") and "INFERENCE_PRECISION_HINT" in chosen
    assert systems["openvino/fp32"]["precision"] == {"f32": "fp32", "f16": "fp16"}.get(chosen.split()[0], "bf16")
    quantization = systems["openvino/int8"]["notes"]["quantization"]
    # The default calibration folder: every held-out photo, under the exporter's default limit of 64.
    assert quantization["calibration_images"] == len(CALIBRATION_PHOTO_FILES) == quantization["subset_size"]
    assert quantization["recipe"]["calibration_limit"] == 64
    assert results["model"]["calibration"]["dir"] == quantization["recipe"]["calibration_dir"]
    fidelity = next(r for r in results["rows"] if r["figure"] == "fidelity" and key(r) == "openvino/int8")
    assert fidelity["max_abs_probability_diff"] < 0.05  # the exporter's own bound for an int8 variant


def test_machine_model_and_peak_are_recorded(results):
    machine = results["machine"]
    for field in ("cpu_model", "physical_cores", "flags", "libraries", "clock_mhz"):
        assert field in machine
    assert machine["libraries"]["onnxruntime"] and machine["libraries"]["torch"]
    assert results["model"]["macs"]["macs"] > 0
    assert "assumptions" in results["peak"]
    assert any(image["width"] * image["height"] >= 250_000 for image in results["images"])  # the generated JPEG


def test_fastvit_footprint_is_torch_free(results):
    row = next(r for r in results["rows"] if r["figure"] == "footprint" and key(r) == "fastvit-detect/int8")
    assert {"numpy", "pillow", "onnxruntime"} <= set(row["by_distribution"])
    assert "torch" not in row["by_distribution"] and "transformers" not in row["by_distribution"]
    torch_row = next(r for r in results["rows"] if r["figure"] == "footprint" and key(r) == "pytorch/fp32")
    assert {"torch", "transformers"} <= set(torch_row["by_distribution"])


def test_report_and_plots_are_written(bench_run, results):
    report = (bench_run / "report.md").read_text()
    for heading in ("## Headline", "## End-to-end latency", "## Model-only latency", "## Throughput",
                    "## Cold start", "## Install footprint", "## Fidelity", "## Accuracy", "## Compute efficiency"):
        assert heading in report, heading
    for name in EXPECTED_SYSTEMS:
        assert name in report, name
    openvino = [s for s in results["systems"] if s["system"] == "openvino"]
    assert "not installed" in report or all(s["status"] == "ok" for s in openvino)
    for plot in ("latency.png", "throughput.png", "coldstart_memory.png"):
        data = (bench_run / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, plot
        assert f"({plot})" in report


# --- building blocks ----------------------------------------------------------------------------------------


def test_interleave_takes_turns_in_settled_blocks_and_isolates_failures():
    from fastvit_detect.build.timing import interleave, paired_ratio

    calls: list[tuple[str, int]] = []

    def call(name: str, trial: int) -> None:
        calls.append((name, trial))
        if name == "broken" and trial == 1:
            raise RuntimeError("boom")

    result = interleave(["a", "b", "broken"], [0, 1, 2], call, rounds=2, block=2)
    assert result.failures == {"broken": "RuntimeError: boom"}
    assert set(result.samples) == {"a", "b"} and all(len(v) == 6 for v in result.samples.values())
    # Block [0, 1]: each system settles on trial 0 (untimed), then runs 0 and 1 back to back.
    assert calls[:9] == [("a", 0), ("a", 0), ("a", 1), ("b", 0), ("b", 0), ("b", 1),
                         ("broken", 0), ("broken", 0), ("broken", 1)]
    # Block [2, 0] starts one system later in the rotation; the broken system is gone.
    assert calls[9:15] == [("b", 2), ("b", 2), ("b", 0), ("a", 2), ("a", 2), ("a", 0)]
    with pytest.raises(ValueError, match="block"):
        interleave(["a"], [0], call, block=0)
    calls.clear()
    interleave(["a", "b"], [0], call, rotation=1)  # a phase of one-block calls can still vary who goes first
    assert calls == [("b", 0), ("b", 0), ("a", 0), ("a", 0)]
    ratio = paired_ratio([2.0, 4.0, 6.0], [1.0, 1.0, 3.0])
    assert ratio["median"] == pytest.approx(2.0) and ratio["pairs"] == 3


def test_vit_base_mac_count_matches_the_published_figure():
    from benchmarks.compute import cpu_peak, vit_macs

    config = {"model_type": "vit", "image_size": 224, "patch_size": 16, "hidden_size": 768,
              "intermediate_size": 3072, "num_hidden_layers": 12, "id2label": {"0": "Fake", "1": "Real"}}
    assert vit_macs(config)["gmacs"] == pytest.approx(17.56, abs=0.05)
    peak = cpu_peak()
    assert peak["assumptions"]
    if peak["fp32_gflops"] is not None:
        assert peak["int8_gops"] > peak["fp32_gflops"] > 0


def test_bf16_is_benchmarked_only_where_the_cpu_computes_in_bf16(monkeypatch, tmp_path):
    from benchmarks.artifacts import Artifacts
    from benchmarks.systems import TorchBf16System, Unavailable, bf16_unavailable_reason

    assert bf16_unavailable_reason(frozenset({"avx2", "avx512f", "avx512_bf16"})) is None
    assert bf16_unavailable_reason(frozenset({"avx2", "amx_tile", "amx_bf16"})) is None
    reason = bf16_unavailable_reason(frozenset({"avx2", "avx512f", "avx512_vnni", "amx_int8"}))
    assert "AMX-BF16" in reason and "AVX512-BF16" in reason
    assert "unreadable" in bf16_unavailable_reason(frozenset())
    # The system asks before it imports anything: a CPU without bf16 skips it with that reason.
    monkeypatch.setattr("fastvit_detect.session.cpu_flags", lambda: frozenset({"avx2", "fma"}))
    missing = tmp_path / "missing"
    system = TorchBf16System(Artifacts("none", missing, missing, missing))
    with pytest.raises(Unavailable, match="neither AMX-BF16 nor AVX512-BF16"):
        system.load(1)


@pytest.mark.parametrize("hidden", ["openvino", "nncf"])
def test_openvino_systems_are_skipped_naming_the_extra_when_not_installed(monkeypatch, tmp_path, hidden):
    from benchmarks.__main__ import Plan, Run, load_systems
    from benchmarks.artifacts import Artifacts
    from benchmarks.systems import OpenVinoInt8System, OpenVinoSystem

    # Without the extra at all, openvino is the first import to fail whatever is hidden.
    missing = hidden if importlib.util.find_spec("openvino") else "openvino"
    monkeypatch.setitem(sys.modules, hidden, None)  # import fails as if the package weren't installed
    artifacts = Artifacts("none", tmp_path, tmp_path, tmp_path, openvino_dir=tmp_path, calibration_dir=tmp_path)
    systems = [OpenVinoInt8System(artifacts)] + ([OpenVinoSystem(artifacts)] if hidden == "openvino" else [])
    run = Run(systems)
    load_systems(run, Plan.for_mode(quick=True), 1)
    for system in systems:
        assert run.skipped[system.key] == f'not installed: {missing} (pip install "fastvit-detect[openvino]")'


def test_versus_best_alternative_pairs_our_fastest_variant_with_the_fastest_other_system():
    from benchmarks.__main__ import versus_best_alternative

    def row(system, variant, samples, figure="latency_e2e", status="ok"):
        return {"figure": figure, "system": system, "variant": variant, "batch_size": 1, "threads": 2,
                "status": status, "samples_ms": samples}

    rows = [row("pytorch", "fp32", [200.0, 220.0, 210.0]), row("openvino", "int8", [50.0, 60.0, 40.0]),
            row("fastvit-detect", "fp32", [150.0, 160.0, 140.0]), row("fastvit-detect", "int8", [60.0, 60.0, 60.0]),
            row("optimum", "int8", [1.0], status="skipped"), row("pytorch", "fp32", [100.0], figure="fidelity")]
    (comparison,) = versus_best_alternative(rows)
    assert comparison["ours"] == "fastvit-detect/int8" and comparison["alternative"] == "openvino/int8"
    # Per-trial ratios 50/60, 60/60, 40/60: median 5/6, we're slower.
    assert comparison["speedup"]["median"] == pytest.approx(5 / 6) and comparison["speedup"]["pairs"] == 3
    assert comparison["ours_ms"] == 60.0 and comparison["alternative_ms"] == 50.0
    assert versus_best_alternative([r for r in rows if r["system"] != "fastvit-detect"]) == []


def test_the_report_compares_auto_with_its_targets(bench_run, results):
    targets = {(c["figure"], c["target"]) for c in results["auto_against_targets"]}
    assert ("throughput", "fastvit-detect/int8") in targets
    if OPENVINO_INSTALLED:
        assert {("latency_e2e", "openvino/int8"), ("throughput", "openvino/int8")} <= targets
    auto = next(s for s in results["systems"] if s["system"] == "fastvit-detect" and s["variant"] == "auto")
    assert auto["notes"]["choice"] and auto["notes"]["runtime"] in ("onnxruntime", "openvino")
    assert "### The auto choice against its targets" in (bench_run / "report.md").read_text()


def test_auto_is_compared_with_raw_openvino_and_onnxruntime_int8_cell_by_cell():
    from benchmarks.__main__ import auto_against_targets

    def row(variant, samples, system="fastvit-detect", figure="throughput", batch=8, threads=2):
        return {"figure": figure, "system": system, "variant": variant, "batch_size": batch, "threads": threads,
                "status": "ok", "samples_ms": samples}

    rows = [row("auto", [400.0, 500.0, 600.0]), row("int8", [600.0, 600.0, 600.0]),
            row("int8", [800.0, 800.0, 800.0], system="openvino"),
            row("auto", [100.0], figure="latency_e2e", batch=1), row("int8", [90.0], "openvino", "latency_e2e", 1),
            row("auto", [50.0], batch=32), row("fp32", [10.0])]  # no target at batch 32; fp32 is no target
    found = {(c["figure"], c["batch_size"], c["target"]): c for c in auto_against_targets(rows)}
    assert set(found) == {("throughput", 8, "fastvit-detect/int8"), ("throughput", 8, "openvino/int8"),
                          ("latency_e2e", 1, "openvino/int8")}
    # Per-trial ratios 600/400, 600/500, 600/600: median 1.2, auto is faster; the other way round for latency.
    assert found[("throughput", 8, "fastvit-detect/int8")]["speedup"]["median"] == pytest.approx(1.2)
    assert found[("throughput", 8, "openvino/int8")]["speedup"]["median"] == pytest.approx(1.6)
    assert found[("latency_e2e", 1, "openvino/int8")]["speedup"]["median"] == pytest.approx(0.9)
    assert found[("latency_e2e", 1, "openvino/int8")]["auto_ms"] == 100.0


def test_calibration_options_are_checked_before_anything_is_built(tmp_path, capsys):
    from benchmarks.__main__ import main

    not_a_dir = tmp_path / "file.png"
    not_a_dir.write_bytes(b"x")
    for argv, message in ((["--calibration", str(tmp_path / "missing")], "not a directory"),
                          (["--calibration", str(not_a_dir)], "not a directory"),
                          (["--calibration-limit", "0"], "at least 1")):
        with pytest.raises(SystemExit, match=message):
            main([*argv, "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not OPENVINO_INSTALLED, reason="the openvino extra isn't installed")
def test_openvino_int8_is_rebuilt_when_calibration_changes_and_refuses_an_empty_folder(bench_run, tmp_path):
    import shutil

    from benchmarks.artifacts import Artifacts, openvino_int8
    from fastvit_detect.build import ExportError

    results = json.loads((bench_run / "results.json").read_text())
    package = relocated(bench_run, results["model"]["package"])
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    artifacts = Artifacts("tiny", package, package, package, openvino_dir=tmp_path / "ov", calibration_dir=calibration)
    with pytest.raises(ExportError, match="no images found"):
        openvino_int8(artifacts)  # an empty folder, as export.py --calibration refuses it
    photos = sorted(relocated(bench_run, results["model"]["calibration"]["dir"]).iterdir())
    shutil.copyfile(photos[0], calibration / photos[0].name)
    first = openvino_int8(artifacts)
    assert first["calibration_images"] == 1 and artifacts.openvino_int8_xml.is_file()
    import openvino

    # Quantized like the exporter's static int8: MatMuls (their inputs behind FakeQuantize), not the patch
    # embedding's convolution, whose input is the pixels themselves.
    ops = openvino.Core().read_model(str(artifacts.openvino_int8_xml)).get_ops()
    convolution = next(op for op in ops if op.get_type_name() == "Convolution")
    assert convolution.input_value(0).get_node().get_type_name() == "Parameter"
    assert any(op.get_type_name() == "FakeQuantize" for op in ops)
    assert openvino_int8(artifacts) == first  # unchanged recipe: the cached model is reused
    shutil.copyfile(photos[1], calibration / photos[1].name)
    second = openvino_int8(artifacts)
    assert second["calibration_images"] == 2
    assert second["recipe"]["calibration_key"] != first["recipe"]["calibration_key"]


def test_int8_profiles_of_both_runtimes_line_up_by_layer_and_by_what_the_ops_compute():
    from benchmarks.profile_int8 import ATTENTION, LINEAR, by_category, layer_kind

    # Node names as onnxruntime's profiler and OpenVINO's get_profiling_info() report them.
    assert layer_kind("/vit/encoder/layer.11/attention/attention/query/MatMul_quant_kernel_time") == \
        "attention/attention/query"
    assert layer_kind("/vit/encoder/layer.0/attention/output/dense/MatMul") == "attention/output/dense"
    assert layer_kind("/vit/encoder/layer.3/output/dense/MatMul") == "output/dense"
    assert layer_kind("/vit/encoder/layer.3/attention/attention/MatMul_1") == "attention/attention/MatMul_1"
    assert layer_kind("/vit/layernorm/LayerNormalization") is None
    # onnxruntime's int8 GEMMs and OpenVINO's FullyConnected are one class; its fused attention Subgraph and
    # onnxruntime's separate MatMuls and Softmax another; unknown node types land in "other", never dropped.
    categories = by_category({"MatMulIntegerToFloat": 1.0, "FullyConnected": 2.0, "Subgraph": 3.0, "Softmax": 0.5,
                              "FusedMatMul": 0.25, "SomethingNew": 0.125})
    assert categories == {ATTENTION: 3.75, LINEAR: 3.0, "elementwise, transposes, reshapes, other": 0.125}
    assert list(categories) == [ATTENTION, LINEAR, "elementwise, transposes, reshapes, other"]  # largest first


def test_the_faces_row_is_measured_and_sane(bench_run, results):
    """Issue 23's faces row: detection on the 1 and 12 MP group photos in turns with the int8 model call, and
    images/s of predict_faces; every pasted face found, times and ratios positive, and the report shows them."""
    from benchmarks.faces import FACES_MEGAPIXELS, LAYOUT

    rows = [row for row in results["rows"] if row["figure"] == "faces_detection"]
    if facenet_wheel() is None:
        assert rows and all(row["status"] == "skipped" and row["reason"] for row in rows)
        return
    assert [row["megapixels"] for row in rows] == list(FACES_MEGAPIXELS)
    for row in rows:
        assert row["status"] == "ok" and key(row) == "fastvit-detect/int8", row.get("reason")
        assert row["faces_found"] == len(LAYOUT) and row["recall_iou50"] == 1.0, row["photo"]
        assert row["detection"]["p50_ms"] > 0 and row["model_call"]["p50_ms"] > 0
        assert row["detection_cpu_ms"] > 0 and row["model_call_cpu_ms"] > 0
        for ratio in (row["ratio_to_model_call"], row["cpu_ratio_to_model_call"]):
            assert ratio["median"] > 0 and ratio["pairs"] == results["plan"]["model_rounds"]
    (throughput,) = [row for row in results["rows"] if row["figure"] == "faces_throughput"]
    assert throughput["faces_per_image"] == len(LAYOUT) and throughput["images_per_s"] > 0
    report = (bench_run / "report.md").read_text()
    section = report[report.index("## Faces first"):]
    assert f"**{rows[0]['ratio_to_model_call']['median']:.2f}x**" in section
    assert f"**{throughput['images_per_s']:.2f} images/s**" in section
