"""The scaling benchmark's machinery: its plan, one real cell in a pinned subprocess, the report from figures made
up here, the bundle's unpacking, and the 16-core script's refusal without a bundle. No timing is asserted."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from benchmarks import scaling
from benchmarks.scaling import Cell, Plan

ROOT = Path(__file__).resolve().parent.parent


def test_core_counts_stop_at_the_machine():
    assert scaling.core_counts(2) == [1, 2]
    assert scaling.core_counts(6) == [1, 2, 4, 6]
    assert scaling.core_counts(16) == [1, 2, 4, 8, 16]


def test_the_plan_puts_the_targets_first():
    cells = scaling.plan_cells(16, ["pytorch-fp32", "pytorch-bf16"])
    keys = [cell.key for cell in cells]
    assert len(keys) == len(set(keys))
    layouts = [cell.layout for cell in cells if cell.axis == "layout" and cell.system == "fastvit-int8"]
    assert layouts[0] == "default"
    assert {"16x1", "8x2", "4x4", "2x8", "1x16", "shared:16x1", "shared:8x2", "procs:8x2", "procs:16x1",
            "calibrated"} <= set(layouts)
    assert sorted(cell.cores for cell in cells if cell.axis == "cores" and cell.system == "pytorch-fp32") == [
        1, 2, 4, 8, 16]
    last_layout = max(index for index, cell in enumerate(cells) if cell.axis == "layout"
                      and cell.system == "fastvit-int8")
    first_slow_torch = min(index for index, cell in enumerate(cells) if cell.system.startswith("pytorch")
                           and cell.cores < 16)
    assert last_layout < first_slow_torch  # a budget cut drops slow PyTorch cells, never a layout
    assert not [cell for cell in cells if "openvino" in cell.system]  # a package without the variant


def test_the_plan_covers_the_openvino_backend_before_pytorch():
    cells = scaling.plan_cells(16, ["pytorch-fp32"], openvino=True)
    openvino = [cell for cell in cells if cell.system == scaling.OPENVINO_SYSTEM]
    assert {cell.layout for cell in openvino if cell.axis == "layout"} == {
        "default", "16x1", "8x2", "4x4", "2x8", "1x16"}
    assert sorted(cell.cores for cell in openvino if cell.axis == "cores") == [1, 2, 4, 8, 16]
    last_openvino = max(cells.index(cell) for cell in openvino)
    assert last_openvino < min(index for index, cell in enumerate(cells) if cell.system.startswith("pytorch"))


def made_up_rows() -> list[dict]:
    def row(axis, system, cores, layout, rate, batch=8):
        return {"axis": axis, "system": system, "cores": cores, "layout": layout, "batch": batch, "status": "ok",
                "images_per_s": rate, "peak_rss_mib": 300.0, "layout_used": "x"}

    return [row("layout", "fastvit-int8", 16, "default", 80.0), row("layout", "fastvit-int8", 16, "8x2", 84.0),
            row("layout", "fastvit-int8", 16, "1x16", 33.0), row("layout", "fastvit-int8", 16, "procs:8x2", 90.0),
            row("cores", "fastvit-int8", 1, "default", 10.0), row("cores", "fastvit-int8", 16, "default", 79.0),
            row("cores", "pytorch-fp32", 16, "default", 16.0), row("layout", "pytorch-fp32", 16, "default", 20.0, 16),
            {"axis": "cores", "system": "pytorch-bf16", "cores": 16, "layout": "default", "batch": 8,
             "status": "skipped", "reason": "over the budget"}]


def test_ratios_and_report_from_made_up_figures(tmp_path):
    rows = made_up_rows()
    ratios = scaling.ratios(rows, 16)
    assert ratios["default_vs_best_manual"] == pytest.approx(80 / 84)  # processes don't count as a manual layout
    assert ratios["default_vs_per_core_rate_x_cores"] == pytest.approx(80 / 160)
    assert ratios["default_vs_pytorch_fp32_best_batch"] == pytest.approx(80 / 20)
    assert ratios["default_vs_one_session_all_cores"] == pytest.approx(80 / 33)
    results = {"machine": {"cpu_model": "Test CPU", "physical_cores": 16, "flags": ["avx512f"],
                           "libraries": {"onnxruntime": "1.0", "torch": "2.0"}},
               "created": "now", "rounds": 1, "seconds": 5.0, "rows": rows, "ratios": ratios}
    text = scaling.render(results)
    assert "| layout | fastvit-int8 | 16 | 8x2 | 8 | 84.00 | 300 |" in text
    assert "skipped: over the budget" in text and "default_vs_best_manual: 0.952" in text
    assert scaling.plot(results, tmp_path / "scaling.png").stat().st_size > 10_000


def test_one_real_cell_runs_pinned_in_its_own_process(vit_package, tmp_path):
    images = scaling.make_images(tmp_path / "images", count=2)
    plan = Plan(vit_package, None, images, seconds=0.2, rounds=1, budget_s=60)
    figures = scaling.run_cell(Cell("cores", "fastvit-int8", 1, batch=2), plan, scaling.core_cpus(), tmp_path)
    assert figures["status"] == "ok", figures
    assert figures["images_per_s"] > 0 and figures["failed"] == 0 and figures["peak_rss_mib"] > 0
    assert figures["layout_used"].startswith("1 worker x 1 thread")
    broken = scaling.run_cell(Cell("cores", "fastvit-int8", 1), Plan(tmp_path / "missing", None, images, 0.2, 1, 60),
                              scaling.core_cpus(), tmp_path)
    assert broken["status"] == "failed" and "missing" in broken["reason"]


def hostile_tar(path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:xz") as archive:
        member.size = len(data) if member.isfile() else 0
        archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize("member", [tarfile.TarInfo("../outside"), tarfile.TarInfo("/etc/evil")])
def test_a_bundle_cannot_write_outside_its_folder(tmp_path, member):
    bundle = hostile_tar(tmp_path / "bad.tar.xz", member)
    with pytest.raises(SystemExit, match="unexpected member"):
        scaling.unpack_bundle(bundle, tmp_path / "out")
    assert not (tmp_path / "outside").exists()


def test_a_bundle_cannot_carry_links(tmp_path):
    link = tarfile.TarInfo("package/model.onnx")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(SystemExit, match="unexpected member"):
        scaling.unpack_bundle(hostile_tar(tmp_path / "bad.tar.xz", link), tmp_path / "out")


def test_a_bundle_is_found_in_its_folder_and_a_missing_one_is_named(tmp_path):
    folder = tmp_path / "scaling-bundle"
    folder.mkdir()
    with pytest.raises(SystemExit, match="no bundle at .*scaling-bundle.tar.xz"):
        scaling.unpack_bundle(folder, tmp_path / "out")
    hostile_tar(folder / "scaling-bundle.tar.xz", tarfile.TarInfo("../outside"))
    with pytest.raises(SystemExit, match="unexpected member"):  # the folder's bundle is the one opened
        scaling.unpack_bundle(folder, tmp_path / "out")


def test_the_16_core_script_says_what_is_missing(tmp_path):
    script = ROOT / "benchmarks" / "scaling_16core.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    environment = {**os.environ, "OUT": str(tmp_path), "BUNDLE": str(tmp_path / "none.tar.xz"),
                   "PYTHON": os.environ.get("PYTHON", __import__("sys").executable)}
    done = subprocess.run(["bash", str(script)], env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no bundle" in done.stdout
    assert "no bundle" in (tmp_path / "scaling.log").read_text()


def test_tiling_keeps_shapes_and_spread(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    save_file({"weight": torch.randn(64, 256) * 0.02, "bias": torch.zeros(64)}, str(tmp_path / "model.safetensors"))
    scaling.tile_weights(tmp_path)
    tiled = load_file(str(tmp_path / "model.safetensors"))
    assert tiled["weight"].shape == (64, 256) and torch.equal(tiled["bias"], torch.zeros(64))
    flat = tiled["weight"].flatten()
    assert torch.equal(flat[: scaling.TILE], flat[scaling.TILE: 2 * scaling.TILE])  # one block, repeated
    assert 0.01 < float(flat.std()) < 0.04
    assert json.dumps(float(flat.abs().max()))  # finite
