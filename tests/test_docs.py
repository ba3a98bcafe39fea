"""The docs can't drift from the code: every example in README.md and docs/ is checked here.

- Every ``fastvit-detect ...`` command in a shell block is parsed by the parser the CLI runs (``export``'s by the
  build package's): a renamed flag, a removed command or a changed choice fails here, naming the file and line.
- Every Python block runs, in page order with one namespace per page (like a doctest), in a child process whose
  working folder holds the files the examples name: ``deepfake_vit_onnx`` and ``PKG`` (the vit fixture package
  with the face detector), ``face.jpg``/``photo.jpg``/``group.jpg`` (real photos), ``clip.mp4`` (a clip made with
  PyAV, with the video extra), and whose Hugging Face Hub
  is a fake on 127.0.0.1 serving that package as ``your-org/deepfake-vit-onnx``. A block that can't run here
  says why, on the line before its fence: ``<!-- docs: not run: needs a Ray cluster and S3 -->``.
- The site builds with ``mkdocs build --strict`` (when mkdocs is installed: the docs extra) and its generated
  reference pages hold every command and the API's main names.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakehub import FakeHub

from fastvit_detect.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELLS = {"bash", "sh", "shell", "console"}
NOT_RUN = re.compile(r"<!-- docs: not run: (?P<why>[^>]*\S) -->\s*$")
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
HUB_EXAMPLE_ID = "your-org/deepfake-vit-onnx"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int          # the first line of the block's body, 1-based
    lang: str
    body: str
    not_run: str | None  # the reason given on the line before the fence

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    found, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, end = opening["indent"], index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        previous = lines[index - 1] if index else ""
        reason = NOT_RUN.search(previous)
        body = textwrap.dedent("\n".join(line[len(indent):] if line.startswith(indent) else line
                                         for line in lines[index + 1:end]))
        found.append(Block(page, index + 2, opening["lang"], body, reason["why"] if reason else None))
        index = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


# --- shell: each fastvit-detect command parses ----------------------------------------------------------------

def commands_in(script: str) -> list[list[str]]:
    """The argument lists of the ``fastvit-detect`` commands in a shell snippet (after env assignments, a
    ``.venv/bin/`` path, ``python -m fastvit_detect``), split at ``&&``, ``||``, ``;`` and pipes."""
    joined = re.sub(r"\\\n", " ", script)
    found = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError:  # an unbalanced quote in a prose line of a text block: not a command
            continue
        segment: list[str] = []
        for word in [*words, ";"]:
            if set(word) <= set("();<>|&"):  # a control operator or a redirection ends the command's arguments
                command = _fastvit_arguments(segment)
                if command is not None:
                    found.append(command)
                segment = []
            else:
                segment.append(word)
    return found


def _fastvit_arguments(words: list[str]) -> list[str] | None:
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    if words and words[0] in {"time", "exec", "nohup"}:
        words = words[1:]
    if words and Path(words[0]).name == "fastvit-detect":
        return synopsis_example(words[1:])
    if len(words) >= 3 and Path(words[0]).name.startswith("python") and words[1:3] == ["-m", "fastvit_detect"]:
        return synopsis_example(words[3:])
    return None


def synopsis_example(arguments: list[str]) -> list[str]:
    """A usage synopsis (``[--port 8000]``, ``dynamic|static|none``) as one command it allows: the optional parts
    given, each choice's first alternative."""
    if not any(word.startswith("[") for word in arguments):
        return arguments
    return [word.strip("[]").split("|")[0] for word in arguments if word.strip("[]")]


def parse_error(arguments: list[str]) -> str | None:
    """None when the CLI's own parser accepts the arguments, else argparse's complaint."""
    if arguments and arguments[0] == "export":
        from fastvit_detect.build.export import build_parser as export_parser

        parser, arguments = export_parser(prog="fastvit-detect export"), arguments[1:]
    else:
        parser = build_parser()
    complaints: list[str] = []
    parser.error = lambda message: (complaints.append(message), sys.exit(2))  # type: ignore[method-assign]
    for action in parser._actions:  # subcommands report through their own parser
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.error = parser.error  # type: ignore[method-assign]
    try:
        parser.parse_args(arguments)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return complaints[0] if complaints else f"exit {exit_.code}"
    return None


SHELL_COMMANDS = [(block, arguments) for block in ALL_BLOCKS if block.lang in SHELLS | {""}
                  for arguments in commands_in(block.body)]


def test_the_docs_hold_commands_to_check():
    """The collector itself: it must find the docs' commands, or the test below checks nothing."""
    assert len(SHELL_COMMANDS) >= 30
    assert {arguments[0] for _, arguments in SHELL_COMMANDS} >= {"predict", "export", "info", "scan", "serve", "eval",
                                                                 "push", "explain"}
    assert any(block.page.name == "README.md" for block, _ in SHELL_COMMANDS)


