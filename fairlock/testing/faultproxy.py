"""A TCP fault proxy on loopback: latency, stalls, resets and blackholes between a client and etcd.

The issue asked for network namespaces and ``tc netem``; kernels without ``sch_netem`` answer
``tc qdisc add dev lo root netem ...`` with "Specified qdisc kind is unknown". A proxy in user
space gives the same faults to the application, with no privilege and nothing outside this
process. Point a client at :attr:`FaultProxy.endpoint` instead of the server::

    with FaultProxy(server.endpoint, seed=7) as proxy:
        session = Session(GatewayTransport([proxy.endpoint], timeout=2.0), ttl=4)
        proxy.set_latency(0.015, jitter=0.010)      # each way: 15-25 ms, so 30-50 ms a round trip
        proxy.blackhole()                           # nothing moves, new connections hang
        proxy.heal()

1. What it models, and how:

   * *latency* (and *jitter*): each chunk read from one side is delivered to the other
     ``delay + uniform(0, jitter)`` seconds later, per direction (``"up"`` client to server,
     ``"down"`` server to client);
   * *loss*: to an application, a lost TCP segment is a *stall* -- nothing arrives until the
     retransmission does, then everything at once. With probability ``p`` per chunk the stream
     is held at that chunk ``uniform(low, high)`` seconds more (200 ms to 1 s by default: the
     first retransmission timeouts); stalls one after another add up. Or exactly: hold the
     next request or answer (:meth:`FaultProxy.stall_next`);
   * *resets*: an RST to both sides, with probability ``p`` per chunk (before it is forwarded, so
     a request may be lost before or an answer after the server acted), on a fraction of
     connections at a random moment of their first ``within`` seconds, or on every open
     connection now (:meth:`FaultProxy.reset_connections`);
   * a *blackhole* (:meth:`FaultProxy.blackhole`): nothing moves either way and new connections
     hang (the kernel completes their handshake into the listen backlog; the proxy accepts
     nothing), as behind a cut cable: bytes sent meanwhile wait, like segments TCP retransmits,
     and flow again at :meth:`FaultProxy.heal` (``heal(reset=True)``: as if the peers had given
     up, every connection that lived through it is reset);
   * a *refusal* (:meth:`FaultProxy.refuse`): open connections are reset and new ones refused,
     as by a host whose server is down.

2. TCP's own promises hold: bytes are never reordered, duplicated or dropped on a connection that
   is not reset (a chunk is never delivered before the one read before it, whatever the jitter);
   half-closes are passed on. The TCP handshake itself is not delayed (the kernel completes it).
3. One thread serves every connection (``selectors``); faults change from any thread, take
   effect before the setter returns (the loop acknowledges each change), and draw from one
   ``random.Random(seed)`` on that thread, so a seeded run is repeatable up to thread timing.
4. It listens on 127.0.0.1 only, on a port the kernel picks. :meth:`FaultProxy.close` (or leaving
   the ``with`` block) stops the thread and closes every socket it opened.
"""

from __future__ import annotations

import errno
import logging
import random
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from ..errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["FaultProxy", "FaultStats", "DIRECTIONS"]

LOG = logging.getLogger("fairlock.faultproxy")

#: "up": client to server; "down": server to client.
DIRECTIONS = ("up", "down")

_CHUNK = 65536
#: Bytes queued in one direction before the proxy stops reading its source (back-pressure).
_QUEUE_LIMIT = 4 << 20
#: The most a setter waits for the loop to acknowledge a change.
_ACK_TIMEOUT = 10.0


@dataclass(frozen=True)
class _Direction:
    delay: float = 0.0
    jitter: float = 0.0
    stall_p: float = 0.0
    stall_low: float = 0.2
    stall_high: float = 1.0


@dataclass(frozen=True)
class _Faults:
    up: _Direction = field(default_factory=_Direction)
    down: _Direction = field(default_factory=_Direction)
    reset_per_chunk: float = 0.0
    reset_per_connection: float = 0.0
    reset_within: float = 1.0
    mode: str = "open"  # "open", "blackhole" or "refuse"


