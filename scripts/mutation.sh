#!/usr/bin/env bash
# The mutation check: curated mutants of src/ (applied to a temporary copy), each run against the tests meant to
# kill it; fails if one survives or no longer applies. Extra arguments go to scripts/mutation.py (--list, --only).
source "$(dirname "$0")/setup.sh"
exec "$PY" scripts/mutation.py "$@"
