"""A griffe extension for the API reference: our docstrings are reStructuredText field lists
(``:param x:``, ``:raises X:``) read by mkdocstrings' Sphinx-style parser; this turns the few reST
constructs that parser leaves alone into Markdown before it reads them.

- ``:class:`~taskiq_flow.dag.DAG``` and the other roles become code spans (``DAG``);
- ``:raises A, B: text`` becomes one ``:raises X: text`` line per exception;
- a paragraph ending in ``::`` (a reST literal block follows) ends in ``:``, and a ``::`` alone
  on its line goes;
- a class's ``:param x:`` for an option its ``__init__`` takes through ``**options`` becomes a
  bullet under "Options" (the parser only knows parameters that the signature names).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj|const):`~?([^`]+)`")
_RAISES = re.compile(r"^( *):raises ([\w.]+(?:, *[\w.]+)+):(.*(?:\n\1 +\S.*)*)", re.M)


def _short(match: re.Match[str]) -> str:
    target = match.group(1)
    shown = target.rsplit(".", 1)[-1] if match.group(0).count("~") else target
    return f"`{shown}`"


def _split(match: re.Match[str]) -> str:
    indent, names, text = match.groups()
    return "\n".join(f"{indent}:raises {name.strip()}:{text}" for name in names.split(","))


def markdown(text: str) -> str:
    """The docstring ``text`` with its reST-only constructs made Markdown."""
    text = _ROLE.sub(_short, text)
    text = _RAISES.sub(_split, text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    text = re.sub(r"^[ \t]*::[ \t]*$", "", text, flags=re.M)  # "::" alone on its line
    return re.sub(r"(\S)::$", r"\1:", text, flags=re.M)


_PARAM = re.compile(r"^:param (\w+):(.*(?:\n +\S.*)*)", re.M)


def _keyword_options(cls: griffe.Object, text: str) -> str:
    init = cls.members.get("__init__")
    if not isinstance(init, griffe.Function):
        return text
    kinds = {p.name: p.kind for p in init.parameters}
    if griffe.ParameterKind.var_keyword not in kinds.values():
        return text
    options: list[str] = []

    def take(match: re.Match[str]) -> str:
        if match.group(1) in kinds:
            return match.group(0)
        options.append(f"- `{match.group(1)}`: {' '.join(match.group(2).split())}")
        return ""

    text = _PARAM.sub(take, text)
    if not options:
        return text
    return (
        re.sub(r"\n{3,}", "\n\n", text).rstrip()
        + "\n\nOptions (keywords):\n\n"
        + "\n".join(options)
    )


class RestToMarkdown(griffe.Extension):
    """Rewrites each docstring once the object tree is built."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = markdown(obj.docstring.value)
            if obj.is_class:
                text = _keyword_options(obj, text)
            obj.docstring.value = text
