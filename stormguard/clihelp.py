"""Command-line conventions every ``stormguard`` subcommand shares.

* Options are accepted anywhere a user types them: an option of a command group (``reputation --store URL``) is
  also accepted after the operation and its arguments (``reputation set KEY -60 --store URL``).
  :func:`accept_options_anywhere` copies each group's options into every subcommand below it, with
  ``default=SUPPRESS`` so that a value given before the operation is not overwritten by the copy's default.
* Options and positionals mix in any order within a command (:class:`Parser`).
* Negative numbers are values: argparse reads ``-60`` as a positional as long as no option looks like a negative
  number, which :func:`check_no_numeric_options` keeps true.
* Every command's ``--help`` ends with examples (:func:`examples`), laid out as written by :class:`HelpFormatter`.
"""

from __future__ import annotations

import argparse
import copy
import re
import textwrap
from collections.abc import Iterator

__all__ = ["Parser", "HelpFormatter", "accept_options_anywhere", "examples", "walk", "check_no_numeric_options"]


class HelpFormatter(argparse.HelpFormatter):
    """Wraps prose as usual but keeps indented lines (examples, command lines) exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        for line in text.splitlines():
            if not line.strip() or line[:1].isspace():
                out.append(indent + line)
            else:
                out.extend(textwrap.wrap(line, width, initial_indent=indent, subsequent_indent=indent) or [""])
        return "\n".join(out)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose leaf commands read options and positionals in any order
    (``replay a.pcap -o out.csv b.pcap``), through argparse's own intermixed parsing; parsers with subcommands
    parse as usual (argparse cannot intermix those). Subparsers inherit the class."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def,override]
        if self._intermixing or parser_has_subcommands(self):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def examples(*lines: str) -> str:
    """An epilog of example command lines (shown verbatim, indented) for a subcommand's ``--help``."""
    return "examples:\n" + "\n".join("  " + line for line in lines)


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
         ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under ``parser`` (itself first) with its command path, e.g. ``("reputation", "set")``."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, child in action.choices.items():
                if id(child) in seen:  # aliases
                    continue
                seen.add(id(child))
                yield from walk(child, (*path, name))


def _group_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and
            not isinstance(a, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction)]


def accept_options_anywhere(parser: argparse.ArgumentParser,
                            inherited: tuple[argparse.Action, ...] = ()) -> None:
    """Give every subcommand the options of the command groups above it (see the module docstring)."""
    for action in inherited:
        taken = set(parser._option_string_actions)
        strings = [s for s in action.option_strings if s not in taken]
        if not strings:
            continue  # the subcommand has an option of that name itself: its own meaning wins there
        clone = copy.copy(action)
        clone.option_strings = strings
        clone.default = argparse.SUPPRESS
        clone.required = False
        clone.container = parser
        parser._add_action(clone)
    own = tuple(_group_options(parser)) if parser_has_subcommands(parser) else ()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in {id(c): c for c in action.choices.values()}.values():
                accept_options_anywhere(child, inherited + own)


def parser_has_subcommands(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


_NUMERIC = re.compile(r"^-\d+$|^-\d*\.\d+$")


def check_no_numeric_options(parser: argparse.ArgumentParser) -> None:
    """Fail loudly if an option string looks like a negative number (argparse would then stop reading ``-60``
    as a value everywhere in that parser)."""
    for path, p in walk(parser):
        for s in p._option_string_actions:
            if _NUMERIC.match(s):
                raise AssertionError(f"stormguard {' '.join(path)}: option {s} looks like a negative number")
