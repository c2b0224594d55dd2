"""Shared fixtures: a real etcd on loopback (see fairlock.testing for what each one gives)."""

from fairlock.testing import (  # noqa: F401 - pytest finds fixtures by their name here
    _etcd_cluster_session,
    etcd_auth_server,
    etcd_binary,
    etcd_cluster,
    etcd_prefix,
    etcd_server,
    etcd_tls_server,
    etcd_transport,
)
