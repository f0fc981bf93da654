"""Help text of the ``taskiq-flow`` commands: plain text, at most 80 columns."""

from __future__ import annotations

import argparse
import textwrap

__all__ = ["HelpFormatter", "paragraphs"]

#: The width the help and the command's tables are written for.
COLUMNS = 80


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description and the epilog as written (their line breaks, their examples);
    wraps option help to the terminal, never wider than :data:`COLUMNS`."""

    def __init__(self, prog: str) -> None:
        import shutil

        width = min(COLUMNS, shutil.get_terminal_size((COLUMNS, 24)).columns) - 2
        super().__init__(prog, max_help_position=28, width=width)


def paragraphs(text: str, width: int = COLUMNS - 2) -> str:
    """Fills each blank-line-separated paragraph of ``text`` to ``width`` columns."""
    return "\n\n".join(
        textwrap.fill(" ".join(p.split()), width) for p in text.strip().split("\n\n")
    )
