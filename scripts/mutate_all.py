"""Automatic mutation testing of every runtime module: generated mutants, each run against the tests that cover it.

    python scripts/mutate_all.py                          # the full run: map coverage, then every mutant
    python scripts/mutate_all.py --modules layout.py pool.py --coverage-tests tests/test_layout.py
    python scripts/mutate_all.py --changed-since origin/main --sample 40 --seed 7 --time-budget 480   # CI
    python scripts/mutate_all.py --list --modules options.py   # the mutants, not run

Where scripts/mutation.py holds 52 curated mutants (what someone thought of), this one generates them: every
module of ``src/fastvit_detect`` except the build package (whatever modules exist: new ones are picked up), with
these operators on the AST:

- ``compare``  a comparison flipped (``==``/``!=``, ``<``/``>=``, ``>``/``<=``, ``in``/``not in``, ``is``/``is not``)
- ``boundary`` a boundary shifted (``<``/``<=``, ``>``/``>=``)
- ``constant`` a number changed (n -> n + 1, x -> 2x, 0.0 -> 1.0) or a bool swapped
- ``negate``   the condition of an ``if``, ``elif``, ``while`` or conditional expression negated
- ``boolean``  ``and``/``or`` swapped
- ``call``     a call made as a statement removed (``pass`` instead)
- ``return``   a return value removed (``return None``)

Docstrings, annotations, f-strings and lines marked ``# pragma: no mutate`` are left alone.

Each mutant replaces exactly its node's source span in a temporary copy of ``src/`` (never the checkout), and
runs, with that copy first on ``PYTHONPATH`` and ``-x``, only the tests whose coverage context includes its
line: the map comes from one pytest-cov run with ``--cov-context=test`` (the ``map`` step, or a coverage file
the suite already wrote: ``--coverage-data``). Lines run only while modules were imported (module constants,
default arguments) map to the tests of the lines that read what they define (a constant's readers anywhere in
the runtime, a ``def``'s body), else to the tests that cover any line of their module, at most
``IMPORT_TIME_TESTS`` of them.
Fastest tests first, per-mutant timeout from the mapped tests' own durations. Fixture packages come from
``FASTVIT_TEST_CACHE`` (a scratch folder by default), built once by the map step.

Verdicts: ``killed`` (a test failed or errored), ``survived`` (its tests passed), ``uncovered`` (no test runs its
line: a survivor too), ``timeout``, ``equivalent`` (listed, with the reason, in scripts/mutation_equivalent.txt,
keyed by module, the line's text and the mutation, so an entry lapses when its line changes), ``error`` (the
mutant didn't compile: a generator bug) and ``not-run`` (the time budget ran out first). The per-module table
goes to stdout, ``--markdown`` and ``--json``. Exit status 1 when a mutant survives (or is uncovered) in a
``--strict`` module, or when an equivalent entry no longer matches any mutant of a module that was generated.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import functools
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coverage import CoverageData

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fastvit_detect"
PACKAGE_DIR = ROOT / "src" / PACKAGE
EXCLUDED_PARTS = ("build",)  # build time: torch, transformers, optimum; not the runtime
EQUIVALENT_FILE = ROOT / "scripts" / "mutation_equivalent.txt"
SUBPROCESS_COVERAGE_DIR = ROOT / "scripts" / "subprocess_coverage"  # its sitecustomize measures child processes
SUBPROCESS_SUFFIX = "-subprocess"
STRICT_FILE = ROOT / "scripts" / "mutation_strict.txt"  # modules triaged to zero survivors: CI holds them there
NO_MUTATE = "pragma: no mutate"
IMPORT_TIME_TESTS = 40
DEFAULT_TEST_SECONDS = 2.0  # for a test the map has no duration for
GRACE_S = 30.0  # how long after --time-budget the last mutant may run
VERDICTS = ("killed", "survived", "uncovered", "timeout", "unfinished", "equivalent", "error", "not-run")


# --- generating mutants -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    module: str  # path under src/fastvit_detect, e.g. "layout.py"
    line: int
    col: int  # UTF-8 byte offset, as the AST gives it
    end_line: int
    end_col: int
    operator: str
    description: str  # e.g. "< -> <="
    replacement: str  # the source that replaces the span
    line_text: str  # the first line of the span, stripped: what the equivalent list is keyed by

    @property
    def ident(self) -> str:
        return f"{self.module}:{self.line}:{self.col}:{self.operator}:{self.description}"


COMPARE_FLIP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
                ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
BOUNDARY_SHIFT = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}
SYMBOL = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.In: "in",
          ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}


def runtime_modules() -> list[str]:
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR)
        if relative.parts[0] in EXCLUDED_PARTS or "__pycache__" in relative.parts:
            continue
        found.append(relative.as_posix())
    return found


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes not to mutate: docstrings, annotations, f-strings, ``if TYPE_CHECKING:`` blocks."""
    skipped: set[int] = set()

    def skip(node: ast.AST | None) -> None:
        if node is not None:
            skipped.update(id(inner) for inner in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                skip(first)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skip(node.returns)
        if isinstance(node, ast.arg):
            skip(node.annotation)
        if isinstance(node, ast.AnnAssign):
            skip(node.annotation)
        if isinstance(node, ast.JoinedStr):
            skip(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip(node)
    return skipped


def _expression(node: ast.expr) -> str:
    return f"({ast.unparse(node)})"


def _node_mutations(node: ast.AST) -> Iterator[tuple[str, str, str]]:
    """(operator, description, replacement source) for one node."""
    if isinstance(node, ast.Compare):
        for index, op in enumerate(node.ops):
            for operator, table in (("compare", COMPARE_FLIP), ("boundary", BOUNDARY_SHIFT)):
                if type(op) in table:
                    changed = copy.deepcopy(node)
                    changed.ops[index] = table[type(op)]()
                    yield (operator, f"{SYMBOL[type(op)]} -> {SYMBOL[table[type(op)]]}"
                           + (f" (#{index + 1})" if len(node.ops) > 1 else ""), _expression(changed))
    elif isinstance(node, ast.Constant) and not isinstance(node.value, str):
        value = node.value
        if isinstance(value, bool):
            yield "constant", f"{value} -> {not value}", f"({not value})"
        elif isinstance(value, int):
            yield "constant", f"{value} -> {value + 1}", f"({value + 1})"
        elif isinstance(value, float):
            changed = value * 2 if value else 1.0
            yield "constant", f"{value!r} -> {changed!r}", f"({changed!r})"
    elif isinstance(node, ast.BoolOp):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        changed = copy.deepcopy(node)
        changed.op = other
        words = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        yield "boolean", f"{words[0]} -> {words[1]}", _expression(changed)


def _negation(test: ast.expr) -> tuple[str, str, str]:
    return "negate", "not (...)", f"(not {_expression(test)})"


def generate(module: str, source: str | None = None) -> list[Mutant]:
    """Every mutant of ``module`` (a path under src/fastvit_detect), in source order."""
    source = (PACKAGE_DIR / module).read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(source)
    lines = source.splitlines()
    skipped = _skipped_nodes(tree)
    found: list[Mutant] = []

    def add(node: ast.AST, operator: str, description: str, replacement: str) -> None:
        line_text = lines[node.lineno - 1]
        if NO_MUTATE in line_text:
            return
        found.append(Mutant(module, node.lineno, node.col_offset, node.end_lineno or node.lineno,
                            node.end_col_offset or 0, operator, description, replacement, line_text.strip()))

    for node in ast.walk(tree):
        if id(node) in skipped or not hasattr(node, "lineno"):
            continue
        for operator, description, replacement in _node_mutations(node):
            add(node, operator, description, replacement)
        if isinstance(node, (ast.If, ast.While, ast.IfExp)) and id(node.test) not in skipped:
            add(node.test, *_negation(node.test))
        if isinstance(node, ast.Expr) and isinstance(node.value, (ast.Call, ast.Await)):
            add(node, "call", "call removed", "pass")
        if isinstance(node, ast.Return) and node.value is not None \
                and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            add(node.value, "return", "return None", "(None)")
    found.sort(key=lambda mutant: (mutant.line, mutant.col, mutant.operator, mutant.description))
    # The same mutation twice on one line (two True arguments): "(at 1)", "(at 2)" keep them apart in the
    # equivalent list.
    same = Counter((mutant.line, mutant.operator, mutant.description) for mutant in found)
    seen: Counter[tuple[int, str, str]] = Counter()
    numbered = []
    for mutant in found:
        key = (mutant.line, mutant.operator, mutant.description)
        seen[key] += 1
        numbered.append(mutant if same[key] == 1 else
                        dataclasses.replace(mutant, description=f"{mutant.description} (at {seen[key]})"))
    return numbered


def apply(mutant: Mutant, source: str) -> str:
    """``source`` with the mutant's span replaced (offsets are UTF-8 bytes, as the AST counts them)."""
    lines = source.encode("utf-8").splitlines(keepends=True)
    start = sum(len(line) for line in lines[:mutant.line - 1]) + mutant.col
    end = sum(len(line) for line in lines[:mutant.end_line - 1]) + mutant.end_col
    data = source.encode("utf-8")
    return (data[:start] + mutant.replacement.encode("utf-8") + data[end:]).decode("utf-8")


def read_module_list(path: Path) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return {line for line in lines if line}


# --- the equivalent list ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Equivalent:
    module: str
    line: str
    mutation: str  # "operator: description", e.g. "boundary: < -> <="
    reason: str


def mutation_label(mutant: Mutant) -> str:
    return f"{mutant.operator}: {mutant.description}"


def read_equivalents(path: Path = EQUIVALENT_FILE) -> list[Equivalent]:
    """Entries of two lines: ``module | operator: description | the line's text``, then the reason, indented.
    Blank lines and lines starting with ``#`` are comments."""
    if not path.exists():
        return []
    found: list[Equivalent] = []
    pending: tuple[str, str, str] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            if pending is None:
                raise SystemExit(f"{path}:{number}: a reason without its mutant")
            found.append(Equivalent(*pending, raw.strip()))
            pending = None
            continue
        if pending is not None:
            raise SystemExit(f"{path}:{number - 1}: an entry without a reason (indent it on the next line)")
        parts = [part.strip() for part in raw.split(" | ", 2)]
        if len(parts) != 3:
            raise SystemExit(f"{path}:{number}: expected 'module | operator: description | line text'")
        pending = (parts[0], parts[2], parts[1])
    if pending is not None:
        raise SystemExit(f"{path}: its last entry has no reason")
    return found


def equivalence(mutant: Mutant, entries: Sequence[Equivalent]) -> Equivalent | None:
    for entry in entries:
        if (entry.module, entry.line, entry.mutation) == (mutant.module, mutant.line_text, mutation_label(mutant)):
            return entry
    return None


def lapsed_equivalents(entries: Sequence[Equivalent], mutants: Sequence[Mutant], modules: Sequence[str]) -> list[
        Equivalent]:
    """Entries of the generated ``modules`` that no mutant matches any more: their line changed, re-check them."""
    keys = {(mutant.module, mutant.line_text, mutation_label(mutant)) for mutant in mutants}
    return [entry for entry in entries if entry.module in modules
            and (entry.module, entry.line, entry.mutation) not in keys]


# --- the coverage map ---------------------------------------------------------------------------------------


@dataclass
class CoverageMap:
    """Per module and line, the pytest node ids that ran it; and each test's duration (s)."""

    lines: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    import_time: dict[str, set[int]] = field(default_factory=dict)  # lines only run while importing
    durations: dict[str, float] = field(default_factory=dict)

    def tests_for(self, mutant: Mutant) -> list[str] | None:
        """The tests to run for ``mutant``, fastest first; None when no test runs its line."""
        lines = self.lines.get(mutant.module, {})
        tests: set[str] = set()
        for line in range(mutant.line, mutant.end_line + 1):
            tests.update(lines.get(line, ()))
        if not tests and any(line in self.import_time.get(mutant.module, ()) for line in
                             range(mutant.line, mutant.end_line + 1)):
            for module, used in where_used(mutant.module, mutant.line).items():
                for line in used:
                    tests.update(self.lines.get(module, {}).get(line, ()))
            tests.update(test_files_naming(defined_names(mutant.module, mutant.line)))
            # No use found, or a class heading (its users may not test what a decorator changes, such as
            # frozenness): the module's tests too, its own test file's first.
            if not tests or in_class_heading(mutant.module, mutant.line):
                every = sorted({test for covering in lines.values() for test in covering}, key=self.duration)
                own = [test for test in every if Path(mutant.module).stem in test.split("::")[0]]
                tests |= set((own + [test for test in every if test not in own])[:IMPORT_TIME_TESTS])
        whole_files = {test for test in tests if "::" not in test}
        tests = {test for test in tests if test.split("::", 1)[0] not in whole_files or "::" not in test}
        return sorted(tests, key=self.duration) if tests else None

    def duration(self, test: str) -> float:
        if "::" not in test:  # a whole file: its tests' time, or a minute when the map didn't run it
            inside = [seconds for node, seconds in self.durations.items() if node.startswith(test + "::")]
            return sum(inside) if inside else 60.0
        return self.durations.get(test, DEFAULT_TEST_SECONDS)


SAFE_PARAMETERS = re.compile(r"\[[A-Za-z0-9_.\-]*\]")


@functools.cache
def _parsed(module: str) -> ast.Module:
    return ast.parse((PACKAGE_DIR / module).read_text(encoding="utf-8"))


def _class_heading(node: ast.AST, line: int) -> bool:
    """Whether ``line`` is in ``node``'s heading, decorators included: a class, when it's a ``ClassDef``."""
    if not isinstance(node, ast.ClassDef) or not node.body:
        return False
    return min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)]) <= line < node.body[0].lineno


