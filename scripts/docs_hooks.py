"""mkdocs hooks: pages generated from the code at build time, so they can't drift from it.

``<!-- cli-reference -->`` in a page becomes the help of every ``fastvit-detect`` command, printed by the same
argparse parsers the CLI runs (``export``'s from the build package's parser, which ``fastvit-detect export``
hands its arguments to).
"""
from __future__ import annotations

import argparse
import os
from typing import Any

CLI_MARKER = "<!-- cli-reference -->"
HELP_WIDTH = "100"


def cli_reference() -> str:
    os.environ["COLUMNS"] = HELP_WIDTH  # argparse wraps to the terminal: fix it so the page is the same everywhere
    from fastvit_detect.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    sections = ["```text", parser.format_help().rstrip(), "```"]
    for name, command in commands.choices.items():
        if name == "export":
            from fastvit_detect.build.export import build_parser as export_parser

            command = export_parser(prog="fastvit-detect export")
        sections += [f"## `fastvit-detect {name}`", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(sections)


def on_page_markdown(markdown: str, **_: Any) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown
