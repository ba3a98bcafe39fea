"""The mutation check: break the runtime on purpose, one meaningful line at a time, and make sure the tests notice.

    python scripts/mutation.py                 # every mutant; exit 1 if any survives or no longer applies
    python scripts/mutation.py --list          # the mutants and the tests meant to kill them
    python scripts/mutation.py --only label-sorted-names batch-size-ignored

Each mutant is an exact piece of ``src/fastvit_detect/<file>`` and what replaces it: a plausible mistake in a
line that carries the library's promises (labels and indices, batching, variant choice, the CPU policy, metrics,
error mapping, resume, caps, checksums, EXIF, each HTTP endpoint's verdict). The runner copies ``src/`` to a
temporary folder, applies one mutant there (never to the real ``src/``), runs the tests listed for it with that
copy first on ``PYTHONPATH``, and expects them to fail. A mutant whose piece of code no longer occurs exactly
once is *stale*: the check fails and says which, so the list follows refactors.

The fixture packages and PyTorch's reference answers are built once, by a first run of all the selected tests on
the unchanged copy (which must pass), into a temporary cache (``FASTVIT_TEST_CACHE``, see tests/conftest.py);
the mutant runs reuse them and import neither torch nor transformers. Own runner rather than mutmut: mutmut
generates thousands of syntactic mutants and runs the whole suite per mutant (hours here); this list is
curated for meaning, and each mutant runs only the tests that should catch it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fastvit_detect"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # under src/fastvit_detect, or a path from the repository root when it contains a "/"
    original: str  # must occur exactly once in the file
    mutated: str
    tests: tuple[str, ...]  # pytest node ids (or paths) that must fail with the mutant in place
    why: str


def nodes(path: str, *names: str) -> tuple[str, ...]:
    return tuple(f"tests/{path}::{name}" for name in names)


DETECTOR_TESTS = "test_detector.py"
MUTANTS: tuple[Mutant, ...] = (
    # --- labels and indices ---------------------------------------------------------------------------------
    Mutant("label-sorted-names", "detector.py",
           "label=self.labels[best],", "label=sorted(self.labels)[best],",
           nodes(DETECTOR_TESTS, "test_labels_and_fake_probability_follow_the_names_not_the_index"),
           "a wrong label whenever id2label isn't in alphabetical order"),
    Mutant("package-labels-sorted", "package.py",
           "labels = [by_index[index] for index in range(len(by_index))]", "labels = sorted(by_index.values())",
           nodes("test_fixtures.py", "test_label_orders_cover_the_index_mistakes"),
           "labels read from id2label in name order instead of index order"),
    Mutant("fake-probability-wrong-index", "detector.py",
           "return float(probabilities[self._fake_index])", "return float(probabilities[-1 - self._fake_index])",
           nodes(DETECTOR_TESTS, "test_labels_and_fake_probability_follow_the_names_not_the_index"),
           "p(fake) read from another label's column"),
    Mutant("fake-label-case-sensitive", "detector.py",
           "lowered = [label.strip().lower() for label in labels]", "lowered = list(labels)",
           nodes(DETECTOR_TESTS, "test_fake_label_is_found_by_name_whatever_its_case"),
           "the fake label found only when spelled in lower case"),
    Mutant("fake-from-real-not-complemented", "detector.py",
           "return float(1.0 - probabilities[self._real_index])",
           "return float(probabilities[self._real_index])",
           nodes(DETECTOR_TESTS, "test_fake_probability_without_a_fake_label"),
           "p(fake) = p(real) for a model with labels real/other"),
    Mutant("softmax-over-the-batch", "detector.py",
           "return exp / exp.sum(axis=-1, keepdims=True)", "return exp / exp.sum(axis=0, keepdims=True)",
           nodes(DETECTOR_TESTS, "test_fp32_equals_pytorch_on_real_photos_and_odd_images[vit]"),
           "probabilities normalised across the batch instead of across the labels"),
    # --- batching and streaming -----------------------------------------------------------------------------
    Mutant("batch-size-ignored", "detector.py",
           "for chunk in _chunks(images, batch_size):\n            results.extend",
           "for chunk in _chunks(images, 1):\n            results.extend",
           nodes("test_streaming.py", "test_one_session_call_per_batch_size_images"),
           "predict_batch makes one session call per image"),
    Mutant("predict-iter-no-overlap", "detector.py",
           "if len(pending) > prefetch:", "if len(pending) > 0:",
           nodes("test_streaming.py", "test_predict_iter_decodes_the_next_batch_while_the_model_runs"),
           "predict_iter decodes a batch only after the previous one's results are taken"),
    Mutant("scan-no-prefetch", "scan.py",
           "batch_size=batch_size, prefetch=1,", "batch_size=batch_size, prefetch=0,",
           nodes("test_streaming.py", "test_scan_overlaps_decoding_and_flushes_each_batch"),
           "scan decodes in the calling thread, no overlap with the model"),
    Mutant("scan-flushes-at-the-end", "scan.py",
           "if done % batch_size == 0 or done == len(todo):", "if done == len(todo):",
           nodes("test_streaming.py", "test_scan_overlaps_decoding_and_flushes_each_batch"),
           "scan records reach the disk only at the end: an interrupted scan loses them"),
    Mutant("server-one-call-per-image", "src/fastvit_detect/server/stages.py",
           "return detector.classify_pixels(np.stack([item.pixels for item in items]),\n"
           "                                        sources=[item.source for item in items])",
           "return [detector.classify_pixels(item.pixels[None], sources=[item.source])[0] for item in items]",
           nodes("test_server.py", "test_concurrent_requests_are_batched_and_answered_in_order"),
           "the micro-batcher batches requests but makes one session call per image"),
    Mutant("server-results-misordered", "src/fastvit_detect/server/batching.py",
           "for job, result in zip(live, results):", "for job, result in zip(live, results[::-1]):",
           nodes("test_server.py", "test_concurrent_requests_are_batched_and_answered_in_order"),
           "batched requests get each other's answers"),
    Mutant("server-max-batch-off-by-one", "src/fastvit_detect/server/batching.py",
           "while len(batch) < self.max_batch:", "while len(batch) <= self.max_batch:",
           nodes("test_server.py", "test_batches_are_bounded_and_keep_order"),
           "batches one image larger than --max-batch"),
    Mutant("server-max-wait-exceeded", "src/fastvit_detect/server/batching.py",
           "deadline = time.monotonic() + self.max_wait", "deadline = time.monotonic() + 2 * self.max_wait",
           nodes("test_server.py", "test_a_batch_waits_at_most_max_wait_for_company"),
           "a batch waits longer than --max-wait-ms for company"),
    # --- variant choice and the CPU policy ------------------------------------------------------------------
    Mutant("default-variant-ignored", "package.py",
           "if recommended in self.variants:", "if False:",
           nodes(DETECTOR_TESTS, "test_auto_follows_the_manifests_default_variant"),
           "variant='auto' ignores the manifest's default_variant"),
    Mutant("auto-prefers-fp32", "package.py",
           'AUTO_PREFERENCE = ("int8", "fp32")', 'AUTO_PREFERENCE = ("fp32", "int8")',
           nodes(DETECTOR_TESTS, "test_auto_without_a_recommendation_prefers_int8"),
           "without a recommendation, auto picks fp32 over int8"),
    Mutant("variant-argument-ignored", "detector.py",
           "choice = choose_variant(package, variant)\n        preprocessor",
           "choice = choose_variant(package, \"auto\")\n        preprocessor",
           nodes(DETECTOR_TESTS, "test_auto_prefers_int8_and_variants_are_selectable"),
           "Detector.load(variant=...) always loads the default"),
    Mutant("cpu-flags-unreadable-distrusted", "choice.py",
           "if not required or not flags or any(", "if not required or any(",
           nodes(DETECTOR_TESTS, "test_cpu_requirement_policy"),
           "a variant needing VNNI refused where the CPU flags can't be read (the README trusts it)"),
    Mutant("cpu-auto-no-fallback", "choice.py",
           "    if problem is None:\n        return VariantChoice(first,",
           "    if True:\n        return VariantChoice(first,",
           nodes(DETECTOR_TESTS, "test_cpu_requirement_policy"),
           "variant='auto' runs a variant this CPU can't run instead of falling back to fp32"),
    # --- the OpenVINO backend: auto's choice, its fallback, the layout's streams, the compiled-model cache -------
    Mutant("openvino-rule-inverted", "choice.py",
           "    if present:\n        return True,", "    if not present:\n        return True,",
           nodes("test_openvino.py", "test_auto_follows_the_rule_for_the_cpu_class"),
           "auto runs OpenVINO on the CPU classes where it wasn't measured faster, and onnxruntime where it was"),
    Mutant("openvino-calibration-ignored", "choice.py",
           "    if calibrated is not None:", "    if False:",
           nodes("test_openvino.py", "test_a_cached_calibration_overrides_the_rule_both_ways"),
           "info --calibrate's measurement is ignored: auto follows the rule even where it loses"),
    Mutant("openvino-auto-no-fallback", "detector.py",
           "            if choice.fallback is None:\n                raise",
           "            if True:\n                raise",
           nodes("test_openvino.py", "test_a_graph_openvino_cant_compile_is_a_typed_error_and_auto_falls_back"),
           "auto fails to load when OpenVINO can't compile its variant instead of running onnxruntime's"),
    Mutant("openvino-one-stream", "backends.py",
           "streams=layout.workers, hint=THROUGHPUT", "streams=1, hint=THROUGHPUT",
           nodes("test_openvino.py", "test_batches_streams_and_layouts_keep_input_order_and_isolate_a_bad_image"),
           "a layout of several workers runs on one OpenVINO stream: the workers queue behind each other"),
    Mutant("openvino-cache-through-symlink", "openvino_session.py",
           "info = os.lstat(level)", "info = os.stat(level)",
           nodes("test_openvino.py", "test_a_hostile_cache_directory_is_never_used"),
           "compiled models are written and loaded through a symlink planted where the cache goes"),
    # --- metrics --------------------------------------------------------------------------------------------
    Mutant("auroc-other-column", "evaluate.py",
           "probabilities[:, positive_index])", "probabilities[:, 1 - positive_index])",
           nodes("test_evaluate.py", "test_variant_metrics_on_a_hand_computed_case"),
           "eval's AUROC computed on the other class's column"),
    Mutant("confusion-matrix-transposed", "evaluate.py",
           "np.add.at(matrix, (targets, predicted), 1)", "np.add.at(matrix, (predicted, targets), 1)",
           nodes("test_evaluate.py", "test_variant_metrics_on_a_hand_computed_case"),
           "confusion matrix rows and columns swapped"),
    Mutant("auroc-ties-not-half", "evaluate.py",
           "average = first + (counts - 1) / 2 + 1", "average = first + 1",
           nodes("test_evaluate.py", "test_metrics_on_known_values"),
           "tied scores not counted as half"),
    Mutant("macro-f1-counts-absent-classes", "evaluate.py",
           "present = recall_denominator > 0", "present = recall_denominator >= 0",
           nodes("test_evaluate.py", "test_variant_metrics_on_a_hand_computed_case"),
           "macro-F1 averaged over a label with no image"),
    Mutant("eval-limit-ignored", "cli.py",
           "package.labels, limit=args.limit)", "package.labels, limit=None)",
           nodes("test_cli_flags.py", "test_limit_flag_evaluates_that_many_images"),
           "eval --limit has no effect"),
    # --- error mapping --------------------------------------------------------------------------------------
    Mutant("http-pixel-cap-415", "httpapi.py",
           "ImageTooLargeError: 413,", "ImageTooLargeError: 415,",
           nodes("test_server.py", "test_image_over_the_servers_pixel_cap_is_413"),
           "an image over --max-pixels answered 415 instead of 413"),
    Mutant("http-decode-error-422", "httpapi.py",
           "ImageDecodeError: 415,", "ImageDecodeError: 422,",
           nodes("test_server.py", "test_client_errors"),
           "an undecodable image answered 422 instead of 415"),
    Mutant("unreadable-file-decode-error", "media.py",
           "raise ImageNotFoundError(f\"{source}: can't read file: {exc.strerror or exc}\"",
           "raise ImageDecodeError(f\"{source}: can't read file: {exc.strerror or exc}\"",
           nodes("test_errors.py", "test_unreadable_file"),
           "an unreadable file reported as undecodable"),
    Mutant("unconvertible-mode-wrong-error", "media.py",
           "raise ImageDecodeError(f\"{source}: can't convert mode",
           "raise UnsupportedInputError(f\"{source}: can't convert mode",
           nodes("test_errors.py", "test_unconvertible_mode"),
           "an unconvertible mode reported as an unsupported input type"),
    # --- checksums ------------------------------------------------------------------------------------------
    Mutant("sha256-not-compared", "package.py",
           "if digest != vouched_digest:", "if False:",
           nodes("test_errors.py", "test_checksum_mismatch_is_refused"),
           "a corrupted or replaced model file loads"),
    Mutant("size-not-compared", "package.py",
           "if size != vouched_size:", "if False:",
           nodes("test_errors.py", "test_truncated_model_is_refused_by_size"),
           "a truncated file is hashed instead of refused by its size"),
    Mutant("configs-not-verified", "package.py",
           "        self.verify_configs()\n", "        pass\n",
           nodes("test_hostile_packages.py", "test_a_tampered_preprocessor_config_is_refused"),
           "a tampered preprocessor_config.json shifts every probability while the model card says it is checked"),
    Mutant("hub-configs-not-verified", "hub.py",
           "        package.verify_configs()\n", "        pass\n",
           nodes("test_hub.py", "test_a_repository_serving_a_config_its_manifest_doesnt_vouch_for_fetches_no_graph"),
           "a Hub's tampered config is only noticed after the graph was downloaded, or not at all with verify=False"),
    Mutant("hub-download-not-cut-off", "hub.py",
           "            if received > limit:\n", "            if False:\n",
           nodes("test_hub.py", "test_a_hub_sending_more_than_it_announced_is_cut_off_at_the_announced_size"),
           "a Hub that sends more than it announced fills the cache (64 MiB for a 3 kB manifest)"),
    Mutant("hub-watchdog-idle", "hub.py",
           "                    connection.sock.shutdown(socket.SHUT_RDWR)\n", "                    pass\n",
           nodes("test_hub.py", "test_a_server_trickling_its_headers_meets_the_deadline_too"),
           "a Hub trickling its headers holds a fetch for as long as it likes"),
    Mutant("verify-skipped", "detector.py",
           "        package.verify(chosen)\n", "        pass\n",
           nodes("test_errors.py", "test_weights_file_is_verified_too"),
           "Detector.load(verify=True) verifies nothing"),
    # --- resume and scan output -----------------------------------------------------------------------------
    Mutant("resume-skip-removed", "scan.py",
           "todo = [path for path in images if _identity(path) not in writer.done]", "todo = list(images)",
           nodes("test_scan.py", "test_scan_jsonl_then_resume"),
           "a resumed scan classifies everything again, duplicating records"),
    Mutant("overwrite-ignored", "scan.py",
           "if overwrite and path.exists():", "if False:",
           nodes("test_cli_flags.py", "test_overwrite_flag_starts_afresh"),
           "scan --overwrite resumes instead of starting afresh"),
    Mutant("scan-format-flag-ignored", "cli.py",
           "batch_size=args.batch_size, fmt=args.format,", "batch_size=args.batch_size, fmt=None,",
           nodes("test_cli_flags.py", "test_format_flag_names_the_format_of_a_file_name_that_implies_none"),
           "scan --format has no effect"),
    # --- caps -----------------------------------------------------------------------------------------------
    Mutant("pixel-cap-removed", "media.py",
           "if max_pixels is not None and width * height > max_pixels:", "if False:",
           nodes("test_errors.py", "test_pixel_cap_is_configurable"),
           "no decompression-bomb cap on files"),
    Mutant("pixel-cap-after-decoding", "media.py",
           "opened = _open_bytes(data, source, formats)\n",
           "opened = _open_bytes(data, source, formats)\n        opened.load()\n",
           nodes("test_errors.py", "test_header_bomb_is_refused_before_decoding"),
           "the pixel cap checked after decoding: a bomb is decoded first"),
    Mutant("cli-max-pixels-ignored", "cli.py",
           "max_pixels=args.max_pixels, max_bytes=", "max_pixels=DEFAULT_MAX_PIXELS, max_bytes=",
           nodes("test_cli_flags.py", "test_max_pixels_flag"),
           "predict --max-pixels has no effect"),
    Mutant("cli-jpeg-draft-ignored", "cli.py",
           "jpeg_draft=args.jpeg_draft, workers=args.workers,", "jpeg_draft=False, workers=args.workers,",
           nodes("test_cli_flags.py", "test_jpeg_draft_flag"),
           "predict --jpeg-draft has no effect"),
    Mutant("cli-batch-size-ignored", "cli.py",
           "detector.predict_batch(args.images, batch_size=args.batch_size,",
           "detector.predict_batch(args.images, batch_size=DEFAULT_BATCH_SIZE,",
           nodes("test_cli_flags.py", "test_batch_size_flag_sets_the_images_per_session_call"),
           "predict --batch-size has no effect"),
    Mutant("serve-queue-size-ignored", "cli.py",
           "queue_size=args.queue_size,", "queue_size=64,",
           nodes("test_cli_flags.py", "test_serve_flags_reach_the_server"),
           "serve --queue-size has no effect"),
    Mutant("serve-max-pixels-ignored", "cli.py",
           "queue_size=args.queue_size, max_pixels=args.max_pixels,", "queue_size=args.queue_size,",
           nodes("test_cli_flags.py", "test_serve_flags_reach_the_server"),
           "serve --max-pixels doesn't reach the server's own cap (it keeps its default)"),
    Mutant("server-formats-ignored", "src/fastvit_detect/server/requests.py",
           "opened = open_image(upload, settings.max_pixels, settings.max_upload_bytes, settings.formats)",
           "opened = open_image(upload, settings.max_pixels, settings.max_upload_bytes)",
           nodes("test_formats.py", "test_the_server_refuses_other_formats_with_415_naming_them"),
           "the server decodes QOI, DDS and every other format Pillow opens, slow pure-Python decoders included"),
    Mutant("webp-charged-as-png", "media.py",
           'DECODE_COST = {"WEBP": 2.0, "AVIF": 1.5}', 'DECODE_COST = {"AVIF": 1.5}',
           nodes("test_formats.py", "test_a_webp_is_charged_its_decoding_cost"),
           "a WebP's pixels charged as a PNG's: the decode budget no longer bounds memory"),
    Mutant("upload-limit-not-enforced-while-reading", "src/fastvit_detect/server/requests.py",
           "        if size > limit:\n", "        if False:\n",
           nodes("test_server.py", "test_upload_limit_is_enforced_while_reading"),
           "a body without Content-Length read to its end, whatever its size"),
    # --- decoding: EXIF, frames, pixels ---------------------------------------------------------------------
    Mutant("exif-ignored", "media.py",
           "ImageOps.exif_transpose(image, in_place=True)", "pass",
           nodes("test_preprocess.py", "test_exif_orientation_is_applied"),
           "EXIF orientation not applied to files"),
    Mutant("animated-last-frame", "media.py",
           "            image.load()\n",
           "            image.seek(getattr(image, 'n_frames', 1) - 1)\n            image.load()\n",
           nodes("test_preprocess.py", "test_animated_webp_uses_first_frame"),
           "animated images classified on their last frame"),
    Mutant("center-crop-off-center", "preprocess.py",
           "top = (image.height - self.height) // 2", "top = 0",
           nodes(DETECTOR_TESTS, "test_fp32_equals_pytorch_on_real_photos_and_odd_images[deit]"),
           "DeiT's center crop taken from the top"),
    Mutant("channels-swapped", "preprocess.py",
           "pixels[..., channel], out=out[:, channel])", "pixels[..., 2 - channel], out=out[:, channel])",
           nodes(DETECTOR_TESTS, "test_fp32_equals_pytorch_on_real_photos_and_odd_images[deit]"),
           "BGR instead of RGB into the model"),
    # --- each HTTP endpoint's verdict -----------------------------------------------------------------------
    Mutant("seed-endpoint-always-real", "src/fastvit_detect/server/app.py",
           'return JSONResponse({"result": result.label})', 'return JSONResponse({"result": "Real"})',
           nodes("test_server.py", "test_seed_endpoint"),
           "POST /predict/ always answers Real"),
    Mutant("api-label-always-real", "src/fastvit_detect/server/requests.py",
           'return {"label": prediction.label,', 'return {"label": "Real",',
           nodes("test_server.py", "test_predict_multipart"),
           "POST /api/v1/predict always answers Real"),
    Mutant("django-predict-always-real", "examples/django_app/detection/views.py",
           "label = detector.predict(image_from_request(request)).label", 'label = "Real"',
           nodes("test_django_example.py", "test_predict_returns_the_label"),
           "the Django example's POST /predict/ always answers Real"),
    Mutant("api-files-misordered", "src/fastvit_detect/server/app.py",
           "for upload, result in zip(uploads, results)\n        ])\n\n    async def predict_faces",
           "for upload, result in zip(uploads, results[::-1])\n        ])\n\n    async def predict_faces",
           nodes("test_server.py", "test_several_files_give_a_list_in_order_with_errors_in_place"),
           "several files answered in the wrong order"),
)


# --- running ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    mutant: Mutant
    verdict: str  # killed, SURVIVED, STALE, ERROR
    seconds: float = 0.0
    detail: str = ""


# What a mutant may change, copied per worker: the runtime, and the Django example's view of it.
COPIED = (f"src/{PACKAGE}", "examples/django_app")


def relative_path(mutant: Mutant) -> str:
    return mutant.file if "/" in mutant.file else f"src/{PACKAGE}/{mutant.file}"


def stale_problem(mutant: Mutant, tree: Path) -> str | None:
    count = (tree / relative_path(mutant)).read_text().count(mutant.original)
    if count == 1:
        return None
    where = "no longer occurs in" if count == 0 else f"occurs {count} times in"
    return f"its code {mutant.original!r} {where} {relative_path(mutant)}: update the mutant to the new code"


def pytest_command(tests: tuple[str, ...] | list[str], stop_at_first: bool, copy: Path) -> list[str]:
    # pyproject's pythonpath, with the copy's Django site in place of the checkout's (the runtime comes from the
    # copy through PYTHONPATH: see environment).
    site = shlex.quote(str(copy / "examples" / "django_app"))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", "-rf",
               "-o", f"pythonpath=. tests {site}"]
    return [*command, *(["-x"] if stop_at_first else []), *tests]


def environment(copy: Path, cache: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(copy / "src"), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, "FASTVIT_TEST_CACHE": str(cache)}


def check_copy_is_imported(copy: Path, cache: Path) -> None:
    """The mutated copy must shadow the installed (editable) package, or every mutant would look killed or alive."""
    probe = subprocess.run([sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"], capture_output=True,
                           text=True, env=environment(copy, cache), check=True)
    imported = Path(probe.stdout.strip()).resolve()
    if copy.resolve() not in imported.parents:
        raise SystemExit(f"mutation check: {PACKAGE} was imported from {imported}, not from the copy in {copy}")


def failed_tests(output: str) -> list[str]:
    return re.findall(r"^FAILED (\S+)", output, flags=re.MULTILINE)


def run_mutant(mutant: Mutant, copy: Path, cache: Path) -> Outcome:
    target = copy / relative_path(mutant)
    original = target.read_text()
    target.write_text(original.replace(mutant.original, mutant.mutated, 1))
    started = time.perf_counter()
    try:
        result = subprocess.run(pytest_command(mutant.tests, stop_at_first=True, copy=copy), cwd=ROOT,
                                capture_output=True, text=True, env=environment(copy, cache), timeout=300)
    except subprocess.TimeoutExpired:
        return Outcome(mutant, "ERROR", time.perf_counter() - started, "its tests ran over 300 s")
    finally:
        target.write_text(original)
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return Outcome(mutant, "SURVIVED", seconds, f"{', '.join(mutant.tests)} passed with it")
    if result.returncode == 1 and failed_tests(output):
        return Outcome(mutant, "killed", seconds, failed_tests(output)[0])
    # Collection errors, no tests found, a crash: the mutant broke something other than the behaviour it names.
    return Outcome(mutant, "ERROR", seconds, f"pytest exit {result.returncode}:\n{output[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply curated mutants to a copy of src/ and run their tests.")
    parser.add_argument("--list", action="store_true", help="list the mutants and the tests meant to kill them")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    args = parser.parse_args(argv)
    names = [mutant.name for mutant in MUTANTS]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise SystemExit(f"mutation check: mutant names used twice: {', '.join(sorted(duplicates))}")
    chosen = [mutant for mutant in MUTANTS if not args.only or mutant.name in args.only]
    unknown = set(args.only or ()) - set(names)
    if unknown:
        parser.error(f"no mutant named {', '.join(sorted(unknown))}")
    if args.list:
        for mutant in chosen:
            print(f"{mutant.name:<40} {relative_path(mutant)}: {mutant.why}")
            print(f"{'':<40} killed by {', '.join(mutant.tests)}")
        return 0
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")

    started = time.perf_counter()
    stale = [Outcome(mutant, "STALE", detail=problem) for mutant in chosen
             if (problem := stale_problem(mutant, ROOT)) is not None]
    runnable = [mutant for mutant in chosen if mutant not in {outcome.mutant for outcome in stale}]
    with tempfile.TemporaryDirectory(prefix="fastvit-mutation-") as scratch:
        work, cache = Path(scratch), Path(scratch) / "cache"
        copies = [work / f"copy-{index}" for index in range(max(1, min(args.jobs, len(runnable))))]
        for copy in copies:
            for folder in COPIED:
                shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
        check_copy_is_imported(copies[0], cache)
        selected = sorted({test for mutant in runnable for test in mutant.tests})
        print(f"mutation check: {len(runnable)} mutant(s); first the {len(selected)} selected test(s) on the "
              "unchanged code (this also builds the fixture packages once)", flush=True)
        baseline = subprocess.run(pytest_command(selected, stop_at_first=False, copy=copies[0]), cwd=ROOT,
                                  capture_output=True, text=True, env=environment(copies[0], cache))
        if baseline.returncode != 0:
            print(baseline.stdout[-5000:] + baseline.stderr[-3000:])
            print("mutation check: the selected tests fail on the unchanged code; fix them first", file=sys.stderr)
            return 1
        print(f"  baseline passed in {time.perf_counter() - started:.0f}s", flush=True)
        free = list(copies)

        def run(mutant: Mutant) -> Outcome:
            copy = free.pop()  # list.pop/append are atomic: each worker holds one copy at a time
            try:
                outcome = run_mutant(mutant, copy, cache)
            finally:
                free.append(copy)
            first_line = (outcome.detail.splitlines() or [""])[0]
            print(f"  {outcome.verdict:<8} {mutant.name:<40} {outcome.seconds:5.1f}s  {first_line}", flush=True)
            return outcome

        with ThreadPoolExecutor(max_workers=len(copies)) as pool:
            outcomes = list(pool.map(run, runnable))
    outcomes += stale
    bad = [outcome for outcome in outcomes if outcome.verdict != "killed"]
    killed = len(outcomes) - len(bad)
    print(f"mutation check: {killed} of {len(outcomes)} mutants killed in {time.perf_counter() - started:.0f}s")
    for outcome in bad:
        print(f"{outcome.verdict}: {outcome.mutant.name} ({relative_path(outcome.mutant)}: {outcome.mutant.why})\n"
              f"  {outcome.detail}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
