"""Scaling: images/s end to end against the cores used and against the throughput layout, with peak RSS.

    python -m benchmarks.scaling --output benchmarks/results/scaling            # builds the seeded ViT-B/16 package
    python -m benchmarks.scaling --package PKG --checkpoint CKPT --budget-s 420  # what scaling_16core.sh runs
    python -m benchmarks --scaling                                               # the same, after the main suite

Every figure is one *cell*: a fresh subprocess pinned to the first N physical cores (one logical CPU each), which
loads one system, warms up, then counts results over a steady-state window of files -> labels (640x480 JPEGs,
decoded, resized, classified). A fresh process per cell keeps thread pools and caches from leaking between
systems, and its peak RSS is the cell's memory figure. Cells run in rounds, in an order that rotates, and each
figure is the median over rounds.

Two axes:

* cores: 1, 2, 4, 8, all (capped at what the machine has) for fastvit-detect int8 and fp32 with their default
  layout for that many cores, PyTorch fp32 and, where the CPU has AMX or AVX512-BF16, PyTorch bf16 autocast;
* layout, on all cores: fastvit-detect int8 with W workers x T threads for every power-of-two T, one session
  shared by W callers, P processes of one session each, the default and the calibrated layout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SIZE = (640, 480)
IMAGE_COUNT = 48  # distinct files, cycled: enough that the page cache and not one file's bytes is measured
BATCH = 8
CELL_TIMEOUT_S = 300
TORCH_SYSTEMS = ("pytorch-fp32", "pytorch-bf16")


@dataclass(frozen=True)
class Cell:
    """One figure: ``system`` on the first ``cores`` physical cores, with ``layout`` for fastvit-detect systems.

    ``layout``: "default" (what Detector.load picks), "WxT" (per-worker sessions), "shared:WxT" (one session,
    W concurrent callers), "procs:PxT" (P processes of one T-thread session each) or "calibrated".
    """

    axis: str  # "cores" or "layout"
    system: str  # fastvit-int8, fastvit-fp32, pytorch-fp32, pytorch-bf16
    cores: int
    layout: str = "default"
    batch: int = BATCH

    @property
    def key(self) -> str:
        return f"{self.axis}/{self.system}/{self.cores}c/{self.layout}/b{self.batch}"


@dataclass
class Plan:
    package: Path
    checkpoint: Path | None
    images: list[Path]
    seconds: float
    rounds: int
    budget_s: float
    cells: list[Cell] = field(default_factory=list)


# --- cores --------------------------------------------------------------------------------------------------


def core_cpus() -> list[int]:
    """One logical CPU per physical core this process may use, in order: pinning N of them uses N cores."""
    from fastvit_detect.session import cpuinfo

    allowed = sorted(os.sched_getaffinity(0))
    seen: dict[tuple[str | None, str], int] = {}
    for processor in cpuinfo():
        try:
            number = int(processor.get("processor", -1))
        except ValueError:
            continue
        key = (processor.get("physical id"), processor.get("core id", str(number)))
        if number in allowed and key not in seen:
            seen[key] = number
    return sorted(seen.values()) or allowed


def core_counts(available: int, wanted: Sequence[int] = (1, 2, 4, 8)) -> list[int]:
    return sorted({count for count in wanted if count < available} | {available})


def layout_cells(cores: int) -> list[Cell]:
    """The layout axis on ``cores`` cores, most telling first (a budget cut drops the tail)."""
    from fastvit_detect.layout import rule_layout

    rule = rule_layout(cores)
    threads = sorted({1 << power for power in range(cores.bit_length()) if 1 << power <= cores} | {cores})
    cells = [Cell("layout", "fastvit-int8", cores, "default")]
    cells += [Cell("layout", "fastvit-int8", cores, f"{max(1, cores // count)}x{count}") for count in threads]
    if cores > 1:
        cells.append(Cell("layout", "fastvit-int8", cores, f"shared:{cores}x1"))
        cells.append(Cell("layout", "fastvit-int8", cores, f"procs:{rule.workers}x{rule.threads_per_worker}"))
        if rule.threads_per_worker > 1:
            cells.append(Cell("layout", "fastvit-int8", cores, f"shared:{rule.workers}x{rule.threads_per_worker}"))
            cells.append(Cell("layout", "fastvit-int8", cores, f"procs:{cores}x1"))
        cells.append(Cell("layout", "fastvit-int8", cores, "calibrated"))
        cells.append(Cell("layout", "fastvit-fp32", cores, f"1x{cores}"))
        cells.append(Cell("layout", "fastvit-fp32", cores, "default"))
    return cells


OPENVINO_SYSTEM = "fastvit-openvino-int8"  # the package's openvino-int8 variant, on OpenVINO


def openvino_cells(cores: int) -> list[Cell]:
    """OpenVINO's layouts on ``cores`` cores: its default (the OpenVINO rule), W streams x T threads for every
    power-of-two T, and the calibrated choice."""
    threads = sorted({1 << power for power in range(cores.bit_length()) if 1 << power <= cores} | {cores})
    cells = [Cell("layout", OPENVINO_SYSTEM, cores, "default")]
    cells += [Cell("layout", OPENVINO_SYSTEM, cores, f"{max(1, cores // count)}x{count}") for count in threads]
    return cells


def plan_cells(available: int, torch_systems: Sequence[str], cores_wanted: Sequence[int] = (1, 2, 4, 8),
               openvino: bool = False) -> list[Cell]:
    """Every cell, in the order a budget cut should spare them: the layouts and int8 per core count (the issue's
    targets) first, then the OpenVINO variant's layouts and cores (when the package has it and OpenVINO is
    installed), then PyTorch on all cores, then fp32, then PyTorch on fewer cores (slow and least telling)."""
    counts = core_counts(available, cores_wanted)
    cells = layout_cells(available)
    cells += [Cell("cores", "fastvit-int8", count) for count in counts]
    if openvino:
        cells += openvino_cells(available)
        cells += [Cell("cores", OPENVINO_SYSTEM, count) for count in counts]
    cells += [Cell("cores", system, available) for system in torch_systems]
    cells += [Cell("layout", system, available, "default", batch=16) for system in torch_systems]
    cells += [Cell("cores", "fastvit-fp32", count) for count in reversed(counts)]
    cells += [Cell("cores", system, count) for count in reversed(counts[:-1]) for system in torch_systems]
    return cells


# --- images and the model bundle ----------------------------------------------------------------------------


def make_images(directory: Path, count: int = IMAGE_COUNT) -> list[Path]:
    """``count`` deterministic 640x480 JPEGs (quality 90) from the sample photos plus seeded sensor-like noise."""
    import numpy as np
    from PIL import Image

    from .images import sample_photos

    directory.mkdir(parents=True, exist_ok=True)
    photos = sample_photos()
    paths = []
    for index in range(count):
        path = directory / f"scaling-{index:03d}.jpg"
        paths.append(path)
        if path.is_file():
            continue
        with Image.open(photos[index % len(photos)]) as photo:
            source = photo.convert("RGB").resize(IMAGE_SIZE, Image.Resampling.BICUBIC)
        noise = np.random.default_rng(index).normal(0, 6, (IMAGE_SIZE[1], IMAGE_SIZE[0], 1))
        pixels = np.clip(np.asarray(source, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        partial = path.with_suffix(".partial")
        Image.fromarray(pixels).save(partial, format="JPEG", quality=90)
        partial.rename(path)
    return paths


TILE = 4096  # values per repeated block: a short period the xz dictionary finds, long enough to look random


def tile_weights(checkpoint: Path, seed: int = 0) -> None:
    """Replace every weight matrix of a checkpoint with one seeded random block of ``TILE`` values, repeated.

    Matrix kernels take the same time whatever the values (no data-dependent paths in onnxruntime's int8 or
    fp32 GEMMs, and these values are far from denormal), so speed and memory are those of the seeded model; but
    the files now compress to a few MB, which is how a 16-core machine without the exporter's dependencies gets
    the same packages (see scaling_16core.sh). Labels mean nothing, as with any seeded checkpoint.
    """
    import torch
    from safetensors.torch import load_file, save_file

    path = checkpoint / "model.safetensors"
    weights = load_file(str(path))
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in weights.items():
        if tensor.ndim >= 2 and tensor.numel() > TILE:
            block = torch.randn(TILE, generator=generator, dtype=torch.float32) * tensor.float().std()
            repeats = math.ceil(tensor.numel() / TILE)
            weights[name] = block.repeat(repeats)[: tensor.numel()].reshape(tensor.shape).to(tensor.dtype).contiguous()
    save_file(weights, str(path), metadata={"format": "pt"})


def build_bundle(directory: Path) -> Path:
    """A seeded ViT-B/16 checkpoint with tiled weights, its fastvit-detect package (fp32 + int8, the exporter's
    defaults), packed as one .tar.xz small enough to carry to another machine. Needs the export extra."""
    from fastvit_detect.build.export import ExportSettings, export_package
    from fastvit_detect.build.seeded import build_checkpoint

    from .progress import log

    directory.mkdir(parents=True, exist_ok=True)
    bundle = directory / "scaling-bundle.tar.xz"
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        checkpoint = Path(scratch) / "checkpoint"
        log("building the seeded ViT-B/16 checkpoint with tiled weights")
        build_checkpoint(checkpoint, "vit", preset="vit-base", seed=0)
        tile_weights(checkpoint)
        log("exporting its package (fastvit_detect.build.export, dynamic int8 defaults; openvino-int8 where NNCF is "
            "installed)")
        from .artifacts import openvino_exportable

        export_package(ExportSettings(str(checkpoint), Path(scratch) / "package", openvino=openvino_exportable()),
                       log=lambda text: log(f"  {text}"))
        log(f"compressing into {bundle}")
        partial = bundle.with_suffix(".partial")
        with tarfile.open(partial, "w:xz", preset=1) as archive:  # tiled weights: a small dictionary does
            archive.add(checkpoint, "checkpoint")
            archive.add(Path(scratch) / "package", "package")
        partial.rename(bundle)
    log(f"bundle: {bundle.stat().st_size / 2**20:.1f} MiB")
    return bundle


def unpack_bundle(bundle: Path, directory: Path) -> tuple[Path, Path]:
    """(package, checkpoint) from a bundle made by build_bundle (its file, or the folder --make-bundle wrote it
    into); members must stay inside ``directory``."""
    if bundle.is_dir():
        bundle = bundle / "scaling-bundle.tar.xz"
    if not bundle.is_file():
        raise SystemExit(f"scaling: no bundle at {bundle}: make one with --make-bundle DIR")
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle, "r:xz") as archive:
        for member in archive.getmembers():
            target = (directory / member.name).resolve()
            if not (member.isfile() or member.isdir()) or directory.resolve() not in (target, *target.parents):
                raise SystemExit(f"scaling: {bundle}: unexpected member {member.name!r}")
        archive.extractall(directory)  # every member checked above
    return directory / "package", directory / "checkpoint"


# --- one cell, in its own process ---------------------------------------------------------------------------


def steady_rate(results: Iterator[Any], skip: int, seconds: float, batch: int) -> tuple[float, int, int]:
    """Images/s over a window that opens after ``skip`` results (the pipeline filled, kernels warm) and closes
    at the end of the first batch finished after ``seconds``; also the images counted and how many failed.

    Results arrive a batch at a time, so the window opens and closes on batch boundaries (``skip`` is a
    multiple of ``batch``): closing inside a burst would count one image for a whole batch's time."""
    failed = 0
    for _ in range(skip):
        next(results)
    started = time.perf_counter()
    count = 0
    for result in results:
        count += 1
        failed += not hasattr(result, "label")
        if count % batch == 0 and time.perf_counter() - started >= seconds:
            break
    return count / (time.perf_counter() - started), count, failed


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_layout(text: str) -> tuple[str, int, int]:
    kind, _, shape = text.rpartition(":")
    workers, _, threads = shape.partition("x")
    return kind or "sessions", int(workers), int(threads)


