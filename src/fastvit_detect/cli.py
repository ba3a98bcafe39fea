"""``fastvit-detect``: a thin command line over the API. Parse, call, print."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from . import __version__
from .detector import DEFAULT_BATCH_SIZE, Detector, Prediction, unmet_cpu_requirement
from .errors import FastVitDetectError, InputError
from .package import ModelPackage
from .preprocess import DEFAULT_MAX_PIXELS, PreprocessConfig
from .progress import stderr_progress
from .scan import result_record

EXIT_OK, EXIT_IMAGE_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except FastVitDetectError as exc:
        print(f"fastvit-detect: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # output paths: a directory, no permission, a full disk
        print(f"fastvit-detect: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastvit-detect", description="Torch-free deepfake detection with ONNX Vision Transformers."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser("predict", help="classify images", description="Classify images as real or fake.")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    add_model_arguments(predict)
    predict.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="images per session call")
    predict.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    predict.set_defaults(handler=run_predict)

    evaluate = commands.add_parser(
        "eval", help="accuracy on a labelled folder",
        description="Accuracy, macro-F1, AUROC, confusion matrix and speed per variant on DIR/<label>/*.jpg, "
                    "and how far the variants agree.",
    )
    add_model_arguments(evaluate, variant_help="all (default), or one variant: fp32, int8, ...", variant_default="all")
    evaluate.add_argument("--data", required=True, metavar="DIR", help="folder with one sub-folder per label")
    evaluate.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="images per session call")
    evaluate.add_argument("--limit", type=positive_int, default=None, metavar="N", help="evaluate N images spread over DIR")
    evaluate.add_argument("--reference", metavar="CHECKPOINT",
                          help="also evaluate the PyTorch checkpoint (needs the export extra: torch, transformers)")
    evaluate.add_argument("--json", action="store_true", help="print the report as one JSON object")
    evaluate.set_defaults(handler=run_eval)

    scan = commands.add_parser(
        "scan", help="classify a folder into a resumable results file",
        description="Classify every image under DIR (recursively) into a JSON-lines or CSV file. Decoding overlaps "
                    "inference; a bad image gets an error record; an interrupted scan resumes where it stopped.",
    )
    scan.add_argument("folder", metavar="DIR", help="folder to scan")
    add_model_arguments(scan)
    scan.add_argument("--output", "-o", default="scan_results.jsonl", metavar="FILE",
                      help="results file; .csv for CSV, else JSON lines (default scan_results.jsonl)")
    scan.add_argument("--format", choices=("jsonl", "csv"), help="override the format the file name implies")
    scan.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="images per session call")
    scan.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming FILE")
    scan.set_defaults(handler=run_scan)

    info = commands.add_parser("info", help="describe a model package", description="Describe a model package.")
    info.add_argument("model", metavar="DIR", help="model package directory")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.set_defaults(handler=run_info)

    serve = commands.add_parser(
        "serve", help="HTTP server with an upload page and a JSON API (needs the serve extra)",
        description="Serve a model over HTTP: an upload page at /, POST /api/v1/predict, the seed project's "
                    "POST /predict/, /healthz, /api/v1/model and /openapi.json. Concurrent requests are micro-batched.",
    )
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default 8000)")
    serve.add_argument("--max-upload-mb", type=float, default=20.0, metavar="N",
                       help="largest request body in MB (default 20)")
    serve.add_argument("--max-batch", type=positive_int, default=8,
                       help="images per session call; 1 turns micro-batching off (default 8)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0,
                       help="how long a batch waits for more images after its first (default 5)")
    serve.add_argument("--queue-size", type=positive_int, default=64,
                       help="images that may wait for the model; more are refused with 503 (default 64)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(handler=run_serve)
    return parser


def add_model_arguments(parser: argparse.ArgumentParser, variant_help: str = "auto (default: int8 when present), "
                        "fp32, int8, ...", variant_default: str = "auto") -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="model package directory (from export/export.py)")
    parser.add_argument("--variant", default=variant_default, help=variant_help)
    parser.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: physical cores)")
    parser.add_argument(
        "--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument("--jpeg-draft", action="store_true",
                        help="decode large JPEGs at reduced scale: faster, no longer bit-identical to HF")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


# --- predict ------------------------------------------------------------------------------------------------


def run_predict(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    detector = Detector.load(args.model, variant=args.variant, threads=args.threads, max_pixels=args.max_pixels,
                             jpeg_draft=args.jpeg_draft)
    started = time.perf_counter()
    results = detector.predict_batch(args.images, batch_size=args.batch_size, errors="return")
    elapsed = time.perf_counter() - started
    if args.json:
        for image, result in zip(args.images, results):
            print(json.dumps(result_record(image, result)), file=out)
    else:
        print_table(args.images, results, out)
    out.flush()  # the summary goes to stderr: keep it after the results when both reach one terminal
    failed = sum(isinstance(result, InputError) for result in results)
    print(
        f"{len(results)} image(s), {failed} failed; variant {detector.variant.name}; "
        f"{1000 * elapsed / max(1, len(results)):.1f} ms/image",
        file=sys.stderr,
    )
    return EXIT_IMAGE_FAILED if failed else EXIT_OK


def print_table(images: Sequence[str], results: Sequence[Prediction | InputError], out: TextIO) -> None:
    width = min(60, max([len("image"), *(len(image) for image in images)]))
    print(f"{'image':<{width}}  {'label':<10} {'score':>6}  {'p(fake)':>7}", file=out)
    for image, result in zip(images, results):
        shown = image if len(image) <= width else "…" + image[-(width - 1):]
        if isinstance(result, InputError):
            print(f"{shown:<{width}}  {'ERROR':<10} {type(result).__name__}: {result}", file=out)
        else:
            fake = "-" if result.fake_probability is None else f"{result.fake_probability:.4f}"
            print(f"{shown:<{width}}  {result.label:<10} {result.score:>6.4f}  {fake:>7}", file=out)


# --- scan ---------------------------------------------------------------------------------------------------


def run_scan(args: argparse.Namespace) -> int:
    from .scan import scan

    detector = Detector.load(args.model, variant=args.variant, threads=args.threads, max_pixels=args.max_pixels,
                             jpeg_draft=args.jpeg_draft)
    print(f"scanning {args.folder} with {detector.variant.name} into {args.output}", file=sys.stderr)
    summary = scan(detector, args.folder, args.output, batch_size=args.batch_size, fmt=args.format,
                   overwrite=args.overwrite, progress=stderr_progress(detector.variant.name))
    print(summary.describe(), file=sys.stderr)
    return EXIT_IMAGE_FAILED if summary.failed else EXIT_OK


# --- eval ---------------------------------------------------------------------------------------------------


def run_eval(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from . import evaluate

    out = out or sys.stdout
    package = ModelPackage.open(args.model)
    names = list(package.variants) if args.variant == "all" else [package.variant(args.variant).name]
    if args.variant == "all":  # a variant this CPU can't run is reported, not fatal, when asked for all of them
        for name in list(names):
            problem = unmet_cpu_requirement(package.variants[name])
            if problem:
                print(f"skipping {problem}", file=sys.stderr)
                names.remove(name)
    images = evaluate.find_labelled_images(args.data, package.labels, limit=args.limit)
    print(f"evaluating {', '.join(names)} on {len(images.paths)} images from {args.data}", file=sys.stderr)
    runs = []
    for name in names:
        detector = Detector.load(args.model, variant=name, threads=args.threads, max_pixels=args.max_pixels,
                             jpeg_draft=args.jpeg_draft)
        runs.append(evaluate.run_detector(detector, images, args.batch_size, stderr_progress(name)))
    if args.reference:
        runs.append(evaluate.reference_probabilities(args.reference, images, args.batch_size,
                                                     stderr_progress("pytorch-fp32")))
    report = evaluate.evaluate(runs, images)
    if args.json:
        print(json.dumps(report, allow_nan=False), file=out)
    else:
        print_eval_report(report, out)
    return EXIT_OK


def print_eval_report(report: dict[str, Any], out: TextIO) -> None:
    labels = report["labels"]
    print(f"{'variant':<14} {'images':>6} {'accuracy':>8} {'macro-F1':>8} {'AUROC':>7} {'images/s':>8}", file=out)
    for row in report["variants"]:
        accuracy, f1, area, speed = (_figure(row[key], digits) for key, digits in
                                     (("accuracy", 4), ("macro_f1", 4), ("auroc", 4), ("images_per_second", 1)))
        print(f"{row['variant']:<14} {row['images']:>6} {accuracy:>8} {f1:>8} {area:>7} {speed:>8}", file=out)
    for row in report["variants"]:
        print(f"\nconfusion matrix, {row['variant']} (rows: true, columns: predicted)", file=out)
        print("  " + " " * 10 + "".join(f"{label:>10}" for label in labels), file=out)
        for label, counts in zip(labels, row["confusion_matrix"]):
            print(f"  {label:<10}" + "".join(f"{count:>10}" for count in counts), file=out)
    if report["agreement"]:
        print("\nagreement", file=out)
        for pair in report["agreement"]:
            if pair["label_agreement"] is None:
                print(f"  {pair['pair'][0]} vs {pair['pair'][1]}: no image both could read", file=out)
                continue
            print(f"  {pair['pair'][0]} vs {pair['pair'][1]}: same label on {100 * pair['label_agreement']:.2f} % "
                  f"of {pair['images']} images, max |delta p| {pair['max_abs_probability_diff']:.4f}", file=out)
    if report["skipped"]:
        print(f"\nskipped {len(report['skipped'])} image(s):", file=out)
        for image, reason in report["skipped"].items():
            print(f"  {image}: {reason}", file=out)


def _figure(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --- serve --------------------------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    try:  # imported here: the other commands must work without FastAPI and uvicorn installed
        from . import server
    except ImportError as exc:
        print(f"fastvit-detect: error: serve needs the serve extra ({exc.name or exc} is missing); "
              "install it with: pip install 'fastvit-detect[serve]'", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = server.ServeSettings(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                                        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                        queue_size=args.queue_size)
        detector = Detector.load(args.model, variant=args.variant, threads=args.threads, max_pixels=args.max_pixels,
                                 jpeg_draft=args.jpeg_draft)
        server.serve(detector, host=args.host, port=args.port, settings=settings, log_level=args.log_level)
    except ValueError as exc:  # out-of-range settings; model errors go to main()'s FastVitDetectError handler
        print(f"fastvit-detect serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


# --- info ---------------------------------------------------------------------------------------------------


def run_info(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    package = ModelPackage.open(args.model)
    if args.json:
        print(json.dumps(package.manifest or {}, indent=2), file=out)
        return EXIT_OK
    manifest = package.manifest or {}
    lines = [f"package      {package.root}"]
    if not manifest:
        lines.append("manifest     none (a plain Optimum export: files can't be verified)")
    else:
        source = manifest.get("source", {})
        lines.append(f"format       {manifest.get('format')} v{manifest.get('format_version')}")
        lines.append(f"source       {source.get('model')} (revision {source.get('revision') or 'unknown'})")
        lines.append(f"created      {manifest.get('created')}")
    lines.append(f"labels       {', '.join(f'{i}={label}' for i, label in enumerate(package.labels))}")
    lines.append(f"preprocess   {describe_preprocessing(PreprocessConfig.from_hf(package.preprocessor_config))}")
    lines.append(f"default      {package.default_variant}")
    lines.append("variants")
    for name, variant in package.variants.items():
        complete = all(path.is_file() for path, _, _ in variant.files)
        size_text = f"{variant.total_bytes / 1e6:.1f} MB" if complete else "missing"
        digest = f"sha256 {variant.sha256[:12]}…" if variant.sha256 else "unverified"
        lines.append(f"  {name:<8} {variant.path.name:<24} {size_text:>9}  {digest}")
        if variant.data_path is not None:
            lines.append(f"           weights      {variant.data_path.name}")
        details = variant.details
        quantization = details.get("quantization")
        if isinstance(quantization, dict):
            selection = quantization.get("selection")
            settings = {key: value for key, value in quantization.items() if key != "selection"}
            lines.append(f"           quantization {json.dumps(settings)}")
            if isinstance(selection, dict) and isinstance(selection.get("candidates"), list):
                lines.append(f"           chosen from  {len(selection['candidates'])} candidates by --optimize auto:")
                for row in selection["candidates"]:
                    if isinstance(row, dict):
                        mark = "*" if row.get("candidate") == selection.get("chosen") else " "
                        diff = row.get("max_abs_probability_diff")
                        diff_text = f"{diff:.4f}" if isinstance(diff, (int, float)) else "?"
                        lines.append(f"           {mark} {row.get('candidate')}: {row.get('latency_ms')} ms, "
                                     f"max |dp| {diff_text}")
        if "validation" in details:
            lines.append(f"           validation   {format_validation(details['validation'])}")
    print("\n".join(lines), file=out)
    return EXIT_OK


def describe_preprocessing(config: PreprocessConfig) -> str:
    parts = [config.processor]
    if config.resize:
        parts.append(f"resize {config.resize[0]}x{config.resize[1]} (resample {config.resample})")
    if config.crop:
        parts.append(f"center-crop {config.crop[0]}x{config.crop[1]}")
    if config.rescale_factor is not None:
        parts.append(f"rescale {config.rescale_factor:.6g}")
    if config.mean is not None:
        parts.append(f"normalize mean {list(config.mean)} std {list(config.std or ())}")
    return ", ".join(parts)


def format_validation(figures: dict[str, Any]) -> str:
    keys = ("images", "max_abs_logit_diff", "max_abs_probability_diff", "top1_agreement")
    return ", ".join(f"{key}={figures[key]:.3g}" if isinstance(figures.get(key), float) else f"{key}={figures.get(key)}"
                     for key in keys if key in figures)


if __name__ == "__main__":
    raise SystemExit(main())
