"""A local page to draw a kana and watch the network read it, layer by layer.

    python -m maist.serve ckpt_path=CKPT [host=127.0.0.1] [port=8000]

A Starlette app on uvicorn (the ``serve`` extra). Endpoints:

- ``GET /``: the page (``maist/static/index.html`` and ``app.js``): a canvas to draw on (mouse,
  pen or touch), the top-5 kana updated as you draw, and every layer's activations as small
  greyscale tiles, as in the ConvNetJS MNIST demo.
- ``POST /predict``: the picture, as ``image/png``, ``image/jpeg`` (or another image type Pillow
  reads: :data:`IMAGE_TYPES`) or as ``application/json`` ``{"image": "data:image/png;base64,…"}``
  → ``{"top5": [[kana, probability], …], "layers": [{"name", "png" (data URL), "shape"}, …]}``.
  ``?layers=0`` leaves the layers out.
- ``GET /health``: ``{"ok": true, "checkpoint": file name, "model": …}`` (no folder is shown).

Inference is :class:`maist.predict.Predictor`, the path ``maist.predict`` uses. Every answer but
200 is ``{"error": reason, "status": code}``:

- 400 unreadable picture, nothing drawn, bad JSON or base64, a malformed request (h11 refuses it,
  or it is not HTTP/1.0 or 1.1); 431 more than :data:`MAX_HEADERS` headers, or an unfinished
  head over :data:`MAX_HEADER_BYTES`;
- 403 an ``Origin`` other than the page's own (another web site posting to it);
- 404 unknown path; 405 wrong method; 408 the request (head and body) did not arrive within
  ``request_timeout`` seconds of its connection's start or previous answer;
- 411 no ``Content-Length``; 413 over :data:`MAX_UPLOAD` bytes or over
  :data:`maist.images.MAX_PIXELS` pixels (refused from the picture's header, before decoding);
- 415 a ``Content-Type`` that is neither an image type nor ``application/json``;
- 421 a ``Host`` that is not this server's (DNS rebinding): its bound name and port, plus
  ``localhost``, ``127.0.0.1``, ``[::1]`` when bound to loopback (bound to all interfaces: any
  IP address, or the machine's name);
- 503 busy (``Retry-After``): more than ``max_connections`` connections are open, or no
  prediction slot came free within ``queue_wait`` seconds. A missing or corrupt checkpoint stops
  the start with one line, exit 2.

How a connection flows (limits in :class:`Limits`, defaults the module constants): the kernel
queues up to ``backlog`` new connections; uvicorn's event loop holds every open one (no thread
each: silent or slow clients delay no one) and closes one idle for ``keep_alive`` seconds between
requests. :class:`PageProtocol` is uvicorn's h11 protocol plus what it lacks: the deadline of
each request, JSON for h11's refusals and the 503 past ``max_connections``. The app checks each
request (:class:`Guard`), reads the rest of a refused request's body before answering
(:class:`ReadFirst`), and decodes and predicts in worker threads, ``predict_slots`` at a time,
which bounds memory. Disconnects and timeouts are at most one log line, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import ipaddress
import json
import logging
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import anyio
import h11
import numpy as np
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from maist.cli import cli, parse_cli
from maist.errors import UsageError
from maist.images import MAX_PIXELS, ImageError, ImageTooLargeError, NoInkError
from maist.predict import Predictor, predictor_from_cli

STATIC = Path(__file__).with_name("static")
MAX_UPLOAD = 2 * 1024 * 1024  # bytes of one picture
DRAIN_LIMIT = 16 * 1024 * 1024  # a refused request's body is read before the answer up to this size
MAX_HEADERS = 100  # headers of one request (http.server's limit)
MAX_HEADER_BYTES = 16 * 1024  # an unfinished request head (h11's default, made explicit)
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
}
# The layers the page shows, in order (those the network has), and their tile sizes.
PAGE_LAYERS = ("input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "filters", "weights")

# Limits (see the module docstring and Limits).
LISTEN_BACKLOG = 256  # new connections the kernel queues
MAX_CONNECTIONS = 1024  # open connections; a request on one more is answered 503
PREDICT_SLOTS = 2  # pictures decoded and predicted at once (each may take ~0.2 GB)
QUEUE_WAIT = 10.0  # seconds a request waits for a prediction slot before a 503
REQUEST_TIMEOUT = 10.0  # seconds for a whole request to arrive, from its connection's start or previous answer
KEEP_ALIVE = 5.0  # seconds a connection may stay idle between requests
RETRY_AFTER = 1  # seconds, in 503 answers

JSON_TYPE = "application/json"
ANSWER_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}  # on every answer of the app
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
    max_connections: int = MAX_CONNECTIONS
    predict_slots: int = PREDICT_SLOTS
    queue_wait: float = QUEUE_WAIT
    request_timeout: float = REQUEST_TIMEOUT
    keep_alive: float = KEEP_ALIVE


def busy_error(what: str) -> HTTPException:
    return HTTPException(503, f"busy: {what}; try again in a second", {"Retry-After": str(RETRY_AFTER)})


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


def error_response(status: int, reason: str, headers: dict | None = None) -> Response:
    return Response(error_body(status, reason), status, {**ANSWER_HEADERS, **(headers or {})}, JSON_TYPE)


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
        raise HTTPException(400, 'expected JSON {"image": "<base64 PNG>"} (nested too deeply)') from None
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise HTTPException(400, f'expected JSON {{"image": "<base64 PNG>"}} ({err})') from err
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise HTTPException(400, f"'image' is not valid base64 ({err})") from err


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


class Guard:
    """ASGI middleware: every request is HTTP/1.x with at most :data:`MAX_HEADERS` headers and
    names this server in ``Host`` (and ``Origin``, if any), or is refused before the routes."""

    def __init__(self, app, hosts: Hosts):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        refusal = self.refusal(scope)
        await (self.app if refusal is None else error_response(*refusal))(scope, receive, send)

    def refusal(self, scope) -> tuple[int, str] | None:
        headers = Headers(scope=scope)
        host, origin = headers.get("host"), headers.get("origin")
        if scope["http_version"] not in ("1.0", "1.1"):
            return 400, f"HTTP/{scope['http_version']} is not supported: use HTTP/1.1"
        if len(scope["headers"]) > MAX_HEADERS:
            return 431, f"more than {MAX_HEADERS} headers"
        if host is not None and not self.hosts.allows_host(host):
            return 421, f"this server does not answer for the host {host!r}"
        if origin is not None and not self.hosts.allows_origin(origin):
            return 403, f"requests from {origin!r} are refused: use the page itself"
        return None


class ReadFirst:
    """ASGI middleware: an answer waits until the request's body is all read (when it declares
    at most :data:`DRAIN_LIMIT` bytes; its deadline bounds the wait), so that a client still
    sending a refused upload reads the answer, not a reset."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        unread = int(Headers(scope=scope).get("content-length") or 0)

        async def tracked_receive():
            nonlocal unread
            message = await receive()
            unread = unread - len(message.get("body", b"")) if message.get("more_body") else 0
            return message

        async def send_once_read(message):
            while message["type"] == "http.response.start" and 0 < unread <= DRAIN_LIMIT:
                await tracked_receive()
            await send(message)

        await self.app(scope, tracked_receive, send_once_read)


