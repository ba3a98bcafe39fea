"""Benchmark suite: fastvit-detect against the PyTorch (fp32, int8, bf16, torch.compile), Optimum and OpenVINO
(fp32, NNCF int8) ways of serving the same model.

    python -m benchmarks [--quick] [--model CHECKPOINT_OR_HUB_ID] [--output DIR] [--data DIR] [--calibration DIR]
    python -m benchmarks.profile_int8 --cache-dir DIR    # where OpenVINO's int8 gains its time (docs/openvino-int8)

Build-time code: it imports torch, transformers and optimum. Nothing under ``src/`` imports it.
"""
