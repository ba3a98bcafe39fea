"""``python -m benchmarks``: measure every system on the same weights and write results.json, report.md, plots.

    python -m benchmarks --quick                      # ~5 min: the seeded ViT-B/16-224, batch 1 and 8, all cores
    python -m benchmarks                              # full: batch 1/8/32, 1 thread and all cores, more rounds
    python -m benchmarks --model ./my_checkpoint --data ./dataset/Test --calibration ./dataset/Train --output bench-out
    python -m benchmarks --scaling-only               # images/s against cores and layout (benchmarks/scaling.py)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fastvit_detect import FastVitDetectError, evaluate
from fastvit_detect.build import timing as measure
from fastvit_detect.build.chatter import library_warnings_hidden
from fastvit_detect.fidelity import probability_agreement
from fastvit_detect.options import refuse_empty_text

from . import artifacts as artifacts_module
from . import (
    coldstart,
    compute,
    faces,
    footprint,
    images,
    machine,
    plots,
    report,
)
from .progress import elapsed, log
from .systems import System, Unavailable, all_systems

DEFAULT_OUTPUT = Path("benchmarks/results")
# Measured for issue 22; docs/performance.md says the same.
MEMORY_NOTE = ("Memory: about 5 GB at the peak with --quick (each compared system holds a ViT-B/16 and its buffers), "
               "more for a full run; with less free, the kernel's OOM killer may end the run.")
FOREIGN_LOAD_WARNING = 0.25  # cores kept busy by other processes above which a phase's figures are flagged
TURN_BLOCK = 5  # consecutive calls per turn in the latency phases (see measure.py for why turns are blocks)


@dataclass(frozen=True)
class Plan:
    """How much to measure. --quick trims rounds, batch sizes, thread counts and image sizes."""

    mode: str
    latency_rounds: int  # passes over the latency images (each pass: every system on every image)
    model_rounds: int  # model-only calls per system
    throughput_rounds: int  # timed batches per (batch size, threads) cell and system
    batch_sizes: tuple[int, ...]
    thread_counts: tuple[str, ...]  # "1" and/or "all"
    coldstart_repeats: int
    large_megapixels: tuple[float, ...]
    compile: bool  # torch.compile takes minutes to compile ViT-B on 2 cores: full mode only

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls("quick", 1, 6, 2, (1, 8), ("all",), 1, (2.0, 12.0), False)
        return cls("full", 3, 15, 2, (1, 8, 32), ("1", "all"), 3, (2.0, 5.0, 8.0, 12.0), True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0].strip("`"),
                                     epilog=MEMORY_NOTE)
    parser.add_argument("--quick", action="store_true", help="a ~5 minute run: fewer rounds, batch 1 and 8, all cores")
    parser.add_argument("--model",
                        help="HF checkpoint directory or Hub id (default: a seeded random-weight ViT-B/16-224)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"results directory (default {DEFAULT_OUTPUT})")
    parser.add_argument("--cache-dir", type=Path,
                        help="where built models and generated images are kept (default OUTPUT/cache)")
    parser.add_argument("--data", type=Path, help="labelled folder with Real/ and Fake/ sub-folders, for accuracy")
    parser.add_argument("--data-limit", type=int, default=200,
                        help="about N images per label from --data, spread over it (default 200)")
    parser.add_argument("--calibration", type=Path, metavar="DIR",
                        help="images to calibrate static int8 on (OpenVINO's NNCF int8), as export.py --calibration; "
                             "default: sample photos held out from every measured set")
    parser.add_argument("--calibration-limit", type=int, metavar="N",
                        help="at most N calibration images, spread over DIR (default: export.py's)")
    parser.add_argument("--scaling", action="store_true",
                        help="also measure images/s against cores and layout into OUTPUT/scaling")
    parser.add_argument("--scaling-only", action="store_true", help="only the scaling section (benchmarks/scaling.py)")
    # Hidden knobs for tests and short experiments; they change what is measured, so results.json records them.
    hidden = argparse.SUPPRESS
    parser.add_argument("--preset", default="vit-base", help=hidden)
    parser.add_argument("--rounds", type=int, help=hidden)
    parser.add_argument("--batch-sizes", type=lambda text: tuple(int(v) for v in text.split(",")), help=hidden)
    parser.add_argument("--threads", type=lambda text: tuple(text.split(",")), help=hidden)
    parser.add_argument("--large-mp", type=lambda text: tuple(float(v) for v in text.split(",") if v), help=hidden)
    parser.add_argument("--coldstart-repeats", type=int, help=hidden)
    parser.add_argument("--no-compile", action="store_true", help=hidden)
    parser.add_argument("--faces-wheel", type=Path, help=hidden)  # facenet-pytorch's wheel, instead of pip download
    return refuse_empty_text(parser)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan.for_mode(args.quick)
    if args.rounds is not None:
        plan = replace(plan, latency_rounds=args.rounds, model_rounds=max(2, args.rounds),
                       throughput_rounds=args.rounds)
    if args.batch_sizes:
        plan = replace(plan, batch_sizes=args.batch_sizes)
    if args.threads:
        plan = replace(plan, thread_counts=args.threads)
    if args.large_mp is not None:
        plan = replace(plan, large_megapixels=args.large_mp)
    if args.coldstart_repeats is not None:
        plan = replace(plan, coldstart_repeats=args.coldstart_repeats)
    if args.no_compile:
        plan = replace(plan, compile=False)
    return plan


class Run:
    """The systems under test, what has failed so far, and the rows measured."""

    def __init__(self, systems: Sequence[System]) -> None:
        self.systems = list(systems)
        self.skipped: dict[str, str] = {}  # system key -> why it isn't measured (any more)
        self.rows: list[dict[str, Any]] = []

    @property
    def active(self) -> list[System]:
        return [system for system in self.systems if system.key not in self.skipped]

    @property
    def baseline(self) -> System | None:
        return next((system for system in self.active if system.baseline), None)

    def by_key(self, key: str) -> System:
        return next(system for system in self.systems if system.key == key)

    def row(self, figure: str, system: System, **fields: Any) -> dict[str, Any]:
        row = {"figure": figure, "system": system.name, "variant": system.variant, "precision": system.precision,
               "status": "ok", **fields}
        self.rows.append(row)
        return row

    def skip_row(self, figure: str, system: System, reason: str, **fields: Any) -> None:
        self.row(figure, system, **fields, status="skipped", reason=reason)

    def fail(self, key: str, phase: str, reason: str) -> None:
        log(f"  {key} failed during {phase}: {reason}; it is skipped from here on")
        self.skipped[key] = f"failed during {phase}: {reason}"


def resolve_threads(names: Sequence[str], cores: int) -> list[int]:
    counts = [cores if name == "all" else int(name) for name in names]
    return list(dict.fromkeys(counts))  # "1" and "all" coincide on a 1-core machine


# --- phases -------------------------------------------------------------------------------------------------


def load_systems(run: Run, plan: Plan, threads: int) -> None:
    for system in run.systems:
        if system.name == "torch.compile" and not plan.compile:
            run.skipped[system.key] = ("not run in --quick mode: compiling ViT-B takes minutes on this machine "
                                       "(run the full mode)" if plan.mode == "quick" else "disabled by --no-compile")
            log(f"skip {system.key}: {run.skipped[system.key]}")
            continue
        log(f"loading {system.key}")
        try:
            with library_warnings_hidden():
                system.load(threads)
        except Unavailable as exc:
            run.skipped[system.key] = str(exc)
            log(f"skip {system.key}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a system that can't load is reported, not fatal
            run.skipped[system.key] = f"failed to load: {type(exc).__name__}: {exc}"
            log(f"skip {system.key}: {run.skipped[system.key]}")


def set_threads(run: Run, threads: int) -> None:
    for system in run.active:
        try:
            system.set_threads(threads)
        except Exception as exc:  # noqa: BLE001
            run.fail(system.key, f"set_threads({threads})", f"{type(exc).__name__}: {exc}")


def skip_inactive(run: Run, figure: str, **fields: Any) -> None:
    for system in run.systems:
        if system.key in run.skipped:
            run.skip_row(figure, system, run.skipped[system.key], **fields)


def ratio_fields(samples: dict[str, list[float]], key: str, baseline: System | None) -> dict[str, Any]:
    if baseline is None or baseline.key not in samples:
        return {"speedup_vs_baseline": None}
    return {"speedup_vs_baseline": measure.paired_ratio(samples[baseline.key], samples[key])}


def phase_latency(run: Run, plan: Plan, paths: list[Path], threads: int) -> dict[str, dict[Path, np.ndarray]]:
    """End-to-end latency, batch 1: file on disk -> probabilities, every system on every image, interleaved."""
    log(f"end-to-end latency: {len(paths)} images x {plan.latency_rounds} round(s), batch 1, {threads} threads")
    outputs: dict[str, dict[Path, np.ndarray]] = {system.key: {} for system in run.active}

    def call(key: str, path: Path) -> None:
        outputs[key][path] = run.by_key(key).predict_files([path])[0]

    result = measure.interleave([s.key for s in run.active], paths, call, rounds=plan.latency_rounds,
                                block=TURN_BLOCK, warmup=paths[:1], progress=log, label="  latency")
    for key, reason in result.failures.items():
        run.fail(key, "end-to-end latency", reason)
    for system in run.active:
        run.row("latency_e2e", system, batch_size=1, threads=threads, images=len(paths),
                **measure.percentiles_ms(result.samples[system.key]),
                samples_ms=[round(1000 * value, 3) for value in result.samples[system.key]],
                **ratio_fields(result.samples, system.key, run.baseline))
    skip_inactive(run, "latency_e2e", batch_size=1, threads=threads)
    return outputs


def phase_fidelity(run: Run, outputs: dict[str, dict[Path, np.ndarray]], paths: list[Path]) -> None:
    baseline = run.baseline
    for system in run.systems:
        if system.key in run.skipped:
            run.skip_row("fidelity", system, run.skipped[system.key])
        elif baseline is None:
            run.skip_row("fidelity", system, "no PyTorch fp32 baseline to compare with")
        else:
            reference = np.stack([outputs[baseline.key][path] for path in paths])
            candidate = np.stack([outputs[system.key][path] for path in paths])
            run.row("fidelity", system, reference=baseline.key, **probability_agreement(reference, candidate))


def phase_model_only(run: Run, plan: Plan, path: Path, threads: int) -> None:
    """The model call alone on an already preprocessed batch of 1, in each system's own input type."""
    log(f"model-only latency: {plan.model_rounds} calls per system on {path.name}, {threads} threads")
    measured = [s for s in run.active if s.model_only_reason is None]
    pixels = {}
    for system in measured:
        try:
            pixels[system.key] = system.prepare_pixels([path])
        except Exception as exc:  # noqa: BLE001
            run.fail(system.key, "model-only preprocessing", f"{type(exc).__name__}: {exc}")
    keys = [s.key for s in measured if s.key in pixels]
    result = measure.interleave(keys, list(range(plan.model_rounds)),
                                lambda key, _: run.by_key(key).predict_pixels(pixels[key]),
                                block=TURN_BLOCK, warmup=[0, 0], progress=log, label="  model-only")
    for key, reason in result.failures.items():
        run.fail(key, "model-only latency", reason)
    for system in run.systems:
        if system.key in run.skipped:
            run.skip_row("latency_model", system, run.skipped[system.key], batch_size=1, threads=threads)
        elif system.model_only_reason:
            run.skip_row("latency_model", system, system.model_only_reason, batch_size=1, threads=threads)
        else:
            run.row("latency_model", system, batch_size=1, threads=threads,
                    **measure.percentiles_ms(result.samples[system.key]),
                    samples_ms=[round(1000 * value, 3) for value in result.samples[system.key]],
                    **ratio_fields(result.samples, system.key, run.baseline))


