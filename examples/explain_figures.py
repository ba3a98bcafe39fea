"""The example overlays of docs/guides/explanations.md:
a sample photo, and a synthetic image whose fake cues sit in one quadrant.

    python -m examples.explain_figures [--package artifacts/demo/trained-package] [--output docs/explain]

Run it as a module from the checkout's root: it borrows the explanation benchmark's image helpers (benchmarks/).

Needs the trained tiny detector and its data set (``bash scripts/demo.sh`` builds both into artifacts/demo).
Writes grace_hopper.png (matplotlib's sample photo), spliced.png (a Real rendering of a Test scene whose
bottom-right quadrant is the Fake rendering of the same scene, the quadrant outlined) and spliced-rise.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from benchmarks.explain import make_dataset_module, spliced_image, test_images
from fastvit_detect import Detector
from fastvit_detect.build.samples import sample_photos

ROOT = Path(__file__).resolve().parent.parent

SPLICED_QUADRANT = 3  # bottom-right


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=ROOT / "artifacts" / "demo" / "trained-package")
    parser.add_argument("--data", type=Path, default=ROOT / "artifacts" / "demo" / "data")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "explain")
    parser.add_argument("--test-image", type=int, default=1, help="which Test image to splice (default 1)")
    args = parser.parse_args()
    if not (args.package / "config.json").is_file() or not (args.data / "dataset_info.json").is_file():
        print(f"no trained package in {args.package} or data in {args.data}: run bash scripts/demo.sh first",
              file=sys.stderr)
        return 1
    args.output.mkdir(parents=True, exist_ok=True)
    detector = Detector.load(args.package)
    written = []

    photo = next(path for path in sample_photos() if path.name == "grace_hopper.jpg")
    explanation = detector.explain(photo, target="predicted")
    explanation.overlay(max_side=448).save(args.output / "grace_hopper.png", optimize=True)
    written.append(("grace_hopper.png", explanation))

    module = make_dataset_module()
    images, info = test_images(args.data, None)
    devices = module.Devices.for_seed(info["seed"])
    data = spliced_image(module, devices, info["seed"], images[args.test_image].image_id, SPLICED_QUADRANT)
    for name, method in (("spliced.png", "occlusion"), ("spliced-rise.png", "rise")):
        explanation = detector.explain(data, method=method, target="fake")
        overlay = explanation.overlay(max_side=None)
        scale = 2  # the 256 px image doubled so the page shows it at a readable size
        overlay = overlay.resize((overlay.width * scale, overlay.height * scale), Image.Resampling.NEAREST)
        half = module.IMAGE_SIZE // 2 * scale
        ImageDraw.Draw(overlay).rectangle((half, half, 2 * half - 1, 2 * half - 1), outline=(40, 220, 255), width=3)
        overlay.save(args.output / name, optimize=True)
        written.append((name, explanation))
    for name, explanation in written:
        print(json.dumps({"file": str(args.output / name), **explanation.prediction.to_dict(),
                          "explanation": explanation.summary()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
