"""Where the etcd lock connects, as one URL (the way tooz and oslo configure backends).

``parse_url`` turns::

    etcd3+http://127.0.0.1:2379,127.0.0.1:22379/prefix?timeout=5&lease_ttl=10
    etcd3+https://user:secret@etcd1:2379,etcd2:2379/openstack/nova?ca_cert=/etc/ca.pem&cert_cert=/etc/c.pem&cert_key=/etc/c.key

into a frozen :class:`EtcdConfig`. Schemes: ``etcd3+http``, ``etcd3+https``, ``http``, ``https``.
The schemes ``etcd3+grpc`` and ``etcd3+grpcs`` take the same URL and select the gRPC transport
instead of the HTTP gateway: :func:`fairlock.etcd.connect.transport_from_url` (which
``Session(url)`` uses) and
``GrpcTransport.from_url`` accept them; :func:`parse_url` refuses them, so code that builds a
gateway from a URL cannot ignore the choice.
The host part is a comma-separated list of ``host[:port]`` (port 2379 by default; IPv6 in
brackets); the path, if any, is the key prefix. Query parameters (each at most once):

=================  ==========================================================================
``timeout``        seconds one operation may take in all, across every endpoint (default 10)
``connect_timeout`` seconds to connect to one endpoint before trying the next (default 1)
``request_timeout`` seconds to wait for one endpoint's answer (default: ``timeout``, or half of
                   it when there are several endpoints, so a hung member leaves time to fail over)
``ca_cert``        CA bundle that signed the servers' certificates (https only)
``cert_cert``      client certificate (https only; needs ``cert_key``)
``cert_key``       client private key (https only; needs ``cert_cert``)
``username``       etcd user (or ``user:password@`` before the hosts)
``password``       its password
``lease_ttl``      seconds of the session lease, >= 2 (the lock's session decides the default)
``protocol``       ``http`` or ``https``, as tooz accepts; must agree with the scheme
=================  ==========================================================================

Errors are :class:`~fairlock.errors.InvalidArgumentError` naming the bad part; a password never
appears in an error message or in ``repr(config)``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["EtcdConfig", "parse_url", "parse_transport_url", "DEFAULT_PORT",
           "DEFAULT_TIMEOUT", "DEFAULT_CONNECT_TIMEOUT"]

DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 1.0

_SCHEMES = {"etcd3+http": "http", "etcd3+https": "https", "http": "http", "https": "https"}
_GRPC_SCHEMES = {"etcd3+grpc": "http", "etcd3+grpcs": "https"}
_PARAMS = ("timeout", "connect_timeout", "request_timeout", "ca_cert", "cert_cert", "cert_key",
           "username", "password", "lease_ttl", "protocol")
_HOST = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>[0-9]*))?$")


@dataclass(frozen=True)
class EtcdConfig:
    """Everything needed to reach etcd; build it with :func:`parse_url` or directly."""

    endpoints: tuple[str, ...]
    protocol: str = "http"
    #: Key prefix from the URL path (``"/prefix"``), or None when the URL has none.
    prefix: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: None: ``timeout``, or half of it when there are several endpoints.
    request_timeout: float | None = None
    ca_cert: str | None = None
    cert_cert: str | None = None
    cert_key: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    lease_ttl: int | None = None

    @property
    def effective_request_timeout(self) -> float:
        if self.request_timeout is not None:
            return min(self.request_timeout, self.timeout)
        return self.timeout if len(self.endpoints) < 2 else self.timeout / 2


def _redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (userinfo and query)."""
    url = re.sub(r"(://[^/@?#]*?:)[^/@?#]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


def _fail(url: str, why: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"bad etcd URL {_redact(url)!r}: {why}")


def _seconds(url: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _fail(url, f"{name} must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise _fail(url, f"{name} must be a positive finite number of seconds, got {text!r}")
    return value


def _endpoint(url: str, protocol: str, part: str) -> str:
    match = _HOST.match(part)
    if not part or match is None:
        raise _fail(url, f"host {part!r} is not host[:port] (IPv6 as [addr]:port)")
    port_text = match.group("port")
    port = DEFAULT_PORT if not port_text else int(port_text)
    if not 0 < port < 65536:
        raise _fail(url, f"port {port_text!r} of host {part!r} is out of range")
    host = f"[{match.group('v6')}]" if match.group("v6") else match.group("name")
    return f"{protocol}://{host}:{port}"


def parse_url(url: str) -> EtcdConfig:
    """Parse an ``etcd3+http(s)://`` (or ``http(s)://``) URL into an :class:`EtcdConfig`."""
    return _parse(url, _SCHEMES)


def parse_transport_url(url: str) -> tuple[str, EtcdConfig]:
    """``("grpc", config)`` for an ``etcd3+grpc(s)://`` URL, else ``("gateway", config)``."""
    if isinstance(url, str) and url.partition("://")[0].lower() in _GRPC_SCHEMES:
        return "grpc", _parse(url, _GRPC_SCHEMES)
    return "gateway", parse_url(url)


def _parse(url: str, schemes: dict[str, str]) -> EtcdConfig:
    if not isinstance(url, str):
        raise ArgumentTypeError(f"etcd URL must be a str, got {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    protocol = schemes.get(scheme.lower())
    if sep and scheme.lower() in _GRPC_SCHEMES and protocol is None:
        raise _fail(url, "etcd3+grpc(s):// selects the gRPC transport: build it with "
                         "fairlock.etcd.connect.transport_from_url(url)")
    if not sep or protocol is None:
        raise _fail(url, f"scheme must be one of {', '.join(schemes)}")
    if any(c.isspace() for c in url):
        raise _fail(url, "contains whitespace")
    try:  # hosts may be a list, so never ask urlsplit for a port
        parts = urlsplit("http://" + rest)
    except ValueError as exc:
        raise _fail(url, str(exc)) from None
    if parts.fragment:
        raise _fail(url, "a fragment (#...) means nothing here")
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    if not hosts:
        raise _fail(url, "no host")
    endpoints = tuple(_endpoint(url, protocol, h) for h in hosts.split(","))
    if len(set(endpoints)) != len(endpoints):
        raise _fail(url, "the same host appears twice")

    query: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise _fail(url, "the query is not name=value&...") from None
    for name, value in pairs:
        if name not in _PARAMS:
            raise _fail(url, f"unknown parameter {name!r} (known: {', '.join(_PARAMS)})")
        if name in query:
            raise _fail(url, f"parameter {name!r} given twice")
        query[name] = value

    if "protocol" in query:
        if query["protocol"] not in ("http", "https"):
            raise _fail(url, "protocol must be http or https")
        if query["protocol"] != protocol:
            raise _fail(url, f"protocol={query['protocol']} disagrees with the scheme {scheme}")

    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username, password = unquote(user), (unquote(secret) if colon else None)
        if "username" in query or "password" in query:
            raise _fail(url, "credentials given both before the host and as parameters")
    else:
        username, password = query.get("username"), query.get("password")
    if username == "":
        raise _fail(url, "empty username")
    if password is not None and username is None:
        raise _fail(url, "a password without a username")

    tls = {k: query.get(k) for k in ("ca_cert", "cert_cert", "cert_key")}
    for name, value in tls.items():
        if value is not None and not value:
            raise _fail(url, f"{name} is empty")
        if value is not None and protocol != "https":
            raise _fail(url, f"{name} needs an https URL (etcd3+https:// or etcd3+grpcs://)")
    if (tls["cert_cert"] is None) != (tls["cert_key"] is None):
        raise _fail(url, "cert_cert and cert_key go together")

    timeout = _seconds(url, "timeout", query["timeout"]) if "timeout" in query else DEFAULT_TIMEOUT
    connect = (_seconds(url, "connect_timeout", query["connect_timeout"])
               if "connect_timeout" in query else min(DEFAULT_CONNECT_TIMEOUT, timeout))
    request = (_seconds(url, "request_timeout", query["request_timeout"])
               if "request_timeout" in query else None)
    lease_ttl = None
    if "lease_ttl" in query:
        text = query["lease_ttl"]
        # A Session refuses less than 2 (etcd's minimum lease is about its election timeout, and
        # a keepalive every ttl / 3 must fit): refused here too, where the URL is read.
        if not text.isdigit() or int(text) < 2:
            raise _fail(url, f"lease_ttl must be a whole number of seconds >= 2, got {text!r}")
        lease_ttl = int(text)

    path = unquote(parts.path)
    prefix = path.rstrip("/") or None
    if prefix is not None and "\0" in prefix:
        raise _fail(url, "the prefix contains NUL")

    return EtcdConfig(
        endpoints=endpoints, protocol=protocol, prefix=prefix, timeout=timeout,
        connect_timeout=connect, request_timeout=request, ca_cert=tls["ca_cert"],
        cert_cert=tls["cert_cert"], cert_key=tls["cert_key"], username=username,
        password=password, lease_ttl=lease_ttl,
    )