@functools.cache
def in_class_heading(module: str, line: int) -> bool:
    return any(_class_heading(node, line) for node in ast.walk(_parsed(module)))


@functools.cache
def defined_names(module: str, line: int) -> frozenset[str]:
    """The names an import-time line defines: an assignment's (``positive_int = whole_number(...)``), or a
    class's when the line is its heading (``@dataclass(frozen=True)``: the tests that use the class)."""
    names: set[str] = set()
    for node in ast.walk(_parsed(module)):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.lineno <= line <= (node.end_lineno or line):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
        if _class_heading(node, line):
            names.add(node.name)  # type: ignore[attr-defined]
    return frozenset(names)


def test_files_naming(names: frozenset[str]) -> set[str]:
    """Test files that use one of ``names`` themselves (a test of a constant or of a parser built at import)."""
    if not names:
        return set()
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b")
    return {path.relative_to(ROOT).as_posix() for path in sorted((ROOT / "tests").glob("test_*.py"))
            if pattern.search(path.read_text(encoding="utf-8", errors="replace"))}


@functools.cache
def where_used(module: str, line: int) -> dict[str, set[int]]:
    """For a line that runs only at import: the lines, per module, whose tests exercise what it defines.

    A module or class constant (``MAX_WORKERS = 256``, ``crashes_before_giving_up = 2``): every line of the
    runtime that reads the name. A ``def`` line (a default argument, a decorator): the lines of its body."""
    tree = _parsed(module)
    names: set[str] = set()
    body_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.lineno <= line <= (node.end_lineno or line):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
            names.update(target.attr for target in targets if isinstance(target, ast.Attribute))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                and node.lineno <= line < node.body[0].lineno:
            body_lines.update(range(node.body[0].lineno, (node.end_lineno or node.body[0].lineno) + 1))
    used: dict[str, set[int]] = defaultdict(set)
    used[module].update(body_lines)
    if names:
        for other in runtime_modules():
            for node in ast.walk(_parsed(other)):
                if (isinstance(node, ast.Name) and node.id in names) or \
                        (isinstance(node, ast.Attribute) and node.attr in names):
                    used[other].add(node.lineno)
    return dict(used)


