"""``fastvit-detect``: a thin command line over the API. Parse, call, print."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .detector import (
    DEFAULT_BATCH_SIZE,
    MAX_BATCH_SIZE,
    Detector,
    ImageResult,
    Prediction,
    choose_variant,
    decides_by_faces,
    unmet_cpu_requirement,
)
from .errors import (
    BackendError,
    FastVitDetectError,
    InputError,
    InvalidOptionError,
    MissingExtraError,
    ModelOutputError,
)
from .explain import (
    BASELINES,
    DEFAULT_METHOD,
    DEFAULT_OPTIONS,
    DEFAULT_TARGET,
    MAX_GRID,
    MAX_SAMPLES,
    METHODS,
    Explanation,
    resolve_options,
)
from .faces import (
    DEFAULT_MARGIN,
    DEFAULT_MAX_FACES,
    DEFAULT_MIN_FACE_SIZE,
    FACE_FILES,
    FACES_SECTION,
    MAX_MAX_FACES,
    MAX_MIN_FACE_SIZE,
    FaceOptions,
    expects_faces,
    face_detector_variants,
)
from .httpapi import SERVER_MAX_PIXELS
from .hub import fetch, parse_model_reference
from .layout import MAX_WORKERS, Layout, choose_layout, read_calibration
from .media import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, check_formats, server_formats
from .options import finite_number, positive_int, refuse_empty_text, whole_number
from .package import ModelPackage, Variant
from .preprocess import PreprocessConfig
from .progress import stderr_progress
from .scan import check_scan_target, output_format, result_record
from .session import MAX_THREADS, physical_core_count
from .timeline import SUSPICIOUS, has_face_detector
from .video import DEFAULT_FPS, DEFAULT_MAX_FRAMES, MAX_FPS, MAX_MAX_FRAMES, MIN_FPS, VideoLimits, is_video

__all__ = ["EXIT_IMAGE_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main", "positive_int"]

EXIT_OK, EXIT_IMAGE_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141  # what a shell shows for SIGINT and SIGPIPE
MiB = 1024 * 1024

batch_size_type = whole_number(1, MAX_BATCH_SIZE)
threads_type = whole_number(1, MAX_THREADS)
actors_type = whole_number(1, 100_000)  # more than any Ray cluster runs; a typo beyond it fails here
workers_type = whole_number(1, MAX_WORKERS)
# 0 MB is a usage error, not "no cap": a cap that refuses every image is never meant, and no cap is never safe.
megabytes_type = finite_number(0, 64 * 1024, low_inclusive=False)
SERVE_MAX_PIXELS, SERVE_MAX_UPLOAD_MB = 1 << 32, 4096  # ServeSettings' own bounds (max_pixels, max_upload_bytes)
upload_megabytes_type = finite_number(0, SERVE_MAX_UPLOAD_MB, low_inclusive=False)
EXPLAIN_OPTIONS = ("method", "target", "grid", "samples", "baseline", "seed")


def formats_type(text: str) -> tuple[str, ...] | None:
    """``--formats``: comma-separated Pillow format names, or "any" (every format Pillow opens but EPS)."""
    if text.strip().lower() in ("any", "all"):
        return None
    try:
        formats = check_formats([name.strip() for name in text.split(",") if name.strip()])
    except InvalidOptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return formats


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0: done; 1: some images failed (the rest were classified); 2: nothing could run (bad model, bad
    arguments, standard output closed, or an unexpected failure); 130: interrupted; 141: the reader of standard
    output went away (``| head``). Never a traceback: set FASTVIT_DETECT_DEBUG=1 to see one."""
    if not standard_streams_open():
        return EXIT_USAGE
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        if arguments[:1] == ["export"]:  # the build package's parser reads the rest: one definition of its options
            return run_export(arguments[1:])
        parser = build_parser()
        args = parser.parse_args(arguments)
        return int(args.handler(args))
    except BrokenPipeError:  # checked before OSError: a reader that stops early isn't an error of ours
        discard_standard_output()
        return EXIT_BROKEN_PIPE
    except FastVitDetectError as exc:
        print(f"fastvit-detect: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # output paths: a directory, no permission, a full disk
        print(f"fastvit-detect: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an environment problem: say so, in one line
        if os.environ.get("FASTVIT_DETECT_DEBUG"):
            raise
        print(f"fastvit-detect: internal error: {type(exc).__name__}: {exc} (set FASTVIT_DETECT_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        return EXIT_USAGE


def standard_streams_open() -> bool:
    """False, with a message, when standard output was closed (``>&-``): the results would be lost.

    A closed descriptor 1 or 2 gets /dev/null first either way, so that no file opened later (a scan's results,
    an overlay) becomes descriptor 1 or 2 and receives text meant for the terminal. A closed standard error just
    means "discard the diagnostics"."""
    if sys.stderr is None:
        sys.stderr = _devnull_on(2)
    if sys.stdout is not None:
        return True
    sys.stdout = _devnull_on(1)
    print("fastvit-detect: error: standard output is closed, so the results would be lost; redirect it instead "
          "(> FILE, or > /dev/null to discard them)", file=sys.stderr)
    return False


def _devnull_on(descriptor: int) -> TextIO:
    null = os.open(os.devnull, os.O_WRONLY)
    if null != descriptor:
        os.dup2(null, descriptor)
        os.close(null)
    return open(descriptor, "w", encoding="utf-8", errors="backslashreplace", closefd=False)


def discard_standard_output() -> None:
    """After a broken pipe: send what is still buffered to /dev/null, so that the interpreter's final flush
    doesn't print "Exception ignored ... BrokenPipeError"."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            # Not a real file (captured in tests), or already closed: nothing to flush into a broken pipe.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                os.dup2(null, stream.fileno())
    finally:
        os.close(null)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastvit-detect", description="Torch-free deepfake detection with ONNX Vision Transformers."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser("predict", help="classify images", description="Classify images as real or fake.")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    add_model_arguments(predict)
    predict.add_argument("--batch-size", type=batch_size_type, default=DEFAULT_BATCH_SIZE,
                         help=f"images per session call, 1-{MAX_BATCH_SIZE} (default {DEFAULT_BATCH_SIZE})")
    predict.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    predict.add_argument("--explain", metavar="DIR", default=None,
                         help="also write a heat-map overlay per image into DIR (see `explain`; with faces, of the "
                              "deciding face's crop)")
    add_explain_arguments(predict.add_argument_group("explanations (with --explain DIR)"))
    add_face_arguments(predict.add_argument_group("faces (the package needs export --faces)"))
    add_video_arguments(predict.add_argument_group("videos (recognised by content; needs the video extra)"))
    predict.set_defaults(handler=run_predict)

    explain = commands.add_parser(
        "explain", help="heat maps of what drove each verdict",
        description="Explain each verdict: write DIR/<image>.explain.png (the heat map over the upright image, "
                    "with a colour bar) and print one JSON line per image with the verdict, how it was explained "
                    "and the file written. Heat is the drop in p(target) when a region is hidden.",
    )
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain")
    add_model_arguments(explain)
    explain.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for the overlay PNGs")
    add_explain_arguments(explain)
    add_face_arguments(explain.add_argument_group("faces (explain the deciding face's crop; the package needs export "
                                                  "--faces)"))
    explain.set_defaults(handler=run_explain)

    evaluate = commands.add_parser(
        "eval", help="accuracy on a labelled folder",
        description="Accuracy, macro-F1, AUROC, confusion matrix and speed per variant on DIR/<label>/* (any image "
                    "format the runtime reads), and how far the variants agree.",
    )
    add_model_arguments(evaluate, variant_help="all (default), or one variant: fp32, int8, ...", variant_default="all")
    evaluate.add_argument("--data", required=True, metavar="DIR", help="folder with one sub-folder per label")
    evaluate.add_argument("--batch-size", type=batch_size_type, default=DEFAULT_BATCH_SIZE,
                          help=f"images per session call (default {DEFAULT_BATCH_SIZE})")
    evaluate.add_argument("--limit", type=positive_int, default=None, metavar="N",
                          help="evaluate N images spread over DIR")
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
                      help="results file, a regular file; .csv for CSV, .parquet for a folder of Parquet files "
                           "(--engine ray only), else JSON lines (default scan_results.jsonl)")
    scan.add_argument("--format", choices=("jsonl", "csv", "parquet"),
                      help="the format, for a file name that doesn't imply one (.csv, .parquet, .jsonl, .json); "
                           "one that contradicts the name is refused")
    scan.add_argument("--batch-size", type=batch_size_type, default=DEFAULT_BATCH_SIZE,
                      help=f"images per session call (default {DEFAULT_BATCH_SIZE})")
    scan.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming FILE")
    add_face_arguments(scan.add_argument_group("faces (a record per face, then the image's; the package needs "
                                                "export --faces)"))
    scan.add_argument("--video-frames", metavar="FILE", default=None,
                      help="also write one JSON line per sampled frame of each video into FILE (videos get one "
                           "record each in the results file, sampled at 1 fps, faces first when the package has a "
                           "face detector); --engine local only")
    cluster = scan.add_argument_group("Ray (needs the ray extra)")
    cluster.add_argument("--engine", choices=("local", "ray"), default="local",
                         help="local: this process (default); ray: actors on a Ray cluster, DIR may be a URI")
    cluster.add_argument("--address", default=None, metavar="ADDR",
                         help="Ray cluster to join (host:port, ray://host:port, auto); default $RAY_ADDRESS, else "
                              "a new Ray on this machine, listening on 127.0.0.1 only")
    cluster.add_argument("--connect-timeout", type=finite_number(0.1, 3600), default=None, metavar="S",
                         help="seconds joining --address may take before giving up (default 60)")
    cluster.add_argument("--ray-verbose", action="store_true",
                         help="Ray's own log lines as Ray sets them (default: its warnings and worse only)")
    cluster.add_argument("--actors", type=actors_type, default=None, metavar="N",
                         help="actors, one model each (default: the cluster's CPUs / threads per actor)")
    cluster.add_argument("--threads-per-actor", type=threads_type, default=None, metavar="T",
                         help=f"CPUs reserved and intra-op threads per actor, 1-{MAX_THREADS} (default 1)")
    cluster.add_argument("--ship-model", action="store_true",
                         help="send the package's files to the workers through Ray's object store, for workers "
                              "that can't read --model's path")
    scan.set_defaults(handler=run_scan)

    info = commands.add_parser("info", help="describe a model package", description="Describe a model package.")
    info.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.add_argument("--calibrate", action="store_true",
                      help="time the candidate throughput layouts on this machine (about a minute on 16 cores) and "
                           "cache the fastest for this variant: predict, scan, eval and serve then use it")
    info.add_argument("--variant", default="auto", help="the variant --calibrate times (default: auto)")
    info.set_defaults(handler=run_info)

    serve = commands.add_parser(
        "serve", help="HTTP server with an upload page and a JSON API (needs the serve extra)",
        description="Serve a model over HTTP: an upload page at /, POST /api/v1/predict, the seed project's "
                    "POST /predict/, /healthz, /api/v1/model and /openapi.json. Concurrent requests are micro-batched.",
    )
    add_model_arguments(serve, max_pixels_default=SERVER_MAX_PIXELS, max_pixels_limit=SERVE_MAX_PIXELS)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=whole_number(0, 65535), default=8000,
                       help="port to listen on; 0 picks a free one (default 8000)")
    serve.add_argument("--formats", type=formats_type, default=server_formats(), metavar="LIST",
                       help="image formats to open, comma-separated, or 'any' for every format Pillow opens but EPS "
                            f"(default {','.join(server_formats())}: photo formats)")
    serve.add_argument("--max-upload-mb", type=upload_megabytes_type, default=20.0, metavar="N",
                       help=f"largest request body in MB, up to {SERVE_MAX_UPLOAD_MB} (default 20)")
    serve.add_argument("--max-batch", type=whole_number(1, 4096), default=8,
                       help="images per session call; 1 turns micro-batching off (default 8)")
    serve.add_argument("--max-wait-ms", type=finite_number(0, 10_000), default=5.0,
                       help="longest a batch waits for more images after its first, 0-10000 (default 5)")
    serve.add_argument("--queue-size", type=whole_number(1, 100_000), default=64,
                       help="images that may wait for the model; more are refused with 503 (default 64)")
    serve.add_argument("--decode-workers", type=whole_number(1, 256), default=None, metavar="N",
                       help="threads decoding uploads (default: the physical cores, at least 2)")
    serve.add_argument("--max-connections", type=whole_number(1, 1_000_000), default=128, metavar="N",
                       help="concurrent connections; more are answered 503 (default 128)")
    serve.add_argument("--header-timeout", type=finite_number(0.1, 3600), default=10.0, metavar="S",
                       help="seconds a request's headers may take to arrive (default 10)")
    serve.add_argument("--body-timeout", type=finite_number(0.1, 3600), default=60.0, metavar="S",
                       help="seconds a request's body may take to arrive; slower ones get 408 (default 60)")
    serve.add_argument("--explain-concurrency", type=whole_number(1, 256), default=1, metavar="N",
                       help="explanations computed at once, off the prediction path (default 1)")
    serve.add_argument("--explain-queue", type=whole_number(0, 100_000), default=2, metavar="N",
                       help="explanations that may wait for a free slot; more get 503 (default 2)")
    serve.add_argument("--explain-max-passes", type=whole_number(2, 1_000_000), default=49, metavar="N",
                       help="the most model passes one explanation may ask for; more get 422 (default 49)")
    serve.add_argument("--explain-yield", type=finite_number(0, 3600), default=1.0, metavar="S",
                       help="seconds an explanation's pass waits for queued predictions before it runs anyway "
                            "(default 1)")
    add_serve_face_arguments(serve)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    videos = serve.add_argument_group("videos (POST /api/v1/video; needs the video extra)")
    videos.add_argument("--max-video-mb", type=upload_megabytes_type, default=256, metavar="MB",
                        help="largest video upload, in MiB (default 256)")
    videos.add_argument("--max-video-seconds", type=finite_number(0.001, 86_400), default=300.0, metavar="S",
                        help="longest video, in seconds of content (default 300)")
    videos.add_argument("--max-video-frames", type=whole_number(1, MAX_MAX_FRAMES), default=300, metavar="N",
                        help="most frames a request may have sampled (default 300)")
    serve.set_defaults(handler=run_serve)

    # Listed here for --help; main() hands its arguments to the build package's parser (run_export).
    export = commands.add_parser(
        "export", add_help=False,
        help="turn a Hugging Face ViT/DeiT checkpoint into a model package (needs the export extra)",
        description="Export, quantize and validate a checkpoint: fastvit-detect export MODEL -o DIR [options].")
    export.add_argument("arguments", nargs=argparse.REMAINDER)

    push = commands.add_parser(
        "push", help="publish a model package on the Hugging Face Hub (needs the hub extra)",
        description="Verify a model package and upload it, with a generated model card (README.md), to a Hub "
                    "repository in one commit. Creates the repository and branch if missing. The token comes from "
                    "--token, HF_TOKEN or `hf auth login`.",
    )
    push.add_argument("package", metavar="DIR", help="model package directory (from fastvit-detect export)")
    push.add_argument("repo_id", metavar="ORG/NAME", help="Hub repository to publish to")
    push.add_argument("--private", action="store_true", help="create the repository private (if it doesn't exist)")
    push.add_argument("--revision", "--branch", dest="revision", metavar="BRANCH",
                      help="branch to commit to (default main); created from main if missing")
    push.add_argument("--token", help="a Hub token with write access (prefer HF_TOKEN: a command line is visible "
                                      "to other users of the machine)")
    push.add_argument("--message", help="commit message")
    push.set_defaults(handler=run_push)
    return refuse_empty_text(parser)


MODEL_HELP = ("model package directory, or a Hugging Face Hub id: org/name, org/name@revision or "
              "hf://org/name[@revision] (an existing path is always local; needs the hub extra)")


def add_model_arguments(parser: argparse.ArgumentParser, variant_help: str = "auto (default: int8 when present), "
                        "fp32, int8, ...", variant_default: str = "auto",
                        max_pixels_default: int = DEFAULT_MAX_PIXELS, max_pixels_limit: int = 2**40) -> None:
    parser.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("--variant", default=variant_default, help=variant_help)
    parser.add_argument("--threads", type=threads_type, default=None,
                        help=f"cores to use, 1-{MAX_THREADS} (default: the physical cores)")
    parser.add_argument("--workers", type=workers_type, default=None, metavar="N",
                        help="batches classified at once, each on its own session (default: chosen for the cores; "
                             "see info)")
    parser.add_argument("--threads-per-worker", type=threads_type, default=None, metavar="N",
                        help="intra-op threads of each worker's session (default: chosen for the cores)")
    parser.add_argument(
        "--max-pixels", type=whole_number(1, max_pixels_limit), default=max_pixels_default,
        help=f"refuse images with more pixels than this, checked before decoding (default {max_pixels_default:,})",
    )
    parser.add_argument(
        "--max-image-mb", type=megabytes_type, default=DEFAULT_MAX_BYTES / MiB, metavar="N",
        help=f"refuse image files larger than this, checked before reading (default {DEFAULT_MAX_BYTES // MiB})")
    parser.add_argument("--jpeg-draft", action="store_true",
                        help="decode large JPEGs at reduced scale: faster, no longer bit-identical to HF")


def open_package(model: str, variants: str | None = None) -> ModelPackage:
    """The package ``--model`` names: a local directory, or a Hub id fetched (see hub.parse_model_reference) with
    the files of ``variants``: None for none, "all", or one variant name or "auto"."""
    reference = parse_model_reference(model)
    if reference is None:
        return ModelPackage.open(model)

    def select(package: ModelPackage) -> list[Variant]:
        if variants == "all":
            return [variant for variant in package.variants.values() if not unmet_cpu_requirement(variant)]
        if variants is None:
            return []
        choice = choose_variant(package, variants)
        # auto's fallback too: should OpenVINO fail to compile its variant, the onnxruntime one is there to run
        return [package.lookup(name) for name in (choice.name, choice.fallback) if name is not None]

    with reference.local_reading_first():
        return fetch(reference.repo_id, revision=reference.revision, select=select).package


def load_detector(args: argparse.Namespace, variant: str | None = None,
                  package: ModelPackage | None = None) -> Detector:
    """The Detector the model arguments describe: from ``package`` if it's open already, else from the Hub id or
    directory ``--model`` names."""
    if args.workers and args.threads_per_worker and args.workers * args.threads_per_worker > MAX_THREADS:
        raise FastVitDetectError(f"--workers {args.workers} x --threads-per-worker {args.threads_per_worker} is over "
                                 f"{MAX_THREADS} threads")
    options: dict[str, Any] = dict(variant=variant or args.variant, threads=args.threads,
                                   max_pixels=args.max_pixels, max_bytes=max(1, int(args.max_image_mb * MiB)),
                                   jpeg_draft=args.jpeg_draft, workers=args.workers,
                                   threads_per_worker=args.threads_per_worker)
    if hasattr(args, "faces"):  # the commands with add_face_arguments
        options.update(faces=faces_choice(args), face_options=face_options(args))
    reference = parse_model_reference(args.model) if package is None else None
    if reference is not None:
        with reference.local_reading_first():
            return Detector.from_pretrained(reference.repo_id, revision=reference.revision, **options)
    return Detector.load(package or args.model, **options)


def add_explain_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    occlusion, rise = DEFAULT_OPTIONS["occlusion"], DEFAULT_OPTIONS["rise"]
    parser.add_argument("--method", choices=METHODS, default=None,
                        help=f"occlusion: hide one cell at a time; rise: random masks (default {DEFAULT_METHOD})")
    parser.add_argument("--target", default=None,
                        help=f"the label whose evidence to show, or 'predicted' (default {DEFAULT_TARGET})")
    parser.add_argument("--grid", type=whole_number(2, MAX_GRID), default=None,
                        help=f"cells per side (default: occlusion {occlusion['grid']}, rise {rise['grid']})")
    parser.add_argument("--samples", type=even(whole_number(2, MAX_SAMPLES)), default=None,
                        help=f"rise: random masks, even (default {rise['samples']})")
    parser.add_argument("--baseline", choices=BASELINES, default=None,
                        help=f"what hides a region (default {occlusion['baseline']})")
    parser.add_argument("--seed", type=whole_number(0, 2**63 - 1), default=None,
                        help=f"rise: random seed (default {rise['seed']})")


def even(parse: Callable[[str], int]) -> Callable[[str], int]:
    """``parse``, and the number must be even."""
    def checked(text: str) -> int:
        value = parse(text)
        if value % 2:
            raise argparse.ArgumentTypeError(f"expected an even number, got {value:,}")
        return value

    checked.__name__ = "even number"
    return checked


# --- predict ------------------------------------------------------------------------------------------------


def run_predict(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if args.explain is None and any(getattr(args, key) is not None for key in EXPLAIN_OPTIONS):
        raise InvalidOptionError(f"{', '.join('--' + key for key in EXPLAIN_OPTIONS)} need --explain DIR")
    writer = OverlayWriter(args.explain, args) if args.explain is not None else None
    if args.timeline is not None:
        check_timeline_drawable()  # before seconds of loading and decoding
    detector = load_detector(args)
    note_intended_use(detector.package)
    videos = [name for name in args.images if is_video(name)]  # by content, never by name
    if not videos:
        if args.timeline is not None:
            raise InvalidOptionError("--timeline draws a video's timeline, and no video was given")
        return predict_images(args, detector, writer, out)
    if writer is not None:
        raise InvalidOptionError("--explain doesn't take videos; explain a frame saved as an image instead")
    video_code = run_predict_videos(args, detector, videos, out)
    images = [name for name in args.images if name not in videos]
    if not images:
        return video_code
    return max(video_code, predict_images(argparse.Namespace(**{**vars(args), "images": images}), detector, writer,
                                          out))


def predict_images(args: argparse.Namespace, detector: Detector, writer: OverlayWriter | None, out: TextIO) -> int:
    """``predict`` on the images among its arguments (the videos, if any, are done by then)."""
    if detector.faces_first:
        return run_predict_faces(args, detector, out, writer)
    started = time.perf_counter()
    results = detector.predict_batch(args.images, batch_size=args.batch_size, errors="return")
    elapsed = time.perf_counter() - started
    files: list[str | None] = [None] * len(results)
    if writer is not None:
        for index, (image, result) in enumerate(zip(args.images, results)):
            if isinstance(result, Prediction):
                try:
                    files[index] = str(writer.write(detector, image)[1])
                except (InputError, ModelOutputError) as exc:  # unreadable since predicted (replaced, say)
                    results[index] = exc
    if args.json:
        for image, result, file in zip(args.images, results, files):
            record = result_record(image, result)
            if file is not None:
                record["explanation"] = file
            print(json.dumps(record), file=out)
    else:
        print_table(args.images, results, out, files if writer is not None else None)
    out.flush()  # the summary goes to stderr: keep it after the results when both reach one terminal
    failed = sum(not isinstance(result, Prediction) for result in results)
    print(
        f"{len(results)} image(s), {failed} failed; variant {detector.variant.name}; "
        f"{1000 * elapsed / max(1, len(results)):.1f} ms/image",
        file=sys.stderr,
    )
    return EXIT_IMAGE_FAILED if failed else EXIT_OK


def add_face_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--faces", action="store_true",
                        help="find the faces, classify each face's crop, and decide the image by its faces (the "
                             "default for a package whose model expects faces)")
    parser.add_argument("--no-faces", action="store_true", help="classify whole images even if the model expects faces")
    parser.add_argument("--margin", type=finite_number(0, 4), default=DEFAULT_MARGIN,
                        help="a face crop's side is (1 + margin) x the face box's longer side (default %(default)s)")
    parser.add_argument("--min-face-size", type=whole_number(12, MAX_MIN_FACE_SIZE), default=DEFAULT_MIN_FACE_SIZE,
                        metavar="PX", help="smallest face searched for, in px of the detection copy (default "
                                           "%(default)s)")
    parser.add_argument("--max-faces", type=whole_number(1, MAX_MAX_FACES), default=DEFAULT_MAX_FACES, metavar="N",
                        help="at most N faces per image, the most confident (default %(default)s)")


def faces_choice(args: argparse.Namespace) -> bool | str:
    """``Detector.load``'s ``faces`` from --faces / --no-faces: "auto" (as the manifest says) when neither."""
    if args.faces and args.no_faces:
        raise InvalidOptionError("--faces and --no-faces contradict each other; pass one")
    return True if args.faces else False if args.no_faces else "auto"


def face_options(args: argparse.Namespace) -> FaceOptions:
    return FaceOptions(min_face_size=args.min_face_size, max_faces=args.max_faces, margin=args.margin)


def run_predict_faces(args: argparse.Namespace, detector: Detector, out: TextIO,
                      writer: OverlayWriter | None = None) -> int:
    """``predict --faces``: one line per face (its box and verdict), then the image's verdict; ``--json``: one
    record per image with its faces. ``--explain``: an overlay of the deciding face's crop per image (the whole
    image's where no face was found)."""
    detector.face_detector  # noqa: B018 - a package without the face detector fails before any image is read
    started = time.perf_counter()
    failed = 0
    for image in args.images:
        try:
            result = detector.predict_faces(image)
        except (InputError, ModelOutputError) as exc:
            failed += 1
            if args.json:
                print(json.dumps(result_record(image, exc)), file=out)
            else:
                print(f"{image}  ERROR  {type(exc).__name__}: {exc}", file=out)
            continue
        file = None
        if writer is not None:
            try:
                file = str(writer.write(detector, image)[1])
            except (InputError, ModelOutputError) as exc:  # unreadable since predicted (replaced, say)
                failed += 1
                print(f"{image}  explanation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"image": image, **result.to_dict(),
                              **({"explanation": file} if file is not None else {})}), file=out)
            continue
        for number, (face, prediction) in enumerate(result.faces, start=1):
            box = ", ".join(f"{value:.0f}" for value in face.box)
            print(f"{image}  face {number} [{box}] (detector score {face.score:.3f})  {describe(prediction)}",
                  file=out)
        if result.prediction is None:
            print(f"{image}  image: no face found, no verdict", file=out)
        else:
            why = (f"face {result.decisive + 1} decides" if result.decisive is not None
                   else "no face found: the whole image")
            print(f"{image}  image ({len(result.faces)} face(s); {why})  {describe(result.prediction)}", file=out)
        if file is not None:
            print(f"{image}  explanation ({'the deciding face' if result.faces else 'the whole image'}): {file}",
                  file=out)
    out.flush()
    print(f"{len(args.images)} image(s), {failed} failed; variant {detector.variant.name}; faces first; "
          f"{1000 * (time.perf_counter() - started) / max(1, len(args.images)):.1f} ms/image", file=sys.stderr)
    return EXIT_IMAGE_FAILED if failed else EXIT_OK


def add_video_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--fps", type=finite_number(MIN_FPS, MAX_FPS), default=DEFAULT_FPS,
                        help="frames sampled per second of video (default %(default)s)")
    parser.add_argument("--max-frames", type=whole_number(1, MAX_MAX_FRAMES), default=DEFAULT_MAX_FRAMES,
                        metavar="N", help="at most N frames a video, spread evenly over a longer one (default "
                                      "%(default)s)")
    parser.add_argument("--max-video-seconds", type=finite_number(0.001, 24 * 3600), default=VideoLimits.max_duration,
                        metavar="S", help="refuse videos longer than S seconds (default %(default)s)")
    parser.add_argument("--timeline", metavar="PNG", default=None,
                        help="draw each video's fake probability against time, per face track (needs matplotlib); "
                             "several videos: PNG-1, PNG-2, ...")
    parser.add_argument("--threshold", type=finite_number(0, 1), default=SUSPICIOUS,
                        help="a sampled frame is suspicious at p(fake) >= this (default %(default)s)")


