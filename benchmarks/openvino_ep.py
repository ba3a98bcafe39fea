"""``python -m benchmarks.openvino_ep``: onnxruntime's OpenVINO execution provider on the package's graphs.

The least intrusive OpenVINO path for fastvit-detect would keep onnxruntime's API and swap the provider. The
``onnxruntime-openvino`` wheel replaces ``onnxruntime`` (same module name, its own OpenVINO inside), so this runs
in a separate environment:

    python -m venv /tmp/ov-ep && /tmp/ov-ep/bin/pip install onnxruntime-openvino pillow
    /tmp/ov-ep/bin/pip install --no-deps -e .
    /tmp/ov-ep/bin/python -m benchmarks.openvino_ep --cache-dir benchmarks/results/cache

It times, in settled turns on the same preprocessed batch, the CPU provider on the package's int8 graph (what
fastvit-detect runs today, the anchor of every ratio) against the OpenVINO provider on the package's fp32 graph,
on its int8 graph, and on NNCF's QDQ graph (written by ``python -m benchmarks.profile_int8``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastvit_detect import Detector
from fastvit_detect.session import physical_core_count, session_options

from .profile_int8 import time_systems, timing_parser
from .progress import log


def main(argv: Sequence[str] | None = None) -> int:
    args = timing_parser("python -m benchmarks.openvino_ep", __doc__).parse_args(argv)

    import onnxruntime as ort

    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        raise SystemExit("benchmarks.openvino_ep: this onnxruntime has no OpenVINOExecutionProvider "
                         "(pip install onnxruntime-openvino in a separate environment; see the docstring)")
    cache = args.cache_dir.resolve()
    packages = sorted(cache.glob("package-checkpoint-vit-base-*"))
    if not packages:
        raise SystemExit(f"benchmarks.openvino_ep: no ViT-B package in {cache}: run python -m benchmarks first")
    package = packages[-1]
    threads = physical_core_count()
    anchor = Detector.load(package, variant="int8", threads=threads)
    graphs = {"fp32 graph": package / "model.onnx", "int8 graph (dynamic)": anchor.variant.path}
    qdq = cache / f"nncf-qdq-{package.name}" / "model_qdq.onnx"
    if qdq.is_file():
        graphs["NNCF QDQ graph"] = qdq
    else:
        log(f"no {qdq}: run python -m benchmarks.profile_int8 first to include NNCF's QDQ graph")
    # The anchor first: every ratio is against onnxruntime's CPU provider on today's int8 graph.
    calls: dict[str, Callable[[np.ndarray], Any]] = {"CPU provider, int8 graph (fastvit-detect)": anchor.run_logits}
    for name, path in graphs.items():
        session = ort.InferenceSession(
            str(path), session_options(threads),
            providers=[("OpenVINOExecutionProvider", {"device_type": "CPU", "num_of_threads": str(threads)}),
                       "CPUExecutionProvider"])
        calls[f"OpenVINO provider, {name}"] = (lambda s: lambda x: s.run(None, {"pixel_values": x}))(session)

    photos = sorted(p for p in (cache / "calibration-photos").iterdir())  # any real photos will do for timing
    results: dict[str, Any] = {"onnxruntime": ort.__version__, "threads": threads, "timing": {}}
    for batch_size in args.batch_sizes:
        pixels = anchor.preprocessor([photos[i % len(photos)] for i in range(batch_size)])
        time_systems(results, calls, pixels, batch_size, max(1, args.rounds))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
