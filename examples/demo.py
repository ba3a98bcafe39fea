"""The main job, offline, end to end: data -> trained detector -> model package -> accuracy, then speed.

    python examples/demo.py [--workdir artifacts/demo] [--skip-training]

Accuracy (a model that learned):
1. generates the synthetic real/fake data set (train/make_dataset.py, 3,800 images; 70-180 s on 2 cores),
2. fine-tunes the tiny ViT on it (train/finetune.py, 3.5-8 minutes on 2 cores),
3. exports it (fp32 + int8, validated against PyTorch on the held-out Test split),
4. evaluates every variant and PyTorch on the Test split: accuracy per variant, agreement.
Speed (the real model's size):
5. builds a ViT-B/16-224 checkpoint with seeded weights (the shape and compute of sakshamkr1/deepfake_vit; its
   labels are meaningless, its timings are not) and exports it,
6. classifies the sample photos with fastvit-detect,
7. times file -> label per image for PyTorch served as the seed project does and for each fastvit-detect variant,
   taking turns so that machine noise hits all of them alike.
Everything built is cached in --workdir; delete it to start over. Each step prints how long it took, and the end
a table of the steps' times with this machine's CPU: 8-16 minutes in all on 2 cores, the first time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fastvit_detect.build.export import ExportSettings, export_package
from fastvit_detect.build.reference import TorchReference
from fastvit_detect.build.samples import sample_photos
from fastvit_detect.build.seeded import build_checkpoint
from fastvit_detect.build.timing import interleave
from fastvit_detect.options import refuse_empty_text

ROOT = Path(__file__).resolve().parent.parent  # train/ holds scripts run from the checkout
STEP_SECONDS: dict[str, float] = {}  # step -> seconds it took in this run, for the closing table


@contextmanager
def step(title: str) -> Iterator[None]:
    """Announce a step, then say how long it took: the README's times come from one machine, these from this one."""
    print(f"[demo] {title}", flush=True)
    started = time.perf_counter()
    yield
    STEP_SECONDS[title] = time.perf_counter() - started
    print(f"[demo] ... {STEP_SECONDS[title]:.0f} s", flush=True)


def run_step(title: str, command: list[str]) -> None:
    with step(title):
        subprocess.run([sys.executable, *command], check=True)


def shown(path: Path) -> str:
    """``path`` as a command line to paste here should spell it: relative to the current folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def cli_command() -> str:
    """The CLI as a command that runs from this shell whether or not its environment is activated: the script
    beside this interpreter, by its path (a bare ``fastvit-detect`` is "command not found" in a fresh shell)."""
    script = Path(sys.executable).parent / "fastvit-detect"
    if script.is_file() and os.access(script, os.X_OK):
        path = shown(script)
        return shlex.quote(path if "/" in path else f"./{path}")
    return f"{shlex.quote(sys.executable)} -m fastvit_detect"


def try_commands(trained_package: Path, fake_images: Path) -> list[str]:
    """The commands the demo suggests at its end, runnable as printed (tests/test_operator_mistakes.py runs them)."""
    cli, package = cli_command(), shlex.quote(shown(trained_package))
    return [f"{cli} info {package}",
            f"{cli} predict --model {package} {shlex.quote(shown(fake_images))}/*.jpg"]


def activation_hint() -> str:
    """How to put the CLI on the PATH, when this interpreter is a virtual environment's."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix == sys.base_prefix or not activate.is_file():
        return ""
    return f"; or run `source {shlex.quote(shown(activate))}` once per shell, then plain `fastvit-detect ...`"


def cpu_name() -> str:
    from fastvit_detect.session import cpuinfo, physical_core_count

    processors = cpuinfo()
    model = processors[0].get("model name", "") if processors else ""
    return f"{model or 'unknown CPU'}, {physical_core_count()} physical cores"


def print_step_times(print_line: Callable[[str], None] = print) -> None:
    if not STEP_SECONDS:
        return
    print_line(f"\n[demo] step times on {cpu_name()} (the README's are from other machines):")
    for title, seconds in STEP_SECONDS.items():
        print_line(f"  {seconds:7.0f} s  {title}")
    print_line(f"  {sum(STEP_SECONDS.values()):7.0f} s  in all")