def phase_throughput(run: Run, plan: Plan, pool: list[Path], thread_counts: list[int]) -> None:
    """Images/s end to end (files -> labels) at each batch size and thread count."""
    cell = 0
    for threads in thread_counts:
        set_threads(run, threads)
        for batch_size in plan.batch_sizes:
            cell += 1
            log(f"throughput: batch {batch_size}, {threads} thread(s), {plan.throughput_rounds} timed batches each")
            trials = images.batches(pool, batch_size, plan.throughput_rounds + 1)
            result = measure.interleave([s.key for s in run.active], trials[1:],
                                        lambda key, batch: run.by_key(key).predict_files(batch),
                                        block=plan.throughput_rounds, rotation=cell, warmup=trials[:1],
                                        progress=log,
                                        label=f"  batch {batch_size}")
            for key, reason in result.failures.items():
                run.fail(key, f"throughput batch {batch_size}", reason)
            for system in run.active:
                seconds = result.samples[system.key]
                run.row("throughput", system, batch_size=batch_size, threads=threads,
                        images_per_s=batch_size / float(np.median(seconds)),
                        batch_latency=measure.percentiles_ms(seconds),
                        samples_ms=[round(1000 * value, 3) for value in seconds],
                        **ratio_fields(result.samples, system.key, run.baseline))
            skip_inactive(run, "throughput", batch_size=batch_size, threads=threads)


