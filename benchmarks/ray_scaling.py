"""The Ray engine against the local scan on this machine: same images, same package, taking turns.

    python -m benchmarks.ray_scaling --model PKG [--images 50,200] [--rounds 3] [--output ray-scaling.json]

Systems, in a rotating order each round so that drift in the machine's load hits all of them alike:
- ``local``: ``scan()`` in this process, the model loaded inside the timed span (as the CLI does);
- ``ray 1x2``: one actor with 2 threads; ``ray 2x1``: two actors with one thread each.
The Ray instance is started once (its start-up is timed on its own) and reused, as a cluster would be.

Each system classifies two folders of different sizes; the two times give its fixed cost per job (model
loading, actors starting) and its rate: t = fixed + images / rate. From those, the image count from which Ray is
done sooner than the local scan, with Ray's start-up counted and without it (a cluster that is already up).
Also the driver's own cost per image (listing, resume check, writing a record), which bounds a cluster's rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.images import sample_photos
from benchmarks.machine import ForeignLoad, describe

SYSTEMS = ("local", "ray 1x2", "ray 2x1")


def make_images(count: int, directory: Path, size: tuple[int, int] = (640, 480)) -> Path:
    """``count`` JPEGs (quality 90) cut from the sample photos at random offsets and scales, cached."""
    folder = directory / f"jpegs-{count}-{size[0]}x{size[1]}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.open(path).convert("RGB") for path in sample_photos()]
    rng = np.random.default_rng(0)
    for index in range(count):
        photo = photos[index % len(photos)]
        scale = rng.uniform(0.6, 1.0)
        width, height = int(photo.width * scale), int(photo.height * scale)
        left, top = int(rng.integers(0, photo.width - width + 1)), int(rng.integers(0, photo.height - height + 1))
        crop = photo.crop((left, top, left + width, top + height)).resize(size, Image.Resampling.BICUBIC)
        crop.save(folder / f"image{index:05d}.jpg", quality=90)
    return folder


def subset(folder: Path, count: int) -> Path:
    """The first ``count`` images of ``folder`` in a folder of their own (hard links)."""
    target = folder.parent / f"{folder.name}-first{count}"
    if not target.is_dir():
        target.mkdir()
        for image in sorted(folder.glob("*.jpg"))[:count]:
            os.link(image, target / image.name)
    return target


def run(system: str, model: str, folder: Path, output: Path) -> float:
    """Seconds from the call to the last record written, the model loading and actor start-up included."""
    output.unlink(missing_ok=True)
    started = time.perf_counter()
    if system == "local":
        from fastvit_detect import Detector
        from fastvit_detect.scan import scan

        scan(Detector.load(model, threads=2), folder, output)
    else:
        from fastvit_detect.ray import classify

        actors, threads = (int(part) for part in system.split()[1].split("x"))
        classify(folder, model, output, actors=actors, threads_per_actor=threads)
    return time.perf_counter() - started


def many_files(count: int, workdir: Path) -> Path:
    """``count`` empty .jpg files in 100 sub-folders: enough names for the driver's per-image costs to show."""
    folder = workdir / f"names-{count}"
    if not folder.is_dir():
        for index in range(count):
            sub = folder / f"d{index % 100:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"image{index:07d}.jpg").touch()
    return folder


