"""Build a seeded random-weight ViT checkpoint offline: a thin entry point over fastvit_detect.build.seeded.

    python export/make_checkpoint.py --output checkpoints/vit-base-seeded
"""

from fastvit_detect.build.seeded import main

if __name__ == "__main__":
    raise SystemExit(main())
