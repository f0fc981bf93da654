"""Help text and input checks of the ``taskiq-flow`` commands: plain text, at most 80 columns;
bad input refused with one line before anything starts."""

from __future__ import annotations

import argparse
import math
import os
import textwrap
from collections.abc import Callable
from typing import NoReturn

__all__ = [
    "HelpFormatter",
    "OneLineParser",
    "number",
    "paragraphs",
    "whole_number",
    "writable_file",
]

#: The width the help and the command's tables are written for.
COLUMNS = 80


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description and the epilog as written (their line breaks, their examples);
    wraps option help to the terminal, never wider than :data:`COLUMNS`."""

    def __init__(self, prog: str) -> None:
        import shutil

        width = min(COLUMNS, shutil.get_terminal_size((COLUMNS, 24)).columns) - 2
        super().__init__(prog, max_help_position=28, width=width)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, exit status 2 (argparse's), and
    no usage block; its sub-command parsers are of the same kind."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def paragraphs(text: str, width: int = COLUMNS - 2) -> str:
    """Fills each blank-line-separated paragraph of ``text`` to ``width`` columns."""
    return "\n\n".join(
        textwrap.fill(" ".join(p.split()), width) for p in text.strip().split("\n\n")
    )


def whole_number(least: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``least`` to ``most`` (no bound if ``None``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected a number >= {least}, got {value}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"expected a number <= {most}, got {value}")
        return value

    return parse


def number(least: float, most: float) -> Callable[[str], float]:
    """An argparse ``type``: a finite number from ``least`` to ``most`` (not NaN)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or not least <= value <= most:
            raise argparse.ArgumentTypeError(
                f"expected a number from {least:g} to {most:g}, got {text}"
            )
        return value

    return parse


def writable_file(path: str, option: str) -> str | None:
    """What keeps ``path`` from being written as a file, naming ``option``; ``None`` if nothing
    (nothing is created or written)."""
    where = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{option} {path}: is a directory; give a file name, e.g. run.html"
    if not os.path.isdir(where):
        return f"{option} {path}: no directory {where}"
    if not os.access(where, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"{option} {path}: not writable"
    return None