def check_timeline_drawable() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("--timeline draws with matplotlib, which isn't installed: pip install matplotlib "
                                "(--json prints the same timeline as numbers)") from exc


def timeline_path(template: str, number: int, count: int) -> str:
    if count == 1:
        return template
    path = Path(template)
    return str(path.with_name(f"{path.stem}-{number}{path.suffix or '.png'}"))


def run_predict_videos(args: argparse.Namespace, detector: Detector, videos: Sequence[str], out: TextIO) -> int:
    """``predict`` on videos: each video's tracks, verdict and suspicious time ranges (``--json``: one record per
    video, :meth:`VideoResult.to_dict`), and its timeline drawn with ``--timeline``."""
    from .timeline import draw_timeline  # matplotlib and PyAV stay unimported for images

    faces = not args.no_faces and (args.faces or has_face_detector(detector.package))
    limits = VideoLimits(max_duration=args.max_video_seconds)
    failed = 0
    for number, video in enumerate(videos, start=1):
        started = time.perf_counter()
        progress = stderr_progress(Path(video).name[:14]) if sys.stderr.isatty() else None
        try:
            result = detector.predict_video(video, fps=args.fps, max_frames=args.max_frames, faces=faces,
                                            progress=progress, limits=limits, margin=args.margin,
                                            min_face_size=args.min_face_size, max_faces=args.max_faces)
        except (InputError, ModelOutputError) as exc:
            failed += 1
            if args.json:
                print(json.dumps({"video": video, "error": {"type": type(exc).__name__, "message": str(exc)}}),
                      file=out)
            else:
                print(f"{video}  ERROR  {type(exc).__name__}: {exc}", file=out)
            continue
        elapsed = time.perf_counter() - started
        ranges = result.suspicious_ranges(args.threshold)
        if args.timeline is not None:
            draw_timeline(result, timeline_path(args.timeline, number, len(videos)), args.threshold)
        if args.json:
            print(json.dumps(result.to_dict()), file=out)
        else:
            print_video(video, result, ranges, out)
        print(f"{video}: {len(result.frames)} frame(s) sampled, {result.decoded_frames} decoded, in {elapsed:.1f} s "
              f"({len(result.frames) / max(elapsed, 1e-9):.1f} frames/s)", file=sys.stderr)
    out.flush()
    return EXIT_IMAGE_FAILED if failed else EXIT_OK


