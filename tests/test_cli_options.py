"""The command line's conventions, checked on every subcommand however it was registered: options are accepted
before or after the operation and its arguments, negative numbers are values, every ``--help`` shows examples
that parse."""

from __future__ import annotations

import argparse
import shlex

import pytest

from stormguard.cli import build_parser
from stormguard.clihelp import parser_has_subcommands, walk

PARSER = build_parser()
LEAVES = [(path, p) for path, p in walk(PARSER) if path and not parser_has_subcommands(p)]


def _value(action: argparse.Action) -> list[str]:
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(next(iter(action.choices)))]
    if action.type not in (None, str):
        for sample in ("-2.5", "3"):  # a negative number must read as a value wherever a number is accepted
            try:
                action.type(sample)  # type: ignore[misc,operator]
                return [sample]
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                continue
    return ["v1"] if action.nargs in (None, 1, "?") else ["v1", "v2"]


def _positionals(parser: argparse.ArgumentParser) -> list[str]:
    return [v for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
            for v in _value(a)]


def _required(parser: argparse.ArgumentParser, skip: argparse.Action | None = None) -> list[str]:
    return [v for a in parser._actions if a.option_strings and a.required and a is not skip
            for v in (a.option_strings[-1], *_value(a))]


def _optionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "version")
            and not isinstance(a, argparse._HelpAction | argparse._VersionAction)]


def _ns(argv: list[str]) -> dict[str, object]:
    return {k: v for k, v in vars(PARSER.parse_args(argv)).items() if k != "func"}


def test_every_command_is_covered() -> None:
    names = {" ".join(path) for path, _ in LEAVES}
    assert {"replay", "pipeline", "serve", "reputation set", "train", "score", "ua train"} <= names


@pytest.mark.parametrize("path,parser", LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_options_before_and_after_arguments(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    positionals = _positionals(parser)
    for action in _optionals(parser):
        opt = [action.option_strings[-1], *_value(action)]
        base = _required(parser, skip=action)
        before = _ns([*path, *opt, *base, *positionals])
        after = _ns([*path, *positionals, *base, *opt])
        assert before == after, f"{' '.join(path)} {opt}: {before} != {after}"


@pytest.mark.parametrize("path,parser", [(p, q) for p, q in walk(PARSER) if len(p) == 1 and parser_has_subcommands(q)
                                         and len(_optionals(q))], ids=lambda x: str(x))
def test_group_options_after_the_operation(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    for op_path, op in walk(parser, path):
        if op_path == path or parser_has_subcommands(op):
            continue
        args = [*_positionals(op), *_required(op)]
        for action in _optionals(parser):
            if action.dest in {a.dest for a in op._actions if a not in op._option_string_actions.values()}:
                continue
            opt = [action.option_strings[-1], *_value(action)]
            first = _ns([*path, *opt, *op_path[len(path):], *args])
            last = _ns([*op_path, *args, *opt])
            assert first == last, f"{' '.join(op_path)} {opt}"
            assert first[action.dest] == (True if action.nargs == 0 else _coerce(action, opt[-1]))


def _coerce(action: argparse.Action, text: str) -> object:
    return action.type(text) if callable(action.type) else text


def test_the_issue_example() -> None:
    ns = PARSER.parse_args(["reputation", "set", "198.51.100.7", "-60", "--store", "redis://127.0.0.1:6379/0"])
    assert (ns.key, ns.score, ns.store) == ("198.51.100.7", -60.0, "redis://127.0.0.1:6379/0")
    ns = PARSER.parse_args(["replay", "a.pcap", "-o", "out.csv", "b.log", "--jobs", "1"])
    assert ns.inputs == ["a.pcap", "b.log"] and ns.output == "out.csv" and ns.jobs == 1


@pytest.mark.parametrize("path,parser", LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_help_shows_examples_that_parse(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert "examples:" in text, f"stormguard {' '.join(path)} --help has no examples"
    lines = [ln.strip() for ln in text.split("examples:", 1)[1].splitlines() if ln.strip()]
    assert lines
    for line in lines:
        words = shlex.split(line)
        while words and "=" in words[0] and not words[0].startswith("-"):
            words.pop(0)  # VAR=value prefixes
        assert words[0] == "stormguard", line
        ns = PARSER.parse_args(words[1:])
        assert tuple(words[1:1 + len(path)]) == path and ns.func is not None, line
