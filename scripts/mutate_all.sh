#!/usr/bin/env bash
# The automatic mutation run over every runtime module (scripts/mutate_all.py): generated mutants, each run against
# the tests that cover its line. Extra arguments go to scripts/mutate_all.py (--modules, --list, --sample, ...).
source "$(dirname "$0")/setup.sh"
exec nice -n "${MUTATION_NICE:-19}" "$PY" scripts/mutate_all.py "$@"
