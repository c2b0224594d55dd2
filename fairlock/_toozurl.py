"""The ``fairlock+etcd3+http(s)://`` tooz URL, read without importing tooz.

The tooz driver (:mod:`fairlock.tooz_driver`) and ``fairlock inspect`` read the URL with the
same function, so both see the same etcd, prefix, lanes and K. Errors are
:class:`~fairlock.errors.InvalidArgumentError` starting ``fairlock tooz URL:``; the driver raises
them as its ``ToozURLError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from ._core import DEFAULT_MAX_BYPASS, Lanes, check_max_bypass
from .errors import FairlockError, InvalidArgumentError
from .etcd.config import EtcdConfig, parse_url

__all__ = ["SCHEMES", "ToozSettings", "settings", "parse_tooz_url"]

#: tooz URL scheme -> the fairlock etcd URL scheme it stands for.
SCHEMES = {"fairlock+etcd3+http": "etcd3+http", "fairlock+etcd3+https": "etcd3+https"}

#: Query parameters handed to ``fairlock.etcd.config.parse_url`` as they are.
_CONNECTION_PARAMS = ("timeout", "connect_timeout", "request_timeout", "ca_cert", "cert_cert",
                      "cert_key", "username", "password", "lease_ttl", "protocol")
#: Parameters of the locks themselves (the same for every lock of the coordinator).
_LOCK_PARAMS = ("lanes", "default_lane", "max_bypass")
#: tooz's own (``executor``) and its etcd3gw driver's, accepted so that only the scheme changes.
_TOOZ_PARAMS = ("executor", "lock_timeout", "membership_timeout", "api_version")
_KNOWN_PARAMS = _CONNECTION_PARAMS + _LOCK_PARAMS + _TOOZ_PARAMS

#: etcd3gw's default host when the URL names none.
_DEFAULT_NETLOC = "localhost:2379"


@dataclass(frozen=True)
class ToozSettings:
    config: EtcdConfig
    lease_ttl: int | None
    #: None: the locks' default lanes.
    lanes: Lanes | None
    max_bypass: int | None


def _fail(why: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"fairlock tooz URL: {why}")


def parse_tooz_url(url: str) -> ToozSettings:
    """:func:`settings` of a whole URL, split as ``tooz.coordination.get_coordinator`` splits it."""
    if not isinstance(url, str):
        raise _fail(f"must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    return settings(parts, parse_qs(parts.query))


def settings(parsed_url: Any, options: dict[str, Any]) -> ToozSettings:
    """Everything the driver needs from tooz's parsed URL and options, validated."""
    scheme = str(parsed_url.scheme).lower()
    if scheme not in SCHEMES:
        raise _fail(f"scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    given: dict[str, str] = {}
    for name, values in options.items():
        if name not in _KNOWN_PARAMS:
            raise _fail(f"unknown parameter {name!r} (known: {', '.join(_KNOWN_PARAMS)})")
        if isinstance(values, (list, tuple)):
            if len(values) != 1:
                raise _fail(f"parameter {name!r} given {len(values)} times")
            values = values[0]
        given[name] = values if isinstance(values, str) else str(values)

    api_version = given.get("api_version")
    if api_version is not None and api_version.strip("/") != "v3":
        raise _fail(f"api_version={api_version!r}: fairlock speaks etcd's /v3 gateway only (etcd >= 3.4)")
    connection = {k: v for k, v in given.items() if k in _CONNECTION_PARAMS}
    netloc = parsed_url.netloc or _DEFAULT_NETLOC
    if netloc.rpartition("@")[2] == "":
        netloc += _DEFAULT_NETLOC
    etcd_url = f"{SCHEMES[scheme]}://{netloc}{parsed_url.path}"
    if connection:
        etcd_url += "?" + urlencode(connection)
    try:
        config = parse_url(etcd_url)
    except FairlockError as exc:  # its message names the bad part and hides any password
        raise _fail(str(exc)) from None

    lease_ttl = config.lease_ttl
    legacy = {k: given[k] for k in ("lock_timeout", "membership_timeout") if k in given}
    if lease_ttl is None and legacy:
        seconds = []
        for name, text in legacy.items():
            if not text.isdigit():
                raise _fail(f"{name} must be a whole number of seconds, got {text!r}")
            seconds.append(int(text))
        lease_ttl = min(seconds)
    if lease_ttl is not None and lease_ttl < 2:
        raise _fail(f"the lease TTL must be >= 2 seconds, got {lease_ttl}")

    try:
        lanes = None
        if "lanes" in given or "default_lane" in given:
            names = [n.strip() for n in given["lanes"].split(",")] if "lanes" in given else None
            lanes = Lanes(names, given.get("default_lane")) if names is not None else Lanes(
                default=given["default_lane"])
        max_bypass: int | None = DEFAULT_MAX_BYPASS
        if "max_bypass" in given:
            text = given["max_bypass"]
            if text.lower() == "none":
                max_bypass = None
            elif text.isdigit():
                max_bypass = check_max_bypass(int(text))
            else:
                raise InvalidArgumentError(f"max_bypass must be a whole number or none, got {text!r}")
    except (FairlockError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from None
    return ToozSettings(config, lease_ttl, lanes, max_bypass)
