"""Benchmark suite: fastvit-detect against the PyTorch, PyTorch int8 and Optimum ways of serving the same model.

    python -m benchmarks [--quick] [--model CHECKPOINT_OR_HUB_ID] [--output DIR] [--data DIR]

Build-time code: it imports torch, transformers and optimum. Nothing under ``src/`` imports it.
"""
