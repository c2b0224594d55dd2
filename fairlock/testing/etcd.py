"""Real etcd servers for tests: one member, a loopback cluster, TLS, auth -- and pytest fixtures.

1. :class:`EtcdServer` starts the ``etcd`` binary (Debian's ``etcd-server``, 3.4.x, or whatever
   ``$FAIRLOCK_ETCD`` / ``PATH`` names) on 127.0.0.1 with free client and peer ports and a
   temporary data dir, waits until ``/health`` answers (about a second: the single member's
   first election), and on :meth:`~EtcdServer.close` leaves no process and no directory behind.
   It can also be stopped, restarted on the same data dir, killed, paused (SIGSTOP) and resumed.
2. :class:`EtcdCluster` runs ``n`` such members as one raft cluster on loopback; members can be
   stopped, started, killed and paused one by one, and :meth:`~EtcdCluster.leader` asks
   ``/v3/maintenance/status`` which one leads.
3. :func:`make_tls_files` writes a CA, a server certificate for 127.0.0.1 and a client
   certificate (with the ``cryptography`` package, imported only there; no ``openssl`` binary
   needed). ``EtcdServer(tls=...)`` then serves https and requires a client certificate.
4. :func:`enable_auth` turns etcd's auth on through the v3 HTTP API: a root user and one user with
   a password and read-write access to a key range.
5. Fixtures for pytest (``etcd_server``, ``etcd_prefix``, ``etcd_transport``, ``etcd_cluster``,
   ``etcd_tls_server``, ``etcd_auth_server``): import them into a ``conftest.py``. A missing etcd
   makes them fail when ``CI`` is set (CI must never silently skip the distributed tests) and
   skip with the reason otherwise.

Why not pifpaf (the tool OpenStack's own tests use, e.g. ``pifpaf run etcd -- pytest``): it also
needs ``etcd`` on PATH, runs one member per command line around the whole test process, starts
its clustered mode only as a fixed set of processes without per-member stop/pause, has no TLS
with client-certificate auth and no etcd auth setup, and would add a dependency whose only job
is ``subprocess.Popen`` plus a readiness poll. Starting etcd ourselves is a hundred lines and
gives tests the failure injection (stop, kill, SIGSTOP a member) that the lock must survive.

Only loopback is ever bound; peers talk plain http even in the TLS variant (they never leave
127.0.0.1 and the tests are about the client path). Nothing here imports eventlet or fairlock's
etcd adapters at import time; this module needs only the standard library (``cryptography`` for
TLS files, pytest for the fixtures).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


__all__ = [
    "EtcdNotFound",
    "EtcdStartError",
    "TLSFiles",
    "Credentials",
    "EtcdServer",
    "EtcdCluster",
    "find_etcd",
    "make_tls_files",
    "make_ca",
    "enable_auth",
    "free_port",
    "etcd_binary",
    "etcd_server",
    "etcd_prefix",
    "etcd_transport",
    "etcd_cluster",
    "etcd_tls_server",
    "etcd_auth_server",
]

#: Where the Debian package puts the binary, tried after $FAIRLOCK_ETCD and PATH.
_WELL_KNOWN = ("/usr/bin/etcd", "/usr/local/bin/etcd")

#: Every started process, so an interpreter exit never leaves an etcd running.
_LIVE: weakref.WeakSet[EtcdServer] = weakref.WeakSet()
#: Ports handed out by free_port() in this process; never handed out twice.
_PORTS_GIVEN: set[int] = set()
_PORTS_MUTEX = threading.Lock()


class EtcdNotFound(FileNotFoundError):
    """No etcd binary: set $FAIRLOCK_ETCD, put etcd on PATH, or install Debian's etcd-server."""


class EtcdStartError(RuntimeError):
    """etcd exited or did not become healthy in time (the message ends with its log tail)."""


def find_etcd() -> str | None:
    """The etcd binary to run: $FAIRLOCK_ETCD, else ``etcd`` on PATH, else a Debian location."""
    env = os.environ.get("FAIRLOCK_ETCD")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("etcd")
    if found:
        return found
    for path in _WELL_KNOWN:
        if os.access(path, os.X_OK):
            return path
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and that this process never gave out."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with _PORTS_MUTEX:
            if port not in _PORTS_GIVEN:
                _PORTS_GIVEN.add(port)
                return int(port)
    raise OSError("no free loopback port found")