def print_video(video: str, result: Any, ranges: Sequence[tuple[float, float]], out: TextIO) -> None:
    faces = [track for track in result.tracks if track.kind == "face"]
    print(f"{video}  video {result.duration:.1f} s, {len(result.frames)} frame(s) sampled, {len(faces)} face "
          "track(s)", file=out)
    for track in result.tracks:
        name = f"face track {track.id}" if track.kind == "face" else "whole frames"
        print(f"{video}  {name}: {len(track.times)} frame(s), {track.times[0]:.1f}-{track.times[-1]:.1f} s  "
              f"{describe(track.verdict)}", file=out)
    if result.prediction is None:
        print(f"{video}  verdict: no frame could be sampled, no verdict", file=out)
        return
    why = f"face track {result.decisive}" if result.decided_by == "face track" else result.decided_by
    print(f"{video}  verdict ({why}): {describe(result.prediction)}", file=out)
    shown = ", ".join(f"{start:.1f}-{end:.1f} s" for start, end in ranges) or "none"
    print(f"{video}  suspicious: {shown}", file=out)


def describe(prediction: Prediction) -> str:
    fake = "" if prediction.fake_probability is None else f"  p(fake) {prediction.fake_probability:.4f}"
    return f"{prediction.label} {prediction.score:.4f}{fake}"


