"""Batches per second from MaistDataModule's train loader: in-process vs DataLoader workers.

    python -m benchmarks.bench_loader [--root DIR] [--batches 2000]

Batches are index tensors into in-memory tensors (no per-sample collation), so a worker process
only adds pickling and IPC; this measures by how much, side by side, alternating the settings.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks.common import compose_cfg, plain_loop
from maist.data.datamodule import MaistDataModule
from maist.run import build_module


def rate(dm: MaistDataModule, batches: int) -> float:
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # workers started
    t = time.perf_counter()
    n = 0
    while n < batches:
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += 1
    return batches / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="ETL8G path (default: the shipped sample)")
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results: dict[int, list[float]] = {0: [], 1: [], 2: []}
    for _ in range(args.rounds):
        for workers in results:
            dm = MaistDataModule(root=args.root, batch_size=50, num_workers=workers)
            dm.setup()
            results[workers].append(rate(dm, args.batches))
    base = max(results[0])
    print(f"{'num_workers':>12} {'batches/s (best of rounds)':>28} {'vs in-process':>14}")
    for workers, rates in results.items():
        print(f"{workers:>12} {max(rates):>28,.0f} {max(rates) / base:>13.2f}×")
    step = train_step_seconds(dm)
    print(
        f"one training step of the article's CNN at batch 50: {step * 1e3:.1f} ms; in-process "
        f"batching costs {100 / (base * step):.2f}% of it"
    )


def train_step_seconds(dm: MaistDataModule, steps: int = 30) -> float:
    """Seconds of one step of the article's CNN (experiment=seed_cnn, batch 50) in the plain loop
    (benchmarks.common.plain_loop) on ``dm``'s training images; only the config is composed."""
    cfg = compose_cfg("seed_cnn", None, "false", tempfile.gettempdir())
    model = build_module(cfg, dm)
    t = time.perf_counter()
    for _ in plain_loop(cfg, model, dm.train_set, steps):
        pass
    return (time.perf_counter() - t) / steps


if __name__ == "__main__":
    main()
