"""The drawing page's server (`python -m maist.serve`), hit with urllib on a free port."""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image
from serve_load import burst, closed_by_server, dribble, open_idle, reset, send, status_of
from test_predict import held_out, paper_picture, tiny_checkpoint, tiny_predictor

PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def base_url():
    from maist.serve import make_server

    server = make_server(tiny_predictor(), "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def request(url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, res.headers.get("Content-Type", ""), res.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def drawing(char="く") -> bytes:
    """A 280×280 canvas-like RGBA PNG: the character in black on a white page."""
    pic = Image.fromarray(paper_picture(held_out(char))).resize((250, 248))
    canvas = Image.new("RGBA", (280, 280), (255, 255, 255, 255))
    canvas.paste(pic.convert("RGBA"), (15, 16))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def test_page_and_script_are_served(base_url):
    status, ctype, body = request(base_url + "/")
    assert status == 200 and ctype.startswith("text/html")
    assert b'<canvas id="pad"' in body and b"app.js" in body
    status, ctype, body = request(base_url + "/app.js")
    assert status == 200 and "javascript" in ctype and b"pointerdown" in body


def test_good_drawing_gives_top5_and_layers(base_url):
    status, ctype, body = request(base_url + "/predict", drawing("く"), {"Content-Type": "image/png"})
    assert status == 200 and ctype.startswith("application/json")
    doc = json.loads(body)
    assert len(doc["top5"]) == 5 and doc["top5"][0][0] == "く"
    assert sum(p for _, p in doc["top5"]) <= 1.0 + 1e-6
    names = [layer["name"] for layer in doc["layers"]]
    assert names[:7] == ["input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2"]
    img = Image.open(io.BytesIO(base64.b64decode(doc["layers"][1]["png"].split(",", 1)[1])))
    assert img.mode == "L" and img.width > 28


def test_json_base64_body_and_no_layers(base_url):
    body = json.dumps({"image": "data:image/png;base64," + base64.b64encode(drawing("し")).decode()}).encode()
    status, _, out = request(base_url + "/predict?layers=0", body, {"Content-Type": "application/json"})
    doc = json.loads(out)
    assert status == 200 and doc["top5"][0][0] == "し" and "layers" not in doc


@pytest.mark.parametrize(
    "what, body, code, reason",
    [
        ("empty canvas", png(np.full((280, 280), 255, np.uint8)), 400, "nothing drawn"),
        ("garbage bytes", b"\x00\x01garbage" * 50, 400, "not a picture"),
        ("truncated png", None, 400, "cannot be read"),
        ("no body", b"", 400, "empty request"),
        ("bad json", b'{"image": 3', 400, "expected JSON"),
        ("bad base64", b'{"image": "data:image/png;base64,@@@"}', 400, "base64"),
        ("huge", b"\x89PNG" + b"\x00" * (3 * 1024 * 1024), 413, "at most 2 MB"),
    ],
)
def test_bad_uploads_get_4xx_with_a_reason(base_url, what, body, code, reason):
    if body is None:
        body = drawing("つ")[:200]
    ctype = "application/json" if body[:1] == b"{" else "image/png"
    status, ctype, out = request(base_url + "/predict", body, {"Content-Type": ctype})
    assert status == code, out
    doc = json.loads(out)
    assert ctype.startswith("application/json") and reason in doc["error"] and "Traceback" not in doc["error"]


def test_unknown_paths_and_methods(base_url):
    status, _, out = request(base_url + "/nope")
    assert status == 404 and "no such page" in json.loads(out)["error"]
    status, _, out = request(base_url + "/nope", b"x", method="POST")
    assert status == 404
    status, _, _ = request(base_url + "/predict")
    assert status == 405
    status, _, _ = request(base_url + "/predict", b"x", method="PUT")
    assert status == 405


def test_server_survives_bad_requests(base_url):
    good = drawing("く")
    bad = [
        (b"junk", "image/png"),
        (good[: len(good) // 2], "image/png"),
        (b'{"image": 5}', "application/json"),
        (b"[" * 100_000, "application/json"),
    ]
    for body, ctype in bad:
        status, _, out = request(base_url + "/predict", body, {"Content-Type": ctype})
        assert status == 400 and json.loads(out)["status"] == 400
    status, _, out = request(base_url + "/predict?layers=0", good, {"Content-Type": "image/png"})
    assert status == 200 and json.loads(out)["top5"][0][0] == "く"  # still reads a picture after them


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_start_with_a_bad_checkpoint_exits_2_with_one_line(tmp_path, capsys, problem):
    from maist.serve import main

    path = tmp_path / "model.ckpt"
    if problem == "corrupt":
        path.write_bytes(b"\x80\x04 not a checkpoint")
    assert main([f"ckpt_path={path}", "port=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ")


def test_port_in_use_exits_2(base_url, capsys):
    from maist.serve import main

    port = base_url.rsplit(":", 1)[1]
    assert main([f"ckpt_path={tiny_checkpoint()}", f"port={port}"]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# ---------------------------------------------------------------------- the page survives its users
def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


@contextmanager
def serving(predictor=None, quiet=True, **limits):
    """A server with its own :class:`maist.serve.Limits` (short timeouts, few connections…)."""
    from maist.serve import Limits, make_server

    server = make_server(predictor or tiny_predictor(), "127.0.0.1", 0, quiet=quiet, limits=Limits(**limits))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class StubPredictor:
    """Reads every picture as あ after ``delay`` seconds, counting how many it holds at once."""

    classes = ["あ"]
    source = "/srv/models/stub.ckpt"

    def __init__(self, delay: float = 0.0):
        self.delay, self.active, self.peak = delay, 0, 0
        self.lock = threading.Lock()

    def describe(self) -> str:
        return f"{self.source}: stub"

    def prepare(self, data, name=None):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.delay)
        with self.lock:
            self.active -= 1
        return data

    def top_k(self, x, k=5):
        return [[("あ", 1.0)]]


_drawings: dict = {}


def drawing_once(char="く") -> bytes:
    if char not in _drawings:
        _drawings[char] = drawing(char)
    return _drawings[char]


def post_head(port: int) -> bytes:
    return (
        f"POST /predict?layers=0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()


def test_200_concurrent_posts_are_all_answered(base_url):
    """http.server's listen backlog of 5 reset most of such a burst; now every request gets an
    answer: 200, or 503 with Retry-After when the server is full."""
    started = time.monotonic()
    replies = burst(
        port_of(base_url), 200, method="POST", path="/predict?layers=0", body=drawing_once(), headers=PNG, timeout=60
    )
    elapsed = time.monotonic() - started
    lost = [r.error for r in replies if r.status is None]
    assert not lost, f"{len(lost)} of 200 got no answer, e.g. {lost[:3]}"
    statuses = Counter(r.status for r in replies)
    assert set(statuses) <= {200, 503} and statuses[200] >= 100, statuses
    assert all(json.loads(r.body)["top5"][0][0] == "く" for r in replies if r.status == 200)
    assert all(r.headers.get("retry-after") for r in replies if r.status == 503)
    assert elapsed < 60


@pytest.mark.parametrize("stall", ["head", "body", "dribbled-head", "dribbled-body", "silent"])
def test_a_request_that_does_not_arrive_in_time_is_cut_with_408(stall):
    """A client that stops sending its head or body, or sends it a byte at a time (uvicorn alone
    waits for ever), is answered 408 and closed at ``request_timeout``; a silent one is closed."""
    with serving(request_timeout=1.0) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        head = post_head(port)
        started = time.monotonic()
        if stall == "head":
            sock.sendall(head[:30])
        elif stall == "body":
            sock.sendall(head + b"x" * 10)
        elif stall == "dribbled-head":
            threading.Thread(target=dribble, args=([sock], head), daemon=True).start()
        elif stall == "dribbled-body":
            sock.sendall(head)
            threading.Thread(target=dribble, args=([sock], b"x" * 1000), daemon=True).start()
        closed, got = closed_by_server(sock, within=8)
        seconds = time.monotonic() - started
        sock.close()
    assert closed and 0.9 < seconds < 4, (closed, seconds, got)
    if stall == "silent":
        assert got == b""
    else:
        assert status_of(got) == 408 and json.loads(got.partition(b"\r\n\r\n")[2])["status"] == 408, got


def test_silent_and_slow_clients_do_not_delay_a_normal_request():
    """300 connections that say nothing and 40 that dribble their heads a byte at a time hold no
    thread: a request beside them is answered at once (the previous server's workers waited on
    the slow ones: 29 s)."""
    with serving(request_timeout=30) as port:
        idle, slow = open_idle(port, 300), open_idle(port, 40)
        try:
            threading.Thread(target=dribble, args=(slow, post_head(port), 0.3), daemon=True).start()
            time.sleep(1.0)  # every slow client is a few bytes into its head
            reply = send(port, "POST", "/predict?layers=0", drawing_once(), PNG, timeout=30)
            health = send(port, timeout=30)
            still_there = sum(not closed_by_server(s, 0.01)[0] for s in slow)
        finally:
            for s in idle + slow:
                s.close()
    assert reply.status == 200 and json.loads(reply.body)["top5"][0][0] == "く", reply
    assert health.status == 200 and reply.seconds < 3 and still_there == 40, (reply.seconds, still_there)


def test_past_max_connections_a_request_is_answered_503_then_served_again():
    with serving(max_connections=5, request_timeout=30) as port:
        idle = open_idle(port, 10)
        time.sleep(0.2)  # the server has taken them all
        try:
            busy = send(port, "POST", "/predict?layers=0", drawing_once(), PNG)
        finally:
            for s in idle:
                s.close()
        deadline = time.monotonic() + 5
        while (again := send(port)).status == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert busy.status == 503 and busy.headers["retry-after"] == "1", busy
    assert "too many requests at once" in json.loads(busy.body)["error"]
    assert again.status == 200, again


def test_an_idle_kept_alive_connection_is_closed_after_keep_alive():
    with serving(keep_alive=0.3) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        statuses = []
        for _ in range(2):  # the same connection, kept alive
            conn.request("GET", "/health")
            res = conn.getresponse()
            statuses.append(res.status)
            res.read()
        started = time.monotonic()
        closed, _ = closed_by_server(conn.sock, within=3)
        seconds = time.monotonic() - started
        conn.close()
    assert statuses == [200, 200] and closed and seconds < 2


def test_pictures_are_decoded_at_most_predict_slots_at_once():
    stub = StubPredictor(delay=0.2)
    with serving(stub, predict_slots=2) as port:
        replies = burst(port, 8, method="POST", path="/predict?layers=0", body=drawing_once(), headers=PNG)
    assert [r.status for r in replies] == [200] * 8
    assert stub.peak == 2


def test_no_prediction_slot_in_time_is_503_with_retry_after():
    stub = StubPredictor(delay=0.5)
    with serving(stub, predict_slots=1, queue_wait=0.2) as port:
        replies = burst(port, 6, method="POST", path="/predict?layers=0", body=drawing_once(), headers=PNG)
    statuses = Counter(r.status for r in replies)
    assert set(statuses) == {200, 503}, (statuses, [r.error for r in replies])
    busy = [r for r in replies if r.status == 503]
    assert all(r.headers["retry-after"] == "1" and "busy" in json.loads(r.body)["error"] for r in busy)


# ---------------------------------------------------------------------- who may ask
@pytest.mark.parametrize(
    "host, code",
    [
        ("127.0.0.1:{port}", 200),
        ("localhost:{port}", 200),
        ("[::1]:{port}", 200),
        ("LOCALHOST:{port}", 200),
        ("evil.example:{port}", 421),
        ("evil.example", 421),
        ("127.0.0.1:1", 421),
        ("127.0.0.1", 421),
        ("localhost.evil.example:{port}", 421),
        ("evil@127.0.0.1:{port}", 421),
        ("127.0.0.1:{port}/x", 421),
    ],
)
def test_a_foreign_host_is_refused(base_url, host, code):
    """DNS rebinding: a page at http://evil.example:PORT whose name now points at 127.0.0.1 sends
    ``Host: evil.example:PORT``; only this server's own names are answered."""
    port = port_of(base_url)
    headers = {"Host": host.format(port=port)}
    get = send(port, "GET", "/", headers=headers)
    post = send(port, "POST", "/predict?layers=0", drawing_once(), {**headers, **PNG})
    assert (get.status, post.status) == (code, code), (get, post)
    if code == 421:
        assert "does not answer for the host" in json.loads(post.body)["error"]


def test_the_names_a_server_answers_to_follow_its_binding():
    from maist.serve import Hosts

    loopback = Hosts("127.0.0.1", 8000)
    assert all(loopback.allows_host(h) for h in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"))
    assert not any(loopback.allows_host(h) for h in ("192.168.1.5:8000", "localhost:8001", "", "evil.example:8000"))
    lan = Hosts("192.168.1.5", 8000)
    assert lan.allows_host("192.168.1.5:8000") and lan.allows_origin("http://192.168.1.5:8000")
    assert not lan.allows_host("localhost:8000") and not lan.allows_host("evil.example:8000")
    everywhere = Hosts("0.0.0.0", 80)
    assert everywhere.allows_host("10.0.0.7") and everywhere.allows_host("[fe80::1]:80")
    assert everywhere.allows_host(socket.gethostname()) and everywhere.allows_origin("http://10.0.0.7")
    assert not everywhere.allows_host("evil.example") and not everywhere.allows_origin("http://evil.example")


@pytest.mark.parametrize(
    "origin, code",
    [
        ("http://127.0.0.1:{port}", 200),
        ("http://localhost:{port}", 200),
        ("http://evil.example", 403),
        ("null", 403),
        ("https://127.0.0.1:{port}", 403),
        ("http://127.0.0.1:{port}.evil.example", 403),
        ("http://127.0.0.1:1", 403),
    ],
)
def test_a_post_from_another_origin_is_refused(base_url, origin, code):
    port = port_of(base_url)
    reply = send(port, "POST", "/predict?layers=0", drawing_once(), {"Origin": origin.format(port=port), **PNG})
    assert reply.status == code, reply
    if code == 403:
        assert "refused" in json.loads(reply.body)["error"]


@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "image/svg+xml",
        None,
    ],
)
def test_only_image_and_json_bodies_are_accepted(base_url, ctype):
    """What a form on another site can send (text/plain, form data) is refused with 415."""
    headers = {"Content-Type": ctype} if ctype else {}
    reply = send(port_of(base_url), "POST", "/predict?layers=0", drawing_once(), headers)
    assert reply.status == 415, reply
    assert "is not accepted" in json.loads(reply.body)["error"]


@pytest.mark.parametrize("ctype", ["image/png", "image/jpeg", "image/webp", "Image/PNG; charset=binary"])
def test_image_types_are_accepted_whatever_the_bytes(base_url, ctype):
    reply = send(port_of(base_url), "POST", "/predict?layers=0", drawing_once(), {"Content-Type": ctype})
    assert reply.status == 200 and json.loads(reply.body)["top5"][0][0] == "く"


def test_deeply_nested_json_is_400(base_url):
    body = b'{"image": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    reply = send(port_of(base_url), "POST", "/predict", body, {"Content-Type": "application/json"})
    assert reply.status == 400 and "expected JSON" in json.loads(reply.body)["error"]


def test_a_picture_of_too_many_pixels_is_413_before_decoding(base_url):
    from test_images import _bilevel_png

    reply = send(port_of(base_url), "POST", "/predict", _bilevel_png(6000, 6000), PNG)
    assert reply.status == 413 and "too large" in json.loads(reply.body)["error"]
    assert reply.seconds < 2


HOST = b"Host: 127.0.0.1:{port}\r\n"
POST_PNG = b"POST /predict HTTP/1.1\r\n" + HOST + b"Content-Type: image/png\r\n"


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"OPTIONS /predict HTTP/1.1\r\n" + HOST + b"\r\n", 405),
        (b"BREW /predict HTTP/1.1\r\n" + HOST + b"\r\n", 405),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n" + HOST + b"\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: b\r\n" * 150 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: " + b"b" * 20_000, 431),
        (POST_PNG + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        (POST_PNG + b"Content-Length: -5\r\n\r\n", 400),
        (POST_PNG + b"Content-Length: 999999999\r\n\r\n", 413),
        (POST_PNG + b"Content-Length: 50\r\n\r\nshort", 408),
    ],
    ids=[
        "options",
        "unknown-method",
        "garbage",
        "no-host",
        "http2",
        "too-many-headers",
        "head-too-long",
        "chunked",
        "negative-length",
        "too-long",
        "short-body",
    ],
)
def test_every_bad_request_is_a_4xx_in_json(raw, code):
    with serving(request_timeout=0.5) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(raw.replace(b"{port}", str(port).encode()))
        closed, got = closed_by_server(sock, within=5)
        sock.close()
    assert closed and status_of(got) == code, got[:300]
    assert json.loads(got.partition(b"\r\n\r\n")[2])["status"] == code


def test_disconnects_and_timeouts_leave_no_traceback(capfd, caplog):
    """Clients that vanish mid-request (reset) or stall: at most a line each, never a traceback."""
    caplog.set_level(logging.DEBUG)
    with serving(quiet=False, request_timeout=0.3) as port:
        head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
        pic = drawing_once()
        for raw in (
            b"POST /pre",  # reset inside the request line
            (head + "Content-Length: 100000\r\n\r\n").encode() + b"x" * 5000,  # inside the body
            (head + f"Content-Length: {len(pic)}\r\n\r\n").encode() + pic,
        ):  # before the answer
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(raw)
            time.sleep(0.05)
            reset(sock)
        stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
        stalled.sendall(head.encode())  # headers never finished
        time.sleep(1.0)
        stalled.close()
        assert send(port).status == 200
    out, err = capfd.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" not in out + err + logged, err
    assert not [r for r in caplog.records if r.exc_info]


def test_health_names_the_checkpoint_file_not_its_folder(base_url):
    status, _, body = request(base_url + "/health")
    doc = json.loads(body)
    assert status == 200 and doc["checkpoint"] == tiny_checkpoint().name
    assert str(tiny_checkpoint().parent) not in body.decode() and doc["model"].startswith(tiny_checkpoint().name)
