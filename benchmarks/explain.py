"""Explanations measured: are the heat maps faithful, do they land where the fake cues are, and what do they cost.

    python -m benchmarks.explain faithfulness --package artifacts/demo/trained-package --data artifacts/demo/data
    python -m benchmarks.explain cost --package artifacts/demo/package

``faithfulness`` (the trained tiny detector on make_dataset.py's Test split, every method setting in SETTINGS):

* deletion/insertion: hide the hottest k % of the model input (k = 5 ... 50 %, in the ViT's 16 x 16 patches) and
  read p(verdict); compare with hiding k % at random (``fastvit_detect.explain.faithfulness``). Gaps are in
  probability points, averaged over k; positive means the heat map beats chance. Hiding by blur and by grey.
* spliced images: a Real rendering of a Test scene with one quadrant replaced by the Fake rendering of the same
  scene (make_dataset renders one scene per id whatever the label), so the fake cues sit in that quadrant only.
  Share of the positive "fake" heat inside it (chance: 25 %) and how often the hottest pixel is inside it.
* cue maps: on Fake images, the share of positive heat on the 25 % of pixels where the generator moved the scene
  most (make_dataset.render_image_with_cues; chance: 25 %).

``cost``: per-image latency of ``predict(path)`` and of ``explain(path)`` at each method's defaults, per variant,
interleaved on the same images (fastvit_detect.build.timing), and their ratio.

Results go to --output as JSON; ``report FILE`` prints the tables docs/guides/explanations.md quotes.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fastvit_detect import Detector
from fastvit_detect.build.timing import interleave, percentiles_ms
from fastvit_detect.explain import DEFAULT_OPTIONS, METHODS, RemovalTest, model_passes

from . import machine
from .artifacts import ROOT
from .progress import log

# (method, options) compared on faithfulness; each method's defaults are among them.
SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("occlusion", {"grid": 2}),
    ("occlusion", {"grid": 3}),
    ("occlusion", {"grid": 4}),
    ("occlusion", {"grid": 6}),
    ("rise", {"samples": 8}),
    ("rise", {"samples": 16}),
    ("rise", {"samples": 32}),
)
QUICK_SETTINGS = SETTINGS[:3] + SETTINGS[4:6]  # what a shared 2-core machine measures in reasonable time
REMOVALS = ("blur", "grey")
CUE_QUANTILE = 0.75  # the top quarter of pixels by cue strength
MEASURES = ("deletion_gap_blur", "insertion_gap_blur", "deletion_gap_grey", "insertion_gap_grey",
            "deletion_gap_log_odds_blur", "insertion_gap_log_odds_blur", "deletion_gap_log_odds_grey",
            "insertion_gap_log_odds_grey",
            "fake_deletion_gap_blur", "fake_insertion_gap_blur", "cue_share", "splice_share", "splice_hit",
            "splice_fake_probability", "splice_deletion_gap", "splice_insertion_gap", "splice_deletion_gap_log_odds",
            "splice_insertion_gap_log_odds")


def setting_name(method: str, options: dict[str, Any]) -> str:
    return method + "".join(f" {key}={value}" for key, value in sorted(options.items()))


def make_dataset_module():  # type: ignore[no-untyped-def]
    from train import make_dataset

    return make_dataset


@dataclass(frozen=True)
class TestImage:
    path: Path
    label: str
    image_id: int


def test_images(data: Path, limit: int | None) -> tuple[list[TestImage], dict[str, Any]]:
    """The Test split's images with their generator ids, classes interleaved, at most ``limit``."""
    info = json.loads((data / "dataset_info.json").read_text())
    plan = make_dataset_module().plan_dataset(info["images"])
    images = [TestImage(data / item.relative_path, item.label, item.image_id) for item in plan if item.split == "Test"]
    return (images[:limit] if limit else images), info


