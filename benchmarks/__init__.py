"""Benchmarks behind ``python -m fairlock bench <backend>``: one module per backend.

They live in a source checkout, not in the installed package: run them from the checkout's root
(``python -m fairlock bench local``, or ``python -m benchmarks local``).

``local`` measures the in-process lock; a backend module provides ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``, and is added to ``_BACKENDS``.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["add_parser"]

_BACKENDS = ("local", "etcd", "faults", "load")


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = commands.add_parser(
        "bench",
        help="run benchmarks and print tables of medians and ratios",
        description="Run benchmarks; variants are interleaved within each repetition and every "
        "figure is a median over repetitions.",
    )
    backends = bench.add_subparsers(dest="backend", metavar="BACKEND", required=True)
    for name in _BACKENDS:
        module = importlib.import_module(f"{__name__}.{name}")
        parser = backends.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
