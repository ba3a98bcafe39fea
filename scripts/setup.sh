# Sourced by the other scripts: make .venv (or $VENV) with the runtime, export, serve, hub, dev and benchmark
# (openvino) dependencies.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# torch first and pinned: on this project's CPU machines torch==2.13.0 is a local CPU wheel, while an unpinned
# torch (asked for by optimum or transformers) would pull a multi-GB CUDA build. Elsewhere set TORCH_VERSION.
"$VENV/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# The openvino extra too, so CI runs the OpenVINO benchmark systems instead of skipping them: ~250 MB and a few
# seconds of installing on top of torch's ~1.9 GB environment, and without it that code would never run in CI.
"$VENV/bin/python" -m pip install -q -e ".[export,bench,serve,hub,ray,dev,openvino,docs,video]"
PY="$VENV/bin/python"