def accuracy_part(workdir: Path) -> None:
    data, checkpoint, package = workdir / "data", workdir / "trained-checkpoint", workdir / "trained-package"
    if not (data / "dataset_info.json").is_file():
        run_step(f"generating the synthetic real/fake data set in {data}",
                 [str(ROOT / "train" / "make_dataset.py"), "--output", str(data), "--images", "3800", "--seed", "0",
                  "--overwrite"])
    if not (checkpoint / "training_summary.json").is_file():
        run_step(f"fine-tuning the tiny ViT into {checkpoint}",
                 [str(ROOT / "train" / "finetune.py"), "--data", str(data), "--base", "tiny", "--output",
                  str(checkpoint)])
    # The openvino-int8 variant too where NNCF and OpenVINO are installed (scripts/setup.sh installs both), so the
    # accuracy table below shows both runtimes next to PyTorch.
    openvino = ["--openvino", "--calibration", str(data / "Train")] if all(
        importlib.util.find_spec(name) for name in ("nncf", "openvino")) else []
    if not (package / "fastvit_manifest.json").is_file():
        run_step(f"exporting it to {package}",
                 ["-m", "fastvit_detect", "export", str(checkpoint), "--output", str(package), "--overwrite", *openvino,
                  "--validation-images", str(data / "Test"), "--validation-limit", "200",
                  "--description", "tiny ViT fine-tuned by the fastvit-detect demo on its synthetic real/fake set",
                  "--intended-use", ("demo only: trained on synthetic images, its verdicts on real photos mean "
                                     "nothing")])
    run_step("accuracy on the held-out Test split, every variant next to PyTorch",
             ["-m", "fastvit_detect", "eval", "--model", str(package), "--data", str(data / "Test"),
              "--reference", str(checkpoint)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "artifacts" / "demo")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds over the photos (default 3)")
    parser.add_argument("--skip-training", action="store_true", help="skip steps 1-4 (the accuracy part)")
    args = refuse_empty_text(parser).parse_args()
    if not args.skip_training:
        accuracy_part(args.workdir)

    checkpoint, package = args.workdir / "checkpoint", args.workdir / "package"

    if not (checkpoint / "model.safetensors").is_file():
        with step(f"building a seeded ViT-B/16 checkpoint in {checkpoint}"):
            build_checkpoint(checkpoint, "vit", preset="vit-base", seed=0)
    if not (package / "fastvit_manifest.json").is_file():
        with step(f"exporting it to {package}"):
            settings = ExportSettings(str(checkpoint), package, overwrite=True,
                                      description="ViT-B/16 with seeded random weights (the real model's shape)",
                                      intended_use="timing only: random weights, its labels mean nothing")
            export_package(settings, log=lambda text: print(f"[export] {text}", flush=True))

    from fastvit_detect import Detector

    photos = sample_photos()
    if not photos:
        print("no sample photos found: install matplotlib and scikit-image (the dev extra)", file=sys.stderr)
        return 1
    detectors = {name: Detector.load(package, variant=name) for name in ("fp32", "int8")}
    print(f"\n[demo] fastvit-detect int8 on {len(photos)} sample photos (seeded weights: labels mean nothing)")
    for photo, prediction in zip(photos, detectors["int8"].predict_batch(photos, batch_size=1)):
        print(f"  {photo.name:<24} {prediction.label:<5} p(fake)={prediction.fake_probability:.3f}")

    print("\n[demo] loading PyTorch the way the seed project serves it", flush=True)
    import torch

    torch.set_num_threads(detectors["fp32"].session.threads)
    reference = TorchReference.load(checkpoint)

    def pytorch_label(path: Path) -> str:
        return reference.labels[int(reference.logits([path]).argmax(-1)[0])]

    systems = {"PyTorch fp32 (seed)": pytorch_label,
               "fastvit-detect fp32": lambda path: detectors["fp32"].predict(path).label,
               "fastvit-detect int8": lambda path: detectors["int8"].predict(path).label}
    for predict in systems.values():  # warm-up: first calls allocate and pick kernels
        predict(photos[0])
    # The benchmark suite's timing: systems take turns over the photos, each turn opened by an untimed call, so
    # one system's spinning threads and cache misses aren't charged to the next (see fastvit_detect.build.timing).
    with step(f"timing file -> label, batch 1, {args.rounds} rounds over the photos, systems taking turns"):
        measured = interleave(list(systems), photos, lambda name, photo: systems[name](photo), rounds=args.rounds,
                              block=len(photos))
    if measured.failures:
        raise SystemExit(f"[demo] timing failed: {measured.failures}")
    timings = {name: [1000 * seconds for seconds in values] for name, values in measured.samples.items()}

    baseline = statistics.median(timings["PyTorch fp32 (seed)"])
    # One convention across the project: "vs PyTorch" is a speed-up, PyTorch's time over ours (2x = twice as fast).
    print(f"\n  {'system':<22} {'median ms':>9} {'p90 ms':>8} {'vs PyTorch':>10}")
    for name, values in timings.items():
        median, p90 = statistics.median(values), statistics.quantiles(values, n=10)[-1]
        print(f"  {name:<22} {median:9.1f} {p90:8.1f} {baseline / median:9.2f}x")
    print(f"\n  {len(photos) * args.rounds} calls each, {detectors['fp32'].session.threads} threads, "
          "photos from 451x300 to 1411x1411 px; 'vs PyTorch' is the speed-up (higher is faster)")
    print_step_times()
    trained = args.workdir / "trained-package"
    print(f"\n[demo] packages: {shown(trained)} (trained on synthetic images: demo only) and {shown(package)} "
          "(seeded ViT-B/16: timing only).")
    if (trained / "fastvit_manifest.json").is_file():
        print(f"[demo] Try (the CLI by its path{activation_hint()}):")
        for command in try_commands(trained, args.workdir / "data" / "Test" / "Fake"):
            print(f"  {command}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
