"""A local page to draw a kana and watch the network read it, layer by layer.

    python -m maist.serve ckpt_path=CKPT [host=127.0.0.1] [port=8000]

Standard library only (``http.server``, ``selectors``). Endpoints:

- ``GET /``: the page (``maist/static/index.html`` and ``app.js``): a canvas to draw on (mouse,
  pen or touch), the top-5 kana updated as you draw, and every layer's activations as small
  greyscale tiles, as in the ConvNetJS MNIST demo.
- ``POST /predict``: the picture, as ``image/png``, ``image/jpeg`` (or another image type Pillow
  reads: :data:`IMAGE_TYPES`) or as ``application/json`` ``{"image": "data:image/png;base64,…"}``
  → ``{"top5": [[kana, probability], …], "layers": [{"name", "png" (data URL), "shape"}, …]}``.
  ``?layers=0`` leaves the layers out.
- ``GET /health``: ``{"ok": true, "checkpoint": file name, "model": …}`` (no folder is shown).

Inference is :class:`maist.predict.Predictor`, the path ``maist.predict`` uses. Every answer but
200 is ``{"error": reason, "status": code}``, and every answer closes its connection:

- 400 unreadable picture, nothing drawn, bad JSON or base64, malformed request (431: too many
  or too long headers);
- 403 an ``Origin`` other than the page's own (another web site posting to it);
- 404 unknown path; 405 wrong method; 408 the request did not arrive in time;
- 411 no ``Content-Length``; 413 over :data:`MAX_UPLOAD` bytes or over
  :data:`maist.images.MAX_PIXELS` pixels (refused from the picture's header, before decoding);
- 415 a ``Content-Type`` that is neither an image type nor ``application/json``;
- 421 a ``Host`` that is not this server's (DNS rebinding): its bound name and port, plus
  ``localhost``, ``127.0.0.1``, ``[::1]`` when bound to loopback (bound to all interfaces: any
  IP address, or the machine's name);
- 503 busy (``Retry-After``): the work queue is full, or no prediction slot came free within
  ``queue_wait`` seconds. A missing or corrupt checkpoint stops the start with one line, exit 2.

How a connection flows (limits in :class:`Limits`, defaults the module constants): the kernel
queues up to ``backlog`` new connections; one thread keeps every open connection in a selector
until its client sends something (no thread per idle connection; silent ones close after
``idle_timeout``, and past ``max_connections`` the longest silent one is closed), then ``workers``
threads read requests (``idle_timeout`` per read or write, ``request_deadline`` for the whole
request) and answer; decoding and prediction run ``predict_slots`` at a time, which
bounds memory. After each answer the selector thread drains what the client still sends for up
to ``linger`` seconds, so that it reads the answer rather than a reset. Disconnects and timeouts
are one log line, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import json
import logging
import queue
import re
import selectors
import socket
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from maist.images import MAX_PIXELS, ImageError, ImageTooLargeError, NoInkError
from maist.predict import Predictor, UsageError, cli, parse_cli, predictor_from_cli

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_UPLOAD = 2 * 1024 * 1024  # bytes of one picture
DRAIN_LIMIT = 16 * 1024 * 1024  # after an answer, at most this much of an unread body is drained
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
}
# The layers the page shows, in order (those the network has), and their tile sizes.
PAGE_LAYERS = ("input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "filters", "weights")

# Limits (see the module docstring and Limits).
LISTEN_BACKLOG = 256  # new connections the kernel queues (http.server's default, 5, resets most of a burst)
WORKERS = 32  # threads that read requests and write answers
MAX_QUEUED = 256  # connections whose client has spoken, waiting for a worker; beyond: 503
MAX_CONNECTIONS = 1024  # open connections in all (also kept under the process's file limit)
PREDICT_SLOTS = 2  # pictures decoded and predicted at once (each may take ~0.2 GB)
QUEUE_WAIT = 10.0  # seconds a request waits for a prediction slot before a 503
IDLE_TIMEOUT = 10.0  # seconds a connection may stay silent: before its request, per read or write
REQUEST_DEADLINE = 30.0  # seconds to receive a whole request (headers and body)
LINGER = 2.0  # seconds to drain what a client still sends after its answer
RETRY_AFTER = 1  # seconds, in 503 answers

JSON_TYPE = "application/json"
Image.init()
IMAGE_TYPES = frozenset(
    {t for t in Image.MIME.values() if t.startswith("image/")}
    | {
        "image/jpg",
        "image/pjpeg",
        "image/x-png",
        "image/x-ms-bmp",
        "image/x-portable-graymap",
        "image/x-portable-pixmap",
    }
)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ALL_INTERFACES = frozenset({"", "0.0.0.0", "::"})
HOST_RE = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^\s:/@\[\]]+)(?::(\d{1,5}))?")

USAGE = (
    "usage: python -m maist.serve ckpt_path=CKPT [host=127.0.0.1] [port=8000] [quiet=false] "
    "[ink_ratio=<the checkpoint's>]"
)
DEFAULTS = {"ckpt_path": None, "host": "127.0.0.1", "port": 8000, "quiet": False, "ink_ratio": None, "torch_threads": 1}


@dataclass(frozen=True)
class Limits:
    """What one server accepts at once and how long it waits (defaults: the module constants)."""

    backlog: int = LISTEN_BACKLOG
    workers: int = WORKERS
    max_queued: int = MAX_QUEUED
    max_connections: int = MAX_CONNECTIONS
    predict_slots: int = PREDICT_SLOTS
    queue_wait: float = QUEUE_WAIT
    idle_timeout: float = IDLE_TIMEOUT
    request_deadline: float = REQUEST_DEADLINE
    linger: float = LINGER


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, reason: str, headers: dict | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


def busy_error(what: str) -> HttpError:
    return HttpError(
        HTTPStatus.SERVICE_UNAVAILABLE, f"busy: {what}; try again in a second", {"Retry-After": str(RETRY_AFTER)}
    )


# ---------------------------------------------------------------------- answers
def png_data_url(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def predict_payload(predictor: Predictor, data: bytes, layers: bool = True, k: int = 5) -> dict:
    """The JSON answer for one uploaded picture (raises :class:`ImageError`)."""
    started = time.perf_counter()
    x = predictor.prepare(bytes(data), name="the picture")
    top = predictor.top_k(x, k=k)[0]
    out: dict = {"top5": [[c, round(p, 6)] for c, p in top]}
    if layers:
        figs = predictor.features(x, min_size=28, input_size=84)
        names = [n for n in PAGE_LAYERS if n in figs] + [n for n in figs if n not in PAGE_LAYERS]
        out["layers"] = [{"name": n, "png": png_data_url(figs[n]), "shape": list(figs[n].shape[:2])} for n in names]
    out["ms"] = round(1000 * (time.perf_counter() - started), 1)
    return out


def health_payload(predictor: Predictor) -> dict:
    """``/health``: the checkpoint's file name and the model, never the folder it lives in."""
    source = str(getattr(predictor, "source", "model"))
    name = Path(source).name
    return {
        "ok": True,
        "checkpoint": name,
        "model": predictor.describe().replace(source, name),
        "classes": predictor.classes,
        "max_upload": MAX_UPLOAD,
        "max_pixels": MAX_PIXELS,
    }


