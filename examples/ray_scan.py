"""Classify a folder of images on a Ray cluster: the one-call helper, then the same with Ray Data's own pattern.

    pip install 'fastvit-detect[ray]'
    python examples/ray_scan.py --model deepfake_vit_onnx --images photos/ [--output results.parquet]
                                [--address ADDR] [--actors N]
    python examples/ray_scan.py                      # offline: a tiny seeded model and 64 generated images

Everything it makes goes to one folder that stays put between runs, --workdir (default: ray-example in your
fastvit-detect cache, ~/.cache/fastvit-detect/ray-example; a per-user folder, not a fixed name in /tmp that another
user could make first): the offline model and images, and the results unless --output names another place. So a
second run finds every image in the results and skips it; delete the folder (or pass --output elsewhere) to
classify again.

Without --address it starts a Ray on this machine, listening on 127.0.0.1 only (or joins $RAY_ADDRESS). On a
cluster, --images may be an s3:// or gs:// prefix, and --model must be a path every node can read, or add
--ship-model to send the package from this machine through Ray's object store.
"""

from __future__ import annotations

import argparse
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

import fastvit_detect.ray as engine
from fastvit_detect.layout import cache_directory

DEFAULT_WORKDIR = cache_directory() / "ray-example"


def offline_inputs(workdir: Path) -> tuple[Path, Path]:
    """A tiny seeded ViT package (needs the export extra: torch) and 64 generated images, with 2 broken files,
    made once in ``workdir`` and reused by later runs."""
    from fastvit_detect.build.export import ExportSettings, export_package
    from fastvit_detect.build.seeded import build_checkpoint

    package = workdir / "package"
    if not (package / "fastvit_manifest.json").is_file():
        checkpoint = workdir / "checkpoint"  # only the export reads it
        try:
            export_package(ExportSettings(str(build_checkpoint(checkpoint, "vit", preset="tiny", seed=0)), package),
                           log=lambda _text: None)
        finally:
            shutil.rmtree(checkpoint, ignore_errors=True)
    images = workdir / "images"
    if not images.is_dir():
        partial = workdir / "images.partial"  # renamed into place when whole: a run stopped here starts it again
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for index in range(64):
            pixels = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(partial / f"photo{index:02d}.jpg")
        (partial / "empty.jpg").write_bytes(b"")
        (partial / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        partial.rename(images)
    return package, images


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", help="model package (default: build a tiny one offline)")
    parser.add_argument("--images", help="folder or URI prefix to classify (default: generated images)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"where the offline inputs and the default results live (default {DEFAULT_WORKDIR})")
    parser.add_argument("--output", type=Path, default=None,
                        help="results: .jsonl, .csv or a .parquet folder (default WORKDIR/results.parquet)")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS or local)")
    parser.add_argument("--actors", type=int, default=None, help="actors (default: CPUs / threads per actor)")
    parser.add_argument("--threads-per-actor", type=int, default=None)
    parser.add_argument("--ship-model", action="store_true", help="send the package through the object store")
    args = parser.parse_args(argv)

    if args.model is None or args.images is None:
        model, images = offline_inputs(args.workdir)
        model, images = Path(args.model or model), args.images or str(images)
    else:
        model, images = Path(args.model), args.images
    output = args.output or args.workdir / "results.parquet"

    with engine.connected(args.address) as seconds:
        print(f"Ray: {engine.describe_cluster()}, ready in {seconds:.1f}s")

        # 1. The one-call helper: lists the images, skips those already in the output, writes every record once.
        summary = engine.classify(images, model, output, actors=args.actors, threads_per_actor=args.threads_per_actor,
                                  ship_model=args.ship_model)
        print(summary.describe())
        print(f"records in {output}; run again and every image is skipped as already done")

        # 2. The same classifier in a pipeline of your own: a Dataset of the images' names, BatchClassifier reads,
        #    decodes and classifies them at the actors, and the records stay a Dataset (filter, join,
        #    write_parquet to s3://, ...). Nothing skips what an earlier run wrote here: that is classify's job.
        job = engine.classify_dataset(engine.list_images(images), str(model), actors=args.actors or 1,
                                      threads_per_actor=args.threads_per_actor, batch_size=16)
        if job.dataset is not None:
            labels = Counter(row["label"] or f"error: {row['error']['type']}" for row in job.dataset.iter_rows())
            print("Ray Data pipeline:", dict(sorted(labels.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
