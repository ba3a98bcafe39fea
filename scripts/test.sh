#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite. Extra arguments go to pytest.
source "$(dirname "$0")/setup.sh"
# Fixtures that take minutes (exported packages, the trained model, a benchmark run) are kept here between runs,
# keyed by the content that makes them (tests/conftest.py): a second run of an unchanged checkout skips them.
# FASTVIT_TEST_CACHE= (empty) builds everything afresh.
export FASTVIT_TEST_CACHE="${FASTVIT_TEST_CACHE-$(cd "$(dirname "$0")/.." && pwd)/.cache/test-fixtures}"
exec "$PY" -m pytest "$@"
