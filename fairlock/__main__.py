"""The ``fairlock`` command line (``python -m fairlock ...``).

Every command is one ``_add_<command>`` function in ``_COMMANDS``: it adds a sub-parser and sets
``func(args) -> int`` on it. A command imports its own module only when it registers, and that
module imports nothing heavy (oslo, eventlet) until the command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["build_parser", "main"]


def _add_bench(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .bench import add_parser

    add_parser(commands)


def _add_inspect(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .etcd.inspect import add_parser

    add_parser(commands)


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [  # type: ignore[type-arg]
    _add_bench,
    _add_inspect,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairlock",
        description="fairlock: fair locks for OpenStack-sized systems.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _COMMANDS:
        register(commands)
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