def error_body(status: int, reason: str) -> bytes:
    return json.dumps({"error": reason, "status": int(status)}, ensure_ascii=False).encode("utf-8")


def busy_response() -> bytes:
    """The whole 503 answer the selector thread sends when the work queue is full."""
    body = error_body(503, "busy: too many requests at once; try again in a second")
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER}\r\nCache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def picture_bytes(body: bytes, content_type: str) -> bytes:
    """Raw picture bytes from a body of an accepted type: an image as is, or JSON/base64."""
    if content_type != JSON_TYPE:
        return body
    try:
        doc = json.loads(body.decode("utf-8"))
        text = doc["image"]
        if not isinstance(text, str):
            raise TypeError("'image' is not a string")
    except RecursionError:
        raise HttpError(HTTPStatus.BAD_REQUEST, 'expected JSON {"image": "<base64 PNG>"} (nested too deeply)') from None
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise HttpError(HTTPStatus.BAD_REQUEST, f'expected JSON {{"image": "<base64 PNG>"}} ({err})') from err
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"'image' is not valid base64 ({err})") from err


# ---------------------------------------------------------------------- who may ask
def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class Hosts:
    """The names a request may address this server by, in ``Host`` and ``Origin``: a web page
    elsewhere (or a DNS name rebound to 127.0.0.1) uses its own name, and is refused."""

    def __init__(self, host: str, port: int):
        host = host.strip("[]").lower()
        self.port = int(port)
        self.all_interfaces = host in ALL_INTERFACES
        self.names = {host}
        if self.all_interfaces or host in LOOPBACK_NAMES or (_is_ip(host) and ipaddress.ip_address(host).is_loopback):
            self.names |= LOOPBACK_NAMES
        if self.all_interfaces:
            self.names.add(socket.gethostname().lower())

    def allows(self, name: str, port: int) -> bool:
        if port != self.port:
            return False
        # DNS cannot rebind an address: any IP address is fine when listening on all interfaces
        return name in self.names or (self.all_interfaces and _is_ip(name))

    def allows_host(self, value: str) -> bool:
        """``Host: name[:port]`` (port 80 when absent)."""
        m = HOST_RE.fullmatch(value.strip())
        return bool(m) and self.allows(m[1].strip("[]").lower(), int(m[2] or 80))

    def allows_origin(self, value: str) -> bool:
        """``Origin: http://name[:port]`` (``null`` and other schemes are refused)."""
        scheme, _, rest = value.strip().partition("://")
        return scheme.lower() == "http" and self.allows_host(rest)