def _node_id(context: str) -> str:
    """The pytest node id of a coverage context; a parametrized id that pytest can't take back on its command
    line (brackets, quotes, spaces, non-ASCII in the parameters) becomes its function's: all its cases run.

    A line run while a fixture was set up maps to the test's whole file: a module-scoped fixture (an app, a loaded
    detector) is set up in its file's first test's context, yet every test of the file uses what it made."""
    node, _, phase = context.rpartition("|") if "|" in context else (context, "", "")
    if phase == "setup":
        return node.split("::", 1)[0]
    head, bracket, _ = node.partition("[")
    if bracket and not SAFE_PARAMETERS.fullmatch(node[len(head):]):
        return head
    return node


def _runtime_lines(data: CoverageData) -> Iterator[tuple[str, dict[int, list[str]]]]:
    """Each runtime module's lines and their contexts in ``data``, the module as a path under the package."""
    for measured in data.measured_files():
        path = Path(measured)
        if PACKAGE not in path.parts:
            continue
        relative = Path(*path.parts[len(path.parts) - path.parts[::-1].index(PACKAGE):]).as_posix()
        if relative.split("/")[0] not in EXCLUDED_PARTS:
            yield relative, data.contexts_by_lineno(measured)


def read_coverage(data_file: Path, junit: Path | None) -> CoverageMap:
    from coverage import CoverageData


    data = CoverageData(basename=str(data_file))
    data.read()
    result = CoverageMap()
    for relative, by_line in _runtime_lines(data):
        result.lines[relative] = {line: sorted({_node_id(c) for c in contexts if c}) for line, contexts in
                                  by_line.items() if any(contexts)}
        result.import_time[relative] = {line for line, contexts in by_line.items() if not any(contexts)}
    # What subprocesses measured (scripts/subprocess_coverage): a server, the CLI or an example a test started,
    # labelled with that test's file. A line the tests' own process ran only while importing stays import-time
    # (its mutants go to the tests of the lines that read it, where the child's files are added too): in a child,
    # every import happens inside a test's context.
    for measured_in_child in sorted(data_file.parent.glob(f"{data_file.name}{SUBPROCESS_SUFFIX}.*")):
        child = CoverageData(basename=str(measured_in_child))
        child.read()
        for relative, by_line in _runtime_lines(child):
            lines = result.lines.setdefault(relative, {})
            for line, contexts in by_line.items():
                if line in result.import_time.get(relative, ()) or not any(contexts):
                    continue
                lines[line] = sorted(set(lines.get(line, ())) | {_node_id(c) for c in contexts if c})
    if junit is not None and junit.exists():
        for case in ElementTree.parse(junit).iter("testcase"):
            classname, name = case.get("classname", ""), case.get("name", "")
            parts = classname.split(".")
            # classname "tests.test_x" or "tests.test_x.TestClass": the file is the longest prefix that exists
            for cut in range(len(parts), 0, -1):
                if (ROOT / Path(*parts[:cut])).with_suffix(".py").exists():
                    node = "::".join(["/".join(parts[:cut]) + ".py", *parts[cut:], name])
                    seconds = float(case.get("time", DEFAULT_TEST_SECONDS))
                    result.durations[node] = seconds
                    if _node_id(node) != node:  # a whole function's time: the sum of its cases
                        result.durations[_node_id(node)] = result.durations.get(_node_id(node), 0.0) + seconds
                    break
    return result


