"""How a command names an etcd: ``--url``, ``--endpoint`` or ``--config-file``.

Shared by ``fairlock inspect`` and the ``fairlock bench`` commands, so each form means the same
everywhere:

``--url URL``
    Any URL fairlock's users configure: ``etcd3+http(s)://`` (the HTTP gateway),
    ``etcd3+grpc(s)://`` (gRPC), and tooz's ``fairlock+etcd3+http(s)://`` (with the tooz
    driver's ``lanes``, ``default_lane`` and ``max_bypass``). The path is the key prefix.
``--endpoint http://HOST:PORT``
    One etcd client endpoint (several: comma-separated hosts), no path: the default prefix.
``--config-file FILE``
    A service's configuration (nova.conf): ``[oslo_concurrency] fairlock_backend_url`` and the
    lanes and K of :mod:`fairlock.lockutils` (``fairlock_lanes``, ``fairlock_default_lane``,
    ``fairlock_max_bypass``), read with oslo.config and the options as ``fairlock.lockutils``
    registers them; with :mod:`configparser` where oslo.concurrency is not installed. Repeat it
    to read several files (later ones win, as in oslo.config).

A bad value is refused when the command line is parsed (exit status 2, the option named).
"""

from __future__ import annotations

import argparse
import configparser
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._core import DEFAULT_MAX_BYPASS, Lanes, Policy
from ..errors import FairlockError, InvalidArgumentError
from .config import EtcdConfig, parse_transport_url, parse_url
from .session import DEFAULT_PREFIX

__all__ = ["Where", "resolve_url", "resolve_endpoint", "read_config_files", "add_etcd_arguments",
           "where_from_args", "URL_HELP", "ENDPOINT_HELP"]

URL_HELP = ("etcd as its users name it: etcd3+http(s)://HOST:PORT[,HOST:PORT]/PREFIX, "
            "etcd3+grpc(s)://..., or a tooz URL fairlock+etcd3+http(s)://... "
            "(the path is the key prefix)")
ENDPOINT_HELP = "an etcd client endpoint, http(s)://HOST:PORT (the default key prefix)"
CONFIG_HELP = ("a service's configuration file (e.g. /etc/nova/nova.conf): [oslo_concurrency] "
               "fairlock_backend_url and fairlock's lane options; repeat for several files")

_GROUP = "oslo_concurrency"
#: fairlock.lockutils' DEFAULT_LANES and DEFAULT_LANE, for reading its options without importing
#: it (it needs oslo.concurrency); a test checks they are equal.
LOCKUTILS_LANES = ("migration", "normal", "events")
LOCKUTILS_DEFAULT_LANE = "normal"


@dataclass(frozen=True)
class Where:
    """An etcd, the key prefix its locks use, and their grant policy, as a command was told."""

    #: "gateway" or "grpc"
    kind: str
    config: EtcdConfig
    prefix: str
    #: The locks' lanes and K as their users configure them (the default when not said).
    policy: Policy
    #: How it was named: "--url", "--endpoint", "--config-file nova.conf".
    source: str

    def transport(self) -> Any:
        """A new transport to this etcd (the caller closes it)."""
        if self.kind == "grpc":
            from .grpc import GrpcTransport

            return GrpcTransport.from_config(self.config)
        from .gateway import GatewayTransport

        return GatewayTransport.from_config(self.config)


def resolve_url(url: str, source: str = "--url") -> Where:
    """A :class:`Where` from any URL form (see the module docstring)."""
    if not isinstance(url, str):
        raise InvalidArgumentError(f"etcd URL must be a str, got {type(url).__name__}")
    if url.partition("://")[0].lower().startswith("fairlock+"):
        from .._toozurl import parse_tooz_url

        tooz = parse_tooz_url(url)
        policy = Policy.of(tooz.lanes, None, tooz.max_bypass)
        return Where("gateway", tooz.config, tooz.config.prefix or DEFAULT_PREFIX, policy, source)
    kind, config = parse_transport_url(url)
    return Where(kind, config, config.prefix or DEFAULT_PREFIX, Policy.of(), source)


def resolve_endpoint(endpoint: str) -> Where:
    """A :class:`Where` from ``http(s)://HOST:PORT`` (no path: the default prefix)."""
    if not isinstance(endpoint, str) or not endpoint.lower().startswith(("http://", "https://")):
        raise InvalidArgumentError(f"endpoint {endpoint!r} is not http(s)://HOST:PORT")
    config = parse_url(endpoint)
    if config.prefix is not None or "?" in endpoint:
        raise InvalidArgumentError(f"endpoint {endpoint!r} is http(s)://HOST:PORT without a path or "
                                   "options; name a prefix with --url (its path)")
    return Where("gateway", config, DEFAULT_PREFIX, Policy.of(), "--endpoint")