# ---------------------------------------------------------------------- one request
class TimedStream(io.RawIOBase):
    """A connection's reads and writes: each waits at most ``idle`` seconds, and the reads end by
    ``deadline`` (``time.monotonic()``: the whole request must have arrived by then); past either
    they raise :class:`TimeoutError`. An answer is a few writes, each bounded by ``idle``."""

    def __init__(self, sock: socket.socket, idle: float, deadline: float):
        super().__init__()
        self.sock, self.idle, self.deadline = sock, idle, deadline

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long")
        self.sock.settimeout(min(self.idle, left))
        return self.sock.recv_into(buf)

    def write(self, data) -> int:
        self.sock.settimeout(self.idle)
        self.sock.sendall(data)  # the timeout bounds the whole call
        return len(data)


class Handler(BaseHTTPRequestHandler):
    """One request per connection (every answer closes it), JSON errors, no tracebacks."""

    server_version = "maist"
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT  # seconds one read or write may wait
    request_deadline = REQUEST_DEADLINE  # seconds to receive the whole request
    predictor: Predictor  # set on the subclass made by make_server
    quiet = False
    server: PageServer

    # ------------------------------------------------------------------ plumbing
    def setup(self):
        self.connection = self.request
        stream = TimedStream(self.connection, self.timeout, time.monotonic() + self.request_deadline)
        self.rfile = io.BufferedReader(stream)
        self.wfile = stream
        self.answered = False

    def handle(self):
        self.close_connection = True
        self.handle_one_request()

    def log_message(self, fmt, *args):
        if not self.quiet:
            sys.stderr.write(f"{self.address_string()} - {fmt % args}\n")

    def _send(self, status: HTTPStatus, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.answered = True
        if self.request_version == "HTTP/0.9":  # http.server's guess for a malformed request line
            self.request_version = "HTTP/1.0"  # answer with a status line and headers all the same
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, doc: dict) -> None:
        self._send(status, json.dumps(doc, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, err: HttpError) -> None:
        """Answer ``err`` unless an answer has begun; a client that is gone is let go quietly."""
        if self.answered:
            return
        try:
            self._send(err.status, error_body(err.status, err.reason), "application/json; charset=utf-8", err.headers)
        except OSError:
            pass

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (malformed request line or headers, unknown method, HTTP/2)
        as JSON 4xx."""
        status = HTTPStatus(
            {
                HTTPStatus.NOT_IMPLEMENTED: HTTPStatus.METHOD_NOT_ALLOWED,
                HTTPStatus.HTTP_VERSION_NOT_SUPPORTED: HTTPStatus.BAD_REQUEST,
            }.get(code, code)
        )
        self._error(HttpError(status, message or status.phrase))

    def _guard(self, fn) -> None:
        try:
            self._check_host_and_origin()
            fn()
        except HttpError as err:
            self._error(err)
        except TimeoutError:
            self.log_message("request timed out")
            self._error(HttpError(HTTPStatus.REQUEST_TIMEOUT, "the request did not arrive in time"))
        except OSError as err:  # the client went away (reset, broken pipe)
            self.log_message("connection lost: %s", err.strerror or type(err).__name__)
        except Exception:  # never a traceback to the client, never a dead server
            log.exception("error handling %s %s", self.command, self.path)
            self._error(HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server's log)"))

    def _check_host_and_origin(self) -> None:
        hosts = self.server.hosts
        host, origin = self.headers.get("Host"), self.headers.get("Origin")
        if host is not None and not hosts.allows_host(host):
            raise HttpError(HTTPStatus.MISDIRECTED_REQUEST, f"this server does not answer for the host {host!r}")
        if origin is not None and not hosts.allows_origin(origin):
            raise HttpError(HTTPStatus.FORBIDDEN, f"requests from {origin!r} are refused: use the page itself")

    # ------------------------------------------------------------------ methods
    def do_GET(self):
        self._guard(self._get)

    def do_HEAD(self):
        self._guard(self._get)

    def do_POST(self):
        self._guard(self._post)

    def do_PUT(self):
        self._guard(self._other)

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def _other(self):
        raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported here")

    def _get(self):
        path = urlsplit(self.path).path
        if path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            try:
                body = (STATIC / name).read_bytes()
            except OSError:
                raise HttpError(HTTPStatus.NOT_FOUND, f"{path}: not installed with this copy of maist") from None
            self._send(HTTPStatus.OK, body, ctype)
        elif path == "/health":
            self._json(HTTPStatus.OK, health_payload(self.predictor))
        elif path in ("/predict", "/features"):
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path}: POST a picture")
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, f"{path}: no such page")

    def _content_type(self) -> str:
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != JSON_TYPE and ctype not in IMAGE_TYPES:
            raise HttpError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type {ctype or '(none)'} is not accepted: "
                f"send the picture as image/png, image/jpeg (or another image type) or {JSON_TYPE}",
            )
        return ctype

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send the picture with a Content-Length")
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}") from None
        if n > MAX_UPLOAD:
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the upload is {n / 1e6:.1f} MB; at most {MAX_UPLOAD / 1e6:.0f} MB",
            )
        if n == 0:
            raise HttpError(HTTPStatus.BAD_REQUEST, "empty request: POST a picture (PNG or JPEG)")
        body = self.rfile.read(n)
        if len(body) < n:
            raise HttpError(HTTPStatus.BAD_REQUEST, "the upload was cut short")
        return body

    def _post(self):
        url = urlsplit(self.path)
        if url.path not in ("/predict", "/features"):
            raise HttpError(HTTPStatus.NOT_FOUND, f"{url.path}: no such endpoint (POST /predict)")
        ctype = self._content_type()
        data = picture_bytes(self._read_body(), ctype)
        if len(data) > MAX_UPLOAD:
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the picture is {len(data) / 1e6:.1f} MB; at most {MAX_UPLOAD / 1e6:.0f} MB",
            )
        query = parse_qs(url.query)
        layers = url.path == "/features" or query.get("layers", ["1"])[0] not in ("0", "false", "no")
        with self.server.prediction_slot():
            try:
                doc = predict_payload(self.predictor, data, layers=layers)
            except NoInkError:
                raise HttpError(HTTPStatus.BAD_REQUEST, "nothing drawn: no ink found in the picture") from None
            except ImageTooLargeError as err:
                raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(err)) from None
            except ImageError as err:
                raise HttpError(HTTPStatus.BAD_REQUEST, str(err)) from None
        self._json(HTTPStatus.OK, doc)


# ---------------------------------------------------------------------- connections
WAITING, CLOSING = "waiting", "closing"


class ConnectionLot:
    """Every open connection that no worker holds, in one selector on one thread: those waiting
    for their client's first bytes (then handed to a worker, or answered 503 when the work queue
    is full) and those answered, drained until the client closes (so it reads the answer, not a
    reset). Other threads hand it connections with :meth:`put`."""

    def __init__(self, server: PageServer):
        self.server, self.limits = server, server.limits
        self.max_connections = min(self.limits.max_connections, _file_budget())
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.wake_r, self.wake_w = socket.socketpair()
        for s in (self.wake_r, self.wake_w):
            s.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.waiting: OrderedDict = OrderedDict()  # socket -> (deadline, address), oldest first
        self.closing: OrderedDict = OrderedDict()  # socket -> [deadline, bytes drained]
        self.busy = 0  # connections queued for or held by a worker
        self.stopped = False
        self.thread = threading.Thread(target=self.run, name="maist-connections", daemon=True)
        self.busy_answer = busy_response()

    def put(self, kind: str, sock: socket.socket, address=None) -> None:
        """From any thread: ``"new"`` (just accepted) or ``"done"`` (a worker answered it)."""
        if self.stopped:
            _close(sock)
            return
        self.inbox.put((kind, sock, address))
        try:
            self.wake_w.send(b"\0")
        except OSError:  # the wake-up pipe is full: the loop is awake anyway
            pass

    def run(self) -> None:
        try:
            while not self.stopped:
                for key, _ in self.selector.select(self._next_timeout()):
                    if key.fileobj is self.wake_r:
                        self._read_wakeups()
                    elif key.data == WAITING:
                        self._dispatch(key.fileobj)
                    else:
                        self._drain(key.fileobj)
                self._take_inbox()
                self._expire()
        finally:
            self._close_everything()

    def stop(self) -> None:
        self.stopped = True
        try:
            self.wake_w.send(b"\0")
        except OSError:
            pass
        self.thread.join(timeout=5)

    # ------------------------------------------------------------------ steps
    def _next_timeout(self) -> float:
        """Until the oldest waiting or closing connection expires (at most 0.5 s)."""
        firsts = [next(iter(table.values()))[0] for table in (self.waiting, self.closing) if table]
        return max(0.0, min([0.5] + [d - time.monotonic() for d in firsts]))

    def _read_wakeups(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _take_inbox(self) -> None:
        while True:
            try:
                kind, sock, address = self.inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "done":
                self.busy -= 1
                self._start_closing(sock)
            elif len(self.waiting) + len(self.closing) + self.busy < self.max_connections:
                self._park(sock, address)
            elif self.waiting:  # full: the longest silent connection makes room
                self._forget(next(iter(self.waiting)))
                self._park(sock, address)
            else:
                self._refuse(sock)

    def _park(self, sock: socket.socket, address) -> None:
        sock.setblocking(False)
        self.waiting[sock] = (time.monotonic() + self.limits.idle_timeout, address)
        self.selector.register(sock, selectors.EVENT_READ, WAITING)

    def _dispatch(self, sock: socket.socket) -> None:
        """The client has spoken: a worker's turn, or 503 when the work queue is full."""
        _, address = self.waiting.pop(sock)
        self.selector.unregister(sock)
        try:
            self.server.work.put_nowait((sock, address))
            self.busy += 1
        except queue.Full:
            self._refuse(sock)

    def _refuse(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            sock.send(self.busy_answer)  # a fresh connection's send buffer takes it whole
        except OSError:
            pass
        self._start_closing(sock)

    def _start_closing(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            _close(sock)
            return
        self.closing[sock] = [time.monotonic() + self.limits.linger, 0]
        self.selector.register(sock, selectors.EVENT_READ, CLOSING)

    def _drain(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        entry = self.closing[sock]
        entry[1] += len(data)
        if not data or entry[1] > DRAIN_LIMIT:
            self._forget(sock)

    def _forget(self, sock: socket.socket) -> None:
        self.waiting.pop(sock, None)
        self.closing.pop(sock, None)
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        _close(sock)

    def _expire(self) -> None:
        now = time.monotonic()
        for table in (self.waiting, self.closing):
            while table and next(iter(table.values()))[0] <= now:
                self._forget(next(iter(table)))

    def _close_everything(self) -> None:
        for sock in list(self.waiting) + list(self.closing):
            self._forget(sock)
        while True:
            try:
                _close(self.inbox.get_nowait()[1])
            except queue.Empty:
                break
        self.selector.close()
        for s in (self.wake_r, self.wake_w):
            s.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _file_budget() -> int:
    """Connections that fit under the process's open-file limit, with room for everything else."""
    try:
        import resource
    except ImportError:  # not on Unix
        return MAX_CONNECTIONS
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(16, soft // 2 - 64)


class PageServer(HTTPServer):
    """The page's HTTP server: the accept loop (``serve_forever``) hands connections to a
    :class:`ConnectionLot`; ``limits.workers`` threads answer them; ``prediction_slot`` bounds
    the pictures decoded at once. ``shutdown()`` stops ``serve_forever``; ``server_close()``
    stops the rest."""

    def __init__(self, address: tuple[str, int], handler, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.request_queue_size = self.limits.backlog
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.hosts = Hosts(address[0], self.server_address[1])
        self.work: queue.Queue = queue.Queue(self.limits.max_queued)
        self.slots = threading.BoundedSemaphore(self.limits.predict_slots)
        self.closed = threading.Event()
        self.lot = ConnectionLot(self)
        self.lot.thread.start()
        self.workers = [
            threading.Thread(target=self._work, name=f"maist-worker-{i}", daemon=True)
            for i in range(self.limits.workers)
        ]
        for t in self.workers:
            t.start()

    def process_request(self, request, client_address):
        self.lot.put("new", request, client_address)

    def _work(self) -> None:
        while not self.closed.is_set():
            try:
                sock, address = self.work.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.finish_request(sock, address)
            except Exception:
                self.handle_error(sock, address)
            finally:
                self.lot.put("done", sock)

    @contextmanager
    def prediction_slot(self):
        """Hold one of ``limits.predict_slots`` while decoding and predicting (503 if none frees
        up within ``limits.queue_wait`` seconds)."""
        if not self.slots.acquire(timeout=self.limits.queue_wait):
            raise busy_error("too many pictures at once")
        try:
            yield
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        """One log line, never a traceback: a client that went away is no error of ours."""
        err = sys.exc_info()[1]
        level = logging.INFO if isinstance(err, OSError) else logging.ERROR
        log.log(level, "%s: connection ended: %s: %s", client_address, type(err).__name__, err)

    def server_close(self):
        super().server_close()
        if not hasattr(self, "lot"):  # the bind failed: nothing else was started
            return
        self.closed.set()  # the workers finish what they hold and stop within 0.5 s
        self.lot.stop()


def make_server(
    predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False, limits: Limits | None = None
) -> PageServer:
    """A server for ``predictor`` (port 0: any free port; see ``server.server_address``).
    Call ``serve_forever()`` on it (``shutdown()`` from another thread stops it)."""
    limits = limits or Limits()
    handler = type(
        "MaistHandler",
        (Handler,),
        {
            "predictor": predictor,
            "quiet": quiet,
            "timeout": limits.idle_timeout,
            "request_deadline": limits.request_deadline,
        },
    )
    return PageServer((host, int(port)), handler, limits)


@cli
def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, DEFAULTS, USAGE)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    predictor = predictor_from_cli(cfg, USAGE)
    try:
        server = make_server(predictor, str(cfg["host"]), int(cfg["port"]), bool(cfg["quiet"]))
    except OSError as err:
        raise UsageError(f"cannot listen on {cfg['host']}:{cfg['port']} ({err.strerror or err})") from err
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"MAIST page: http://{shown}:{port}/  ({predictor.describe()})\nCtrl+C stops it.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
