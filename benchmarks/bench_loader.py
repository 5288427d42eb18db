"""Batches per second from MaistDataModule's train loader: in-process vs DataLoader workers.

    python -m benchmarks.bench_loader [--root DIR] [--batches 2000]

Batches are index tensors into in-memory tensors (no per-sample collation), so a worker process
only adds pickling and IPC; this measures by how much, side by side, alternating the settings.
"""

from __future__ import annotations

import argparse
import time

import torch

from maist.data.datamodule import MaistDataModule


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
    step = train_step_seconds()
    print(
        f"one training step of the article's CNN at batch 50: {step * 1e3:.1f} ms; in-process "
        f"batching costs {100 / (base * step):.2f}% of it"
    )


def train_step_seconds(steps: int = 30) -> float:
    from maist.models import DeepMnistCNN

    net = DeepMnistCNN(71)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x, y = torch.rand(50, 1, 28, 28), torch.randint(71, (50,))
    t = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
        opt.step()
    return (time.perf_counter() - t) / steps


if __name__ == "__main__":
    main()