def fastvit_cell(cell: Cell, package: Path, images: list[Path], seconds: float) -> dict[str, Any]:
    from fastvit_detect import Detector
    from fastvit_detect.layout import Layout
    from fastvit_detect.pool import SessionPool
    from fastvit_detect.session import OnnxSession

    variant = cell.system.removeprefix("fastvit-")
    options: dict[str, Any] = {}
    shared = None
    if cell.layout not in ("default", "calibrated"):
        kind, workers, threads = parse_layout(cell.layout)
        options = {"workers": workers, "threads_per_worker": threads}
        if kind == "shared":  # one session, W callers: its pool has W - 1 threads beyond the callers
            shared = (workers, threads)
    detector = Detector.load(package, variant=variant, threads=cell.cores, verify=False, **options)
    if shared is not None:
        workers, threads = shared
        session = OnnxSession(detector.variant.path, threads=workers * (threads - 1) + 1)
        detector._pool = SessionPool(Layout(workers, threads, "caller", "one shared session"), [session] * workers)
    detector.pool  # noqa: B018 - opened before the clock starts, as a server does
    stream = detector.predict_iter(itertools.cycle(images), batch_size=cell.batch, errors="return")
    try:
        rate, count, failed = steady_rate(stream, 2 * detector.layout.workers * cell.batch, seconds, cell.batch)
    finally:
        stream.close()
    return {"images_per_s": rate, "images": count, "failed": failed, "layout_used": detector.layout.describe(),
            "sessions": len({id(session) for session in detector.pool.sessions})}