@dataclass(frozen=True)
class FaultStats:
    """What the proxy did so far (counts since it started)."""

    connections: int  # accepted
    open_connections: int  # open now
    bytes_up: int
    bytes_down: int
    chunks: int  # chunks read (each got a delay, maybe a stall or a reset)
    stalls: int
    stalled_seconds: float  # the stalls' total length
    resets: int  # connections reset by a fault (not by an endpoint)
    refused: int  # accepted connections whose server refused or never answered (then reset)
    max_delay: float  # the longest a chunk waited in the proxy (s)


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name} must be a number of seconds")
    if not 0 <= value < float("inf"):
        raise InvalidArgumentError(f"{name} must be >= 0 and finite, got {value!r}")
    return float(value)


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name} must be a number")
    if not 0 <= value <= 1:
        raise InvalidArgumentError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def _directions(direction: str) -> tuple[str, ...]:
    if direction == "both":
        return DIRECTIONS
    if direction not in DIRECTIONS:
        raise InvalidArgumentError(f"direction must be 'up', 'down' or 'both', got {direction!r}")
    return (direction,)


def _upstream(target: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(target, tuple) and len(target) == 2:
        host, port = target
    elif isinstance(target, str):
        parts = urlsplit(target if "://" in target else "tcp://" + target)
        host, port = parts.hostname or "", parts.port or 0
    else:
        raise ArgumentTypeError("upstream must be 'host:port', a URL, or (host, port)")
    if not host or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidArgumentError(f"upstream {target!r} has no usable host and port")
    return host, port


def _reset(sock: socket.socket | None) -> None:
    """Close with an RST instead of a FIN (SO_LINGER on, zero seconds)."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Pipe:
    """One direction of one connection: chunks waiting for their time, then bytes being sent."""

    def __init__(self, name: str, src: socket.socket, dst: socket.socket) -> None:
        self.name = name
        self.src = src
        self.dst = dst
        self.queue: deque[tuple[float, float, bytes | None]] = deque()  # (due, read at, data/EOF)
        self.queued = 0
        self.out = bytearray()
        self.last_due = 0.0
        self.eof_read = False
        self.eof_due = False  # the EOF's time came: shut the destination once ``out`` is sent
        self.done = False  # destination shut for writing

    def next_due(self) -> float | None:
        return self.queue[0][0] if self.queue else None


class _Conn:
    def __init__(self, client: socket.socket, server: socket.socket, born: float) -> None:
        self.client = client
        self.server = server
        self.connecting = True
        self.born = born
        self.up = _Pipe("up", client, server)
        self.down = _Pipe("down", server, client)
        self.reset_at: float | None = None
        self.masks: dict[socket.socket, int] = {client: 0, server: 0}


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (``"host:port"``, a URL or a pair),
    with switchable faults (see the module doc). ``seed`` makes the fault draws repeatable. A
    client whose server refuses, or does not answer within ``connect_timeout``, is reset."""

    def __init__(self, upstream: str | tuple[str, int], *, seed: int | None = None,
                 clock: Callable[[], float] = time.monotonic, name: str = "fairlock-faultproxy",
                 connect_timeout: float = 2.0) -> None:
        self.upstream = _upstream(upstream)
        self._clock = clock
        self._rng = random.Random(seed)
        self._connect_timeout = _check_seconds("connect_timeout", connect_timeout)
        self._faults = _Faults()
        self._generation = 0  # bumped by every change; the loop acknowledges it
        self._applied = 0
        self._actions: list[tuple[str, Any]] = []  # one-off actions for the loop
        # stall_next(): per direction, [chunks still to hold, seconds each] (loop thread only)
        self._stall_next: dict[str, list[float]] = {d: [0, 0.0] for d in DIRECTIONS}
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        self._stats = {"connections": 0, "bytes_up": 0, "bytes_down": 0, "chunks": 0,
                       "stalls": 0, "stalled_seconds": 0.0, "resets": 0, "refused": 0,
                       "max_delay": 0.0}
        self._conns: list[_Conn] = []
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._listener: socket.socket | None = None
        self._listening = False
        try:
            self._listener = self._listen(0)
            self.port: int = self._listener.getsockname()[1]
        except BaseException:
            self._close_own_sockets()
            raise
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- public -----------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the proxy listens on: what a client connects to instead of etcd."""
        return ("127.0.0.1", self.port)

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``: what a client uses instead of the server's address."""
        return f"http://127.0.0.1:{self.port}"

    def set_latency(self, delay: float, jitter: float = 0.0, *, direction: str = "both") -> None:
        """Deliver each chunk ``delay + uniform(0, jitter)`` seconds after it was read."""
        delay, jitter = _check_seconds("delay", delay), _check_seconds("jitter", jitter)
        self._change_directions(direction, delay=delay, jitter=jitter)

    def set_stalls(self, probability: float, low: float = 0.2, high: float = 1.0, *,
                   direction: str = "both") -> None:
        """With this probability per chunk, hold the stream at that chunk ``uniform(low, high)``
        seconds more: later bytes wait behind it, as behind a lost segment until TCP retransmits
        it, and stalls one after another add up."""
        probability = _check_probability("probability", probability)
        low, high = _check_seconds("low", low), _check_seconds("high", high)
        if high < low:
            raise InvalidArgumentError(f"high ({high}) must be >= low ({low})")
        self._change_directions(direction, stall_p=probability, stall_low=low, stall_high=high)

    def stall_next(self, seconds: float, *, direction: str = "up", chunks: int = 1) -> None:
        """Hold the next ``chunks`` chunks read in ``direction`` ``seconds`` more each: a
        deterministic stall, e.g. of the next request (``"up"``) or answer (``"down"``)."""
        seconds = _check_seconds("seconds", seconds)
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise InvalidArgumentError(f"chunks must be an int >= 1, got {chunks!r}")
        for name in _directions(direction):
            self._change(_action=("stall-next", (name, chunks, seconds)))

    def set_resets(self, per_chunk: float = 0.0, per_connection: float = 0.0,
                   within: float = 1.0) -> None:
        """Reset a connection (RST both ways) with probability ``per_chunk`` at each chunk, and
        a fraction ``per_connection`` of new connections at a random moment of their first
        ``within`` seconds."""
        self._change(reset_per_chunk=_check_probability("per_chunk", per_chunk),
                     reset_per_connection=_check_probability("per_connection", per_connection),
                     reset_within=_check_seconds("within", within))

    def reset_connections(self) -> int:
        """Reset every open connection now; returns how many."""
        box: list[int] = []
        self._change(_action=("reset-all", box))
        return box[0] if box else 0

    def blackhole(self) -> None:
        """Nothing moves either way; new connections hang. Until :meth:`heal`."""
        self._change(mode="blackhole")

    def refuse(self) -> None:
        """Reset open connections and refuse new ones. Until :meth:`heal`."""
        self._change(mode="refuse")

    def heal(self, *, reset: bool = False) -> None:
        """End a blackhole or a refusal (other faults stay). ``reset``: reset every connection
        that lived through it, as peers that gave up on each other would."""
        self._change(mode="open", _action=("reset-all", []) if reset else None)

    def clear(self) -> None:
        """No fault at all (also ends a blackhole or a refusal)."""
        self._change(_replace=_Faults())

    def stats(self) -> FaultStats:
        """What the proxy has done so far (connections, bytes, faults), as a :class:`FaultStats`."""
        with self._cond:
            s = dict(self._stats)
            open_now = len(self._conns)
        return FaultStats(open_connections=open_now, **s)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop the thread; close every connection and the listening socket; idempotent."""
        with self._cond:
            already, self._closing = self._closing, True
        if not already:
            self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(_ACK_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        f = self._faults
        state = "closed" if self._closing else f.mode
        return (f"<FaultProxy {self.endpoint} -> {self.upstream[0]}:{self.upstream[1]} {state}, "
                f"{len(self._conns)} connections>")

    # -- changes ----------------------------------------------------------------------------------

    def _change_directions(self, direction: str, **values: float) -> None:
        names = _directions(direction)
        with self._cond:
            f = self._faults
            updated = {d: replace(getattr(f, d), **values) for d in names}
        self._change(**updated)

    def _change(self, _replace: _Faults | None = None,
                _action: tuple[str, Any] | None = None, **values: Any) -> None:
        """Apply a change and return once the loop has acted on it (so a blackhole is in force,
        or a heal has taken effect, when the setter returns)."""
        with self._cond:
            if self._closing:
                raise RuntimeError(f"{self!r} is closed")
            base = _replace if _replace is not None else self._faults
            self._faults = replace(base, **values)
            self._generation += 1
            generation = self._generation
            if _action is not None:
                self._actions.append(_action)
        self._wake()
        with self._cond:
            self._cond.wait_for(lambda: self._applied >= generation or self._closing,
                                _ACK_TIMEOUT)
            if self._applied < generation:
                raise RuntimeError(f"{self!r}: the proxy thread did not take the change "
                                   "(closed, or it failed: see the log)")

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # the buffer is full: the loop is being woken anyway

    # -- the loop ---------------------------------------------------------------------------------

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            LOG.exception("%r: the proxy loop failed; every connection is closed", self)
        finally:
            self._close_own_sockets()
            with self._cond:
                self._closing = True
                self._cond.notify_all()

    def _loop(self) -> None:
        applied_mode = "open"
        while True:
            with self._cond:
                if self._closing:
                    return
                faults, generation = self._faults, self._generation
                actions, self._actions = self._actions, []
            if faults.mode != applied_mode:
                self._enter_mode(applied_mode, faults.mode)
                applied_mode = faults.mode
            for kind, arg in actions:
                if kind == "reset-all":
                    arg.append(self._reset_all())
                elif kind == "stall-next":
                    name, chunks, seconds = arg
                    self._stall_next[name] = [chunks, seconds]
            now = self._clock()
            if faults.mode == "open":
                self._deliver_due(now)
                self._reset_doomed(now)
            self._update_interest(faults.mode)
            with self._cond:
                if self._applied < generation:
                    self._applied = generation
                    self._cond.notify_all()
            timeout = self._next_timeout(faults.mode, self._clock())
            for key, mask in self._sel.select(timeout):
                sock = key.fileobj
                if sock is self._wake_r:
                    self._drain_wake()
                elif sock is self._listener:
                    self._accept(faults)
                elif faults.mode == "open":
                    conn = key.data
                    if conn in self._conns:
                        self._on_ready(conn, sock, mask, faults)  # type: ignore[arg-type]

    def _enter_mode(self, old: str, new: str) -> None:
        if new == "refuse":
            self._reset_all()
            self._stop_listening()
        elif old == "refuse":
            self._start_listening()

    def _stop_listening(self) -> None:
        if self._listener is not None:
            if self._listening:
                self._sel.unregister(self._listener)
                self._listening = False
            self._listener.close()
            self._listener = None

    def _start_listening(self) -> None:
        if self._listener is None:
            self._listener = self._listen(self.port)

    def _next_timeout(self, mode: str, now: float) -> float | None:
        if mode != "open":
            return None
        times = []
        for conn in self._conns:
            for pipe in (conn.up, conn.down):
                due = pipe.next_due()
                if due is not None and not (pipe is conn.up and conn.connecting):
                    times.append(due)
            if conn.reset_at is not None:
                times.append(conn.reset_at)
            if conn.connecting:
                times.append(conn.born + self._connect_timeout)
        if not times:
            return None
        return max(0.0, min(times) - now)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _update_interest(self, mode: str) -> None:
        listen = mode == "open" and self._listener is not None
        if listen != self._listening and self._listener is not None:
            if listen:
                self._sel.register(self._listener, selectors.EVENT_READ)
            else:
                self._sel.unregister(self._listener)
            self._listening = listen
        for conn in self._conns:
            for sock in (conn.client, conn.server):
                mask = 0
                if mode == "open":
                    mask = self._mask(conn, sock)
                if mask != conn.masks[sock]:
                    if conn.masks[sock] == 0:
                        self._sel.register(sock, mask, conn)
                    elif mask == 0:
                        self._sel.unregister(sock)
                    else:
                        self._sel.modify(sock, mask, conn)
                    conn.masks[sock] = mask

    @staticmethod
    def _mask(conn: _Conn, sock: socket.socket) -> int:
        if sock is conn.server and conn.connecting:
            return selectors.EVENT_WRITE
        reading, writing = (conn.up, conn.down) if sock is conn.client else (conn.down, conn.up)
        mask = 0
        if not reading.eof_read and reading.queued < _QUEUE_LIMIT:
            mask |= selectors.EVENT_READ
        if writing.out:
            mask |= selectors.EVENT_WRITE
        return mask

    def _accept(self, faults: _Faults) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # the client gave up before we accepted: nothing to serve
            client.setblocking(False)
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.setblocking(False)
            err = server.connect_ex(self.upstream)
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                server.close()
                _reset(client)
                self._count("refused")
                continue
            now = self._clock()
            conn = _Conn(client, server, now)
            conn.connecting = err != 0
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if faults.reset_per_connection and self._rng.random() < faults.reset_per_connection:
                conn.reset_at = now + self._rng.uniform(0.0, faults.reset_within)
            with self._cond:
                self._conns.append(conn)
                self._stats["connections"] += 1

    def _on_ready(self, conn: _Conn, sock: socket.socket, mask: int, faults: _Faults) -> None:
        if sock is conn.server and conn.connecting:
            if mask & selectors.EVENT_WRITE:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._count("refused")
                    self._drop(conn, reset=True)
                    return
                conn.connecting = False
                self._deliver_due(self._clock())
            return
        pipe_in = conn.up if sock is conn.client else conn.down
        pipe_out = conn.down if sock is conn.client else conn.up
        if mask & selectors.EVENT_WRITE and pipe_out.out:
            if not self._send(conn, pipe_out):
                return
        if mask & selectors.EVENT_READ:
            self._read(conn, pipe_in, faults)

    def _read(self, conn: _Conn, pipe: _Pipe, faults: _Faults) -> None:
        try:
            data = pipe.src.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn, reset=True)  # an RST from one side goes on to the other
            return
        now = self._clock()
        if data and faults.reset_per_chunk and self._rng.random() < faults.reset_per_chunk:
            self._count("resets")
            self._drop(conn, reset=True)
            return
        d: _Direction = getattr(faults, pipe.name)
        delay = d.delay + (self._rng.uniform(0.0, d.jitter) if d.jitter else 0.0)
        stalled = 0.0
        if data and d.stall_p and self._rng.random() < d.stall_p:
            stalled = self._rng.uniform(d.stall_low, d.stall_high)
        pending = self._stall_next[pipe.name]
        if data and pending[0]:
            pending[0] -= 1
            stalled += pending[1]
        # Never before the chunk read earlier: TCP does not reorder, whatever the jitter. A
        # stall holds the stream from where it stands, so losses one after another add up.
        due = max(now + delay, pipe.last_due) + stalled
        pipe.last_due = due
        if data:
            pipe.queue.append((due, now, data))
            pipe.queued += len(data)
            with self._cond:
                self._stats["chunks"] += 1
                self._stats["bytes_" + pipe.name] += len(data)
                if stalled:
                    self._stats["stalls"] += 1
                    self._stats["stalled_seconds"] += stalled
        else:
            pipe.eof_read = True
            pipe.queue.append((due, now, None))

    def _deliver_due(self, now: float) -> None:
        for conn in list(self._conns):
            for pipe in (conn.up, conn.down):
                if pipe is conn.up and conn.connecting:
                    continue
                moved = False
                while pipe.queue and pipe.queue[0][0] <= now:
                    due, read_at, data = pipe.queue.popleft()
                    if data is None:
                        pipe.eof_due = True
                        break
                    pipe.queued -= len(data)
                    pipe.out += data
                    moved = True
                    with self._cond:
                        self._stats["max_delay"] = max(self._stats["max_delay"], now - read_at)
                if (moved or pipe.eof_due) and not self._send(conn, pipe):
                    break

    def _send(self, conn: _Conn, pipe: _Pipe) -> bool:
        """Send what ``pipe`` has for its destination; False if the connection was dropped."""
        if pipe.out:
            try:
                sent = pipe.dst.send(pipe.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(conn, reset=True)
                return False
            del pipe.out[:sent]
        if not pipe.out and pipe.eof_due and not pipe.done:
            pipe.done = True
            try:
                pipe.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if conn.up.done and conn.down.done:
                self._drop(conn, reset=False)
                return False
        return True

    def _reset_doomed(self, now: float) -> None:
        for conn in list(self._conns):
            if conn.connecting and now - conn.born >= self._connect_timeout:
                self._count("refused")  # the server never answered the handshake
                self._drop(conn, reset=True)
            elif conn.reset_at is not None and conn.reset_at <= now:
                self._count("resets")
                self._drop(conn, reset=True)

    def _reset_all(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            self._count("resets")
            self._drop(conn, reset=True)
        return len(conns)

    def _drop(self, conn: _Conn, *, reset: bool) -> None:
        with self._cond:
            if conn not in self._conns:
                return
            self._conns.remove(conn)
        for sock in (conn.client, conn.server):
            if conn.masks[sock]:
                self._sel.unregister(sock)
                conn.masks[sock] = 0
            if reset:
                _reset(sock)
            else:
                sock.close()

    def _count(self, name: str) -> None:
        with self._cond:
            self._stats[name] += 1

    def _close_own_sockets(self) -> None:
        for conn in list(getattr(self, "_conns", [])):
            self._drop(conn, reset=False)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._listening = False
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        self._sel.close()