def subprocess_coverage(env: dict[str, str], data_file: Path) -> dict[str, str]:
    """``env`` for a coverage run whose subprocesses are measured too, into files beside ``data_file`` that
    :func:`read_coverage` merges (what .ci/run sets for the suite's run)."""
    path = os.pathsep.join(filter(None, [str(SUBPROCESS_COVERAGE_DIR), env.get("PYTHONPATH", "")]))
    return {**env, "PYTHONPATH": path, "FASTVIT_SUBPROCESS_COVERAGE": f"{data_file}{SUBPROCESS_SUFFIX}"}


def map_coverage(tests: Sequence[str], scratch: Path, cache: Path) -> CoverageMap:
    data_file, junit = scratch / "coverage", scratch / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header",
               f"--cov={PACKAGE}", "--cov-context=test", "--cov-report=", f"--junitxml={junit}", *tests]
    env = {**subprocess_coverage(environment(ROOT / "src", cache), data_file), "COVERAGE_FILE": str(data_file)}
    print(f"mutate_all: mapping coverage: {' '.join(tests) or 'the whole suite'}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    print(f"  mapped in {time.perf_counter() - started:.0f}s: {(result.stdout.strip().splitlines() or [''])[-1]}",
          flush=True)
    if not data_file.exists():
        raise SystemExit(f"mutate_all: the coverage run wrote no data:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    if result.returncode not in (0, 1):
        raise SystemExit(f"mutate_all: the coverage run failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    covered = read_coverage(data_file, junit)
    failed = re.findall(r"^FAILED (\S+)", result.stdout, flags=re.MULTILINE)
    # A test that fails on the unchanged code would "kill" every mutant it covers: leave it out of the map.
    for lines in covered.lines.values():
        for line, node_ids in lines.items():
            lines[line] = [node for node in node_ids if node not in failed]
    if failed:
        print(f"  left out of the map, failing on the unchanged code: {', '.join(failed)}", flush=True)
    return covered


def merged_maps(base: CoverageMap, extra: CoverageMap) -> CoverageMap:
    """``base`` with ``extra``'s tests added to the lines they run (both maps of the same source)."""
    merged = CoverageMap(durations={**base.durations, **extra.durations})
    for module in set(base.lines) | set(extra.lines):
        lines: dict[int, set[str]] = defaultdict(set)
        for source in (base.lines.get(module, {}), extra.lines.get(module, {})):
            for line, tests in source.items():
                lines[line].update(tests)
        merged.lines[module] = {line: sorted(tests) for line, tests in lines.items()}
        merged.import_time[module] = ((base.import_time.get(module, set()) | extra.import_time.get(module, set()))
                                      - set(lines))
    return merged


# --- running ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    mutant: Mutant
    verdict: str
    seconds: float = 0.0
    detail: str = ""
    tests: int = 0


def environment(src: Path, cache: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH", "")]))
    # No bytecode in the copy: a mutant and its restore can share an mtime, and a stale .pyc would run instead.
    return {**os.environ, "PYTHONPATH": path, "FASTVIT_TEST_CACHE": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}


def run_mutant(mutant: Mutant, tests: list[str], copy_root: Path, cache: Path, covered: CoverageMap,
               timeout_floor: float, timeout_cap: float | None = None) -> Outcome:
    target = copy_root / "src" / PACKAGE / mutant.module
    original = target.read_text(encoding="utf-8")
    mutated = apply(mutant, original)
    try:
        compile(mutated, str(target), "exec")
    except SyntaxError as exc:
        return Outcome(mutant, "error", detail=f"the mutant doesn't compile: {exc}")
    natural = timeout_floor + 3 * sum(covered.duration(test) for test in tests)
    timeout = natural if timeout_cap is None else max(1.0, min(natural, timeout_cap))
    target.write_text(mutated, encoding="utf-8")
    started = time.perf_counter()
    try:
        returncode, output = _pytest(tests, copy_root, cache, timeout)
        if returncode in (4, 5):
            # A parametrized id the mutant renamed (ids computed from the code under test): not found, so run
            # each test function whole.
            whole = sorted({test.split("[", 1)[0] for test in tests})
            returncode, output = _pytest(whole, copy_root, cache, timeout - (time.perf_counter() - started))
    except subprocess.TimeoutExpired:
        if timeout < natural:  # cut off by --mutant-seconds or the time budget, not by its tests' own time
            return Outcome(mutant, "unfinished", time.perf_counter() - started,
                           f"cut off after {timeout:.0f}s (its tests may take {natural:.0f}s)", len(tests))
        return Outcome(mutant, "timeout", time.perf_counter() - started, f"over {timeout:.0f}s", len(tests))
    finally:
        target.write_text(original, encoding="utf-8")
    seconds = time.perf_counter() - started
    if returncode == 0:
        return Outcome(mutant, "survived", seconds, f"{len(tests)} test(s) passed", len(tests))
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)
    if returncode in (1, 2, 3):  # failures, an interrupted or broken collection: the tests noticed
        return Outcome(mutant, "killed", seconds, failed[0] if failed else f"pytest exit {returncode}", len(tests))
    return Outcome(mutant, "error", seconds, f"pytest exit {returncode}: {output[-500:]}", len(tests))


def _pytest(tests: Sequence[str], copy_root: Path, cache: Path, timeout: float) -> tuple[int, str]:
    """Run ``tests`` with the mutated copy first on the path, stopping at the first failure."""
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", "-rf", *tests]
    # errors="replace": a mutant may make a test print bytes that aren't UTF-8; the run must go on.
    process = subprocess.Popen(command, cwd=ROOT, env=environment(copy_root / "src", cache), text=True,
                               encoding="utf-8", errors="replace", stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # pytest and whatever it started (servers, Ray workers)
        process.communicate()
        raise
    return process.returncode, output


def rescore(reports: Sequence[Path], markdown_path: Path | None, json_path: Path | None) -> int:
    """Merge reports (later ones win for the same mutant) and re-judge their survivors against the equivalent
    list as it is now; prints the table."""
    entries = read_equivalents()
    merged: dict[str, Outcome] = {}
    commits, modules = [], []
    for report in reports:
        data = json.loads(report.read_text(encoding="utf-8"))
        commits.append(f"{data['commit']} ({data['date']})")
        for entry in data["mutants"]:
            mutant = Mutant(**{name: entry[name] for name in Mutant.__dataclass_fields__})
            verdict, detail = entry["verdict"], entry["detail"]
            listed = equivalence(mutant, entries) if verdict in ("survived", "uncovered") else None
            if listed is not None:
                verdict, detail = "equivalent", listed.reason
            merged[mutant.ident] = Outcome(mutant, verdict, entry["seconds"], detail, entry["tests"])
            if mutant.module not in modules:
                modules.append(mutant.module)
    outcomes = list(merged.values())
    table = markdown(score_table(outcomes, modules), f"Merged from {', '.join(commits)}")
    print(table)
    if markdown_path is not None:
        markdown_path.write_text(table, encoding="utf-8")
    if json_path is not None:
        json_path.write_text(json.dumps({"merged_from": commits, "modules": score_table(outcomes, modules),
                                         "mutants": [{**asdict(o.mutant), "verdict": o.verdict, "detail": o.detail}
                                                     for o in outcomes]}, indent=1), encoding="utf-8")
    for outcome in sorted(outcomes, key=lambda o: (o.mutant.module, o.mutant.line)):
        if outcome.verdict in ("survived", "uncovered"):
            print(f"{outcome.verdict}: {outcome.mutant.module}:{outcome.mutant.line} {mutation_label(outcome.mutant)}"
                  f"  | {outcome.mutant.line_text}")
    return 0


def earlier_kills(report: Path) -> dict[str, str]:
    """ident -> verdict of the killed and timed-out mutants of an earlier report, in modules unchanged since."""
    data = json.loads(report.read_text(encoding="utf-8"))
    unchanged = {module for module, digest in data.get("sha256", {}).items()
                 if (PACKAGE_DIR / module).is_file()
                 and hashlib.sha256((PACKAGE_DIR / module).read_bytes()).hexdigest() == digest}
    kills = {}
    for entry in data.get("mutants", []):
        if entry["module"] in unchanged and entry["verdict"] in ("killed", "timeout"):
            fields = {name: entry[name] for name in Mutant.__dataclass_fields__}
            kills[Mutant(**fields).ident] = entry["verdict"]
    return kills


def changed_modules(since: str) -> list[str]:
    base = subprocess.run(["git", "merge-base", "HEAD", since], cwd=ROOT, capture_output=True, text=True)
    reference = base.stdout.strip() if base.returncode == 0 else since
    diff = subprocess.run(["git", "diff", "--name-only", reference, "--", f"src/{PACKAGE}"], cwd=ROOT,
                          capture_output=True, text=True)
    if diff.returncode != 0:
        print(f"mutate_all: can't diff against {since}: {diff.stderr.strip()}; no changed modules", flush=True)
        return []
    prefix = f"src/{PACKAGE}/"
    return [name[len(prefix):] for name in diff.stdout.split() if name.endswith(".py") and name.startswith(prefix)]


def score_table(outcomes: Sequence[Outcome], modules: Sequence[str]) -> list[dict[str, object]]:
    rows = []
    for module in modules:
        counts = Counter(outcome.verdict for outcome in outcomes if outcome.mutant.module == module)
        # An unfinished mutant (cut off before its tests ended) counts as a survivor: not shown to be killed.
        judged = counts["killed"] + counts["survived"] + counts["uncovered"] + counts["timeout"] + counts["unfinished"]
        # A timeout counts as killed (the mutant hangs a test: noticed), as mutmut and cosmic-ray count it.
        score = (counts["killed"] + counts["timeout"]) / judged if judged else None
        rows.append({"module": module, "mutants": sum(counts.values()), **{v: counts[v] for v in VERDICTS},
                     "score": score})
    return rows


def markdown(rows: Sequence[dict[str, object]], header: str) -> str:
    columns = ["module", "mutants", *VERDICTS, "score"]
    text = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        score = row["score"]
        cells = [str(row[column]) for column in columns[:-1]]
        cells.append("-" if score is None else f"{100 * float(score):.1f} %")  # type: ignore[arg-type]
        text.append("| " + " | ".join(cells) + " |")
    return "\n".join(text) + "\n"


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", nargs="+", metavar="MODULE", help="modules under src/fastvit_detect "
                        "(default: every runtime module)")
    parser.add_argument("--changed-since", metavar="REF", help="only the modules changed since the merge base "
                        "with REF (plus --sample)")
    parser.add_argument("--sample", type=int, metavar="N", help="also N mutants drawn at random from the rest")
    parser.add_argument("--per-module", type=int, metavar="N", help="at most N mutants of each module, drawn at "
                        "random (seeded): an estimate of each module's score where the whole run doesn't fit")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    parser.add_argument("--time-budget", type=float, metavar="S", help="start no mutant after S seconds of "
                        "running mutants; the rest are reported as not-run")
    parser.add_argument("--coverage-tests", nargs="+", metavar="TEST", default=[],
                        help="the tests the coverage map runs (default: the whole suite); with --coverage-data, "
                        "tests mapped on top of that file (tests written since it was)")
    parser.add_argument("--coverage-data", type=Path, help="use this coverage file (written with "
                        "--cov-context=test) instead of mapping; --junit gives the durations")
    parser.add_argument("--junit", type=Path, help="the JUnit XML of the run that wrote --coverage-data")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--mutant-seconds", type=float, metavar="S", help="cut a mutant's tests off after S "
                        "seconds: verdict 'unfinished', scored as a survivor (a survivor runs every test that "
                        "covers its line, which for a widely used line takes minutes)")
    parser.add_argument("--timeout-floor", type=float, default=60.0,
                        help="each mutant's timeout is this + 3 x its tests' mapped durations (default 60 s)")
    parser.add_argument("--strict", nargs="*", default=[], metavar="MODULE",
                        help="exit 1 when a mutant of one of these modules survives")
    parser.add_argument("--strict-file", type=Path, metavar="FILE", help="more --strict modules, one a line "
                        f"(# comments), e.g. {STRICT_FILE.relative_to(ROOT)}")
    parser.add_argument("--json", type=Path, help="write the report as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the score table as Markdown here")
    parser.add_argument("--rerun", type=Path, metavar="JSON", help="a report of an earlier run: keep its killed "
                        "verdicts for modules whose source is unchanged since, run the rest again (after triage)")
    parser.add_argument("--rescore", nargs="+", type=Path, metavar="JSON", help="run nothing: merge these reports "
                        "and score them against today's equivalent list (entries reviewed since they ran)")
    parser.add_argument("--run-first", nargs="+", metavar="MODULE", default=[], help="run these modules' mutants "
                        "first, in this order (the draw of --sample/--per-module doesn't change)")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.mutant_seconds is not None and not args.mutant_seconds > 0:
        parser.error("--mutant-seconds must be > 0")

    if args.rescore:
        return rescore(args.rescore, args.markdown, args.json)
    everything = runtime_modules()
    unknown = set(args.modules or ()) - set(everything)
    if unknown:
        parser.error(f"no runtime module {', '.join(sorted(unknown))} (modules: {', '.join(everything)})")
    modules = list(args.modules or everything)
    generated = {module: generate(module) for module in modules}
    chosen = [mutant for module in modules for mutant in generated[module]]
    if args.changed_since is not None:
        changed = set(changed_modules(args.changed_since))
        focus = [mutant for mutant in chosen if mutant.module in changed]
        rest = [mutant for mutant in chosen if mutant.module not in changed]
        sample = random.Random(args.seed).sample(rest, min(args.sample or 0, len(rest)))
        print(f"mutate_all: changed since {args.changed_since}: {', '.join(sorted(changed)) or 'no module'}; "
              f"{len(focus)} mutant(s) there and {len(sample)} sampled (seed {args.seed})", flush=True)
        chosen = focus + sample
    elif args.sample is not None:
        chosen = random.Random(args.seed).sample(chosen, min(args.sample, len(chosen)))
    if args.per_module is not None:
        draw = random.Random(args.seed)
        chosen = [mutant for module in modules for mutant in
                  sorted(draw.sample([m for m in chosen if m.module == module],
                                     min(args.per_module, sum(m.module == module for m in chosen))),
                         key=lambda m: (m.line, m.col))]
    if args.run_first:
        rank = {module: index for index, module in enumerate(args.run_first)}
        chosen.sort(key=lambda mutant: rank.get(mutant.module, len(rank)))  # stable: the rest keep their order
    if args.list:
        for mutant in chosen:
            print(f"{mutant.module}:{mutant.line}:{mutant.col + 1} {mutation_label(mutant):<28} {mutant.line_text}")
        print(f"{len(chosen)} mutant(s) in {len(modules)} module(s)")
        return 0

    commit = git_commit()  # what is measured: the source as the run starts
    entries = read_equivalents()
    lapsed = lapsed_equivalents(entries, [m for module in modules for m in generated[module]], modules)
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    to_run: list[Mutant] = []
    earlier = earlier_kills(args.rerun) if args.rerun else {}
    for mutant in chosen:
        entry = equivalence(mutant, entries)
        if entry is not None:
            outcomes.append(Outcome(mutant, "equivalent", detail=entry.reason))
        elif mutant.ident in earlier:
            outcomes.append(Outcome(mutant, earlier[mutant.ident], detail=f"in {args.rerun}"))
        else:
            to_run.append(mutant)
    with tempfile.TemporaryDirectory(prefix="fastvit-mutate-") as scratch_name:
        scratch = Path(scratch_name)
        cache = Path(os.environ.get("FASTVIT_TEST_CACHE") or scratch / "cache")
        if args.coverage_data is not None:
            covered = read_coverage(args.coverage_data, args.junit)
            if args.coverage_tests:
                covered = merged_maps(covered, map_coverage(tuple(args.coverage_tests), scratch, cache))
        else:
            covered = map_coverage(args.coverage_tests, scratch, cache)
        planned: list[tuple[Mutant, list[str]]] = []
        for mutant in to_run:
            tests = covered.tests_for(mutant)
            if tests is None:
                outcomes.append(Outcome(mutant, "uncovered", detail="no test runs this line"))
            else:
                planned.append((mutant, tests))
        copies = [scratch / f"copy-{index}" for index in range(max(1, min(args.jobs, len(planned))))]
        for copy_root in copies:
            shutil.copytree(PACKAGE_DIR, copy_root / "src" / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
        free = list(copies)
        running_since = time.perf_counter()
        print(f"mutate_all: {len(chosen)} mutant(s): {len(planned)} to run, "
              f"{sum(o.verdict == 'uncovered' for o in outcomes)} uncovered, "
              f"{sum(o.verdict == 'equivalent' for o in outcomes)} listed equivalent", flush=True)

        def run(item: tuple[Mutant, list[str]]) -> Outcome:
            mutant, tests = item
            cap = None
            if args.time_budget is not None:
                cap = args.time_budget - (time.perf_counter() - running_since)
                if cap <= 0:
                    return Outcome(mutant, "not-run", detail=f"the time budget of {args.time_budget:.0f}s ran out")
                cap += GRACE_S  # a mutant started inside the budget may finish a little after it, never long after
            if args.mutant_seconds is not None:
                cap = args.mutant_seconds if cap is None else min(cap, args.mutant_seconds)
            copy_root = free.pop()  # list.pop/append are atomic: each worker holds one copy at a time
            try:
                outcome = run_mutant(mutant, tests, copy_root, cache, covered, args.timeout_floor, cap)
            finally:
                free.append(copy_root)
            print(f"  {outcome.verdict:<9} {mutant.module}:{mutant.line} {mutation_label(mutant):<28} "
                  f"{outcome.seconds:5.1f}s {outcome.tests:3d} test(s)  {outcome.detail.splitlines()[0][:90]}",
                  flush=True)
            return outcome

        with ThreadPoolExecutor(max_workers=len(copies)) as pool:
            outcomes += list(pool.map(run, planned))
    elapsed = time.perf_counter() - started
    rows = score_table(outcomes, modules)
    header = (f"Mutation run of {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {len(chosen)} "
              f"mutant(s) in {elapsed:.0f}s wall")
    table = markdown(rows, header)
    print(table)
    survivors = [o for o in outcomes if o.verdict in ("survived", "uncovered")]
    unfinished = [o for o in outcomes if o.verdict == "unfinished"]
    for outcome in sorted(survivors + unfinished, key=lambda o: (o.mutant.module, o.mutant.line)):
        print(f"{outcome.verdict}: {outcome.mutant.module}:{outcome.mutant.line} {mutation_label(outcome.mutant)}"
              f"  | {outcome.mutant.line_text}")
    for entry in lapsed:
        print(f"lapsed equivalent entry (its line changed: re-check it): {entry.module} | {entry.line} | "
              f"{entry.mutation}", file=sys.stderr)
    if args.markdown is not None:
        args.markdown.write_text(table, encoding="utf-8")
    if args.json is not None:
        report = {"commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "seconds": round(elapsed, 1), "modules": rows,
                  "mutants": [{**asdict(o.mutant), "verdict": o.verdict, "seconds": round(o.seconds, 2),
                               "tests": o.tests, "detail": o.detail} for o in outcomes],
                  "lapsed_equivalents": [asdict(entry) for entry in lapsed],
                  "sha256": {module: hashlib.sha256((PACKAGE_DIR / module).read_bytes()).hexdigest()
                             for module in modules}}
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")
    strict = set(args.strict) | (read_module_list(args.strict_file) if args.strict_file else set())
    strict_survivors = [o for o in survivors if o.mutant.module in strict]
    if strict_survivors:
        print(f"mutate_all: {len(strict_survivors)} survivor(s) in modules held to zero ({', '.join(sorted(strict))}):"
              " add the test that kills each, or list it in scripts/mutation_equivalent.txt with the reason",
              file=sys.stderr)
    return 1 if strict_survivors or lapsed else 0


if __name__ == "__main__":
    raise SystemExit(main())