def torch_cell(cell: Cell, checkpoint: Path, images: list[Path], seconds: float) -> dict[str, Any]:
    import torch
    import transformers
    from transformers.image_utils import load_image

    torch.set_num_threads(cell.cores)
    transformers.logging.set_verbosity_error()
    try:  # the slow processor is the seed's reference; transformers 5 may no longer ship it
        processor = transformers.AutoImageProcessor.from_pretrained(checkpoint, use_fast=False)
    except Exception:  # noqa: BLE001 - any failure: fall back to the processor transformers picks
        processor = transformers.AutoImageProcessor.from_pretrained(checkpoint)
    model = transformers.AutoModelForImageClassification.from_pretrained(checkpoint).eval()
    bf16 = cell.system == "pytorch-bf16"

    def results() -> Iterator[Any]:
        for start in itertools.count(0, cell.batch):
            batch = [str(images[(start + offset) % len(images)]) for offset in range(cell.batch)]
            inputs = processor([load_image(path) for path in batch], return_tensors="pt")
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                labels = model(**inputs).logits.float().argmax(-1)
            for label in labels.tolist():
                yield type("Result", (), {"label": label})()

    rate, count, failed = steady_rate(results(), 2 * cell.batch, seconds, cell.batch)
    return {"images_per_s": rate, "images": count, "failed": failed, "processor": type(processor).__name__,
            "torch": torch.__version__, "transformers": transformers.__version__}


