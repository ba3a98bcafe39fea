"""Install footprint: disk bytes of a system's runtime dependency closure, from the installed distributions.

The closure follows each distribution's ``Requires-Dist`` (markers evaluated for this interpreter, extras as
requested), and sizes are those of the files each distribution's RECORD lists, stat'ed on disk (RECORD's own
size column is empty for some entries, e.g. compiled bytecode). Nothing is installed to measure this.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterable
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: Iterable[str]) -> tuple[dict[str, Distribution], list[str]]:
    """Installed distributions reachable from ``roots`` (requirement strings), and the names not installed."""
    found: dict[str, Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    missing: list[str] = []
    queue = [Requirement(root) for root in roots]
    while queue:
        requirement = queue.pop()
        name = _canonical(requirement.name)
        extras = set(requirement.extras)
        if name in found and extras <= extras_seen[name]:
            continue
        try:
            dist = found.get(name) or distribution(requirement.name)
        except PackageNotFoundError:
            if name not in missing:
                missing.append(name)
            continue
        found[name] = dist
        new_extras = extras - extras_seen.get(name, set())
        first_visit = name not in extras_seen
        extras_seen.setdefault(name, set()).update(extras)
        # Unconditional requirements matter once; marker-guarded ones for the base ("") and each new extra.
        contexts = ([""] if first_visit else []) + sorted(new_extras)
        for text in dist.requires or []:
            try:
                dependency = Requirement(text)
            except InvalidRequirement:
                continue
            if dependency.marker is None:
                wanted = first_visit
            else:
                wanted = any(dependency.marker.evaluate({"extra": extra}) for extra in contexts)
            if wanted:
                queue.append(dependency)
    return found, sorted(missing)


def installed_bytes(dist: Distribution) -> int:
    """Bytes on disk of the files the distribution's RECORD lists; an editable install's source tree instead."""
    total = 0
    seen: set[Path] = set()
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file))).resolve()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        total += path.stat().st_size
    # Editable installs (pip install -e) record only a .pth or finder; count the package's source directory.
    if _is_editable(dist):
        for module in (dist.read_text("top_level.txt") or "").split():
            spec = importlib.util.find_spec(module) if module.isidentifier() else None
            for location in (spec.submodule_search_locations or []) if spec else []:
                for path in Path(location).rglob("*"):
                    resolved = path.resolve()
                    if resolved.is_file() and resolved not in seen and "__pycache__" not in resolved.parts:
                        seen.add(resolved)
                        total += resolved.stat().st_size
    return total


def _is_editable(dist: Distribution) -> bool:
    try:
        direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    except json.JSONDecodeError:
        return False
    return bool(direct_url.get("dir_info", {}).get("editable"))


def footprint(roots: Iterable[str]) -> dict[str, Any]:
    """Total and per-distribution bytes of the closure of ``roots``, biggest first."""
    dists, missing = closure(roots)
    sizes = {name: installed_bytes(dist) for name, dist in dists.items()}
    ordered = dict(sorted(sizes.items(), key=lambda item: -item[1]))
    return {
        "roots": list(roots),
        "total_bytes": sum(sizes.values()),
        "distributions": len(sizes),
        "by_distribution": ordered,
        "not_installed": missing,
    }