def note_intended_use(package: ModelPackage) -> None:
    """Say what the exporter said the model is for, where its verdicts are printed: a demo model's verdicts on
    real photos must not be taken for a real detector's."""
    if package.manifest is not None and package.manifest.intended_use:
        print(f"note: {package.source_name}: {package.manifest.intended_use}", file=sys.stderr)


def print_table(images: Sequence[str], results: Sequence[ImageResult], out: TextIO,
                files: Sequence[str | None] | None = None) -> None:
    width = min(60, max([len("image"), *(len(image) for image in images)]))
    overlay = "  explanation" if files is not None else ""
    print(f"{'image':<{width}}  {'label':<10} {'score':>6}  {'p(fake)':>7}{overlay}", file=out)
    for index, (image, result) in enumerate(zip(images, results)):
        shown = image if len(image) <= width else "…" + image[-(width - 1):]
        if not isinstance(result, Prediction):
            print(f"{shown:<{width}}  {'ERROR':<10} {type(result).__name__}: {result}", file=out)
        else:
            fake = "-" if result.fake_probability is None else f"{result.fake_probability:.4f}"
            file = f"  {files[index]}" if files is not None and files[index] else ""
            print(f"{shown:<{width}}  {result.label:<10} {result.score:>6.4f}  {fake:>7}{file}", file=out)