# --- TLS -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: a CA, a server cert/key for 127.0.0.1 and localhost, a client cert/key."""

    directory: str
    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _pem_writer() -> Any:
    from cryptography.hazmat.primitives import serialization

    def write(path: Path, obj: Any) -> str:
        if hasattr(obj, "private_bytes"):
            data = obj.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
            path.write_bytes(data)
            path.chmod(0o600)
        else:
            path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
        return str(path)

    return write


def _new_cert(subject_cn: str, key: Any, issuer: Any | None, issuer_key: Any | None, *,
              ca: bool, server: bool = False, client: bool = False) -> Any:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )
    else:
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(
                x509.SubjectAlternativeName([
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]),
                critical=False,
            )
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    signer = issuer_key if issuer_key is not None else key
    return builder.sign(signer, hashes.SHA256())


def make_ca(directory: str | os.PathLike[str], name: str = "fairlock-test-ca") -> tuple[str, Any, Any]:
    """A self-signed CA written to ``directory/<name>.pem``: (path, certificate, private key)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    write = _pem_writer()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _new_cert(name, key, None, None, ca=True)
    return write(directory / f"{name}.pem", cert), cert, key


def make_tls_files(directory: str | os.PathLike[str]) -> TLSFiles:
    """Write a CA, a server certificate for 127.0.0.1/localhost and a client certificate.

    The server certificate carries the clientAuth usage too: etcd's built-in HTTP gateway dials
    its own gRPC server with it, and that server demands a client certificate when
    ``--client-cert-auth`` is on. Keys are EC P-256, valid for two days.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    write = _pem_writer()
    directory = Path(directory)
    ca_path, ca_cert, ca_key = make_ca(directory)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _new_cert("127.0.0.1", server_key, ca_cert, ca_key, ca=False,
                            server=True, client=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _new_cert("fairlock-client", client_key, ca_cert, ca_key, ca=False, client=True)
    return TLSFiles(
        directory=str(directory),
        ca_cert=ca_path,
        server_cert=write(directory / "server.pem", server_cert),
        server_key=write(directory / "server-key.pem", server_key),
        client_cert=write(directory / "client.pem", client_cert),
        client_key=write(directory / "client-key.pem", client_key),
    )


# --- plain HTTP to one member (stdlib only) ------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A user etcd knows, as handed to the gateway transport or put in a URL."""

    username: str
    password: str = ""

    def __repr__(self) -> str:  # never show the password
        return f"Credentials(username={self.username!r}, password=<hidden>)"


def _ssl_context(tls: TLSFiles | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    ctx = ssl.create_default_context(cafile=tls.ca_cert)
    ctx.load_cert_chain(tls.client_cert, tls.client_key)
    return ctx


def _http(url: str, body: dict[str, Any] | None = None, *, tls: TLSFiles | None = None,
          token: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
    """GET (body None) or POST JSON; returns the decoded answer; raises urllib/OSError errors."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    req = urllib.request.Request(url, data=data, headers=headers,
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=timeout, context=_ssl_context(tls)) as resp:
        answer: dict[str, Any] = json.loads(resp.read() or b"{}")
        return answer


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- one member ----------------------------------------------------------------------------------


class EtcdServer:
    """One etcd process on 127.0.0.1 (a standalone server, or one member of an EtcdCluster).

    Example::

        with EtcdServer() as server:
            transport = GatewayTransport([server.endpoint])

    Ports and the data dir are chosen at construction and kept for the object's life, so
    :meth:`restart` brings the same member back on the same endpoint with the same data.
    ``heartbeat_ms``/``election_ms`` are etcd's raft timings (etcd's defaults); a standalone
    member still becomes healthy in about 0.2 s (etcd fast-forwards its first election).
    """

    def __init__(self, *, name: str = "fairlock", tls: TLSFiles | None = None,
                 binary: str | None = None, base_dir: str | None = None,
                 heartbeat_ms: int = 100, election_ms: int = 1000,
                 ready_timeout: float = 20.0, extra_args: Sequence[str] = (),
                 _peers: dict[str, str] | None = None, _cluster_token: str | None = None,
                 _client_port: int | None = None, _peer_port: int | None = None) -> None:
        self.name = name
        self.tls = tls
        self.binary = binary or find_etcd()
        if self.binary is None:
            raise EtcdNotFound(
                "etcd binary not found: install Debian package etcd-server "
                "(tools/bootstrap.sh does), put etcd on PATH, or set FAIRLOCK_ETCD")
        self._own_base = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix=f"fairlock-etcd-{name}-")
        self.data_dir = os.path.join(self.base_dir, "data")
        self.log_path = os.path.join(self.base_dir, "etcd.log")
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.ready_timeout = ready_timeout
        self.extra_args = tuple(extra_args)
        self.client_port = _client_port or free_port()
        self.peer_port = _peer_port or free_port()
        self._peers = _peers
        self._cluster_token = _cluster_token or f"fairlock-{uuid.uuid4().hex[:8]}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._paused = False
        #: Set by enable_auth(): etcd then wants a token on every v3 request (not on /health).
        self.root_credentials: Credentials | None = None
        self.credentials: Credentials | None = None
        self._closed = False

    # -- addresses --

    @property
    def scheme(self) -> str:
        """``https`` with TLS, else ``http``."""
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        """The client URL, e.g. ``http://127.0.0.1:40123``."""
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """The URL other members reach this one at (cluster traffic)."""
        return f"http://127.0.0.1:{self.peer_port}"

    def url(self, prefix: str = "", **params: object) -> str:
        """A fairlock etcd URL for this server (see ``fairlock.etcd.config.parse_url``)."""
        from urllib.parse import urlencode

        query = dict(params)
        if self.tls:
            query.setdefault("ca_cert", self.tls.ca_cert)
            query.setdefault("cert_cert", self.tls.client_cert)
            query.setdefault("cert_key", self.tls.client_key)
        tail = ("/" + prefix.lstrip("/")) if prefix else ""
        qs = ("?" + urlencode(query)) if query else ""
        return f"etcd3+{self.scheme}://127.0.0.1:{self.client_port}{tail}{qs}"

    def transport_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``GatewayTransport`` reaching this server (TLS files, user)."""
        kwargs: dict[str, Any] = {}
        if self.tls:
            kwargs.update(ca_cert=self.tls.ca_cert, cert_cert=self.tls.client_cert,
                          cert_key=self.tls.client_key)
        if self.credentials:
            kwargs.update(username=self.credentials.username, password=self.credentials.password)
        return kwargs

    @property
    def pid(self) -> int | None:
        """The etcd process id, None when it is not running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """The process exists and has not exited (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        """True while the process is stopped by SIGSTOP (see ``pause``)."""
        return self._paused and self.running

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<EtcdServer {self.name} {self.endpoint} {state}>"

    # -- life cycle --

    def _command(self) -> list[str]:
        assert self.binary is not None
        peers = self._peers or {self.name: self.peer_url}
        cmd = [
            self.binary,
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", ",".join(f"{n}={u}" for n, u in peers.items()),
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self._cluster_token,
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]
        if self.tls:
            cmd += ["--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key,
                    "--trusted-ca-file", self.tls.ca_cert, "--client-cert-auth"]
        return cmd + list(self.extra_args)

    def spawn(self) -> None:
        """Start the process without waiting for it to be healthy (clusters start all first)."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self.running:
            return
        os.makedirs(self.base_dir, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        env = dict(os.environ)
        for var in [v for v in env if v.startswith("ETCD_")]:
            del env[var]  # a stray ETCD_* in the caller's environment would override our flags
        self._proc = subprocess.Popen(
            _with_parent_death_signal(self._command()), stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        self._paused = False
        _LIVE.add(self)

    def start(self) -> EtcdServer:
        """Start (if not running) and wait until healthy; raises EtcdStartError with the log tail."""
        fresh = not os.path.exists(self.data_dir)
        for attempt in range(3):
            self.spawn()
            try:
                self.wait_ready()
                return self
            except EtcdStartError:
                # A port taken between free_port() and etcd's bind: a fresh standalone member
                # can simply move; cluster members cannot (their peers know the ports).
                if (fresh and self._peers is None and attempt < 2
                        and "address already in use" in self.log_tail()):
                    self._terminate(signal.SIGKILL)
                    shutil.rmtree(self.data_dir, ignore_errors=True)
                    self.client_port, self.peer_port = free_port(), free_port()
                    continue
                raise
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float | None = None) -> float:
        """Poll ``/health`` until it says true; returns the seconds waited."""
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        t0 = time.monotonic()
        last = "no answer yet"
        while True:
            if not self.running:
                raise EtcdStartError(f"{self!r} exited (code {self._proc and self._proc.poll()})"
                                     f"\n{self.log_tail()}")
            try:
                if self.healthy(timeout=0.5):
                    return time.monotonic() - t0
                last = "health false"
            except (OSError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise EtcdStartError(f"{self!r} not healthy after {self.ready_timeout} s "
                                     f"({last})\n{self.log_tail()}")
            time.sleep(0.02)

    def healthy(self, timeout: float = 1.0) -> bool:
        """Whether ``/health`` says true (a member with a leader that can serve a read)."""
        answer = _http(self.endpoint + "/health", tls=self.tls, timeout=timeout)
        return str(answer.get("health")) == "true"

    def _token(self, creds: Credentials, timeout: float = 2.0) -> str:
        answer = _http(self.endpoint + "/v3/auth/authenticate",
                       {"name": creds.username, "password": creds.password},
                       tls=self.tls, timeout=timeout)
        return str(answer["token"])

    def post(self, path: str, body: dict[str, Any], *, timeout: float = 2.0,
             as_root: bool = True) -> dict[str, Any]:
        """POST to this member's v3 gateway (as root once auth is on); for test set-up only."""
        token = None
        if as_root and self.root_credentials is not None:
            token = self._token(self.root_credentials, timeout)
        return _http(self.endpoint + "/v3/" + path.lstrip("/"), body, tls=self.tls,
                     timeout=timeout, token=token)

    def member_id(self) -> int:
        """This member's id, as etcd reports it."""
        return int(self.status()["header"]["member_id"])

    def status(self, timeout: float = 1.0) -> dict[str, Any]:
        """etcd's ``maintenance/status`` answer (leader, raft term, db size, ...)."""
        return self.post("maintenance/status", {}, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (after SIGCONT if paused) and wait; SIGKILL if it does not exit in time."""
        if self._proc is None:
            return
        if self._paused and self.running:
            self._proc.send_signal(signal.SIGCONT)
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash. The data dir stays, so :meth:`start` recovers from the WAL."""
        self._terminate(signal.SIGKILL)

    def _terminate(self, sig: int, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        self._paused = False
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> EtcdServer:
        """Stop and start again on the same ports and data dir."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the member hangs (accepts TCP connections, answers nothing)."""
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop the process and remove the data dir (if this object created it); idempotent."""
        self.stop()
        self._closed = True
        _LIVE.discard(self)
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        """The last ``chars`` characters of the server's log, for failure messages."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - chars))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.running:
                self.close()


def _with_parent_death_signal(cmd: list[str]) -> list[str]:
    """Prefix ``setpriv --pdeathsig KILL`` (util-linux) so etcd dies if the test process does.

    The kernel sends the signal when the *thread* that forked exits, so only the main thread
    asks for it. Not a ``preexec_fn``: that forces a plain fork(), which runs at-fork hooks
    (eventlet warns from one) and is unsafe with threads. Without setpriv, atexit still stops
    every server on a normal exit.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return cmd
    return [setpriv, "--pdeathsig", "KILL", "--", *cmd]


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()


# --- a cluster -----------------------------------------------------------------------------------


class EtcdCluster:
    """``n`` members on loopback forming one cluster. Member ``i`` is ``cluster.members[i]``.

    Raft timings default to etcd's own (100 ms heartbeat, 1 s election): shorter ones make a
    loaded two-core machine hold spurious elections.
    """

    def __init__(self, n: int = 3, *, tls: TLSFiles | None = None, binary: str | None = None,
                 heartbeat_ms: int = 100, election_ms: int = 1000,
                 ready_timeout: float = 30.0) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one member")
        self.base_dir = tempfile.mkdtemp(prefix="fairlock-etcd-cluster-")
        token = f"fairlock-cluster-{uuid.uuid4().hex[:8]}"
        ports = [(free_port(), free_port()) for _ in range(n)]
        peers = {f"m{i}": f"http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports)}
        self.members = [
            EtcdServer(name=f"m{i}", tls=tls, binary=binary,
                       base_dir=os.path.join(self.base_dir, f"m{i}"),
                       heartbeat_ms=heartbeat_ms, election_ms=election_ms,
                       ready_timeout=ready_timeout, _peers=peers, _cluster_token=token,
                       _client_port=client, _peer_port=peer)
            for i, (client, peer) in enumerate(ports)
        ]

    @property
    def endpoints(self) -> list[str]:
        """Every member's client endpoint, in member order."""
        return [m.endpoint for m in self.members]

    def url(self, prefix: str = "", **params: object) -> str:
        """A fairlock etcd URL naming every member (see ``fairlock.etcd.config.parse_url``)."""
        first = self.members[0].url(prefix, **params)
        hosts = ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)
        return first.replace(f"127.0.0.1:{self.members[0].client_port}", hosts, 1)

    def start(self) -> EtcdCluster:
        """Start every member, then wait until each is ready."""
        for member in self.members:  # all first: none is healthy before a quorum runs
            member.spawn()
        for member in self.members:
            member.wait_ready()
        return self

    def stop_member(self, i: int) -> None:
        """Stop member ``i`` (SIGTERM); its data stays, ``start_member`` brings it back."""
        self.members[i].stop()

    def start_member(self, i: int) -> None:
        """Start member ``i`` again on its data dir."""
        self.members[i].start()

    def kill_member(self, i: int) -> None:
        """SIGKILL member ``i``."""
        self.members[i].kill()

    def pause_member(self, i: int) -> None:
        """SIGSTOP member ``i`` (it stops answering without closing connections)."""
        self.members[i].pause()

    def resume_member(self, i: int) -> None:
        """SIGCONT member ``i``."""
        self.members[i].resume()

    def leader(self, timeout: float = 10.0) -> int:
        """The index of the member that leads, asked from the running members; waits for one."""
        deadline = time.monotonic() + timeout
        while True:
            ids: dict[int, int] = {}
            leader_id = 0
            for i, member in enumerate(self.members):
                if not member.running or member.paused:
                    continue
                try:
                    status = member.status(timeout=0.5)
                except (OSError, ValueError):
                    continue
                ids[int(status["header"]["member_id"])] = i
                leader_id = int(status.get("leader", 0)) or leader_id
            if leader_id in ids:
                return ids[leader_id]
            if time.monotonic() > deadline:
                raise EtcdStartError(f"no leader among running members after {timeout} s")
            time.sleep(0.05)

    def heal(self) -> None:
        """Resume paused members and start stopped ones; waits until all are healthy."""
        for member in self.members:
            if member.paused:
                member.resume()
        for member in self.members:
            if not member.running:
                member.spawn()
        for member in self.members:
            member.wait_ready()

    def close(self) -> None:
        """Stop every member and remove the data dirs; idempotent."""
        for member in self.members:
            member.close()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.members!r}>"


# --- auth ----------------------------------------------------------------------------------------


def enable_auth(server: EtcdServer, *, username: str = "fairlock", password: str | None = None,
                root_password: str | None = None, key: bytes = b"\0",
                range_end: bytes | None = b"\0") -> Credentials:
    """Turn on etcd auth: user ``root`` (role root) and ``username`` with read-write on a range.

    The default range ``[\\0, \\0)`` is etcd's "every key". Passwords default to random ones.
    Records both users on ``server`` (``server.credentials``, ``server.root_credentials``) so
    its health checks and :meth:`EtcdServer.transport_kwargs` keep working; returns the user.
    For a cluster, call it on any one member and copy the two attributes to the others.
    """
    password = password if password is not None else uuid.uuid4().hex
    root = Credentials("root", root_password if root_password is not None else uuid.uuid4().hex)
    post = server.post
    post("auth/user/add", {"name": root.username, "password": root.password})
    post("auth/user/grant", {"user": root.username, "role": "root"})
    post("auth/user/add", {"name": username, "password": password})
    role = f"{username}-rw"
    post("auth/role/add", {"name": role})
    perm: dict[str, Any] = {"permType": "READWRITE", "key": _b64(key)}
    if range_end is not None:
        perm["range_end"] = _b64(range_end)
    post("auth/role/grant", {"name": role, "perm": perm})
    post("auth/user/grant", {"user": username, "role": role})
    post("auth/enable", {})
    server.root_credentials = root
    server.credentials = Credentials(username, password)
    return server.credentials


# --- pytest fixtures -----------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the classes above work without pytest
    pytest = None  # type: ignore[assignment]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _require_etcd() -> str:
    binary = find_etcd()
    if binary is None:
        reason = ("etcd binary not found (install Debian package etcd-server -- tools/bootstrap.sh "
                  "does -- or set FAIRLOCK_ETCD)")
        if _in_ci():
            pytest.fail(f"{reason}; CI must run the etcd tests", pytrace=False)
        pytest.skip(reason)
    return binary


if pytest is not None:

    @pytest.fixture(scope="session")
    def etcd_binary() -> str:
        """Path of the etcd binary; fails under CI=true and skips elsewhere when there is none."""
        return _require_etcd()

    @pytest.fixture(scope="session")
    def etcd_server(etcd_binary: str) -> Iterator[EtcdServer]:
        """One plain-http etcd for the whole session. Share it: isolate with ``etcd_prefix``;
        never stop it (use your own ``EtcdServer`` for crash tests)."""
        with EtcdServer(binary=etcd_binary, name="session") as server:
            yield server

    @pytest.fixture
    def etcd_prefix(request: Any) -> bytes:
        """A key prefix no other test uses, e.g. ``b"/fairlock-test/test_x-1a2b3c4d/"``."""
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in request.node.name)[:60]
        return f"/fairlock-test/{name}-{uuid.uuid4().hex[:8]}/".encode()

    @pytest.fixture
    def etcd_transport(etcd_server: EtcdServer) -> Iterator[Any]:
        """A ``GatewayTransport`` to ``etcd_server`` (5 s timeout), closed after the test."""
        from fairlock.etcd.gateway import GatewayTransport

        transport = GatewayTransport([etcd_server.endpoint], timeout=5.0)
        try:
            yield transport
        finally:
            transport.close()

    @pytest.fixture(scope="session")
    def _etcd_cluster_session(etcd_binary: str) -> Iterator[EtcdCluster]:
        with EtcdCluster(3, binary=etcd_binary) as cluster:
            yield cluster

    @pytest.fixture
    def etcd_cluster(_etcd_cluster_session: EtcdCluster) -> Iterator[EtcdCluster]:
        """A 3-member cluster (started once per session); the test may stop, kill or pause
        members: afterwards every member is brought back and healthy."""
        _etcd_cluster_session.heal()
        yield _etcd_cluster_session
        _etcd_cluster_session.heal()

    @pytest.fixture(scope="session")
    def etcd_tls_server(etcd_binary: str, tmp_path_factory: Any) -> Iterator[EtcdServer]:
        """An https etcd that requires a client certificate; ``.tls`` has the files
        (``ca_cert``, ``client_cert``, ``client_key``); ``transport_kwargs()`` passes them."""
        tls = make_tls_files(tmp_path_factory.mktemp("etcd-tls"))
        with EtcdServer(binary=etcd_binary, name="tls", tls=tls) as server:
            yield server

    @pytest.fixture(scope="session")
    def etcd_auth_server(etcd_binary: str) -> Iterator[EtcdServer]:
        """A plain-http etcd with auth on; ``.credentials`` is a user with read-write on every
        key, ``transport_kwargs()`` passes it."""
        with EtcdServer(binary=etcd_binary, name="auth") as server:
            enable_auth(server)
            yield server
