"""Classify a folder of images on a Ray cluster: the one-call helper, then the same with Ray Data's own pattern.

    pip install 'fastvit-detect[ray]'
    python examples/ray_scan.py --model deepfake_vit_onnx --images photos/ [--address ADDR] [--actors N]
    python examples/ray_scan.py                      # offline: a tiny seeded model and 64 generated images

Without --address it starts a Ray on this machine (or joins $RAY_ADDRESS). On a cluster, --images may be an
s3:// or gs:// prefix, and --model must be a path every node can read, or add --ship-model to send the package
from this machine through Ray's object store.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import ray
from PIL import Image

import fastvit_detect.ray as engine


def offline_inputs(workdir: Path) -> tuple[Path, Path]:
    """A tiny seeded ViT package (needs the export extra: torch) and 64 generated images, with 2 broken files."""
    from fastvit_detect.build.export import ExportSettings, export_package
    from fastvit_detect.build.seeded import build_checkpoint

    package = workdir / "package"
    if not (package / "fastvit_manifest.json").is_file():
        checkpoint = build_checkpoint(workdir / "checkpoint", "vit", preset="tiny", seed=0)
        export_package(ExportSettings(str(checkpoint), package), log=lambda _text: None)
    images = workdir / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(64):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(images / f"photo{index:02d}.jpg")
    (images / "empty.jpg").write_bytes(b"")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return package, images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model package (default: build a tiny one offline)")
    parser.add_argument("--images", help="folder or URI prefix to classify (default: generated images)")
    parser.add_argument("--output", default=None, help="results: .jsonl, .csv or a .parquet folder")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS or local)")
    parser.add_argument("--actors", type=int, default=None, help="actors (default: CPUs / threads per actor)")
    parser.add_argument("--threads-per-actor", type=int, default=None)
    parser.add_argument("--ship-model", action="store_true", help="send the package through the object store")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="fastvit-ray-example-"))
    if args.model is None or args.images is None:
        model, images = offline_inputs(workdir)
        model, images = Path(args.model or model), args.images or str(images)
    else:
        model, images = Path(args.model), args.images
    output = Path(args.output or workdir / "results.parquet")

    with engine.connected(args.address) as seconds:
        print(f"Ray: {engine.describe_cluster()}, ready in {seconds:.1f}s")

        # 1. The one-call helper: lists the images, skips those already in the output, writes every record once.
        summary = engine.classify(images, model, output, actors=args.actors, threads_per_actor=args.threads_per_actor,
                                  ship_model=args.ship_model)
        print(summary.describe())
        print(f"records in {output}; run again and every image is skipped as already done")

        # 2. The same classifier in a pipeline of your own: Ray Data reads, BatchClassifier decodes and classifies
        #    at the actors, and the records stay a Dataset (filter, join, write_parquet to s3://, ...).
        dataset = ray.data.read_binary_files(images, include_paths=True, num_cpus=0,  # reading moves bytes only
                                             file_extensions=["jpg", "jpeg", "png", "webp"])
        records = dataset.map_batches(engine.BatchClassifier, fn_constructor_kwargs={"model": str(model)},
                                      batch_size=16, batch_format="pyarrow",
                                      compute=ray.data.ActorPoolStrategy(size=args.actors or 1))
        labels = Counter(row["label"] or f"error: {row['error']['type']}" for row in records.iter_rows())
        print("Ray Data pipeline:", dict(sorted(labels.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
