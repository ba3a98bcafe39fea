"""Turn a fine-tuned Hugging Face ViT/DeiT classifier into a model package: a thin entry point over
fastvit_detect.build.export, the same command as ``fastvit-detect export``.

    python export/export.py sakshamkr1/deepfake_vit --output deepfake_vit_onnx
"""

from fastvit_detect.build.export import main

if __name__ == "__main__":
    raise SystemExit(main(prog="export.py"))
