"""Clients for the page server's load tests: raw sockets and http.client, to 127.0.0.1 only,
every wait bounded by a timeout."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"


@dataclass
class Reply:
    status: int | None  # None: no answer (``error`` says why: a reset, a timeout…)
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    error: str = ""
    seconds: float = 0.0


def send(
    port: int,
    method: str = "GET",
    path: str = "/health",
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 30.0,
) -> Reply:
    """One request on a fresh connection; a reset or a timeout is a Reply with ``error``."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        res = conn.getresponse()
        return Reply(
            res.status, {k.lower(): v for k, v in res.getheaders()}, res.read(), seconds=time.perf_counter() - started
        )
    except (OSError, http.client.HTTPException) as err:
        return Reply(None, error=f"{type(err).__name__}: {err}", seconds=time.perf_counter() - started)
    finally:
        conn.close()


def burst(port: int, n: int, timeout: float = 60.0, **request) -> list[Reply]:
    """``n`` identical requests at once, each from its own thread and connection (released
    together by a barrier); the replies in thread order."""
    replies: list[Reply | None] = [None] * n
    gate = threading.Barrier(n)

    def one(i: int) -> None:
        try:
            gate.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        replies[i] = send(port, timeout=timeout, **request)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 35)
    return [r or Reply(None, error="client thread did not finish") for r in replies]


def open_idle(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send nothing."""
    socks = []
    for _ in range(n):
        s = socket.create_connection((HOST, port), timeout=5)
        socks.append(s)
    return socks


def dribble(socks: list[socket.socket], data: bytes, every: float = 0.1) -> None:
    """Send ``data`` a byte at a time on every socket, one byte each ``every`` seconds, while they last."""
    for i in range(len(data)):
        for s in socks:
            try:
                s.send(data[i : i + 1])
            except OSError:
                return
        time.sleep(every)


def closed_by_server(sock: socket.socket, within: float) -> tuple[bool, bytes]:
    """Whether the server closes ``sock`` within ``within`` seconds, and what it sent first."""
    sock.settimeout(within)
    got = b""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return True, got
            got += chunk
    except ConnectionResetError:
        return True, got
    except TimeoutError:
        return False, got
    return False, got


def status_of(raw: bytes) -> int | None:
    """The status code of a raw HTTP answer (``HTTP/1.1 408 …``), or None."""
    parts = raw.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and raw.startswith(b"HTTP/") and parts[1].isdigit() else None


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that crashes or is killed does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