def positive_share(heat: np.ndarray, region: np.ndarray) -> float:
    """Share of the positive heat that falls inside ``region`` (NaN when there is no positive heat)."""
    positive = np.clip(np.nan_to_num(heat), 0, None)
    total = positive.sum()
    return float(positive[region].sum() / total) if total > 0 else float("nan")


def spliced_image(module: Any, devices: Any, seed: int, image_id: int, quadrant: int) -> bytes:
    """A Real rendering whose ``quadrant`` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) is the Fake
    rendering of the same scene, JPEG-encoded at the image's own quality."""
    real, quality = module.render_image(seed, image_id, "Real", devices)
    fake, _ = module.render_image(seed, image_id, "Fake", devices)
    half = module.IMAGE_SIZE // 2
    rows = slice(0, half) if quadrant < 2 else slice(half, None)
    columns = slice(0, half) if quadrant % 2 == 0 else slice(half, None)
    real[rows, columns] = fake[rows, columns]
    buffer = io.BytesIO()
    Image.fromarray(real).save(buffer, format="JPEG", quality=quality, subsampling=module.JPEG_SUBSAMPLING)
    return buffer.getvalue()


def quadrant_mask(size: tuple[int, int], quadrant: int) -> np.ndarray:
    height, width = size
    mask = np.zeros(size, dtype=bool)
    mask[(slice(0, height // 2) if quadrant < 2 else slice(height // 2, None)),
         (slice(0, width // 2) if quadrant % 2 == 0 else slice(width // 2, None))] = True
    return mask


def summarise(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, its 95 % interval (normal approximation) and the share of positive values, ignoring NaN."""
    array = np.asarray([value for value in values if not np.isnan(value)], dtype=np.float64)
    if array.size == 0:
        return {"n": 0}
    half_width = 1.96 * array.std(ddof=1) / np.sqrt(array.size) if array.size > 1 else float("nan")
    return {"n": int(array.size), "mean": float(array.mean()), "ci95": float(half_width),
            "positive": float((array > 0).mean())}


def run_faithfulness(args: argparse.Namespace) -> dict[str, Any]:
    module = make_dataset_module()
    images, info = test_images(args.data, args.limit)
    devices = module.Devices.for_seed(info["seed"])
    detector = Detector.load(args.package, variant=args.variant, threads=args.threads)
    rng = np.random.default_rng(0)
    log(f"{len(images)} Test images from {args.data}, variant {detector.variant.name}")
    cue_regions: dict[int, np.ndarray] = {}
    splices: dict[int, tuple[bytes, int]] = {}
    for image in images:
        if image.label == "Fake":
            _, _, cues = module.render_image_with_cues(info["seed"], image.image_id, "Fake", devices)
            cue_regions[image.image_id] = cues >= np.quantile(cues, CUE_QUANTILE)
        quadrant = int(rng.integers(4))
        splices[image.image_id] = (spliced_image(module, devices, info["seed"], image.image_id, quadrant), quadrant)
    candidates = QUICK_SETTINGS if args.quick else SETTINGS
    settings = [setting for setting in candidates if not args.only or setting_name(*setting) in args.only]
    names = [setting_name(*setting) for setting in settings]
    measured: dict[str, dict[str, list[float]]] = {name: {key: [] for key in MEASURES} for name in names}
    correct = dict.fromkeys(names, 0)
    seconds = dict.fromkeys(names, 0.0)
    for number, image in enumerate(images, start=1):
        random_curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        data, quadrant = splices[image.image_id]
        for (method, options), name in zip(settings, names):
            started = time.perf_counter()
            explanation = detector.explain(image.path, method=method, target="predicted", **options)
            seconds[name] += time.perf_counter() - started
            row = measured[name]
            correct[name] += explanation.prediction.label == image.label
            for removal in REMOVALS:
                test = RemovalTest(removal)
                if removal not in random_curves:  # the random orders don't depend on the setting: once per image
                    random_curves[removal] = test.random_curves(detector, explanation, args.random_orders)
                result = test.measure(detector, explanation, random_curves=random_curves[removal])
                row[f"deletion_gap_{removal}"].append(result.deletion_gap)
                row[f"insertion_gap_{removal}"].append(result.insertion_gap)
                row[f"deletion_gap_log_odds_{removal}"].append(result.deletion_gap_log_odds)
                row[f"insertion_gap_log_odds_{removal}"].append(result.insertion_gap_log_odds)
                if removal == "blur" and image.label == "Fake":
                    row["fake_deletion_gap_blur"].append(result.deletion_gap)
                    row["fake_insertion_gap_blur"].append(result.insertion_gap)
            if image.label == "Fake" and explanation.target == "Fake":
                row["cue_share"].append(positive_share(explanation.original_heatmap, cue_regions[image.image_id]))
            spliced = detector.explain(data, method=method, target="fake", **options)
            heat = spliced.original_heatmap
            region = quadrant_mask(heat.shape, quadrant)
            row["splice_share"].append(positive_share(heat, region))
            row["splice_hit"].append(float(region.flat[int(np.nanargmax(heat))]))
            row["splice_fake_probability"].append(spliced.target_probability)
            if "splice" not in random_curves:
                random_curves["splice"] = RemovalTest().random_curves(detector, spliced, args.random_orders)
            result = RemovalTest().measure(detector, spliced, random_curves=random_curves["splice"])
            for key in ("deletion_gap", "insertion_gap", "deletion_gap_log_odds", "insertion_gap_log_odds"):
                row[f"splice_{key}"].append(getattr(result, key))
        if number % 5 == 0 or number == len(images):
            log(f"{number}/{len(images)} images")
    rows = []
    for (method, options), name in zip(settings, names):
        row = {"setting": name, "method": method, "options": options, "model_passes": model_passes(method, options),
               "images": len(images), "accuracy": correct[name] / len(images), "explain_seconds": seconds[name],
               **{key: summarise(values) for key, values in measured[name].items()}}
        rows.append(row)
        log(f"{name}: deletion gap {row['deletion_gap_log_odds_blur']['mean']:+.3f} log-odds (blur), "
            f"spliced: deletion gap {row['splice_deletion_gap']['mean']:+.4f}, "
            f"heat in quadrant {row['splice_share']['mean']:.3f}")
    return {"kind": "faithfulness", "package": str(args.package), "variant": detector.variant.name,
            "data": str(args.data), "dataset": info, "random_orders": args.random_orders, "limit": args.limit,
            "machine": machine.describe(), "settings": rows}


def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    """``"occlusion grid=3"`` -> ("occlusion", {"grid": 3}); values are whole numbers or words."""
    method, *pairs = text.split()
    options: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        options[key] = int(value) if value.isdigit() else value
    return method, options


def run_cost(args: argparse.Namespace) -> dict[str, Any]:
    from fastvit_detect.build.samples import sample_photos

    photos = sample_photos()
    settings = [parse_setting(text) for text in args.settings] if args.settings else [(m, {}) for m in METHODS]
    results = []
    for variant in args.variants or ["int8", "fp32"]:
        detector = Detector.load(args.package, variant=variant, threads=args.threads)
        calls = {"predict": detector.predict}
        for method, options in settings:
            calls[setting_name(method, options)] = (
                lambda path, method=method, options=options, detector=detector:
                detector.explain(path, method=method, **options))
        log(f"{variant}: timing {', '.join(calls)} on {len(photos)} photos, {args.rounds} round(s)")
        measured = interleave(list(calls), photos, lambda key, photo, calls=calls: calls[key](photo),
                              rounds=args.rounds, block=args.block, warmup=photos[:1])
        if measured.failures:
            raise SystemExit(f"timing failed: {measured.failures}")
        for key, samples in measured.samples.items():
            method, options = parse_setting(key) if key != "predict" else (None, {})
            # Paired per photo and round: the ratio to the predict call made just before, on the same photo.
            ratios = [sample / baseline for sample, baseline in zip(samples, measured.samples["predict"])]
            row = {"variant": variant, "call": key, **percentiles_ms(samples),
                   "model_passes": model_passes(method, options) if method else 1,
                   "options": {**DEFAULT_OPTIONS[method], **options} if method else {},
                   "vs_predict": statistics.median(ratios)}
            results.append(row)
            log(f"  {key}: median {row['p50_ms']:.1f} ms ({row['vs_predict']:.1f}x predict)")
    return {"kind": "cost", "package": str(args.package), "threads": args.threads, "photos": [p.name for p in photos],
            "rounds": args.rounds, "block": args.block, "machine": machine.describe(), "rows": results}


def markdown(report: dict[str, Any]) -> str:
    def figure(summary: dict[str, Any], digits: int = 3, percent: bool = False) -> str:
        if not summary.get("n"):
            return "-"
        scale = 100 if percent else 1
        return f"{scale * summary['mean']:+.{digits}f} ± {scale * summary['ci95']:.{digits}f}" if not percent \
            else f"{scale * summary['mean']:.0f} %"

    if report["kind"] == "cost":
        lines = ["| variant | call | model passes | median ms | p90 ms | × predict |", "|---|---|---:|---:|---:|---:|"]
        for row in report["rows"]:
            lines.append(f"| {row['variant']} | {row['call']} | {row['model_passes']} | {row['p50_ms']:.1f} | "
                         f"{row['p90_ms']:.1f} | {row['vs_predict']:.1f} |")
        return "\n".join(lines)
    lines = [("| setting | passes | Test: deletion gap | Test: insertion gap | Test: deletion gap, grey | "
              "spliced: deletion gap | spliced: insertion gap | spliced: heat in quadrant | "
              "spliced: peak in quadrant | heat on top-25 % cues |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["settings"]:
        lines.append(
            f"| {row['setting']} | {row['model_passes']} | {figure(row['deletion_gap_log_odds_blur'], 2)} | "
            f"{figure(row['insertion_gap_log_odds_blur'], 2)} | {figure(row['deletion_gap_log_odds_grey'], 2)} | "
            f"{figure(row['splice_deletion_gap'])} | {figure(row['splice_insertion_gap'])} | "
            f"{figure(row['splice_share'], percent=True)} | {figure(row['splice_hit'], percent=True)} | "
            f"{figure(row['cue_share'], percent=True)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    faithful = commands.add_parser("faithfulness", help="deletion/insertion and localisation on the Test split")
    faithful.add_argument("--package", type=Path, default=ROOT / "artifacts" / "demo" / "trained-package")
    faithful.add_argument("--data", type=Path, default=ROOT / "artifacts" / "demo" / "data")
    faithful.add_argument("--variant", default="auto")
    faithful.add_argument("--limit", type=int, default=None, help="first N Test images (classes interleaved)")
    faithful.add_argument("--random-orders", type=int, default=3)
    faithful.add_argument("--only", nargs="*", help="settings to run, by name (default: all)")
    faithful.add_argument("--quick", action="store_true", help="occlusion grid 2-4 and rise 8-16 only")
    cost = commands.add_parser("cost", help="explain latency next to one prediction")
    cost.add_argument("--package", type=Path, default=ROOT / "artifacts" / "demo" / "package")
    cost.add_argument("--variants", nargs="*", help="default: int8 fp32")
    cost.add_argument("--settings", nargs="*", help='e.g. "occlusion grid=3" "rise samples=16" (default: each '
                      "method at its defaults)")
    cost.add_argument("--rounds", type=int, default=3)
    cost.add_argument("--block", type=int, default=3, help="photos per turn (each turn opens with an untimed call)")
    for sub in (faithful, cost):
        sub.add_argument("--threads", type=int, default=None)
        sub.add_argument("--output", type=Path, default=None, help="JSON results file")
    tables = commands.add_parser("report", help="print the Markdown tables of a results file")
    tables.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    if args.command == "report":
        print(markdown(json.loads(args.results.read_text())))
        return 0
    report = run_faithfulness(args) if args.command == "faithfulness" else run_cost(args)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
