"""scripts/mutation.py keeps up with the code: every mutant still applies, and a stale one is named, not skipped.

The mutation check itself runs in CI after the suite (scripts/mutation.sh); these are its cheap preconditions, so
a refactor that makes a mutant stale fails here first, with the same message.
"""

from __future__ import annotations

import shutil

from conftest import ROOT

from scripts import mutation


def test_every_mutant_applies_exactly_once_and_names_existing_tests():
    problems = {mutant.name: mutation.stale_problem(mutant, ROOT) for mutant in mutation.MUTANTS}
    assert {name: problem for name, problem in problems.items() if problem} == {}
    assert len(mutation.MUTANTS) >= 25
    assert len({mutant.name for mutant in mutation.MUTANTS}) == len(mutation.MUTANTS)
    for mutant in mutation.MUTANTS:
        assert mutant.original != mutant.mutated and mutant.tests, mutant.name
        for test in mutant.tests:
            path, _, name = test.partition("::")
            assert name.split("[")[0] in (ROOT / path).read_text(), f"{mutant.name}: no test {test}"


def test_a_stale_mutant_is_reported_with_its_file(tmp_path):
    for folder in mutation.COPIED:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    mutant = next(m for m in mutation.MUTANTS if m.name == "label-sorted-names")
    detector = tmp_path / mutation.relative_path(mutant)
    detector.write_text(detector.read_text().replace(mutant.original, "label=self.labels[int(best)],"))
    problem = mutation.stale_problem(mutant, tmp_path)
    assert problem is not None
    assert "no longer occurs in src/fastvit_detect/detector.py: update the mutant" in problem
    detector.write_text(detector.read_text() + f"\n# {mutant.original}\n# {mutant.original}\n")
    assert "occurs 2 times in" in mutation.stale_problem(mutant, tmp_path)
