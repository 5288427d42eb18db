"""CPU inference: onnxruntime vs PyTorch, side by side.

    python -m benchmarks.bench_export [ckpt_path=CKPT] [threads=1] [batch=256] [repeats=200]

Without a checkpoint, the article's CNN (DeepMnistCNN, 71 classes, 28×28) with fresh weights is
timed: speed does not depend on the weights. Reports the latency of one image (median and 90th
percentile of ``repeats`` calls) and the throughput on a batch of ``batch`` images, for both
runtimes with the same number of threads, and the ratio PyTorch / onnxruntime (> 1: onnxruntime
is faster). Network input only: the picture preprocessing is the same for both and not timed.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import fresh_predictor
from maist.predict import Predictor, UsageError, cli, parse_cli

DEFAULTS = {"ckpt_path": None, "threads": 1, "batch": 256, "repeats": 200, "batch_repeats": 10}
USAGE = "usage: python -m benchmarks.bench_export [ckpt_path=CKPT] [threads=1] [batch=256] [repeats=200]"


def _times(fn, repeats: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


@cli
def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, DEFAULTS, USAGE)
    try:
        import onnxruntime as ort

        from maist.export import export_onnx
    except ImportError as err:
        raise UsageError("this benchmark needs onnx and onnxruntime: pip install onnx onnxruntime") from err
    threads = int(cfg["threads"])
    torch.set_num_threads(threads)
    predictor = Predictor.from_checkpoint(cfg["ckpt_path"]) if cfg["ckpt_path"] else fresh_predictor()
    net = predictor.net.eval()
    s = predictor.image_size
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(predictor, Path(tmp) / "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    g = torch.Generator().manual_seed(0)
    one = torch.rand(1, 1, s, s, generator=g)
    many = torch.rand(int(cfg["batch"]), 1, s, s, generator=g)
    one_np, many_np = one.numpy(), many.numpy()

    def torch_run(x):
        with torch.inference_mode():
            return net(x)

    results = {}
    for name, run_one, run_many in (
        ("PyTorch", lambda: torch_run(one), lambda: torch_run(many)),
        (
            "onnxruntime",
            lambda: sess.run(["logits"], {"image": one_np}),
            lambda: sess.run(["logits"], {"image": many_np}),
        ),
    ):
        lat = _times(run_one, int(cfg["repeats"]))
        bt = _times(run_many, int(cfg["batch_repeats"]), warmup=2)
        results[name] = {
            "p50_ms": 1000 * statistics.median(lat),
            "p90_ms": 1000 * float(np.percentile(lat, 90)),
            "batch_ms": 1000 * statistics.median(bt),
            "ips": len(many) / statistics.median(bt),
        }
    pt, ox = results["PyTorch"], results["onnxruntime"]
    print(f"model: {predictor.describe()}")
    print(f"CPU, {threads} thread(s); torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"{'':28}{'PyTorch':>12}{'onnxruntime':>14}{'PyTorch/ORT':>14}")
    print(f"{'1 image, median (ms)':28}{pt['p50_ms']:12.3f}{ox['p50_ms']:14.3f}{pt['p50_ms'] / ox['p50_ms']:13.2f}×")
    print(f"{'1 image, p90 (ms)':28}{pt['p90_ms']:12.3f}{ox['p90_ms']:14.3f}{pt['p90_ms'] / ox['p90_ms']:13.2f}×")
    print(
        f"{f'batch {len(many)}, median (ms)':28}{pt['batch_ms']:12.1f}{ox['batch_ms']:14.1f}"
        f"{pt['batch_ms'] / ox['batch_ms']:13.2f}×"
    )
    print(
        f"{f'batch {len(many)}, images/s':28}{pt['ips']:12.0f}{ox['ips']:14.0f}{ox['ips'] / pt['ips']:13.2f}×"
        "  (ORT/PyTorch)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
