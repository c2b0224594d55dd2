"""From a URL to a transport: the one module that knows every transport.

It sits above :mod:`fairlock.etcd.config` (which only parses URLs) and the transports
(:mod:`fairlock.etcd.gateway`, :mod:`fairlock.etcd.grpc`, which read their configuration from
it), so nothing imports in a circle.
"""

from __future__ import annotations

from typing import Any

from .config import parse_transport_url
from .transport import Transport

__all__ = ["transport_from_url"]


def transport_from_url(url: str, **kwargs: Any) -> Transport:
    """The transport a URL selects: ``GrpcTransport`` for ``etcd3+grpc(s)://``, else the gateway.

    The URL's ``prefix`` and ``lease_ttl`` are the session's: ``parse_transport_url(url)[1]``.
    """
    kind, config = parse_transport_url(url)
    if kind == "grpc":
        from .grpc import GrpcTransport  # imports grpc: only when asked for

        return GrpcTransport.from_config(config, **kwargs)
    from .gateway import GatewayTransport

    return GatewayTransport.from_config(config, **kwargs)
