#!/usr/bin/env bash
# Set up (first run only) and run the offline demo: build a checkpoint, export it, classify, time against PyTorch.
source "$(dirname "$0")/setup.sh"
exec "$PY" examples/demo.py "$@"
