#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite. Extra arguments go to pytest.
source "$(dirname "$0")/setup.sh"
exec "$PY" -m pytest "$@"
