#!/usr/bin/env bash
# Lint (ruff) and type-check (mypy) with the settings in pyproject.toml. Runs in CI next to the tests.
source "$(dirname "$0")/setup.sh"
"$VENV/bin/ruff" check src
"$VENV/bin/mypy"