def read_config_files(paths: Sequence[str]) -> Where:
    """The etcd, prefix and policy of ``fairlock.lockutils``' external locks in these files."""
    files = ", ".join(paths)
    for path in paths:
        try:
            with open(path, encoding="utf-8"):
                pass
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        values = _read_with_oslo(paths)
    except ImportError:  # no oslo.concurrency (or oslo.config) here: read the INI files ourselves
        values = _read_with_configparser(paths)
    url = values["fairlock_backend_url"]
    if not url:
        raise InvalidArgumentError(f"[{_GROUP}] fairlock_backend_url is not set in {files} (external "
                                   "locks are then files under lock_path, not in etcd)")
    try:
        kind, config = parse_transport_url(url)
        policy = Policy.of(Lanes(values["fairlock_lanes"], values["fairlock_default_lane"]), None,
                           values["fairlock_max_bypass"])
    except FairlockError as exc:
        raise InvalidArgumentError(f"[{_GROUP}] options in {files}: {exc}") from None
    return Where(kind, config, config.prefix or DEFAULT_PREFIX, policy, "--config-file " + files)


def _read_with_oslo(paths: Sequence[str]) -> dict[str, Any]:
    from oslo_config import cfg

    from .. import lockutils  # its option objects, registered as it registers them

    conf = cfg.ConfigOpts()
    lockutils._register_opts(conf)
    try:
        conf(args=[], project="fairlock-inspect", default_config_files=list(paths),
             default_config_dirs=[], use_env=False)
        group = conf[_GROUP]
        return {name: group[name] for name in ("fairlock_backend_url", "fairlock_lanes",
                                               "fairlock_default_lane", "fairlock_max_bypass")}
    except (cfg.Error, ValueError) as exc:
        raise InvalidArgumentError(f"[{_GROUP}] options: {exc}") from None
    finally:
        conf.reset()


def _read_with_configparser(paths: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {"fairlock_backend_url": None, "fairlock_lanes": list(LOCKUTILS_LANES),
                              "fairlock_default_lane": LOCKUTILS_DEFAULT_LANE,
                              "fairlock_max_bypass": DEFAULT_MAX_BYPASS}
    for path in paths:
        # oslo.config's INI dialect: no [DEFAULT] inheritance, no interpolation, a repeated key's
        # last value wins, surrounding quotes are dropped.
        parser = configparser.RawConfigParser(default_section="\0", strict=False)
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f)
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read config file {path}: {exc.strerror}") from None
        except configparser.Error as exc:
            raise InvalidArgumentError(f"[{_GROUP}] options: {exc}") from None
        if not parser.has_section(_GROUP):
            continue
        for name in values:
            if parser.has_option(_GROUP, name):
                values[name] = _unquote(parser.get(_GROUP, name))
    if isinstance(values["fairlock_lanes"], str):
        values["fairlock_lanes"] = [n.strip() for n in values["fairlock_lanes"].split(",") if n.strip()]
    text = values["fairlock_max_bypass"]
    if isinstance(text, str):
        if not text.strip().isdigit():
            raise InvalidArgumentError(f"[{_GROUP}] options: fairlock_max_bypass must be a whole "
                                       f"number >= 0, got {text!r} (in {', '.join(paths)})")
        values["fairlock_max_bypass"] = int(text)
    return values


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


# -- argparse ---------------------------------------------------------------------------------------


def _arg(parse: Any) -> Any:
    """An argparse type that checks the text with ``parse`` and keeps it (as given, but for a
    trailing '/')."""
    def check(text: str) -> str:
        try:
            parse(text)
        except FairlockError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text.rstrip("/") if parse is resolve_endpoint else text

    check.__name__ = parse.__name__
    return check


def add_etcd_arguments(parser: argparse.ArgumentParser, *, config_file: bool = False,
                       required: bool = False, url_help: str = URL_HELP,
                       endpoint_help: str = ENDPOINT_HELP) -> None:
    """``--url`` | ``--endpoint`` [| ``--config-file``], one of them (``required``)."""
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--url", type=_arg(resolve_url), metavar="URL", help=url_help)
    where.add_argument("--endpoint", type=_arg(resolve_endpoint), metavar="ENDPOINT", help=endpoint_help)
    if config_file:
        where.add_argument("--config-file", action="append", metavar="FILE", help=CONFIG_HELP)


def where_from_args(args: argparse.Namespace) -> Where | None:
    """The etcd the parsed arguments name (None: none named)."""
    if getattr(args, "config_file", None):
        return read_config_files(args.config_file)
    if args.url:
        return resolve_url(args.url)
    if args.endpoint:
        return resolve_endpoint(args.endpoint)
    return None
