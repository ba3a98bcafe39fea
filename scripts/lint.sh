#!/usr/bin/env bash
# Lint (ruff, the whole tree: runtime, build package, tests, benchmarks, examples, scripts) and type-check (mypy:
# the runtime and the build package) with the settings in pyproject.toml. Runs in CI next to the tests.
source "$(dirname "$0")/setup.sh"
"$VENV/bin/ruff" check .
"$VENV/bin/mypy"
