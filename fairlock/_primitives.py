"""Where fairlock gets its threading primitives: looked up at call time, never imported early.

``eventlet.monkey_patch()`` replaces ``threading.Lock`` and ``threading.get_ident`` with green
versions *in the threading module*. fairlock therefore reads them from the module each time it
needs one, so a lock created before monkey patching still parks green threads correctly after it.
fairlock never imports eventlet: it only looks in ``sys.modules`` to report the mode (importing
eventlet for the first time inside a worker thread makes that thread unjoinable).
"""

from __future__ import annotations

import _thread
import os
import sys
import threading
import weakref
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


class Token:
    """The owner identity of one native thread (or, when fairlock was imported after monkey
    patching, of one green thread). A lock that keeps it as owner keeps it alive, so unlike a
    thread ident it can never be handed to a newer thread: identity is ``is``, never ``==``."""

    __slots__ = ("ident", "__weakref__")

    def __init__(self, ident: int) -> None:
        self.ident = ident

    def __repr__(self) -> str:
        return f"<fairlock owner {thread_name(self.ident)}>"


# Captured at import: the native get_ident, or None when fairlock is imported after
# eventlet.monkey_patch() (then _thread.get_ident is eventlet's). The hot paths take a
# thread-local token while threading.get_ident is still this function, and the current greenlet
# otherwise: a patch made after the import is seen at once, and eventlet's green thread-local
# (a Python object, ten times slower than the native one) is never used.
NATIVE_GET_IDENT: Any = None if type(threading.Lock()).__module__.startswith("eventlet") else _thread.get_ident
TOKENS = _thread._local()


def new_token() -> Token:
    """The calling thread's token, made on its first use of a fairlock lock."""
    token = Token(_thread.get_ident())
    TOKENS.token = token
    return token


def current_token() -> Any:
    """Who is calling: a :class:`Token` per native thread, or the current greenlet under monkey
    patching (eventlet's green thread *is* a greenlet). The hot paths of fairlock.local inline
    this function; keep them in step."""
    if threading.get_ident is NATIVE_GET_IDENT:
        try:
            return TOKENS.token
        except AttributeError:
            return new_token()
    return green_token()


def green_token() -> Any:
    """The current greenlet (eventlet's green thread is one); greenlet was imported by eventlet."""
    return sys.modules["greenlet"].getcurrent()


def token_ident(token: Any) -> int | None:
    """The thread ident (threading.get_ident() of the owner when it ran) of an owner token."""
    if token is None:
        return None
    if type(token) is Token:
        return token.ident
    return id(token)  # eventlet's green get_ident() is id(greenlet.getcurrent())


class _Fork:
    """The fork generation: bumped in a child process (native threads only, see after_fork)."""

    generation = 0
    #: The token of the thread that called fork(): the only thread of the parent the child has.
    survivor: Any = None


FORK = _Fork()

# Objects whose internal mutex a thread that does not exist in a forked child may hold (the
# registries): each gets a new one in the child, as CPython does for logging's handler locks.
_FRESH_MUTEX_IN_CHILD: weakref.WeakSet[Any] = weakref.WeakSet()


def fresh_mutex_in_child(owner: Any) -> None:
    """Give ``owner._mutex`` a new threading.Lock in a forked child process."""
    _FRESH_MUTEX_IN_CHILD.add(owner)


def _after_fork_in_child() -> None:
    # Under eventlet every green thread lives on in the child (they all run in the one OS thread
    # that forked), so their locks stay as they are. With native threads only the forking thread
    # exists in the child: locks held or waited for by the others are reset lazily, on next use
    # (see fairlock.local.Lock._after_fork).
    if green_mode():
        return
    FORK.survivor = current_token()
    FORK.generation += 1
    for owner in list(_FRESH_MUTEX_IN_CHILD):
        owner._mutex = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
