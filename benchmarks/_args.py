"""Argument types shared by the ``python -m fairlock bench`` commands (usage errors, exit 2)."""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Callable, Sequence

from ._report import progress

__all__ = ["at_least", "positive_int", "seconds", "chosen_modes", "json_file"]


def at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


positive_int = at_least(1)


def seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def chosen_modes(choice: str, known: Sequence[str]) -> list[str]:
    """The modes ``--mode`` names ("both": all); eventlet only where it is installed."""
    chosen = list(known) if choice == "both" else [choice]
    if "eventlet" in chosen and importlib.util.find_spec("eventlet") is None:
        progress("eventlet is not installed: no eventlet mode")
        chosen.remove("eventlet")
    return chosen


def json_file(text: str) -> str:
    """A file the results can be written to at the end: refused now, not after a long run."""
    directory = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"directory {directory!r} does not exist")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    if not os.access(directory, os.W_OK):
        raise argparse.ArgumentTypeError(f"directory {directory!r} is not writable")
    return text
