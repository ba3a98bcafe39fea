"""The import rules of docs/architecture.md, checked against every import in src/fastvit_detect/.

The page is the one statement of the rules: the tables between its ``<!-- import-rules: ... -->`` markers are
parsed here, so a module added to the code but not to the page, an upward import, or a new top-level
third-party import fails this test and names the file, the line and the rule it breaks.
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "src" / "fastvit_detect"
PAGE = ROOT / "docs" / "architecture.md"
# Always importable at a runtime module's top level: the core install.
CORE_THIRD_PARTY = {"numpy", "PIL", "onnxruntime"}
# Entry points, not layers: they import what they start.
NOT_LAYERS = {"__init__", "__main__"}
# The runtime's subpackages (the build package is not the runtime's): each a layer of the module table, its own
# modules in a table of their own.
SUBPACKAGES = ("server",)


def page_table(name: str, text: str | None = None) -> list[list[str]]:
    """The rows (cells with their backticks removed) of the table after ``<!-- import-rules: NAME -->``."""
    text = PAGE.read_text() if text is None else text
    match = re.search(rf"<!-- import-rules: {name} -->\n(.*?)<!-- import-rules: end -->", text, re.S)
    assert match, f"{PAGE} has no import-rules table {name!r}"
    rows = [line for line in match.group(1).splitlines() if line.startswith("|")][2:]  # header, separator
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows]


@dataclass(frozen=True)
class Import:
    module: str        # the importing module, e.g. "detector"; a subpackage's modules all count as it ("server")
    target: str        # the fastvit_detect module or third-party top-level package imported; "server.stages" for a
                       # module of the importer's own subpackage
    internal: bool
    line: int
    top_level: bool    # run when the module is imported (not inside a function)
    type_checking: bool
    file: str = ""     # the importing file, from src/fastvit_detect/ ("server/app.py"); the module's own by default
    submodule: str = ""  # the importing module within its subpackage ("app"), "" for a top-level module

    @property
    def where(self) -> str:
        return f"src/fastvit_detect/{self.file or self.module + '.py'}:{self.line}"


def imports_of(path: Path, package: str | None = None) -> list[Import]:
    """The imports of one runtime file; ``package``: the subpackage it belongs to (its relative imports of one
    level stay inside it, of two levels reach the runtime's top-level modules)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    type_checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
    function_bodies = {id(node) for function in ast.walk(tree)
                       if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                       for node in ast.walk(function)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(alias.name, False) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if package is not None and node.level == 1:
                targets = [(f"{package}.{(node.module or alias.name).split('.')[0]}", True) for alias in node.names]
            elif node.level:
                targets = [((node.module or alias.name).split(".")[0], True) for alias in node.names]
            else:
                targets = [(node.module or "", False)]
        else:
            continue
        for name, relative in targets:
            internal = relative or name.split(".")[0] == "fastvit_detect"
            if internal and not relative:
                parts = name.split(".")
                if len(parts) < 2:
                    continue  # `import fastvit_detect` itself
                name = parts[1]
            found.append(Import(package or path.stem, name if internal else name.split(".")[0], internal, node.lineno,
                                id(node) not in function_bodies, id(node) in type_checking,
                                path.relative_to(RUNTIME).as_posix(), path.stem if package else ""))
    return found


def check(layers: list[str], lazy: set[tuple[str, str]], extras: dict[str, set[str]],
          modules: dict[str, list[Import]], packages: dict[str, list[str]] | None = None) -> list[str]:
    """Every broken rule, as a line naming the file, the line and the rule."""
    packages = page_packages() if packages is None else packages
    problems = []
    for package, found in ((name, modules.get(name, [])) for name in packages):
        order = packages[package]
        files = ({item.submodule for item in found if item.submodule}
                 | {path.stem for path in (RUNTIME / package).glob("*.py")})
        for submodule in sorted(files - set(order) - {"__init__"}):
            problems.append(f"{package}/{submodule}.py is not in {PAGE.name}'s {package} table: add it in its place")
        for item in found:
            if not item.target.startswith(f"{package}.") or item.submodule == "__init__":
                continue  # the package's __init__ gathers its modules' public names
            target = item.target.split(".", 1)[1]
            if target in order and item.submodule in order and order.index(target) < order.index(item.submodule):
                continue
            if item.type_checking:
                continue
            problems.append(f"{item.where} imports {package}.{target}, which is not above {item.submodule} in "
                            f"{PAGE.name}'s {package} table")
    stdlib = set(sys.stdlib_module_names)
    for module in sorted(set(modules) - set(layers) - NOT_LAYERS):
        problems.append(f"{module}.py is not in {PAGE.name}'s module table: add it in its place")
    for module in sorted(set(layers) - set(modules)):
        problems.append(f"{PAGE.name} lists {module}, which src/fastvit_detect/ doesn't have")
    for module, found in modules.items():
        if module in NOT_LAYERS or module not in layers:
            continue
        for item in found:
            where = item.where
            if item.internal and "." in item.target:
                continue  # inside a subpackage: checked against its own table above
            if item.internal:
                if item.target == "build":
                    if item.top_level:
                        problems.append(f"{where} imports the build package at import time")
                    continue
                if item.target not in layers:
                    continue  # a name from the package itself (e.g. __version__)
                if layers.index(item.target) < layers.index(module) or item.type_checking:
                    continue
                if not item.top_level and (module, item.target) in lazy:
                    continue
                problems.append(f"{where} imports {item.target}, which is not above {module} in {PAGE.name}"
                                + ("" if item.top_level else " (and the lazy import isn't listed there)"))
            elif item.top_level and not item.type_checking:
                if item.target in stdlib or item.target in CORE_THIRD_PARTY:
                    continue
                if item.target in extras.get(module, set()):
                    continue
                problems.append(f"{where} imports {item.target} at import time: only the standard library, "
                                f"{', '.join(sorted(CORE_THIRD_PARTY))} (or the extras {PAGE.name} lists)")
    return problems


def page_rules(text: str | None = None) -> tuple[list[str], set[tuple[str, str]], dict[str, set[str]]]:
    layers = [row[0] for row in page_table("modules", text)]
    lazy = {(row[0], row[1]) for row in page_table("lazy", text)}
    extras = {row[0]: {name.strip().strip("`") for name in row[1].split("(")[0].split(",")}
              for row in page_table("extras", text)}
    return layers, lazy, extras


def page_packages(text: str | None = None) -> dict[str, list[str]]:
    """The runtime's subpackages and their modules in order, from the page's tables named after them."""
    return {package: [row[0] for row in page_table(package, text)] for package in SUBPACKAGES}


def runtime_imports() -> dict[str, list[Import]]:
    modules = {path.stem: imports_of(path) for path in sorted(RUNTIME.glob("*.py"))}
    for package in SUBPACKAGES:
        modules[package] = [item for path in sorted((RUNTIME / package).glob("*.py"))
                            for item in imports_of(path, package)]
    return modules


def test_the_runtime_follows_the_architecture_page():
    layers, lazy, extras = page_rules()
    assert len(layers) == len(set(layers)), "a module is listed twice"
    assert check(layers, lazy, extras, runtime_imports()) == []


def test_the_page_names_each_module_once_in_the_order_the_readme_describes():
    layers, lazy, extras = page_rules()
    assert layers[0] == "errors" and layers[-1] == "cli"
    assert ("detector", "explain") in lazy
    assert extras == {"ray": {"ray", "pyarrow"}, "server": {"fastapi", "starlette", "uvicorn", "python_multipart"}}


# The checker must be able to fail: each plausible breakage of the rules is planted in a copy of the real code's
# import list or of the page, and must be reported.

def planted(module: str, target: str, *, internal: bool = True, top_level: bool = True,
            type_checking: bool = False) -> dict[str, list[Import]]:
    modules = runtime_imports()
    modules[module] = [*modules[module], Import(module, target, internal, 9999, top_level, type_checking)]
    return modules


@pytest.mark.parametrize(("module", "target", "top_level", "broken"), [
    ("preprocess", "detector", True, "imports detector, which is not above preprocess"),
    ("session", "pool", False, "the lazy import isn't listed"),
    ("errors", "options", True, "imports options, which is not above errors"),
    ("faces", "faces", True, "imports faces, which is not above faces"),
    ("package", "build", True, "imports the build package at import time"),
])
def test_an_upward_import_is_reported(module, target, top_level, broken):
    layers, lazy, extras = page_rules()
    problems = check(layers, lazy, extras, planted(module, target, top_level=top_level))
    assert len(problems) == 1 and broken in problems[0] and f"{module}.py:9999" in problems[0]


def test_the_listed_lazy_import_and_type_checking_imports_pass_but_only_those():
    layers, lazy, extras = page_rules()
    assert check(layers, lazy, extras, planted("detector", "explain", top_level=False)) == []
    assert check(layers, lazy, extras, planted("preprocess", "detector", type_checking=True)) == []
    assert len(check(layers, lazy, extras, planted("detector", "explain", top_level=True))) == 1
    # without the page's entries, the real lazy imports (detector's of explain and timeline) and the planted one are
    # all reported
    real = sum(1 for item in runtime_imports()["detector"] if item.target in ("explain", "timeline")
               and not item.top_level and not item.type_checking)
    assert real >= 2
    assert len(check(layers, set(), extras, planted("detector", "explain", top_level=False))) == real + 1


@pytest.mark.parametrize(("module", "package", "allowed"), [
    ("preprocess", "torch", False),
    ("detector", "fastapi", False),
    ("scan", "ray", False),          # ray may be imported at top level by ray.py only
    ("ray", "ray", True),
    ("session", "onnxruntime", True),
    ("explain", "PIL", True),
    ("server", "json", True),
])
def test_top_level_third_party_imports_are_the_core_install_or_a_listed_extra(module, package, allowed):
    layers, lazy, extras = page_rules()
    problems = check(layers, lazy, extras, planted(module, package, internal=False))
    assert problems == [] if allowed else (len(problems) == 1 and f"imports {package} at import time" in problems[0])
    # inside a function, any extra may be imported (it is reported by name when missing, elsewhere)
    assert check(layers, lazy, extras, planted(module, package, internal=False, top_level=False)) == []


def test_a_module_missing_from_the_page_or_a_page_entry_without_a_module_is_reported():
    layers, lazy, extras = page_rules()
    modules = runtime_imports()
    modules["tracks"] = []
    missing = f"tracks.py is not in {PAGE.name}'s module table: add it in its place"
    assert check(layers, lazy, extras, modules) == [missing]
    assert check([*layers, "ghost"], lazy, extras, runtime_imports()) == [
        f"{PAGE.name} lists ghost, which src/fastvit_detect/ doesn't have"]


def test_reordering_the_page_breaks_the_check():
    """The order is the rule: swap two rows of the page and the real code breaks it."""
    text = PAGE.read_text()
    detector_row = next(line for line in text.splitlines() if line.startswith("| `detector` |"))
    preprocess_row = next(line for line in text.splitlines() if line.startswith("| `preprocess` |"))
    swapped = text.replace(detector_row, "\0").replace(preprocess_row, detector_row).replace("\0", preprocess_row)
    layers, lazy, extras = page_rules(swapped)
    assert any("detector.py" in problem and "imports preprocess" in problem
               for problem in check(layers, lazy, extras, runtime_imports()))


def test_the_server_package_follows_its_own_table():
    assert page_packages()["server"] == ["settings", "limits", "batching", "requests", "stages", "video", "protocol",
                                         "app"]
    modules = runtime_imports()
    server_files = {item.file for item in modules["server"]}
    assert {"server/app.py", "server/stages.py", "server/__init__.py"} <= server_files  # the package was read
    # every module but the first uses one above it, so the table's order is really checked
    assert {item.target for item in modules["server"] if item.submodule == "app"} >= {"server.stages"}


@pytest.mark.parametrize(("submodule", "target", "broken"), [
    ("settings", "server.app", "imports server.app, which is not above settings"),
    ("stages", "server.stages", "imports server.stages, which is not above stages"),
    ("requests", "server.ghost", "imports server.ghost, which is not above requests"),
])
def test_an_upward_import_inside_the_server_package_is_reported(submodule, target, broken):
    layers, lazy, extras = page_rules()
    modules = runtime_imports()
    modules["server"] = [*modules["server"], Import("server", target, True, 9999, True, False,
                                                    f"server/{submodule}.py", submodule)]
    problems = check(layers, lazy, extras, modules)
    assert len(problems) == 1 and broken in problems[0] and f"server/{submodule}.py:9999" in problems[0]


def test_a_server_module_may_import_the_runtime_above_the_server_but_not_below_it():
    layers, lazy, extras = page_rules()
    for target, allowed in (("detector", True), ("faces", True), ("cli", False)):
        modules = runtime_imports()
        modules["server"] = [*modules["server"], Import("server", target, True, 9999, True, False,
                                                        "server/stages.py", "stages")]
        problems = check(layers, lazy, extras, modules)
        assert (problems == []) if allowed else ("server/stages.py:9999 imports cli" in problems[0])


def test_a_server_module_missing_from_its_table_is_reported():
    layers, lazy, extras = page_rules()
    packages = {"server": [name for name in page_packages()["server"] if name != "protocol"]}
    problems = check(layers, lazy, extras, runtime_imports(), packages)
    assert "server/protocol.py is not in architecture.md's server table: add it in its place" in problems