# --- explain ------------------------------------------------------------------------------------------------


class OverlayWriter:
    """Writes one overlay PNG per explained image into a folder, never overwriting one written in this run."""

    def __init__(self, folder: str, args: argparse.Namespace) -> None:
        self.method = args.method or DEFAULT_METHOD
        self.target = args.target or DEFAULT_TARGET
        self.options = {key: getattr(args, key) for key in ("grid", "samples", "baseline", "seed")
                        if getattr(args, key) is not None}
        resolve_options(self.method, self.options)  # --samples with occlusion, say: fail before any work
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InvalidOptionError(f"{folder}: exists and isn't a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.taken: set[str] = set()

    def path_for(self, image: str) -> Path:
        stem = Path(image).stem or "image"
        name, number = f"{stem}.explain.png", 1
        while name in self.taken:  # photo.jpg and photo.png, or two folders' photo.jpg
            number += 1
            name = f"{stem}-{number}.explain.png"
        self.taken.add(name)
        return self.folder / name

    def write(self, detector: Detector, image: str) -> tuple[Explanation, Path]:
        """Explain one image and save its overlay; a bad image raises its InputError."""
        explanation = detector.explain(image, method=self.method, target=self.target, **self.options)
        path = self.path_for(image)
        explanation.overlay().save(path, format="PNG")
        return explanation, path


def run_explain(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    writer = OverlayWriter(args.output, args)
    detector = load_detector(args)
    note_intended_use(detector.package)
    started, failed = time.perf_counter(), 0
    for image in args.images:
        try:
            explanation, path = writer.write(detector, image)
        except (InputError, ModelOutputError) as exc:
            failed += 1
            record = result_record(image, exc)
        else:
            record = {**result_record(image, explanation.prediction),
                      "explanation": {**explanation.summary(), "file": str(path)}}
        print(json.dumps(record), file=out, flush=True)
    elapsed = time.perf_counter() - started
    print(f"{len(args.images)} image(s) explained, {failed} failed; variant {detector.variant.name}; "
          f"{1000 * elapsed / len(args.images):.0f} ms/image; overlays in {writer.folder}", file=sys.stderr)
    return EXIT_IMAGE_FAILED if failed else EXIT_OK


# --- scan ---------------------------------------------------------------------------------------------------


def run_scan(args: argparse.Namespace) -> int:
    from .scan import scan

    if args.engine == "ray":
        if args.video_frames is not None:
            raise FastVitDetectError("--video-frames needs --engine local: the Ray engine writes one record per video, "
                                     "not its frames")
        return run_ray_scan(args)
    for option, value in (("--address", args.address), ("--actors", args.actors),
                          ("--threads-per-actor", args.threads_per_actor), ("--ship-model", args.ship_model),
                          ("--connect-timeout", args.connect_timeout), ("--ray-verbose", args.ray_verbose)):
        if value:
            raise FastVitDetectError(f"{option} needs --engine ray")
    check_scan_target(args.folder, args.output, args.format)  # before seconds of loading the model
    detector = load_detector(args)
    note_intended_use(detector.package)
    print(f"scanning {args.folder} with {detector.variant.name} into {args.output}", file=sys.stderr)
    summary = scan(detector, args.folder, args.output, batch_size=args.batch_size, fmt=args.format,
                   overwrite=args.overwrite, progress=stderr_progress(detector.variant.name),
                   video_frames=args.video_frames)
    print(summary.describe(), file=sys.stderr)
    return EXIT_IMAGE_FAILED if summary.failed else EXIT_OK


def run_ray_scan(args: argparse.Namespace) -> int:
    try:  # imported here: every other command works without Ray installed
        from . import ray as engine
    except ImportError as exc:
        print(f"fastvit-detect: error: scan --engine ray needs the ray extra ({exc.name or exc} is missing); "
              "install it with: pip install 'fastvit-detect[ray]'", file=sys.stderr)
        return EXIT_USAGE
    if args.threads is not None:
        raise FastVitDetectError("--threads is the local scan's; with --engine ray use --threads-per-actor")
    if not engine.is_uri(args.folder) and not os.path.isdir(args.folder):
        raise FastVitDetectError(f"{args.folder}: not a directory to scan")
    output_format(args.output, args.format, engine.FORMATS)  # before Ray starts
    package = ModelPackage.open(args.model)  # a bad package fails here, before Ray starts
    note_intended_use(package)
    if decides_by_faces(package, faces_choice(args)):
        face_detector_variants(package)  # as does one without the face detector that faces are asked of
    timeout = engine.JOIN_TIMEOUT_S if args.connect_timeout is None else args.connect_timeout
    with engine.connected(args.address, timeout=timeout, verbose=args.ray_verbose) as seconds:
        print(f"ray: {engine.describe_cluster()}, ready in {seconds:.1f}s; scanning {args.folder} into {args.output}",
              file=sys.stderr)
        summary = engine.classify(args.folder, args.model, args.output, fmt=args.format, overwrite=args.overwrite,
                                  variant=args.variant, actors=args.actors, threads_per_actor=args.threads_per_actor,
                                  batch_size=args.batch_size, max_pixels=args.max_pixels,
                                  max_bytes=max(1, int(args.max_image_mb * MiB)), jpeg_draft=args.jpeg_draft,
                                  ship_model=args.ship_model, progress=stderr_progress("ray"),
                                  faces=faces_choice(args), face_options=face_options(args))
    dropped = summary.duplicates_dropped
    retried = f"; {dropped} record(s) of retried batches arrived twice, written once" if dropped else ""
    print(f"{summary.describe()}; {summary.actors} actor(s) x {args.threads_per_actor or 1} thread(s){retried}",
          file=sys.stderr)
    return EXIT_IMAGE_FAILED if summary.failed else EXIT_OK


# --- eval ---------------------------------------------------------------------------------------------------


def run_eval(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from . import evaluate

    out = out or sys.stdout
    package = open_package(args.model, args.variant)
    names = list(package.variants) if args.variant == "all" else [choose_variant(package, args.variant).name]
    if args.variant == "all":  # a variant this CPU can't run is reported, not fatal, when asked for all of them
        from .openvino_session import openvino_available

        for name in list(names):
            problem = unmet_cpu_requirement(package.variants[name])
            if package.variants[name].runtime == "openvino":
                problem = problem or openvino_available()
            if problem:
                print(f"skipping {problem}", file=sys.stderr)
                names.remove(name)
    images = evaluate.find_labelled_images(args.data, package.labels, limit=args.limit)
    # The reference loads first: a missing extra or a bad checkpoint must fail before minutes of work.
    reference = evaluate.load_reference(args.reference, package.labels) if args.reference else None
    print(f"evaluating {', '.join(names)} on {len(images.paths)} images from {args.data}", file=sys.stderr)
    runs = []
    for name in names:
        detector = load_detector(args, variant=name, package=package)
        runs.append(evaluate.run_detector(detector, images, args.batch_size, stderr_progress(name)))
    if reference is not None:
        runs.append(evaluate.reference_probabilities(reference, images, args.batch_size,
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


# --- export -------------------------------------------------------------------------------------------------


def run_export(arguments: Sequence[str]) -> int:
    """Exit 0: package written; 1: the export failed; 2: bad arguments or the export extra missing."""
    try:  # imported here: the runtime never needs the build package, and it needs torch
        from .build.export import main as export_main
    except MissingExtraError as exc:  # its message names the extra and how to install it
        print(f"fastvit-detect: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:
        print(f"fastvit-detect: error: export needs the export extra ({exc.name or exc} is missing); install it "
              "with: pip install 'fastvit-detect[export]'", file=sys.stderr)
        return EXIT_USAGE
    try:
        return export_main(arguments, prog="fastvit-detect export")
    except SystemExit as exit_:  # argparse: --help (0) or bad arguments (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# --- serve --------------------------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    from .httpapi import missing_serve_modules

    missing = missing_serve_modules()  # all of them: naming one at a time sends users round in circles
    if missing:
        print(f"fastvit-detect: error: serve needs the serve extra ({', '.join(missing)} missing); "
              "install it with: pip install 'fastvit-detect[serve]'", file=sys.stderr)
        return EXIT_USAGE
    from . import server

    try:
        settings = serve_settings(args)
        video_serve_settings(args)  # its ranges are the flags', checked before the model loads
    except ValueError as exc:  # out-of-range settings; model errors go to main()'s FastVitDetectError handler
        print(f"fastvit-detect serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sock = server.bind_socket(args.host, args.port)  # before the model loads: a bad address fails at once
    try:
        detector = load_detector(args)
        server.serve(detector, host=args.host, port=args.port, settings=settings, log_level=args.log_level, sock=sock,
                     video_settings=video_serve_settings(args))
    finally:
        sock.close()
    return EXIT_OK


def add_serve_face_arguments(serve: argparse.ArgumentParser) -> None:
    """serve's limits on ?faces=1 requests (ServeSettings.faces_*; unset: its defaults)."""
    from .faces import DEFAULT_MAX_SIDE, MAX_MAX_FACES, MAX_MAX_SIDE, MIN_MAX_SIDE

    faces = serve.add_argument_group("faces (?faces=1; the package needs export --faces)")
    faces.add_argument("--faces-max-per-image", type=whole_number(1, MAX_MAX_FACES), default=None, metavar="N",
                       help="the most faces one image's answer holds, each a place in the inference queue (default "
                            "32, at most --queue-size)")
    faces.add_argument("--faces-detect-side", type=whole_number(MIN_MAX_SIDE, MAX_MAX_SIDE), default=None,
                       metavar="PX", help="faces are detected on a copy whose long side is at most PX (default "
                                      f"{DEFAULT_MAX_SIDE}; larger finds smaller faces, at more CPU and memory)")
    faces.add_argument("--faces-concurrency", type=whole_number(1, 256), default=None, metavar="N",
                       help="images in face detection at once, on threads of their own (default 1)")
    faces.add_argument("--faces-queue", type=whole_number(0, 100_000), default=None, metavar="N",
                       help="images that may wait for face detection; more get 503 (default 4)")


SERVE_FACE_SETTINGS = ("faces_max_per_image", "faces_detect_side", "faces_concurrency", "faces_queue")


def serve_settings(args: argparse.Namespace) -> Any:
    """The ServeSettings that serve's flags describe (needs the serve extra)."""
    from .server import ServeSettings

    return ServeSettings(
        max_upload_bytes=max(1, int(args.max_upload_mb * MiB)), max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, max_pixels=args.max_pixels,
        max_connections=args.max_connections, header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout, explain_concurrency=args.explain_concurrency,
        explain_queue=args.explain_queue, explain_max_passes=args.explain_max_passes,
        explain_yield_s=args.explain_yield, formats=args.formats,
        **({"decode_workers": args.decode_workers} if args.decode_workers else {}),
        **{name: getattr(args, name) for name in SERVE_FACE_SETTINGS if getattr(args, name) is not None})


def video_serve_settings(args: argparse.Namespace) -> Any:
    """The VideoServeSettings that serve's video flags describe (needs the serve extra)."""
    from .server.video import VideoServeSettings

    return VideoServeSettings(max_upload_bytes=max(1, int(args.max_video_mb * MiB)),
                              max_duration=args.max_video_seconds, max_frames=args.max_video_frames)


# --- info ---------------------------------------------------------------------------------------------------


def run_info(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if args.calibrate:  # from the Hub, the variant's graph is fetched to be timed
        return run_calibrate(open_package(args.model, args.variant), args.variant, out)
    package = open_package(args.model)
    manifest = package.manifest
    if args.json:
        print(json.dumps(manifest.to_dict() if manifest else {}, indent=2), file=out)
        return EXIT_OK
    lines = [f"package      {package.root}"]
    if manifest is None:
        lines.append("manifest     none (a plain Optimum export: files can't be verified)")
    else:
        lines.append(f"format       fastvit-detect-model-package v{manifest.format_version}")
        lines.append("sha256       " + ("configs, graphs and weights" if package.configs_verified else
                                        f"graphs and weights; configs unverified (a v{manifest.format_version} "
                                        "manifest doesn't vouch for them: re-export to do so)"))
        lines.append(f"source       {package.source_name} (revision {manifest.source.revision or 'unknown'})")
        lines.append(f"created      {manifest.created or 'unknown'}")
        if manifest.description:
            lines.append(f"description  {manifest.description}")
        if manifest.intended_use:
            lines.append(f"intended use {manifest.intended_use}")
    lines.append(f"labels       {', '.join(f'{i}={label}' for i, label in enumerate(package.labels))}")
    lines.append(f"preprocess   {describe_preprocessing(PreprocessConfig.from_hf(package.preprocessor_config))}")
    choice = choose_variant(package, "auto")
    lines.append(f"default      {package.default_variant}")
    lines.append(f"auto         {choice.describe()}")
    lines.append(f"layout       {describe_layout(package, choice.name)}")
    lines.append("variants")
    local = parse_model_reference(args.model) is None  # from the Hub, info fetches no graphs
    for name, variant in package.variants.items():
        complete = all(path.is_file() for path, _, _ in variant.files)
        size_text = f"{variant.total_bytes / 1e6:.1f} MB" if complete else "missing" if local else "on the Hub"
        digest = f"sha256 {variant.sha256[:12]}…" if variant.sha256 else "unverified"
        lines.append(f"  {name:<8} {variant.path.name:<24} {size_text:>9}  {digest}  {variant.runtime}")
        if variant.data_path is not None:
            lines.append(f"           weights      {variant.data_path.name}")
        entry = variant.entry
        if entry is not None and entry.quantization is not None:
            lines.extend(describe_quantization(entry.quantization))
        if entry is not None and entry.validation is not None:
            lines.append(f"           validation   {format_validation(entry.validation)}")
    lines.append(f"faces        {describe_faces(package)}")
    print("\n".join(lines), file=out)
    return EXIT_OK


def describe_faces(package: ModelPackage) -> str:
    """info's faces line: whether the package holds the face detector and whether its model expects faces."""
    section = package.manifest.extra.get(FACES_SECTION) if package.manifest is not None else None
    held = (f"face detector {section.get('detector', '?')} ({len(FACE_FILES)} graphs)" if isinstance(section, dict)
            else "no face detector (export --faces adds it)")
    return held + ("; the model expects face crops: predict finds the faces by default" if expects_faces(package)
                   else "")


def layout_for(package: ModelPackage, variant: str) -> Layout:
    """The batch layout a Detector.load of ``variant`` without layout arguments would choose here."""
    cores = physical_core_count()
    chosen = package.lookup(variant)  # from the manifest: the graph needn't be here
    if not chosen.sha256:
        return choose_layout(cores, runtime=chosen.runtime)
    from .backends import backend_for

    try:
        path = backend_for(chosen.runtime).layout_cache(chosen.sha256)
    except (MissingExtraError, BackendError):  # a runtime not installed or not known has no calibration here
        return choose_layout(cores, runtime=chosen.runtime)
    return choose_layout(cores, calibrated=read_calibration(path, cores), runtime=chosen.runtime)


def describe_layout(package: ModelPackage, variant: str) -> str:
    return f"{layout_for(package, variant).describe()} on {physical_core_count()} cores for batch work"


def run_calibrate(package: ModelPackage, variant: str, out: TextIO) -> int:
    """Time the throughput layouts of the variant (for ``auto`` with an OpenVINO variant and the extra: of both
    runtimes' variants, caching the faster as ``auto``'s choice on this machine)."""
    from .backends import backend_for
    from .choice import choice_cache_path, onnxruntime_choice, openvino_variant, write_choice
    from .openvino_session import openvino_available, openvino_version
    from .pool import calibrate_layout

    names = [choose_variant(package, variant).name]
    candidate = openvino_variant(package)
    if variant == "auto" and candidate is not None and openvino_available() is None:
        names = [onnxruntime_choice(package, "auto").name, candidate.name]
    figures: dict[str, float] = {}
    for name in names:
        chosen = package.variant(name)
        if not chosen.sha256:
            raise FastVitDetectError(f"{package.root}: variant {chosen.name!r} has no sha256 in a manifest, so a "
                                     "calibration couldn't be told apart from another model's; pass --workers instead")
        package.verify(chosen)
        print(f"timing throughput layouts for {chosen.name} ({chosen.runtime}) on {physical_core_count()} cores ...",
              file=sys.stderr)
        layout, rates, path = calibrate_layout(chosen.path, chosen.sha256, backend=backend_for(chosen.runtime))
        for key, rate in sorted(rates.items(), key=lambda item: -item[1]):
            print(f"  {chosen.name:<14} {key:>8}  {rate:7.1f} images/s (model only)", file=out)
        print(f"chosen: {layout.describe()} for {chosen.name}; cached in {path}", file=out)
        figures[name] = max(rates.values())
    if len(names) == 2:
        winner = write_choice(choice_cache_path(package.variants[names[0]], package.variants[names[1]],
                                                openvino_version()), figures)
        print(f"auto: {winner} ({figures[winner]:.1f} vs {min(figures.values()):.1f} images/s)", file=out)
    return EXIT_OK


# --- push ---------------------------------------------------------------------------------------------------


def run_push(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from .hub import push

    out = out or sys.stdout
    pushed = push(args.package, args.repo_id, private=args.private, revision=args.revision, token=args.token,
                  commit_message=args.message)
    print(f"pushed {len(pushed.files)} files to {pushed.url} (commit {pushed.commit}): {', '.join(pushed.files)}",
          file=out)
    return EXIT_OK


def describe_quantization(quantization: Any) -> list[str]:
    selection = quantization.get("selection")
    settings = {key: value for key, value in quantization.items() if key != "selection"}
    lines = [f"           quantization {json.dumps(settings)}"]
    if isinstance(selection, dict) and isinstance(selection.get("candidates"), list):
        lines.append(f"           chosen from  {len(selection['candidates'])} candidates by --optimize auto:")
        for row in selection["candidates"]:
            if isinstance(row, dict):
                mark = "*" if row.get("candidate") == selection.get("chosen") else " "
                diff = row.get("max_abs_probability_diff")
                diff_text = f"{diff:.4f}" if isinstance(diff, (int, float)) else "?"
                lines.append(f"           {mark} {row.get('candidate')}: {row.get('latency_ms')} ms, "
                             f"max |dp| {diff_text}")
    return lines


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


def format_validation(figures: Any) -> str:
    keys = ("images", "max_abs_logit_diff", "max_abs_probability_diff", "top1_agreement")
    return ", ".join(f"{key}={figures[key]:.3g}" if isinstance(figures.get(key), float) else f"{key}={figures.get(key)}"
                     for key in keys if key in figures)


if __name__ == "__main__":
    raise SystemExit(main())
