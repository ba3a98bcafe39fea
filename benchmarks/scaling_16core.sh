#!/usr/bin/env bash
# The scaling figures on a lent 16-core machine, in one call of about 8 minutes (issue 15).
#
# Prepare here, once (needs the export extra; about 10 minutes on 2 cores, writes a ~20 MiB bundle):
#   .venv/bin/python -m benchmarks.scaling --make-bundle benchmarks/results/scaling-bundle
# Then, from a session whose task has a device machine (the device tool's `run`):
#   run(command="bash benchmarks/scaling_16core.sh", carry=["benchmarks/results/scaling-bundle"], timeout_s=600)
# The machine needs python3 with numpy, pillow, onnxruntime, torch, transformers, matplotlib and scikit-image (the
# lent machines' image has them; it has no optimum, which is why the models travel prebuilt in the bundle: a seeded
# ViT-B/16 checkpoint with tiled weights and its fastvit-detect package, see benchmarks/scaling.py tile_weights).
# The bundle's package holds the openvino-int8 variant when NNCF was installed where it was made; its cells
# (OpenVINO's layouts and cores) run when `import openvino` works on the lent machine: if it doesn't, carry the
# openvino wheel (pip download --no-deps openvino==2026.4.1 ... into .whl/, the device README's recipe) and put it
# on PYTHONPATH; without it those cells are left out and the rest runs as before.
#
# Writes scaling.json, scaling.md, scaling.png and scaling.log to $OUT (the device tool's folder that comes back)
# or, without $OUT, to benchmarks/results/scaling-16core. Copy them into benchmarks/results/ and the README.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-benchmarks/results/scaling-16core}
BUNDLE=${BUNDLE:-benchmarks/results/scaling-bundle/scaling-bundle.tar.xz}
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/fastvit-scaling}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  echo "[scaling_16core] $(date -u +%FT%TZ) on $(grep -m1 'model name' /proc/cpuinfo), nproc $(nproc)"
  "$PYTHON" -c 'import numpy, PIL, onnxruntime, torch, transformers; print("[scaling_16core] onnxruntime",
    onnxruntime.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'
  if [ ! -f "$BUNDLE" ]; then
    echo "[scaling_16core] no bundle at $BUNDLE: make it first (see the top of this script) and carry it"
    exit 2
  fi
  # 420 s of cells at most; the tail of the plan (PyTorch on few cores) is what a cut drops.
  timeout 560 "$PYTHON" -m benchmarks.scaling --bundle "$BUNDLE" --output "$WORK" --seconds 5 --rounds 1 \
    --budget-s "${BUDGET_S:-420}"
  status=$?
  cp "$WORK"/scaling.json "$WORK"/scaling.md "$WORK"/scaling.png "$OUT_DIR"/ 2>/dev/null
  echo "[scaling_16core] done (status $status): $(ls "$OUT_DIR")"
  exit $status
} 2>&1 | tee "$OUT_DIR/scaling.log"
