"""A local page to draw a kana and watch the network read it, layer by layer.

    python -m maist.serve ckpt_path=CKPT [host=127.0.0.1] [port=8000]

Standard library only (``http.server``). Endpoints:

- ``GET /``: the page (``maist/static/index.html`` and ``app.js``): a canvas to draw on (mouse,
  pen or touch), the top-5 kana updated as you draw, and every layer's activations as small
  greyscale tiles, as in the ConvNetJS MNIST demo.
- ``POST /predict``: the picture (PNG/JPEG bytes; or JSON ``{"image": "data:image/png;base64,…"}``)
  → ``{"top5": [[kana, probability], …], "layers": [{"name", "png" (data URL), "shape"}, …]}``.
  ``?layers=0`` leaves the layers out.
- ``GET /health``: ``{"ok": true, "model": …}``.

Inference is :class:`maist.predict.Predictor`, the path ``maist.predict`` uses. Every bad request
gets a 4xx with ``{"error": reason}``: 400 unreadable picture / nothing drawn / bad JSON, 404
unknown path, 405 wrong method, 411 no length, 413 more than :data:`MAX_UPLOAD` bytes. A missing
or corrupt checkpoint stops the start with one line and exit code 2.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from maist.images import ImageError, NoInkError
from maist.predict import Predictor, UsageError, cli, parse_cli, predictor_from_cli

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_UPLOAD = 2 * 1024 * 1024  # bytes of one picture
DRAIN_LIMIT = 16 * 1024 * 1024  # a larger body is not read at all: the connection is closed
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/index.html": ("index.html", "text/html; charset=utf-8"),
                "/app.js": ("app.js", "text/javascript; charset=utf-8")}
# The layers the page shows, in order (those the network has), and their tile sizes.
PAGE_LAYERS = ("input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "filters", "weights")

USAGE = "usage: python -m maist.serve ckpt_path=CKPT [host=127.0.0.1] [port=8000] [quiet=false] [ink_ratio=<the checkpoint's>]"
DEFAULTS = {"ckpt_path": None, "host": "127.0.0.1", "port": 8000, "quiet": False, "ink_ratio": None,
            "torch_threads": 1}


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, reason: str, close: bool = False):
        super().__init__(reason)
        self.status, self.reason, self.close = status, reason, close


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


def _decode_body(body: bytes, content_type: str) -> bytes:
    """Raw picture bytes from a raw or JSON/base64 body."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/json" or body[:1] == b"{":
        try:
            doc = json.loads(body.decode("utf-8"))
            text = doc["image"]
            if not isinstance(text, str):
                raise TypeError("'image' is not a string")
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise HttpError(HTTPStatus.BAD_REQUEST, f'expected JSON {{"image": "<base64 PNG>"}} ({err})') from err
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"'image' is not valid base64 ({err})") from err
    return body


class Handler(BaseHTTPRequestHandler):
    server_version = "maist"
    protocol_version = "HTTP/1.1"
    predictor: Predictor  # set on the subclass made by make_server
    quiet = False

    # ------------------------------------------------------------------ plumbing
    def log_message(self, fmt, *args):
        if not self.quiet:
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

    def _send(self, status: HTTPStatus, body: bytes, ctype: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, doc: dict, close: bool = False) -> None:
        self._send(status, json.dumps(doc, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8", close)

    def _error(self, err: HttpError) -> None:
        self._json(err.status, {"error": err.reason, "status": int(err.status)}, close=err.close)

    def _guard(self, fn) -> None:
        try:
            fn()
        except HttpError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # never a traceback to the client, never a dead server
            log.exception("error handling %s %s", self.command, self.path)
            try:
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (see the server's log)",
                                                              "status": 500}, close=True)
            except OSError:
                pass

    # ------------------------------------------------------------------ methods
    def do_GET(self):
        self._guard(self._get)

    def do_HEAD(self):
        self._guard(self._get)

    def do_POST(self):
        self._guard(self._post)

    def do_PUT(self):
        self._guard(self._other)

    do_DELETE = do_PATCH = do_PUT

    def _other(self):
        self._drain_quietly()
        raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported here")

    def _drain_quietly(self):
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = 0
        if 0 < n <= DRAIN_LIMIT:
            self._discard(n)
        elif n > DRAIN_LIMIT:
            self.close_connection = True

    def _discard(self, n: int) -> None:
        while n > 0:
            chunk = self.rfile.read(min(n, 65536))
            if not chunk:
                break
            n -= len(chunk)

    def _get(self):
        path = urlsplit(self.path).path
        if path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            try:
                body = (STATIC / name).read_bytes()
            except OSError:
                raise HttpError(HTTPStatus.NOT_FOUND, f"{path}: not installed with this copy of maist")
            self._send(HTTPStatus.OK, body, ctype)
        elif path == "/health":
            self._json(HTTPStatus.OK, {"ok": True, "model": self.predictor.describe(),
                                       "classes": self.predictor.classes, "max_upload": MAX_UPLOAD})
        elif path in ("/predict", "/features"):
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path}: POST a picture")
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, f"{path}: no such page")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send the picture with a Content-Length", close=True)
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}", close=True)
        if n > MAX_UPLOAD:
            if n <= DRAIN_LIMIT:
                self._discard(n)  # read it, so the client gets the answer instead of a reset
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"the upload is {n / 1e6:.1f} MB; at most {MAX_UPLOAD / 1e6:.0f} MB", close=n > DRAIN_LIMIT)
        if n == 0:
            raise HttpError(HTTPStatus.BAD_REQUEST, "empty request: POST a picture (PNG or JPEG)")
        body = self.rfile.read(n)
        if len(body) < n:
            raise HttpError(HTTPStatus.BAD_REQUEST, "the upload was cut short", close=True)
        return body

    def _post(self):
        url = urlsplit(self.path)
        if url.path not in ("/predict", "/features"):
            self._drain_quietly()
            raise HttpError(HTTPStatus.NOT_FOUND, f"{url.path}: no such endpoint (POST /predict)")
        body = self._read_body()
        data = _decode_body(body, self.headers.get("Content-Type", ""))
        if len(data) > MAX_UPLOAD:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the picture is {len(data) / 1e6:.1f} MB; "
                            f"at most {MAX_UPLOAD / 1e6:.0f} MB")
        query = parse_qs(url.query)
        layers = url.path == "/features" or query.get("layers", ["1"])[0] not in ("0", "false", "no")
        try:
            doc = predict_payload(self.predictor, data, layers=layers)
        except NoInkError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "nothing drawn: no ink found in the picture")
        except ImageError as err:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(err))
        self._json(HTTPStatus.OK, doc)


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False) -> ThreadingHTTPServer:
    """A threaded server for ``predictor`` (port 0: any free port; see ``server.server_address``).
    Call ``serve_forever()`` on it (``shutdown()`` from another thread stops it)."""
    handler = type("MaistHandler", (Handler,), {"predictor": predictor, "quiet": quiet})
    server = ThreadingHTTPServer((host, int(port)), handler)
    server.daemon_threads = True
    return server


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
