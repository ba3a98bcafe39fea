"""Seeded random-weight ViT/DeiT image-classifier checkpoints, built offline and saved like a Hub fine-tune.

    python export/make_checkpoint.py --output checkpoints/vit-base-seeded            # ViT-B/16-224, 2 classes
    python export/make_checkpoint.py --output ckpt --preset tiny --processor deit

``vit-base`` has the shape and compute of ``sakshamkr1/deepfake_vit`` (ViT-B/16, 224 px), so speed figures
measured on it carry over; its labels mean nothing. The benchmark, the demo and the tests build theirs here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..options import refuse_empty_text

PRESETS: dict[str, dict[str, int]] = {
    "vit-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}

# The two preprocessing families of the seed models, as their preprocessor_config.json files spell them.
PROCESSORS: dict[str, dict[str, Any]] = {
    "vit": {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2,
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    },
    "deit": {
        "image_processor_type": "DeiTImageProcessor",
        "do_resize": True, "size": {"height": 256, "width": 256}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    },
}


def build_checkpoint(
    directory: Path,
    processor: Mapping[str, Any] | str = "vit",
    *,
    preset: str = "vit-base",
    labels: Sequence[str] = ("Fake", "Real"),
    model_type: str = "vit",
    image_size: int = 224,
    seed: int = 0,
    safetensors: bool = True,
    classifier_gain: float = 1.0,
    adjust: Callable[[Any], None] | None = None,
) -> Path:
    """Save a seeded random-weight classifier and ``processor`` (a name in PROCESSORS, or a config dict).

    ``classifier_gain`` scales the head's weights: random init gives near-zero logits, which makes every label a
    coin toss; a gain spreads them so labels are decisive (handy for tests). ``adjust(model)`` may then rewire
    the weights in place before they are saved (the tests give their checkpoints known verdicts that way).
    """
    import torch
    from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification

    classes = {"vit": (ViTConfig, ViTForImageClassification), "deit": (DeiTConfig, DeiTForImageClassification)}
    config_class, model_class = classes[model_type]
    config = config_class(
        image_size=image_size, patch_size=16, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        **PRESETS[preset],
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    if classifier_gain != 1.0:
        with torch.no_grad():
            model.classifier.weight.mul_(classifier_gain)
    if adjust is not None:
        adjust(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=safetensors)
    processor_config = PROCESSORS[processor] if isinstance(processor, str) else processor
    (directory / "preprocessor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n")
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make_checkpoint.py",
                                     description="Build a seeded random-weight ViT classifier checkpoint offline.")
    parser.add_argument("--output", "-o", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="vit-base", help="model size (default vit-base)")
    parser.add_argument("--processor", choices=sorted(PROCESSORS), default="vit",
                        help="preprocessing: vit (224 bilinear, mean/std 0.5) or deit (256 bicubic, crop 224, "
                             "ImageNet)")
    parser.add_argument("--seed", type=int, default=0)
    args = refuse_empty_text(parser).parse_args(argv)
    build_checkpoint(args.output, args.processor, preset=args.preset, seed=args.seed)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
