"""The etcd lock's key schema and value codec: the one module that knows how keys are named.

Keys of lock ``NAME`` under the session prefix ``P``::

    P/locks/<quoted NAME>/owner          the holder; attached to the holder's lease
    P/locks/<quoted NAME>/w/<lease>-<id> one per queued process; attached to its lease;
                                         create revision = ticket; value = lane, overtaken count

Values are JSON objects (holder identity, and the waiter's policy state, which only
:class:`fairlock._core.Policy` encodes and judges). The lock (:mod:`fairlock.etcd.lock`), the
tooz driver and ``fairlock inspect`` use these functions, never their own key arithmetic.
"""

from __future__ import annotations

import json
from typing import Any, cast
from urllib.parse import quote, unquote

from ..errors import InvalidArgumentError
from ..local import check_name
from .transport import KeyValue, prefix_end

__all__ = ["MAX_NAME_BYTES", "lock_keys", "check_lock_name", "lock_name_from_key", "decode_value",
           "encode_value"]

#: The longest lock name, in bytes of UTF-8. A transaction carries the name's keys several times
#: (percent-quoted: up to 3 bytes per byte), twice more for each waiter a handoff overtakes; this
#: keeps a handoff among a hundred waiters well under etcd's request limit (1.5 MiB by default),
#: where a longer name would be refused by etcd in the middle of a grant.
MAX_NAME_BYTES = 1024


def lock_keys(prefix: bytes, name: str) -> tuple[bytes, bytes, bytes]:
    """(owner key, waiter prefix, waiter prefix end) of lock ``name`` under ``prefix``."""
    base = prefix + b"/locks/" + quote(name, safe="").encode()
    waiters = base + b"/w/"
    return base + b"/owner", waiters, prefix_end(waiters)


def check_lock_name(name: object) -> str:
    """An etcd lock name: a non-empty str of at most :data:`MAX_NAME_BYTES` bytes in UTF-8.

    Any character that UTF-8 can encode is allowed, '/' and NUL included: :func:`lock_keys`
    percent-quotes the whole name into one key component, so no name reaches another lock's keys
    or leaves the prefix. A lone surrogate (``"\\ud800"``) cannot be encoded and is refused.
    """
    checked = cast(str, check_name(name, allow_none=False))  # never None with allow_none=False
    try:
        size = len(checked.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"lock name {checked[:40]!r} cannot be encoded as UTF-8 "
                                   f"({exc.reason} at position {exc.start})") from None
    if size > MAX_NAME_BYTES:
        raise InvalidArgumentError(f"lock name {checked[:40]!r}... is {size} bytes in UTF-8; an etcd "
                                   f"lock name is at most {MAX_NAME_BYTES}")
    return checked


def lock_name_from_key(prefix: bytes, key: bytes) -> str | None:
    head = prefix + b"/locks/"
    if not key.startswith(head):
        return None
    return unquote(key[len(head):].split(b"/", 1)[0].decode())


def decode_value(kv: KeyValue) -> dict[str, Any]:
    """The JSON object stored in ``kv``'s value, or an empty dict if it is not one."""
    try:
        value = json.loads(kv.value)
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}


def encode_value(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