@pytest.mark.parametrize(("block", "arguments"), SHELL_COMMANDS,
                         ids=[f"{block.where}:{' '.join(arguments)[:60]}" for block, arguments in SHELL_COMMANDS])
def test_every_documented_command_parses(block, arguments, capsys):
    error = parse_error(arguments)
    capsys.readouterr()  # --help examples print their help
    assert error is None, f"{block.where}: fastvit-detect {shlex.join(arguments)}: {error}"


@pytest.mark.parametrize(("arguments", "complaint"), [
    (["predict", "--model", "x", "--jsno", "a.jpg"], "unrecognized arguments"),
    (["predict", "a.jpg"], "required: --model"),
    (["predict", "--model", "x", "--variant"], "expected one argument"),
    (["serve", "--model", "x", "--port", "eighty"], "expected a whole number"),
    (["scna", "photos/"], "invalid choice"),
    (["export", "ckpt", "--quantize", "quarter", "-o", "out"], "invalid choice"),
])
def test_a_drifted_command_is_caught(arguments, complaint):
    """The check can fail: misspelt flags and commands, missing values and bad choices are reported."""
    error = parse_error(arguments)
    assert error is not None and complaint in error


def test_commands_are_found_through_env_paths_chains_and_continuations():
    script = ("source .venv/bin/activate && HF_HUB_OFFLINE=1 .venv/bin/fastvit-detect info PKG  # a comment\n"
              "fastvit-detect predict --model PKG \\\n    --json a.jpg | head -1\n"
              "python -m fastvit_detect scan photos/ --model PKG -o out.csv; echo fastvit-detect done\n"
              "pip install 'fastvit-detect[serve]'\n")
    assert commands_in(script) == [["info", "PKG"], ["predict", "--model", "PKG", "--json", "a.jpg"],
                                   ["scan", "photos/", "--model", "PKG", "-o", "out.csv"]]


# --- Python: each block runs ---------------------------------------------------------------------------------

PYTHON_PAGES = sorted({block.page for block in ALL_BLOCKS if block.lang == "python"})
PRELUDE = """\
import os, sys
from fastvit_detect import Detector  # as a page's first example imports it; later examples on a page assume it
paths = sorted(str(path) for path in __import__("pathlib").Path("photos").glob("*"))  # the sandbox's photos
huge_list_of_paths = paths * 3
"""


def page_script(page: Path) -> str:
    """The page's Python blocks as one script; each block reports where it starts, so a failure names it."""
    parts = [PRELUDE]
    for block in blocks_of(page):
        if block.lang != "python":
            continue
        if block.not_run:
            parts.append(f"# {block.where}: not run ({block.not_run})")
            continue
        parts.append(f"print('docs-block {block.where}', file=sys.stderr, flush=True)")
        parts.append(block.body)
    return "\n".join(parts) + "\n"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, packages) -> Path:
    """A working folder with the files the examples name."""
    from conftest import sample_photos as photos_in_packages
    from PIL import Image

    sample_photos = photos_in_packages()
    folder = tmp_path_factory.mktemp("docs-sandbox")
    shutil.copytree(packages["vit-faces"], folder / "deepfake_vit_onnx")  # with the face detector: the quick start
                                                                          # finds faces too
    shutil.copytree(packages["vit-faces"], folder / "PKG")
    photos = {photo.name: photo for photo in sample_photos}
    (folder / "photos").mkdir()
    for photo in sample_photos:
        shutil.copy(photo, folder / "photos" / photo.name)
    face = Image.open(photos["astronaut.png"]).convert("RGB")
    face.save(folder / "face.jpg")
    face.save(folder / "photo.jpg")
    group = Image.new("RGB", (1400, 900), (90, 110, 130))
    group.paste(face.resize((300, 300)), (100, 200))
    group.paste(Image.open(photos["grace_hopper.jpg"]).convert("RGB").resize((300, 350)), (800, 150))
    group.save(folder / "group.jpg")
    try:
        import av  # noqa: F401 - the video extra: without it the video page's examples can't run
    except ImportError:
        pass
    else:
        from video_clips import fake_segment_clip

        fake_segment_clip(folder / "clip.mp4")
        shutil.copy(folder / "clip.mp4", folder / "long.mp4")
    return folder


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=[str(page.relative_to(ROOT)) for page in PYTHON_PAGES])
def test_every_python_example_runs(page, sandbox, tmp_path):
    files = {path.relative_to(sandbox / "deepfake_vit_onnx").as_posix(): path.read_bytes()
             for path in (sandbox / "deepfake_vit_onnx").rglob("*") if path.is_file()}
    script = tmp_path / "examples.py"
    script.write_text(page_script(page))
    with FakeHub() as hub:
        hub.add_commit(HUB_EXAMPLE_ID, files)
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        done = subprocess.run([sys.executable, str(script)], cwd=sandbox, env=env, capture_output=True, text=True,
                              timeout=600)
    started = re.findall(r"docs-block (\S+)", done.stderr)
    assert done.returncode == 0, (f"the example at {started[-1] if started else page.name} failed:\n"
                                  f"{done.stderr[-3000:]}")
    expected = [block.where for block in blocks_of(page) if block.lang == "python" and not block.not_run]
    assert started == expected