def driver_cost(model: str, folder: Path, labels: list[str], workdir: Path) -> dict[str, float]:
    """The driver's own cost per image, outside the actors: listing and the resume check, Ray Data's planning
    (it stats every file it is given), writing a record, and the memory the names take."""
    from fastvit_detect.ray import _listing, classify_dataset, open_output, records_table, table_records

    started = time.perf_counter()
    listing = _listing(folder)
    figures: dict[str, float] = {"listing_s_per_image": (time.perf_counter() - started) / len(listing)}
    names = [name for name, _key in listing]
    started = time.perf_counter()
    classify_dataset(names, model)
    figures["planning_s_per_image"] = (time.perf_counter() - started) / len(names)
    del listing, names
    tracemalloc.start()  # a second pass: tracing slows the first one's timed code down
    listing = _listing(folder)
    names = [name for name, _key in listing]
    job = classify_dataset(names, model)
    written = set(job.names)  # as large as the set of written paths a job keeps
    figures["driver_bytes_per_image"] = tracemalloc.get_traced_memory()[0] / len(names)
    tracemalloc.stop()
    del job, written
    record = {"image": "", "label": labels[0], "score": 0.9, "probabilities": dict.fromkeys(labels, 0.5),
              "fake_probability": 0.1, "logits": [0.25] * len(labels)}
    records = [{**record, "image": name} for name in names]
    for fmt in ("jsonl", "parquet"):
        output = open_output(workdir / f"driver.{fmt}", labels, overwrite=True)
        started = time.perf_counter()
        for row in table_records(records_table(records, labels)):  # the driver's work per record, as in classify
            output.write_record(row)
        output.close()
        figures[f"write_{fmt}_s_per_record"] = (time.perf_counter() - started) / len(records)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model package (ViT-B int8 for figures worth quoting)")
    parser.add_argument("--images", default="50,200", help="the two folder sizes (default 50,200)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fastvit-ray-scaling")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here too")
    parser.add_argument("--driver-names", type=int, default=20_000,
                        help="empty files the driver's own costs are measured on (default 20,000)")
    args = parser.parse_args()
    small, large = sorted(int(value) for value in args.images.split(","))

    import ray

    from fastvit_detect import ModelPackage

    full = make_images(large, args.workdir)
    folders = {small: subset(full, small), large: full}
    machine = describe()
    load = ForeignLoad()
    # Ray runs its workers at nice 15 by default; on a machine shared with other work that alone would slow the
    # actors against the local scan, which runs at this process's priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    ray_start = time.perf_counter() - started
    ray.data.DataContext.get_current().enable_progress_bars = False

    times: dict[str, dict[int, list[float]]] = {system: {small: [], large: []} for system in SYSTEMS}
    for round_ in range(args.rounds):
        for system in SYSTEMS[round_ % 3:] + SYSTEMS[: round_ % 3]:
            for count in (small, large):
                seconds = run(system, args.model, folders[count], args.workdir / "out.jsonl")
                times[system][count].append(seconds)
                print(f"round {round_ + 1} {system:<8} {count:>5} images {seconds:6.1f}s "
                      f"({count / seconds:.2f} images/s)", flush=True)
    driver = driver_cost(args.model, many_files(args.driver_names, args.workdir),
                         list(ModelPackage.open(args.model).labels), args.workdir)
    ray.shutdown()

    summary: dict[str, Any] = {"machine": machine, "images": [small, large], "rounds": args.rounds,
                               "ray_init_s": ray_start, "foreign_load_cores": load.cores(), "systems": {}}
    for system, by_count in times.items():
        low, high = (statistics.median(by_count[count]) for count in (small, large))
        rate = (large - small) / (high - low)
        summary["systems"][system] = {"seconds": {small: low, large: high}, "images_per_s_overall": large / high,
                                      "rate_images_per_s": rate, "fixed_s": low - small / rate,
                                      "runs": by_count}
    local = summary["systems"]["local"]
    for system in SYSTEMS[1:]:
        figures = summary["systems"][system]
        rates = (local["rate_images_per_s"], figures["rate_images_per_s"])
        gain = 1 / rates[0] - 1 / rates[1] if min(rates) > 0 else 0.0  # a rate <= 0: too noisy to say
        for key, extra in (("pays_off_from_images_cold", ray_start), ("pays_off_from_images_warm", 0.0)):
            behind = extra + figures["fixed_s"] - local["fixed_s"]
            figures[key] = max(0.0, behind / gain) if gain > 0 else None
    summary["driver"] = driver

    print(f"\nRay start-up (ray.init, 2 CPUs): {ray_start:.1f}s; other processes used "
          f"{summary['foreign_load_cores']:.2f} cores on average")
    print(f"{'system':<9} {f'{small} images':>10} {f'{large} images':>11} {'rate img/s':>10} {'fixed s':>8} "
          f"{'pays off from (cold / warm Ray)':>32}")
    for system, figures in summary["systems"].items():
        if system == "local":
            pays = "-"
        else:
            pays = " / ".join("never" if figures[key] is None else f"{figures[key]:.0f}"
                              for key in ("pays_off_from_images_cold", "pays_off_from_images_warm"))
        print(f"{system:<9} {figures['seconds'][small]:>9.1f}s {figures['seconds'][large]:>10.1f}s "
              f"{figures['rate_images_per_s']:>10.2f} {figures['fixed_s']:>8.1f} {pays:>32}")
    micro = {key: 1e6 * value for key, value in driver.items() if key.endswith(("_s_per_image", "_s_per_record"))}
    print(f"driver per image: listing {micro['listing_s_per_image']:.0f} us, Ray Data's planning "
          f"{micro['planning_s_per_image']:.0f} us, a JSON lines record {micro['write_jsonl_s_per_record']:.0f} us, "
          f"a Parquet record {micro['write_parquet_s_per_record']:.0f} us; names in memory "
          f"{driver['driver_bytes_per_image']:.0f} bytes")
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
