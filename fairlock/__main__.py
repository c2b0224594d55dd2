"""The ``fairlock`` command line (``python -m fairlock ...``).

Every command is one ``_add_<command>`` function in ``_COMMANDS``: it adds a sub-parser and sets
``func(args) -> int`` on it. A command imports its own module only when it registers, and that
module imports nothing heavy (oslo, eventlet) until the command runs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence

from .errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["build_parser", "main"]


def _add_bench(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # The benchmarks are not installed with the library (a nova host needs none of them): they
    # live in benchmarks/ of a source checkout, importable when run from the checkout's root.
    try:
        from benchmarks import add_parser
    except ImportError as exc:
        if exc.name not in ("benchmarks", "benchmarks.add_parser"):
            raise
        parser = commands.add_parser(
            "bench", help="run benchmarks (from a source checkout of fairlock)", add_help=False)
        parser.add_argument("rest", nargs=argparse.REMAINDER)
        parser.set_defaults(func=_no_benchmarks)
        return
    add_parser(commands)


def _no_benchmarks(args: argparse.Namespace) -> int:
    print(
        "fairlock bench: the benchmarks are not part of the installed package; run them from the "
        "root of a source checkout: python -m fairlock bench local|etcd|faults|load ...",
        file=sys.stderr,
    )
    return 2


def _add_inspect(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .etcd.inspect import add_parser

    add_parser(commands)


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [  # type: ignore[type-arg]
    _add_bench,
    _add_inspect,
]


_RST_MARKUP = [
    (re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`<]*?)\s*<[^`>]*>`"), r"\1"),  # :ref:`text <target>`
    (re.compile(r":[a-z]+(?::[a-z]+)?:`~([^`]*\.)?([^`.]+)`"), r"\2"),  # :class:`~a.b.C` -> C
    (re.compile(r":[a-z]+(?::[a-z]+)?:`([^`]+)`"), r"\1"),  # :func:`a.b` -> a.b
    (re.compile(r"``([^`]+)``"), r"\1"),  # ``literal``
    (re.compile(r"`([^`<]+?)\s*(?:<[^`>]*>)?`_{1,2}"), r"\1"),  # `link <url>`_
    (re.compile(r"\*\*([^*\s][^*]*)\*\*"), r"\1"),  # **strong**
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])"), r"\1"),  # *emphasis*
    (re.compile(r"(\S)::$", re.MULTILINE), r"\1:"),  # "as follows::" introduces a block
]


def plain_text(text: str | None) -> str | None:
    """``text`` (reStructuredText from a docstring) without its markup, for ``--help``."""
    if not text:
        return text
    for pattern, replacement in _RST_MARKUP:
        text = pattern.sub(replacement, text)
    return text


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Strip reStructuredText markup from every description and help text, sub-commands too."""
    parser.description = plain_text(parser.description)
    parser.epilog = plain_text(parser.epilog)
    for action in parser._actions:
        if isinstance(action.help, str):
            action.help = plain_text(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain_text(choice.help)
            for sub in set(action.choices.values()):
                _plain_help(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairlock",
        description="fairlock: fair locks for OpenStack-sized systems.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _COMMANDS:
        register(commands)
    # Descriptions are module docstrings, written for Sphinx; the terminal gets plain text.
    _plain_help(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ArgumentTypeError, InvalidArgumentError) as exc:
        # A value the parser let through but the library refused: a usage error, not a crash.
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
