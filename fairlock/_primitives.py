"""Where fairlock gets its threading primitives: looked up at call time, never imported early.

``eventlet.monkey_patch()`` replaces ``threading.Lock`` and ``threading.get_ident`` with green
versions *in the threading module*. fairlock therefore reads them from the module each time it
needs one, so a lock created before monkey patching still parks green threads correctly after it.
fairlock never imports eventlet: it only looks in ``sys.modules`` to report the mode (importing
eventlet for the first time inside a worker thread makes that thread unjoinable).
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Protocol


class Parker(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


def new_parker() -> Parker:
    """A lock that one waiter blocks on and one releaser opens: exactly one wake-up.

    Returned locked. Under monkey patching this is eventlet's green lock, so a parked green
    thread yields to the hub instead of blocking the process.
    """
    parker: Any = threading.Lock()
    parker.acquire()
    return parker


def get_ident() -> int:
    """The identity of the caller: the OS thread, or the green thread under monkey patching."""
    return threading.get_ident()


def thread_name(ident: int | None) -> str:
    """A readable name for a thread identity, for log lines (never raises)."""
    if ident is None:
        return "nobody"
    thread = threading._active.get(ident)  # type: ignore[attr-defined]
    if thread is not None:
        return f"{thread.name} (ident {ident})"
    return f"ident {ident}"


def green_mode() -> bool:
    """True when eventlet has monkey patched threading (detected without importing eventlet)."""
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is None:
        return False
    try:
        return bool(patcher.is_monkey_patched("thread"))
    except Exception:  # an eventlet too old or too new to ask: judge by the lock type
        return type(threading.Lock()).__module__.startswith("eventlet")


def timeout_max() -> float:
    return threading.TIMEOUT_MAX