def cell_main(spec: dict[str, Any]) -> None:
    """Run one cell (``--cell JSON``) and print its figures as one JSON line."""
    cell = Cell(**spec["cell"])
    cpus = spec.get("cpus")
    if cpus:  # before onnxruntime or torch start their thread pools
        os.sched_setaffinity(0, cpus)
    images = [Path(path) for path in spec["images"]]
    started = time.perf_counter()
    if cell.system.startswith("fastvit-"):
        figures = fastvit_cell(cell, Path(spec["package"]), images, spec["seconds"])
    else:
        figures = torch_cell(cell, Path(spec["checkpoint"]), images, spec["seconds"])
    print(json.dumps({**figures, "peak_rss_mib": peak_rss_mib(), "wall_s": time.perf_counter() - started}),
          flush=True)


def spawn_cell(cell: Cell, plan: Plan, cpus: Sequence[int], cache: Path) -> subprocess.Popen[str]:
    """``cache``: the calibration cache directory; only a ``calibrated`` cell reads the one calibrate_once wrote,
    every other cell gets an empty one, so "default" is the rule's layout."""
    if cell.layout != "calibrated":
        cache = cache / "empty"
    spec = {"cell": asdict(cell), "cpus": list(cpus), "images": [str(path) for path in plan.images],
            "package": str(plan.package), "checkpoint": str(plan.checkpoint), "seconds": plan.seconds}
    environment = {**os.environ, "FASTVIT_DETECT_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "OMP_NUM_THREADS": str(len(cpus))}
    return subprocess.Popen([sys.executable, "-m", "benchmarks.scaling", "--cell", json.dumps(spec)], cwd=ROOT,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {"status": "failed", "reason": (err.strip().splitlines() or ["no output"])[-1][:300]}
    return {"status": "ok", **json.loads(lines[-1])}


def run_cell(cell: Cell, plan: Plan, cpus: Sequence[int], cache: Path) -> dict[str, Any]:
    """One cell's figures; a ``procs:PxT`` cell runs P processes of T cores each at once and sums them."""
    if not cell.layout.startswith("procs:"):
        return collect(spawn_cell(cell, plan, cpus[: cell.cores], cache), CELL_TIMEOUT_S)
    _, processes, threads = parse_layout(cell.layout)
    children = [spawn_cell(replace(cell, axis="part", cores=threads, layout=f"1x{threads}"), plan,
                           cpus[index * threads:(index + 1) * threads], cache) for index in range(processes)]
    parts = [collect(child, CELL_TIMEOUT_S) for child in children]
    failed = [part for part in parts if part["status"] != "ok"]
    if failed:
        return failed[0]
    return {"status": "ok", "images_per_s": sum(part["images_per_s"] for part in parts),
            "images": sum(part["images"] for part in parts), "failed": sum(part["failed"] for part in parts),
            "peak_rss_mib": sum(part["peak_rss_mib"] for part in parts),
            "layout_used": f"{processes} processes x {threads} threads", "sessions": processes}


# --- the whole sweep ----------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def sweep(plan: Plan, log: Any) -> list[dict[str, Any]]:
    """Every cell, round after round in a rotating order, within the budget; one row per cell."""
    cpus = core_cpus()
    started = time.monotonic()
    samples: dict[str, list[dict[str, Any]]] = {cell.key: [] for cell in plan.cells}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fastvit-scaling-cache-") as cache:
        calibrate_once(plan, Path(cache), log)
        for round_index in range(plan.rounds):
            shift = round_index * max(1, len(plan.cells) // plan.rounds)
            for cell in plan.cells[shift:] + plan.cells[:shift]:
                if cell.key in skipped:
                    continue
                if time.monotonic() - started > plan.budget_s:
                    skipped.setdefault(cell.key, f"over the {plan.budget_s:.0f} s budget")
                    continue
                figures = run_cell(cell, plan, cpus, Path(cache))
                if figures["status"] != "ok":
                    skipped[cell.key] = figures["reason"]
                    log(f"  {cell.key}: failed: {figures['reason']}")
                    continue
                samples[cell.key].append(figures)
                log(f"  round {round_index + 1} {cell.key}: {figures['images_per_s']:.2f} images/s, "
                    f"peak RSS {figures['peak_rss_mib']:.0f} MiB ({time.monotonic() - started:.0f} s)")
    rows = []
    for cell in plan.cells:
        runs = samples[cell.key]
        row: dict[str, Any] = {**asdict(cell), "key": cell.key, "rounds": len(runs)}
        if runs:
            rates = [run["images_per_s"] for run in runs]
            row.update(status="ok", images_per_s=median(rates), images_per_s_samples=[round(r, 3) for r in rates],
                       peak_rss_mib=median([run["peak_rss_mib"] for run in runs]),
                       **{key: runs[-1][key] for key in ("layout_used", "sessions", "processor", "torch",
                                                         "transformers") if key in runs[-1]})
        else:
            row.update(status="skipped", reason=skipped.get(cell.key, "not run"))
        rows.append(row)
    return rows


def calibrate_once(plan: Plan, cache: Path, log: Any) -> None:
    """Run the calibration the ``calibrated`` cells read (in the cells' cache directory), and time it."""
    if not any(cell.layout == "calibrated" for cell in plan.cells):
        return
    started = time.monotonic()
    environment = {**os.environ, "FASTVIT_DETECT_CACHE": str(cache),
                   "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "fastvit_detect", "info", str(plan.package), "--calibrate",
                           "--variant", "int8"], env=environment, capture_output=True, text=True, timeout=600)
    log(f"  calibration ({time.monotonic() - started:.0f} s): {done.stdout.strip() or done.stderr.strip()[-300:]}")


# --- report -------------------------------------------------------------------------------------------------


def describe_machine() -> dict[str, Any]:
    from fastvit_detect.session import cpu_flags, cpuinfo, physical_core_count

    from .machine import RELEVANT_FLAGS, library_versions

    processors = cpuinfo()
    return {"cpu_model": processors[0].get("model name") if processors else None,
            "physical_cores": physical_core_count(), "logical_cpus": os.cpu_count(),
            "flags": [flag for flag in RELEVANT_FLAGS if flag in cpu_flags()],
            "libraries": library_versions()}


def ratios(rows: Sequence[dict[str, Any]], cores: int) -> dict[str, float | None]:
    """The issue's target ratios, from one run."""
    def rate(axis: str, system: str, layout: str = "default", batch: int = BATCH, count: int = cores) -> float | None:
        for row in rows:
            if (row["axis"], row["system"], row["cores"], row["layout"], row["batch"]) == (axis, system, count,
                                                                                             layout, batch):
                return row.get("images_per_s")
        return None

    default = rate("layout", "fastvit-int8")
    layouts = [row["images_per_s"] for row in rows if row["axis"] == "layout" and row["system"] == "fastvit-int8"
               and row.get("images_per_s") and not row["layout"].startswith(("procs:", "shared:"))]
    one_core = rate("cores", "fastvit-int8", count=1)
    single = rate("layout", "fastvit-int8", f"1x{cores}")
    torch_best = max([value for value in (rate("cores", "pytorch-fp32"), rate("layout", "pytorch-fp32", batch=16))
                      if value], default=None)
    return {
        "default_vs_best_manual": default / max(layouts) if default and layouts else None,
        "default_vs_per_core_rate_x_cores": default / (one_core * cores) if default and one_core else None,
        "default_vs_pytorch_fp32_best_batch": default / torch_best if default and torch_best else None,
        "default_vs_one_session_all_cores": default / single if default and single else None,
    }


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    summary = (f"Flags: {', '.join(machine['flags']) or 'none of interest'}; onnxruntime "
               f"{machine['libraries'].get('onnxruntime')}, torch {machine['libraries'].get('torch')}; created "
               f"{results['created']}; {results['rounds']} round(s) of {results['seconds']:g} s windows, median.")
    lines = [f"# Scaling — {machine['cpu_model']}, {machine['physical_cores']} physical cores", "", summary, "",
             "| axis | system | cores | layout | batch | images/s | peak RSS MiB | runs as |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['axis']} | {row['system']} | {row['cores']} | {row['layout']} | {row['batch']} | "
                         f"skipped: {row['reason']} | | |")
            continue
        lines.append(f"| {row['axis']} | {row['system']} | {row['cores']} | {row['layout']} | {row['batch']} | "
                     f"{row['images_per_s']:.2f} | {row['peak_rss_mib']:.0f} | {row.get('layout_used', '')} |")
    lines += ["", "Ratios (targets of issue 15):", ""]
    for name, value in results["ratios"].items():
        lines.append(f"- {name}: {'-' if value is None else f'{value:.3f}'}")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [row for row in results["rows"] if row["status"] == "ok"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for system in dict.fromkeys(row["system"] for row in rows if row["axis"] == "cores"):
        points = sorted((row["cores"], row["images_per_s"]) for row in rows
                        if row["axis"] == "cores" and row["system"] == system)
        left.plot(*zip(*points), marker="o", label=system)
        if system == "fastvit-int8" and points and points[0][0] == 1:
            cores = [count for count, _ in points]
            left.plot(cores, [points[0][1] * count for count in cores], linestyle=":", color="grey",
                      label="int8 per-core rate x cores")
    left.set(xlabel="physical cores used", ylabel="images/s (640x480 JPEG files, end to end)",
             title="Throughput against cores (default layout)")
    left.grid(alpha=0.3)
    if left.get_lines():
        left.legend()
    layout_rows = [row for row in rows if row["axis"] == "layout"]
    labels = [f"{row['system'].replace('fastvit-', '')} {row['layout']}" + (f" b{row['batch']}" if row['batch']
              != BATCH else "") for row in layout_rows]
    bars = right.barh(labels, [row["images_per_s"] for row in layout_rows], color="tab:blue")
    for bar, row in zip(bars, layout_rows):
        right.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {row['peak_rss_mib']:.0f} MiB",
                   va="center", fontsize=7)
    right.invert_yaxis()
    right.set(xlabel="images/s (label: peak RSS)", title=f"Layouts on {results['machine']['physical_cores']} cores")
    figure.suptitle(f"{results['machine']['cpu_model']} — ViT-B/16", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def openvino_runnable(package: Path) -> bool:
    """Whether the package has the openvino-int8 variant and OpenVINO is installed to run it."""
    from fastvit_detect import ModelPackage
    from fastvit_detect.openvino_session import openvino_available

    return "openvino-int8" in ModelPackage.open(package).variants and openvino_available() is None


def run(package: Path, checkpoint: Path | None, output: Path, *, seconds: float = 6.0, rounds: int = 2,
        budget_s: float = 1800.0, cores_wanted: Sequence[int] = (1, 2, 4, 8), torch: bool = True,
        log: Any = print, only: Sequence[str] = ()) -> dict[str, Any]:
    """The sweep, written to ``output``/scaling.json, scaling.md and scaling.png; returns the results."""
    output.mkdir(parents=True, exist_ok=True)
    available = len(core_cpus())
    torch_systems: list[str] = []
    if torch and checkpoint is not None:
        from fastvit_detect.session import has_native_bf16

        torch_systems = ["pytorch-fp32", *(["pytorch-bf16"] if has_native_bf16() else [])]
    plan = Plan(package, checkpoint, make_images(output / "images"), seconds, rounds, budget_s)
    plan.cells = [cell for cell in plan_cells(available, torch_systems, cores_wanted, openvino_runnable(package))
                  if not only or any(part in cell.key for part in only)]
    log(f"scaling: {len(plan.cells)} cells x {rounds} round(s) on {available} cores, budget {budget_s:.0f} s")
    rows = sweep(plan, log)
    results = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": describe_machine(), "package": str(package), "checkpoint": str(checkpoint),
               "image_size": IMAGE_SIZE, "images": len(plan.images), "seconds": seconds, "rounds": rounds,
               "rows": rows, "ratios": ratios(rows, available)}
    (output / "scaling.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / "scaling.md").write_text(render(results))
    plot(results, output / "scaling.png")
    log(f"scaling: wrote {output / 'scaling.md'}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--package", type=Path, help="fastvit-detect package (default: build the seeded ViT-B/16)")
    parser.add_argument("--checkpoint", type=Path, help="its HF checkpoint, for the PyTorch systems")
    parser.add_argument("--bundle", type=Path,
                        help="a bundle from --make-bundle (its .tar.xz or that folder): unpacked and measured")
    parser.add_argument("--make-bundle", type=Path, metavar="DIR", help="build the carryable bundle into DIR and stop")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/scaling"))
    parser.add_argument("--seconds", type=float, default=6.0, help="steady-state window per cell (default 6)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every cell (default 2)")
    parser.add_argument("--budget-s", type=float, default=1800.0, help="stop starting cells after this (default 1800)")
    parser.add_argument("--cores", default="1,2,4,8", help="core counts below all to measure (default 1,2,4,8)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch systems")
    parser.add_argument("--only", help="measure only the cells whose key contains one of these comma-separated "
                                       "parts, e.g. 'layout/fastvit-int8' (keys are in scaling.json)")
    args = parser.parse_args(argv)
    if args.cell:
        cell_main(json.loads(args.cell))
        return 0
    if not (args.seconds > 0 and math.isfinite(args.seconds) and 1 <= args.rounds <= 20 and args.budget_s > 0):
        parser.error("--seconds and --budget-s must be positive and finite, --rounds 1-20")
    from .progress import log

    if args.make_bundle:
        build_bundle(args.make_bundle)
        return 0
    package, checkpoint = args.package, args.checkpoint
    if args.bundle:
        package, checkpoint = unpack_bundle(args.bundle, args.output / "model")
    elif package is None:
        from .artifacts import prepare

        built = prepare(None, "vit-base", args.output / "cache")
        package, checkpoint = built.package, built.checkpoint
    run(package, checkpoint, args.output, seconds=args.seconds, rounds=args.rounds, budget_s=args.budget_s,
        cores_wanted=[int(value) for value in args.cores.split(",") if value], torch=not args.no_torch, log=log,
        only=[part for part in (args.only or "").split(",") if part])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