def test_a_failing_example_names_its_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nx = 1\n```\n\n<!-- docs: not run: needs S3 -->\n```python\nimport s3\n```\n"
                    "\n```python\nassert x == 2\n```\n")
    script = tmp_path / "examples.py"
    script.write_text(page_script(page))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    started = re.findall(r"docs-block (\S+)", done.stderr)
    assert started == [f"{page}:4", f"{page}:13"]  # the skipped block never ran; the failure is the last one named


# --- links ----------------------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def relative_links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of the page's Markdown links that point into the repository (not http(s), not mail)."""
    found = []
    fenced = False
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        for match in LINK.finditer(line):
            target = match["target"]
            if not re.match(r"^[a-z]+:", target):
                found.append((number, target))
    return found


def heading_anchors(page: Path) -> set[str]:
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = re.sub(r"[`*_]", "", line.lstrip("#").strip()).lower()
            anchors.add(re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


def test_every_link_in_the_readme_resolves():
    """The README is read on GitHub and PyPI, outside the site: each link names a file or folder that exists (and a
    heading that exists, for an anchor)."""
    links = relative_links(ROOT / "README.md")
    assert len(links) >= 15  # the README points to the docs: a collector that finds nothing would check nothing
    broken = []
    for number, target in links:
        path, _, anchor = target.partition("#")
        resolved = (ROOT / path) if path else ROOT / "README.md"
        if not resolved.exists() or (anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved)):
            broken.append(f"README.md:{number}: {target}")
    assert broken == []


def test_a_broken_link_is_reported(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](page.md#title) [gone](missing.md) [web](https://example.org)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    assert relative_links(page) == [(3, "page.md#title"), (3, "missing.md")]
    assert heading_anchors(page) == {"title"}


# --- the site ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs extra isn't installed")
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return site


def test_the_site_builds_strictly_with_generated_references(site):
    cli = (site / "reference" / "cli" / "index.html").read_text()
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    for name in commands.choices:
        assert f"fastvit-detect {name}" in cli
    assert "--max-faces" in cli and "--quantize" in cli  # predict's face flags, export's own parser
    api = (site / "reference" / "api" / "index.html").read_text()
    for name in ("predict_batch", "predict_faces", "from_pretrained", "fake_probability", "ChecksumMismatchError"):
        assert name in api
    assert (site / "architecture" / "index.html").exists()


def test_the_site_opens_in_a_browser_from_a_loopback_server(site, tmp_path):
    """Served by a static file server on 127.0.0.1 and opened in headless Chromium: the pages render with the
    theme's own assets, navigation works, and nothing is requested outside the site (it works offline)."""
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("Chromium isn't installed (apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client drives Chromium: pip install websocket-client")
    import functools
    import http.server
    import threading

    from test_browser import Browser

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *_: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    browser = Browser(tmp_path / "profile")
    try:
        browser.send("Network.enable")
        browser.send("Page.navigate", url=f"{url}/")
        browser.wait_for("document.readyState === 'complete' && !!document.querySelector('h1')")
        assert browser.evaluate("document.querySelector('h1').textContent").strip().startswith("fastvit-detect")
        browser.evaluate("[...document.querySelectorAll('a')].find(a => a.href.endsWith('/reference/cli/')).click()")
        browser.wait_for("location.pathname === '/reference/cli/' && document.readyState === 'complete'")
        text = browser.wait_for("document.querySelector('article') && document.querySelector('article').innerText")
        assert "fastvit-detect predict" in text and "--max-faces" in text
        styled = browser.evaluate("getComputedStyle(document.querySelector('.md-header')).position")
        assert styled in ("sticky", "fixed")  # the theme's stylesheet loaded from the site itself
        requested = [address for address in browser.requested_urls() if not address.startswith("data:")]
        assert requested and [address for address in requested if not address.startswith(url)] == []
    finally:
        browser.close()
        server.shutdown()