# ---------------------------------------------------------------------- the app
class Page:
    """The page's endpoints for one predictor (see the module docstring), as a Starlette app."""

    def __init__(self, predictor: Predictor, limits: Limits):
        self.predictor, self.limits = predictor, limits
        self.slots = anyio.CapacityLimiter(limits.predict_slots)

    def app(self, hosts: Hosts) -> Starlette:
        routes = [Route(path, self.static_file) for path in STATIC_FILES]
        routes += [Route("/health", self.health)]
        routes += [Route(path, self.predict, methods=["POST"]) for path in ("/predict", "/features")]
        return Starlette(
            routes=routes,
            middleware=[Middleware(ReadFirst), Middleware(Guard, hosts=hosts)],
            exception_handlers={404: no_such_page, HTTPException: refuse, Exception: internal_error},
        )

    async def static_file(self, request: Request) -> Response:
        name, ctype = STATIC_FILES[request.url.path]
        try:
            body = (STATIC / name).read_bytes()
        except OSError:
            return error_response(404, f"{request.url.path}: not installed with this copy of maist")
        return Response(body, headers=ANSWER_HEADERS, media_type=ctype)

    async def health(self, request: Request) -> Response:
        return JSONResponse(health_payload(self.predictor), headers=ANSWER_HEADERS)

    async def predict(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != JSON_TYPE and ctype not in IMAGE_TYPES:
            raise HTTPException(
                415,
                f"Content-Type {ctype or '(none)'} is not accepted: "
                f"send the picture as image/png, image/jpeg (or another image type) or {JSON_TYPE}",
            )
        length = request.headers.get("content-length")  # h11 has checked that it is a number
        if length is None:
            raise HTTPException(411, "send the picture with a Content-Length")
        if int(length) > MAX_UPLOAD:
            raise HTTPException(413, f"the upload is {int(length) / 1e6:.1f} MB; at most {MAX_UPLOAD / 1e6:.0f} MB")
        if int(length) == 0:
            raise HTTPException(400, "empty request: POST a picture (PNG or JPEG)")
        try:
            data = picture_bytes(await request.body(), ctype)
        except ClientDisconnect:  # gone, or cut by its deadline (PageProtocol answered 408)
            return error_response(400, "the upload was cut short")
        if len(data) > MAX_UPLOAD:
            raise HTTPException(413, f"the picture is {len(data) / 1e6:.1f} MB; at most {MAX_UPLOAD / 1e6:.0f} MB")
        layers = request.url.path == "/features" or request.query_params.get("layers", "1") not in ("0", "false", "no")
        return JSONResponse(await self.predicted(data, layers), headers=ANSWER_HEADERS)

    async def predicted(self, data: bytes, layers: bool) -> dict:
        """:func:`predict_payload` in a worker thread, holding one of ``predict_slots`` (503 if
        none frees up within ``queue_wait`` seconds)."""
        try:
            with anyio.fail_after(self.limits.queue_wait):
                await self.slots.acquire()
        except TimeoutError:
            raise busy_error("too many pictures at once") from None
        try:
            return await anyio.to_thread.run_sync(predict_payload, self.predictor, data, layers)
        except NoInkError:
            raise HTTPException(400, "nothing drawn: no ink found in the picture") from None
        except ImageTooLargeError as err:
            raise HTTPException(413, str(err)) from None
        except ImageError as err:
            raise HTTPException(400, str(err)) from None
        finally:
            self.slots.release()


async def refuse(request: Request, exc: HTTPException) -> Response:
    return error_response(exc.status_code, exc.detail, exc.headers)


async def no_such_page(request: Request, exc: HTTPException) -> Response:
    return error_response(404, f"{request.url.path}: no such page")


async def internal_error(request: Request, exc: Exception) -> Response:
    """A bug of ours: a JSON 500 for the client (uvicorn logs the traceback on the server)."""
    return error_response(500, "internal error (see the server's log)")


async def too_many_connections(scope, receive, send) -> None:
    """The answer on a connection past ``max_connections``, once its request is read."""
    while (await receive()).get("more_body"):
        pass
    busy = busy_error("too many requests at once")
    await error_response(503, busy.detail, {**busy.headers, "Connection": "close"})(scope, receive, send)


# ---------------------------------------------------------------------- the server
class PageProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with what it lacks: each request must arrive (head and body)
    within ``limits.request_timeout`` seconds of its connection's start or previous answer, or is
    answered 408 (a silent connection is just closed); h11's refusals are JSON; a request
    arriving while more than ``limits.max_connections`` connections are open is answered 503."""

    def __init__(self, *args, limits: Limits, **kwargs):
        self.limits, self.deadline = limits, None
        super().__init__(*args, **kwargs)

    @property
    def app(self):
        """What uvicorn runs for the request just arrived: the page, or a 503 past the limit."""
        return too_many_connections if len(self.connections) > self.limits.max_connections else self.page

    @app.setter
    def app(self, page) -> None:
        self.page = page

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.start_deadline()

    def on_response_complete(self) -> None:
        self.start_deadline()
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self.deadline.cancel()
        super().connection_lost(exc)

    def start_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = self.loop.call_later(self.limits.request_timeout, self.expire)

    def expire(self) -> None:
        """The deadline: 408 to a request still arriving; nothing to one that has arrived."""
        state = self.conn.their_state
        if self.transport.is_closing() or state not in (h11.IDLE, h11.SEND_BODY):
            return
        if state is h11.IDLE and not self.conn.trailing_data[0]:  # not a byte of a request yet
            self.transport.close()
        else:
            self.answer_and_close(408, "the request did not arrive in time")

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request (uvicorn logs ``msg``)."""
        if len(self.conn.trailing_data[0]) > MAX_HEADER_BYTES:
            self.answer_and_close(431, f"the request's head is over {MAX_HEADER_BYTES} bytes")
        else:
            self.answer_and_close(400, "malformed request")

    def answer_and_close(self, status: int, reason: str) -> None:
        """A JSON answer, unless one has begun, then close."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = error_body(status, reason)
            headers = [("Content-Type", JSON_TYPE), ("Content-Length", str(len(body))), ("Connection", "close")]
            for event in (
                h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
        self.transport.close()


class PageServer:
    """A uvicorn server on a socket bound when it is made (so ``server_address`` holds the port,
    and a port in use fails at once), run and stopped as an ``http.server`` one."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket):
        self.uvicorn, self.socket, self.server_address = uvicorn.Server(config), sock, sock.getsockname()
        self.stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.stopped.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (from another thread) and wait until it has: requests under way
        are answered first (each bounded by its deadline, ``queue_wait`` and its prediction)."""
        self.uvicorn.should_exit = True
        self.stopped.wait()

    def server_close(self) -> None:
        self.socket.close()


def make_server(
    predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False, limits: Limits | None = None
) -> PageServer:
    """A server for ``predictor`` (port 0: any free port; see ``server.server_address``).
    Call ``serve_forever()`` on it (``shutdown()`` from another thread stops it)."""
    limits = limits or Limits()
    sock = socket.create_server(
        (host, int(port)), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=limits.backlog
    )
    config = uvicorn.Config(
        Page(predictor, limits).app(Hosts(host, sock.getsockname()[1])),
        http=functools.partial(PageProtocol, limits=limits),
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=not quiet,
        proxy_headers=False,
        backlog=limits.backlog,
        timeout_keep_alive=limits.keep_alive,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
    return PageServer(config, sock)


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
