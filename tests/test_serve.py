"""The drawing page's server (`python -m maist.serve`), hit with urllib on a free port."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from test_predict import held_out, paper_picture, tiny_checkpoint, tiny_predictor


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


@pytest.mark.parametrize("what, body, code, reason", [
    ("empty canvas", png(np.full((280, 280), 255, np.uint8)), 400, "nothing drawn"),
    ("garbage bytes", b"\x00\x01garbage" * 50, 400, "not a picture"),
    ("truncated png", None, 400, "cannot be read"),
    ("no body", b"", 400, "empty request"),
    ("bad json", b'{"image": 3', 400, "expected JSON"),
    ("bad base64", b'{"image": "data:image/png;base64,@@@"}', 400, "base64"),
    ("huge", b"\x89PNG" + b"\x00" * (3 * 1024 * 1024), 413, "at most 2 MB"),
])
def test_bad_uploads_get_4xx_with_a_reason(base_url, what, body, code, reason):
    if body is None:
        body = drawing("つ")[:200]
    status, ctype, out = request(base_url + "/predict", body, {"Content-Type": "application/octet-stream"})
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
    for _ in range(3):
        request(base_url + "/predict", b"junk")
    status, _, out = request(base_url + "/health")
    assert status == 200 and json.loads(out)["ok"] is True


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
