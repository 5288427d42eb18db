"""The drawing page's server under load, on loopback: latency and throughput at 1, 16 and 200
concurrent clients.

    python -m benchmarks.bench_serve [ckpt_path=CKPT] [clients=[1,16,200]] [seconds=10] [layers=true]

The server (``maist.serve.make_server``, default limits) runs in a child process on 127.0.0.1 and
a free port; without a checkpoint it serves the article's CNN (DeepMnistCNN, 71 classes) with
fresh weights: speed does not depend on the weights. Each client is a thread that POSTs the same
280×280 canvas-like PNG (a kana of the shipped sample) to ``/predict`` as the page does (with the
layer tiles unless ``layers=false``), a fresh connection per request, and starts its next request
when the answer is in. Each level runs ``seconds`` (every client makes at least one request).

Reports per level: requests, answers 200 / 503 / other, failures (no answer: reset, timeout),
latency p50 and p99 (every answer), throughput (200s per second), and the server's peak
resident memory. The clients share the machine with the server, as a browser on the same
machine would.
"""

from __future__ import annotations

import http.client
import io
import multiprocessing
import resource
import statistics
import sys
import threading
import time

import numpy as np
import torch
from PIL import Image

from maist.cli import cli, parse_cli
from maist.errors import UsageError
from maist.predict import Predictor

HOST = "127.0.0.1"
DEFAULTS = {"ckpt_path": None, "clients": [1, 16, 200], "seconds": 10.0, "layers": True, "torch_threads": 1}
USAGE = "usage: python -m benchmarks.bench_serve [ckpt_path=CKPT] [clients=[1,16,200]] [seconds=10] [layers=true]"
REQUEST_TIMEOUT = 60.0  # seconds one client waits for one answer


def fresh_predictor() -> Predictor:
    from maist.data.kana import HIRAGANA71
    from maist.data.preprocess import Preprocess
    from maist.models import DeepMnistCNN

    torch.manual_seed(0)
    return Predictor(
        DeepMnistCNN(num_classes=71), list(HIRAGANA71), Preprocess().as_dict(), source="fresh DeepMnistCNN"
    )


def canvas_png(char: str = "ぬ") -> bytes:
    """A kana of the shipped sample, dark on a white 280×280 RGBA canvas, as the page sends it."""
    from maist.data.etl import read_etl
    from maist.data.kana import char_to_jis
    from maist.data.sample import SAMPLE_ZIP

    levels = read_etl(SAMPLE_ZIP, codes=[char_to_jis(char)]).images[0]
    ink = Image.fromarray(np.round(255 * (1 - levels.astype(np.float32) / 15)).astype(np.uint8)).resize((250, 248))
    canvas = Image.new("RGBA", (280, 280), (255, 255, 255, 255))
    canvas.paste(ink.convert("RGBA"), (15, 16))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------- the server (child process)
def _serve(ckpt_path, torch_threads: int, ports) -> None:
    from maist.serve import make_server

    torch.set_num_threads(torch_threads)
    predictor = Predictor.from_checkpoint(ckpt_path) if ckpt_path else fresh_predictor()
    server = make_server(predictor, HOST, 0, quiet=True)
    ports.put(server.server_address[1])
    server.serve_forever()


# ---------------------------------------------------------------------- the clients
def post(port: int, path: str, body: bytes) -> tuple[int | None, float]:
    """One POST on a fresh connection: (status or None when no answer came, seconds)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "image/png"})
        res = conn.getresponse()
        res.read()
        return res.status, time.perf_counter() - started
    except (OSError, http.client.HTTPException):
        return None, time.perf_counter() - started
    finally:
        conn.close()


def run_level(port: int, clients: int, seconds: float, path: str, body: bytes) -> dict:
    """``clients`` threads posting until ``seconds`` have passed (each at least once)."""
    results: list[tuple[int | None, float]] = []
    lock = threading.Lock()
    gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        gate.wait()
        while True:
            status, took = post(port, path, body)
            with lock:
                results.append((status, took))
            if time.perf_counter() >= stop_at[0]:
                return

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    gate.wait()
    for t in threads:
        t.join(seconds + REQUEST_TIMEOUT + 5)
    elapsed = time.perf_counter() - started
    return summarize(clients, results, elapsed)


def summarize(clients: int, results: list[tuple[int | None, float]], elapsed: float) -> dict:
    ms = sorted(1000 * took for status, took in results if status is not None)
    statuses = [status for status, _ in results]
    return {
        "clients": clients,
        "requests": len(results),
        "ok": statuses.count(200),
        "busy": statuses.count(503),
        "other": sum(s not in (None, 200, 503) for s in statuses),
        "failed": statuses.count(None),
        "p50": statistics.median(ms) if ms else float("nan"),
        "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else float("nan"),
        "throughput": statuses.count(200) / elapsed,
    }


@cli
def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, DEFAULTS, USAGE)
    levels = [int(c) for c in (cfg["clients"] if isinstance(cfg["clients"], list) else [cfg["clients"]])]
    if not levels or min(levels) < 1 or float(cfg["seconds"]) <= 0:
        raise UsageError(f"clients must be positive counts and seconds > 0\n{USAGE}")
    body = canvas_png()
    path = "/predict" if cfg["layers"] else "/predict?layers=0"
    ctx = multiprocessing.get_context("fork")
    ports = ctx.Queue()
    server = ctx.Process(target=_serve, args=(cfg["ckpt_path"], int(cfg["torch_threads"]), ports), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=120)
        post(port, path, body)  # warm-up
        print(
            f"maist.serve on {HOST}:{port}, {'with' if cfg['layers'] else 'without'} layer tiles, "
            f"{len(body) / 1000:.1f} KB PNG, {cfg['seconds']:g} s per level, torch threads {cfg['torch_threads']}"
        )
        print(
            f"{'clients':>7} {'requests':>8} {'200':>6} {'503':>5} {'other':>5} {'failed':>6} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}"
        )
        for clients in levels:
            r = run_level(port, clients, float(cfg["seconds"]), path, body)
            print(
                f"{r['clients']:>7} {r['requests']:>8} {r['ok']:>6} {r['busy']:>5} {r['other']:>5} {r['failed']:>6} "
                f"{r['p50']:>8.1f} {r['p99']:>8.1f} {r['throughput']:>7.1f}",
                flush=True,
            )
    finally:
        server.terminate()
        server.join(10)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"server peak resident memory: {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
