"""scripts/mutate_all.py's cheap preconditions: its mutants of every runtime module compile and change exactly
their span, the equivalent list parses and lapses when a line changes, and coverage contexts become node ids
pytest takes back. The run itself is too long for the suite (docs/mutation/report.md)."""

from __future__ import annotations

import ast
import random

import pytest

from scripts import mutate_all


def test_every_runtime_module_is_mutated_and_every_mutant_compiles():
    modules = mutate_all.runtime_modules()
    assert "layout.py" in modules and "server/app.py" in modules  # a subpackage's modules too
    assert not any(module.startswith("build/") for module in modules)
    pick = random.Random(0)
    for module in modules:
        source = (mutate_all.PACKAGE_DIR / module).read_text()
        mutants = mutate_all.generate(module)
        assert mutants or module.endswith("__init__.py"), module
        # Compiling all ~3,000 takes a minute: a seeded tenth of them, at least one per module.
        for mutant in pick.sample(mutants, max(1, len(mutants) // 10)) if mutants else []:
            mutated = mutate_all.apply(mutant, source)
            assert mutated != source, mutant.ident
            compile(mutated, module, "exec")


def test_each_operator_makes_the_mutant_it_names():
    source = '''"""Doc: 1 < 2 is not mutated."""
LIMIT = 3


def check(value: int = 5) -> bool:
    """Neither is this."""
    if value < LIMIT and value != 0:
        print(f"{value + 1}")
        return value > 1
    return False
'''
    found = {(m.line, m.operator, m.description): mutate_all.apply(m, source).splitlines()[m.line - 1].strip()
             for m in mutate_all.generate("x.py", source)}
    assert found[(2, "constant", "3 -> 4")] == "LIMIT = (4)"
    assert found[(5, "constant", "5 -> 6")] == "def check(value: int = (6)) -> bool:"
    assert found[(7, "boundary", "< -> <=")] == "if (value <= LIMIT) and value != 0:"
    assert found[(7, "compare", "!= -> ==")] == "if value < LIMIT and (value == 0):"
    assert found[(7, "boolean", "and -> or")] == "if (value < LIMIT or value != 0):"
    assert found[(7, "negate", "not (...)")] == "if (not (value < LIMIT and value != 0)):"
    assert found[(8, "call", "call removed")] == "pass"
    assert found[(9, "return", "return None")] == "return (None)"
    assert found[(10, "constant", "False -> True")] == "return (True)"
    assert not [key for key in found if key[0] in (1, 6)]  # docstrings
    assert not [key for key in found if key[0] == 8 and key[1] == "constant"]  # inside an f-string


def test_multibyte_text_before_a_mutant_keeps_its_span():
    source = 'NAME = "café ×"; LIMIT = 3\n'
    (mutant,) = mutate_all.generate("x.py", source)
    assert mutate_all.apply(mutant, source) == 'NAME = "café ×"; LIMIT = (4)\n'
    ast.parse(mutate_all.apply(mutant, source))


def test_an_equivalent_entry_matches_its_line_and_lapses_when_the_line_changes(tmp_path):
    listed = tmp_path / "equivalent.txt"
    listed.write_text("# comment\n\nx.py | boundary: < -> <= | if value < LIMIT:\n    reason: same for ints\n")
    entries = mutate_all.read_equivalents(listed)
    source = "LIMIT = 3\nvalue = 1\nif value < LIMIT:\n    pass\n"
    mutants = mutate_all.generate("x.py", source)
    boundary = next(m for m in mutants if m.operator == "boundary")
    assert mutate_all.equivalence(boundary, entries).reason == "reason: same for ints"
    assert mutate_all.lapsed_equivalents(entries, mutants, ["x.py"]) == []
    changed = mutate_all.generate("x.py", source.replace("if value < LIMIT:", "if value < LIMIT + 1:"))
    assert mutate_all.lapsed_equivalents(entries, changed, ["x.py"]) == entries


@pytest.mark.parametrize("text, problem", [
    ("x.py | boundary: < -> <= | if a < b:\n", "no reason"),
    ("   a reason alone\n", "without its mutant"),
    ("x.py | if a < b:\n    why\n", "expected"),
])
def test_a_malformed_equivalent_list_is_refused(tmp_path, text, problem):
    listed = tmp_path / "equivalent.txt"
    listed.write_text(text)
    with pytest.raises(SystemExit, match=problem):
        mutate_all.read_equivalents(listed)


def test_the_reviewed_list_parses():
    for entry in mutate_all.read_equivalents():
        assert entry.module in mutate_all.runtime_modules() and entry.reason


@pytest.mark.parametrize("context, node", [
    ("tests/test_a.py::test_b|run", "tests/test_a.py::test_b"),
    ("tests/test_a.py::test_b[2-expected1]|call", "tests/test_a.py::test_b[2-expected1]"),
    ("tests/test_a.py::test_b[2-expected1]|setup", "tests/test_a.py"),  # a fixture its whole file may share
    ('tests/test_a.py::test_b[{"format": 1}]|run', "tests/test_a.py::test_b"),
    ("tests/test_a.py::TestC::test_d[a b]|run", "tests/test_a.py::TestC::test_d"),
])
def test_coverage_contexts_become_node_ids_pytest_takes(context, node):
    assert mutate_all._node_id(context) == node


def test_a_constant_maps_to_the_lines_that_read_it():
    line = next(number for number, text in
                enumerate((mutate_all.PACKAGE_DIR / "layout.py").read_text().splitlines(), 1)
                if text.startswith("MAX_WORKERS = "))
    used = mutate_all.where_used("layout.py", line)
    assert len(used["layout.py"]) >= 2  # its own line, and the check that reads it


def test_the_same_mutation_twice_on_a_line_is_numbered():
    source = "def stop(pool):\n    pool.shutdown(wait=True, cancel_futures=True)\n"
    labels = [mutate_all.mutation_label(m) for m in mutate_all.generate("x.py", source) if m.operator == "constant"]
    assert labels == ["constant: True -> False (at 1)", "constant: True -> False (at 2)"]


def test_a_rerun_keeps_the_kills_of_unchanged_modules_only(tmp_path):
    import hashlib
    import json
    from dataclasses import asdict

    mutants = mutate_all.generate("options.py")[:3]
    digest = hashlib.sha256((mutate_all.PACKAGE_DIR / "options.py").read_bytes()).hexdigest()
    report = {"sha256": {"options.py": digest},
              "mutants": [{**asdict(mutants[0]), "verdict": "killed"}, {**asdict(mutants[1]), "verdict": "survived"},
                          {**asdict(mutants[2]), "verdict": "timeout"}]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert mutate_all.earlier_kills(path) == {mutants[0].ident: "killed", mutants[2].ident: "timeout"}
    report["sha256"]["options.py"] = "0" * 64  # the module changed since: nothing is kept
    path.write_text(json.dumps(report))
    assert mutate_all.earlier_kills(path) == {}


def test_a_class_decorator_maps_to_the_test_files_that_use_the_class():
    """``@dataclass(frozen=True)`` runs at import: its mutant goes to the tests that name the class (a test that
    the class is frozen), not only to the module's fastest tests."""
    line = next(number for number, text in
                enumerate((mutate_all.PACKAGE_DIR / "hub.py").read_text().splitlines(), 1)
                if text == "class Pushed:") - 1
    assert mutate_all.defined_names("hub.py", line) == {"Pushed"}
    assert "tests/test_mutants_hub.py" in mutate_all.test_files_naming(mutate_all.defined_names("hub.py", line))
    # and to the module's own tests, which may test frozenness without naming the class
    assert mutate_all.in_class_heading("hub.py", line) and not mutate_all.in_class_heading("hub.py", line + 2)
    covered = mutate_all.CoverageMap(lines={"hub.py": {line + 3: ["tests/test_hub.py::test_push"]}},
                                     import_time={"hub.py": {line}})
    mutant = next(m for m in mutate_all.generate("hub.py") if m.line == line and m.operator == "constant")
    assert {"tests/test_mutants_hub.py", "tests/test_hub.py::test_push"} <= set(covered.tests_for(mutant))


def test_tests_written_after_the_coverage_file_are_mapped_on_top_of_it():
    base = mutate_all.CoverageMap(lines={"scan.py": {10: ["tests/a.py::old"]}, "pool.py": {3: ["tests/p.py::t"]}},
                                  import_time={"scan.py": {1, 12}}, durations={"tests/a.py::old": 1.0})
    extra = mutate_all.CoverageMap(lines={"scan.py": {10: ["tests/b.py::new"], 12: ["tests/b.py::new"]}},
                                   import_time={"scan.py": {1}}, durations={"tests/b.py::new": 0.5})
    merged = mutate_all.merged_maps(base, extra)
    assert merged.lines["scan.py"] == {10: ["tests/a.py::old", "tests/b.py::new"], 12: ["tests/b.py::new"]}
    assert merged.lines["pool.py"] == {3: ["tests/p.py::t"]}
    assert merged.import_time["scan.py"] == {1}  # a line a new test runs is no longer import-time only
    assert merged.durations == {"tests/a.py::old": 1.0, "tests/b.py::new": 0.5}


def test_a_per_module_sample_draws_from_each_module_and_repeats_with_its_seed(capsys):
    def listed(*arguments: str) -> list[str]:
        assert mutate_all.main(["--list", "--modules", "options.py", "pool.py", *arguments]) == 0
        return capsys.readouterr().out.splitlines()[:-1]

    drawn = listed("--per-module", "3", "--seed", "5")
    assert [line.split(":")[0] for line in drawn] == ["options.py"] * 3 + ["pool.py"] * 3
    assert drawn == listed("--per-module", "3", "--seed", "5") and drawn != listed("--per-module", "3", "--seed", "6")
    everything = listed()
    assert set(drawn) <= set(everything) and len(listed("--per-module", "1000")) == len(everything)


def test_what_subprocesses_measured_is_mapped_to_the_test_file_that_started_them(tmp_path):
    from coverage import CoverageData

    module = str(mutate_all.PACKAGE_DIR / "scan.py")

    def write(path, by_context):
        data = CoverageData(basename=str(path))
        for context, lines in by_context.items():
            data.set_context(context)
            data.add_lines({module: lines})
        data.write()

    main = tmp_path / "coverage"
    write(main, {"": [1, 2], "tests/test_scan.py::test_a|run": [10]})
    # a server the test file's fixture started: it imported the module (1, 2) and ran 10 and 20
    write(tmp_path / "coverage-subprocess.host.1.x", {"tests/test_server_attack.py|subprocess": [1, 2, 10, 20]})
    write(tmp_path / "unrelated.host.2.x", {"tests/test_other.py|subprocess": [30]})
    covered = mutate_all.read_coverage(main, None)
    assert covered.lines["scan.py"] == {10: ["tests/test_scan.py::test_a", "tests/test_server_attack.py"],
                                        20: ["tests/test_server_attack.py"]}
    assert covered.import_time["scan.py"] == {1, 2}  # still import-time: mapped to the tests of their readers


def test_a_child_process_of_a_test_records_its_coverage_under_the_test_file(tmp_path):
    import os
    import subprocess
    import sys

    from coverage import CoverageData

    base = tmp_path / "coverage"
    env = mutate_all.subprocess_coverage({**os.environ, "PYTEST_CURRENT_TEST": "tests/test_x.py::test_y (call)"},
                                         base)
    code = "import fastvit_detect.errors"
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0
    written = list(tmp_path.glob("coverage-subprocess.*"))
    assert len(written) == 1
    data = CoverageData(basename=str(written[0]))
    data.read()
    assert data.measured_contexts() == {"tests/test_x.py|subprocess"}
    assert any(path.endswith("errors.py") for path in data.measured_files())
    # no test running (the suite's own start): nothing measured
    del env["PYTEST_CURRENT_TEST"]
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0
    assert len(list(tmp_path.glob("coverage-subprocess.*"))) == 1


def test_a_test_whose_whole_file_runs_anyway_is_not_run_twice():
    line = 10
    covered = mutate_all.CoverageMap(lines={"scan.py": {line: ["tests/a.py", "tests/a.py::test_x", "tests/b.py::y"]}})
    mutant = next(m for m in mutate_all.generate("scan.py") if m.line > 1)
    covered.lines["scan.py"] = {mutant.line: covered.lines["scan.py"][line]}
    assert set(covered.tests_for(mutant)) == {"tests/a.py", "tests/b.py::y"}


def test_a_mutant_cut_off_by_a_cap_is_unfinished_and_scored_as_a_survivor(tmp_path, monkeypatch):
    import shutil
    import subprocess

    def hangs(tests, copy_root, cache, timeout):
        raise subprocess.TimeoutExpired("pytest", timeout)

    monkeypatch.setattr(mutate_all, "_pytest", hangs)
    shutil.copytree(mutate_all.PACKAGE_DIR, tmp_path / "src" / mutate_all.PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__"))
    mutant = mutate_all.generate("options.py")[0]
    covered = mutate_all.CoverageMap(durations={"tests/t.py::a": 100.0})
    hung = mutate_all.run_mutant(mutant, ["tests/t.py::a"], tmp_path, tmp_path, covered, 60.0)
    cut = mutate_all.run_mutant(mutant, ["tests/t.py::a"], tmp_path, tmp_path, covered, 60.0, timeout_cap=5.0)
    assert (hung.verdict, cut.verdict) == ("timeout", "unfinished")  # its own tests' time ran out / the cap did
    (row,) = mutate_all.score_table([hung, cut], ["options.py"])
    assert (row["timeout"], row["unfinished"], row["score"]) == (1, 1, 0.5)


def test_run_first_reorders_the_mutants_without_changing_the_draw(capsys):
    def listed(*arguments: str) -> list[str]:
        assert mutate_all.main(["--list", "--modules", "options.py", "pool.py", "--per-module", "3", *arguments]) == 0
        return capsys.readouterr().out.splitlines()[:-1]

    plain, reordered = listed(), listed("--run-first", "pool.py")
    assert sorted(plain) == sorted(reordered)
    assert [line.split(":")[0] for line in reordered] == ["pool.py"] * 3 + ["options.py"] * 3


def test_a_test_printing_bytes_that_are_not_utf8_is_still_a_verdict(tmp_path):
    """A mutant may make a test print anything: the run reads it with replacement characters, never crashes."""
    test = tmp_path / "test_bytes.py"
    test.write_text("import sys\n\ndef test_prints():\n    sys.stdout.buffer.write(b'\\xff\\xfe')\n    assert False\n")
    code, output = mutate_all._pytest([str(test)], tmp_path, tmp_path, timeout=120)
    assert code == 1 and "\ufffd" in output
