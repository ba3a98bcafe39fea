"""conftest.cached_build: a fixture that takes minutes is built once per content, and rebuilt when it changes."""
from __future__ import annotations

from pathlib import Path

from conftest import CACHE_ENVIRONMENT, cached_build


def counting_build(calls: list[Path]):
    def build(directory: Path) -> None:
        calls.append(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "result.txt").write_text(f"build {len(calls)}")
    return build


def test_the_same_content_is_built_once_and_each_caller_gets_its_own_copy(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENVIRONMENT, str(tmp_path / "cache"))
    source = tmp_path / "code"
    source.mkdir()
    (source / "train.py").write_text("EPOCHS = 3\n")
    calls: list[Path] = []
    first = cached_build("trained", [source], counting_build(calls), tmp_path / "first")
    (first / "result.txt").write_text("damaged by a test")
    second = cached_build("trained", [source], counting_build(calls), tmp_path / "second")
    assert len(calls) == 1
    assert (second / "result.txt").read_text() == "build 1"  # the cache is not the copy the first test damaged


def test_a_changed_source_a_new_file_or_another_name_builds_anew(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENVIRONMENT, str(tmp_path / "cache"))
    source = tmp_path / "code"
    source.mkdir()
    (source / "train.py").write_text("EPOCHS = 3\n")
    calls: list[Path] = []
    cached_build("trained", [source], counting_build(calls), tmp_path / "a")
    (source / "train.py").write_text("EPOCHS = 4\n")
    cached_build("trained", [source], counting_build(calls), tmp_path / "b")
    (source / "sub").mkdir()
    (source / "sub" / "augment.py").write_text("FLIP = True\n")
    cached_build("trained", [source], counting_build(calls), tmp_path / "c")
    cached_build("bench-run", [source], counting_build(calls), tmp_path / "d")
    (source / "notes.txt").write_text("not code")  # only Python files of a folder are part of its content
    cached_build("bench-run", [source], counting_build(calls), tmp_path / "e")
    assert len(calls) == 4


def test_a_library_upgrade_builds_anew(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENVIRONMENT, str(tmp_path / "cache"))
    source = tmp_path / "train.py"
    source.write_text("EPOCHS = 3\n")
    calls: list[Path] = []
    cached_build("trained", [source], counting_build(calls), tmp_path / "a", libraries=("numpy",))
    cached_build("trained", [source], counting_build(calls), tmp_path / "b", libraries=("numpy", "no-such-lib"))
    assert len(calls) == 2


def test_without_the_cache_every_call_builds(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENVIRONMENT, raising=False)
    source = tmp_path / "train.py"
    source.write_text("EPOCHS = 3\n")
    calls: list[Path] = []
    for name in ("a", "b"):
        assert (cached_build("trained", [source], counting_build(calls), tmp_path / name) / "result.txt").exists()
    assert len(calls) == 2 and not (tmp_path / "cache").exists()