def phase_faces(run: Run, plan: Plan, package: Path, cache: Path, wheel: Path | None, threads: int) -> None:
    """Issue 23's faces row (benchmarks/faces.py): detection on 1 and 12 MP group photos in turns with the int8
    model call, and images/s of predict_faces; skipped with the reason where the face detector can't be built."""
    system = next(s for s in run.systems if s.name == "fastvit-detect" and s.variant == "int8")
    log(f"faces: detection against the int8 model call, {plan.model_rounds} round(s), {threads} threads")
    try:
        rows = faces.measure_faces(package, cache, plan.model_rounds, threads, wheel)
    except faces.FacesUnavailable as exc:
        run.skip_row("faces_detection", system, str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - the other figures stand without this one
        run.skip_row("faces_detection", system, f"failed: {type(exc).__name__}: {exc}")
        log(f"  faces failed: {type(exc).__name__}: {exc}")
        return
    for row in rows:
        run.row(row.pop("figure"), system, **row)


def phase_coldstart(run: Run, plan: Plan, image: Path) -> None:
    """A fresh process per system and repeat, round-robin so no system always runs on a warmer machine."""
    log(f"cold start: {plan.coldstart_repeats} fresh process(es) per system on {image.name}")
    candidates = list(run.active)
    runs: dict[str, list[coldstart.ColdStart]] = {s.key: [] for s in candidates}
    errors: dict[str, str] = {}
    for repeat in range(plan.coldstart_repeats):
        shift = repeat % max(1, len(candidates))
        for system in candidates[shift:] + candidates[:shift]:
            if system.key in errors:
                continue
            try:
                result = coldstart.run_cold(system.coldstart_code(), [*system.coldstart_args(), str(image)])
            except Exception as exc:  # noqa: BLE001
                errors[system.key] = f"{type(exc).__name__}: {exc}"
                log(f"  {system.key}: cold start failed: {errors[system.key]}")
                continue
            runs[system.key].append(result)
            log(f"  {system.key}: first label after {result.first_label_s:.2f}s, "
                f"peak RSS {result.peak_rss_mib:.0f} MiB")
    for system in run.systems:
        if system.key in run.skipped:
            run.skip_row("coldstart", system, run.skipped[system.key])
        elif system.key in errors:
            run.skip_row("coldstart", system, f"cold-start script failed: {errors[system.key]}")
        else:
            samples = runs[system.key]
            run.row("coldstart", system, repeats=len(samples),
                    first_label_s=float(np.median([s.first_label_s for s in samples])),
                    first_label_s_max=float(np.max([s.first_label_s for s in samples])),
                    total_s=float(np.median([s.total_s for s in samples])),
                    peak_rss_mib=float(np.median([s.peak_rss_mib for s in samples])),
                    label=samples[0].label, script=system.coldstart_code().strip())


def phase_footprint(run: Run) -> None:
    log("install footprint from the installed distributions' RECORD files")
    cache: dict[tuple[str, ...], dict[str, Any]] = {}
    for system in run.systems:
        roots = tuple(system.footprint_roots)
        if roots not in cache:
            cache[roots] = footprint.footprint(roots)
        figures = cache[roots]
        if figures["not_installed"] and system.key in run.skipped:
            run.skip_row("footprint", system, f"not installed: {', '.join(figures['not_installed'])}")
        else:
            run.row("footprint", system, total_mb=figures["total_bytes"] / 1e6, **figures)


def phase_compute(run: Run, macs: dict[str, Any], peak: dict[str, Any], threads: int) -> None:
    """Achieved GFLOP/s from model-only batch-1 latency and from the best end-to-end throughput."""
    model_rows = {(r["system"], r["variant"]): r for r in run.rows
                  if r["figure"] == "latency_model" and r["status"] == "ok"}
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in run.rows:
        if r["figure"] == "throughput" and r["status"] == "ok" and r["threads"] == threads:
            key = (r["system"], r["variant"])
            if key not in best or r["images_per_s"] > best[key]["images_per_s"]:
                best[key] = r
    flops = 2 * macs["macs"]
    for system in run.systems:
        key = (system.name, system.variant)
        if key not in model_rows and key not in best:
            run.skip_row("compute", system, run.skipped.get(system.key, "no model-only or throughput figure"))
            continue
        kind = {"int8": ("int8_gops", "int8 GOP/s"), "bf16": ("bf16_gflops", "bf16 GFLOP/s")}.get(
            system.precision, ("fp32_gflops", "fp32 GFLOP/s"))
        peak_value = peak.get(kind[0])
        fields: dict[str, Any] = {"threads": threads, "peak_g_per_s": peak_value, "peak_kind": kind[1]}
        if key in model_rows:
            achieved = flops / (model_rows[key]["p50_ms"] / 1000) / 1e9
            fields.update(model_g_per_s=achieved, model_efficiency=achieved / peak_value if peak_value else None)
            if system.precision == "int8" and peak.get("int8_gops_avx2"):
                fields.update(model_efficiency_avx2=achieved / peak["int8_gops_avx2"])
        if key in best:
            achieved = flops * best[key]["images_per_s"] / 1e9
            fields.update(e2e_best_batch=best[key]["batch_size"], e2e_g_per_s=achieved,
                          e2e_efficiency=achieved / peak_value if peak_value else None)
        run.row("compute", system, **fields)


def phase_accuracy(run: Run, data: Path, limit: int, labels: list[str]) -> None:
    """Accuracy on DATA/<label>/ folders, found the way ``fastvit-detect eval`` finds them, and each system's
    agreement with PyTorch fp32 on the same images (random weights hide accuracy loss; a trained model doesn't)."""
    try:
        found = evaluate.find_labelled_images(data, labels, limit=limit * len(labels))
    except FastVitDetectError as exc:
        raise SystemExit(f"benchmarks: --data {exc}") from None
    log(f"accuracy on {data}: {len(found.paths)} images")
    paths = found.paths
    probabilities: dict[str, np.ndarray] = {}
    for system in run.systems:
        if system.key in run.skipped:
            run.skip_row("accuracy", system, run.skipped[system.key])
            continue
        try:
            probabilities[system.key] = np.concatenate(
                [system.predict_files(paths[i : i + 16]) for i in range(0, len(paths), 16)])
        except Exception as exc:  # noqa: BLE001
            run.skip_row("accuracy", system, f"{type(exc).__name__}: {exc}")
            continue
        accuracy = float((probabilities[system.key].argmax(1) == found.targets).mean())
        baseline = run.baseline  # listed first, so its probabilities are in by now
        agreement = ({"reference": baseline.key, **probability_agreement(probabilities[baseline.key],
                                                                      probabilities[system.key])}
                     if baseline is not None and baseline.key in probabilities else {})
        run.row("accuracy", system, data=str(data), accuracy=accuracy, **{"images": len(paths), **agreement})


def versus_best_alternative(rows: Sequence[dict[str, Any]], ours: str = "fastvit-detect") -> list[dict[str, Any]]:
    """For each speed figure measured side by side (latency at batch 1, throughput per batch size and thread
    count): our fastest variant against the fastest other system, with the speed-up as the median of per-trial
    time ratios (> 1: ours is faster), like every ratio against PyTorch."""
    cells: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for row in rows:
        if row["figure"] in ("latency_e2e", "latency_model", "throughput") and row["status"] == "ok" \
                and row.get("samples_ms"):
            cells.setdefault((row["figure"], row["batch_size"], row["threads"]), []).append(row)
    comparisons = []
    for (figure, batch_size, threads), measured in cells.items():
        def seconds(row: dict[str, Any]) -> float:
            return float(np.median(row["samples_ms"]))

        mine = [row for row in measured if row["system"] == ours]
        others = [row for row in measured if row["system"] != ours]
        if not mine or not others:
            continue
        best_ours, best_other = min(mine, key=seconds), min(others, key=seconds)
        comparisons.append({
            "figure": figure, "batch_size": batch_size, "threads": threads,
            "ours": f"{best_ours['system']}/{best_ours['variant']}", "ours_ms": seconds(best_ours),
            "alternative": f"{best_other['system']}/{best_other['variant']}", "alternative_ms": seconds(best_other),
            "speedup": measure.paired_ratio(best_other["samples_ms"], best_ours["samples_ms"]),
        })
    return comparisons


# The OpenVINO backend's targets (issue 21): auto against raw OpenVINO int8 with our preprocessing, and against
# onnxruntime int8, on the figures where each target is set.
AUTO_TARGETS = (("latency_e2e", "openvino/int8"), ("throughput", "openvino/int8"),
                ("throughput", "fastvit-detect/int8"), ("latency_e2e", "fastvit-detect/int8"))


def auto_against_targets(rows: Sequence[dict[str, Any]], auto: str = "fastvit-detect/auto") -> list[dict[str, Any]]:
    """``auto``'s speed-up over each target system, per cell measured side by side (median of per-trial time
    ratios, > 1: auto is faster); for throughput, also the best batch of each (img/s)."""
    cells = {(f"{row['system']}/{row['variant']}", row["figure"], row["batch_size"], row["threads"]): row
             for row in rows if row["status"] == "ok" and row.get("samples_ms")}
    out = []
    for (name, figure, batch_size, threads), row in cells.items():
        for wanted, other in AUTO_TARGETS:
            if name != auto or figure != wanted or (other, figure, batch_size, threads) not in cells:
                continue
            target = cells[(other, figure, batch_size, threads)]
            out.append({"figure": figure, "batch_size": batch_size, "threads": threads, "target": other,
                        "auto_ms": float(np.median(row["samples_ms"])),
                        "target_ms": float(np.median(target["samples_ms"])),
                        "speedup": measure.paired_ratio(target["samples_ms"], row["samples_ms"])})
    return out


# --- main ---------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = make_plan(args)
    if args.calibration is not None and not args.calibration.is_dir():
        raise SystemExit(f"benchmarks: --calibration {args.calibration}: not a directory")
    if args.calibration_limit is not None and args.calibration_limit < 1:
        raise SystemExit(f"benchmarks: --calibration-limit {args.calibration_limit}: must be at least 1")
    output = args.output.resolve()
    cache = (args.cache_dir or output / "cache").resolve()
    output.mkdir(parents=True, exist_ok=True)
    log(f"benchmarks ({plan.mode} mode) -> {output}")
    machine_info = machine.describe()
    log(f"machine: {machine_info['cpu_model']}, {machine_info['physical_cores']} cores, "
        f"{', '.join(machine_info['flags'])}")
    cores = machine_info["physical_cores"]
    thread_counts = resolve_threads(plan.thread_counts, cores)

    built = artifacts_module.prepare(
        args.model, args.preset, cache,
        calibration_dir=(args.calibration or images.calibration_photos(cache)).resolve(),
        calibration_limit=args.calibration_limit)
    if args.scaling_only:
        from . import scaling

        scaling.run(built.package, built.checkpoint, output / "scaling", log=log)
        return 0
    config = built.config
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    image_set = images.image_set(plan.large_megapixels, cache)
    macs = compute.vit_macs(config)
    peak = compute.cpu_peak()

    run = Run(all_systems(built))
    load_systems(run, plan, cores)
    if run.baseline is None:
        log("warning: the PyTorch fp32 baseline isn't available; ratios and fidelity will be missing")

    conditions: dict[str, float | None] = {}

    def phase(name: str, function: Any, *phase_args: Any) -> Any:
        """Run a phase and record how many cores other processes kept busy meanwhile."""
        monitor = machine.ForeignLoad()
        value = function(*phase_args)
        conditions[name] = monitor.cores()
        if conditions[name] is not None and conditions[name] > FOREIGN_LOAD_WARNING:
            log(f"  warning: other processes kept {conditions[name]:.2f} cores busy during {name}")
        return value

    outputs = phase("end-to-end latency", phase_latency, run, plan, image_set.latency, cores)
    phase_fidelity(run, outputs, image_set.latency)
    phase("model-only latency", phase_model_only, run, plan, image_set.throughput[0], cores)
    phase("throughput", phase_throughput, run, plan, image_set.throughput, thread_counts)
    set_threads(run, cores)
    phase("faces", phase_faces, run, plan, built.package, cache, args.faces_wheel, cores)
    phase("cold start", phase_coldstart, run, plan, coldstart.image_for_coldstart(image_set.throughput))
    phase_footprint(run)
    phase_compute(run, macs, peak, cores)
    if args.data:
        phase_accuracy(run, args.data, args.data_limit, labels)

    results = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "plan": asdict(plan) | {"threads_resolved": thread_counts},
        "model": {"source": built.source, "checkpoint": str(built.checkpoint), "package": str(built.package),
                  "optimum_dir": str(built.optimum_dir), "labels": labels, "model_type": config.get("model_type"),
                  "macs": macs, "optimum_quantization": built.optimum_quantization,
                  "calibration": {"dir": str(built.calibration_dir), "limit": built.calibration_limit}},
        "machine": machine_info,
        "foreign_load_cores": conditions,
        "foreign_load_warning_cores": FOREIGN_LOAD_WARNING,
        "peak": peak,
        "images": image_set.describe(),
        "systems": [{"system": s.name, "variant": s.variant, "precision": s.precision, "baseline": s.baseline,
                     "status": "skipped" if s.key in run.skipped else "ok", "reason": run.skipped.get(s.key),
                     "notes": s.notes} for s in run.systems],
        "rows": run.rows,
        "versus_best_alternative": versus_best_alternative(run.rows),
        "auto_against_targets": auto_against_targets(run.rows),
        "wall_s": round(elapsed(), 1),
    }
    (output / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    figures = plots.draw(results, output)
    (output / "report.md").write_text(report.render(results, figures))
    log(f"done in {elapsed():.0f}s: {output / 'report.md'}, results.json, {len(figures)} plot(s)")
    if args.scaling:
        from . import scaling

        scaling.run(built.package, built.checkpoint, output / "scaling", log=log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
