"""Training images/s on a GPU: the article's CNN, ``best`` and ``kanji``, through the project's
Trainer and in a plain PyTorch loop, in fp32 and bf16, at the configured batch and (but kanji) at a
large one.

    python -m benchmarks.gpu_throughput [--root DIR] [--steps 300] [--warmup 50] [--big-batch 1024]
                                        [--kanji-files 4] [--whole]

For each recipe (``experiment=seed_stepped_dropout``, the article's CNN with its keep-probability
schedule, and ``experiment=best``, with its augmentation and one-cycle rate) the benchmark builds the
data module and the model from the Hydra configs with ``trainer=gpu`` and measures:

- ``lightning``: ``Trainer.fit`` from ``conf/trainer/gpu.yaml`` (images on the device, batches
  indexed there, the schedule callbacks, no logger, no validation, no checkpoints);
- ``plain``: the same network, optimizer, loss, augmentation and batch size in a bare loop over
  the same device tensors (``torch.autocast`` for bf16).

``experiment=kanji`` (3,036 classes at 64×64, batch 256) trains on ``--kanji-files`` generated
ETL9G-shaped files (``benchmarks.bench_memory``'s, 12,144 records each; 0: skip); its rows also
give the seconds one pass over the whole of ETL9G (607,200 records) would take at that speed.

Only steps after ``--warmup`` count, timed between CUDA-synchronised clocks. ``--whole`` also
runs ``train.py experiment=best trainer=gpu`` and the article's 20,000 steps in fresh processes
(validations, checkpoints, test, TensorBoard) and prints their training seconds.

Without ``--root`` it runs on the generated sample shipped in the package (the speed does not
depend on the handwriting). Needs a CUDA device; it is a benchmark, never part of the tests.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from benchmarks.bench_memory import generate
from benchmarks.common import bench_trainer, compose_cfg, configured_callbacks, datamodule, plain_loop, train_run
from maist.config import register_configs
from maist.run import build_module

RECIPES = {"article CNN": "seed_stepped_dropout", "best": "best"}  # on --root (default: the shipped sample)
ETL9G_RECORDS = 607_200  # a pass over the whole of ETL9G, for the kanji rows
PRECISIONS = ("32-true", "bf16-mixed")
GPU = ["trainer=gpu"]  # the benchmark config on the GPU trainer (and without a cache: data.cache_dir=false)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class SyncClock(L.Callback):
    """CUDA-synchronised perf_counter after step ``warmup`` and after the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1 = warmup, 0.0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step in (self.warmup, trainer.max_steps):
            sync()
            if step == self.warmup:
                self.t0 = time.perf_counter()
            else:
                self.t1 = time.perf_counter()


def lightning_rate(cfg, dm, steps: int, warmup: int) -> float:
    model = build_module(cfg, dm)
    clock = SyncClock(warmup)
    trainer = bench_trainer(cfg, warmup + steps, configured_callbacks(cfg, logger=False) + [clock], logger=False)
    trainer.fit(model, datamodule=dm)
    return steps * int(cfg.data.batch_size) / (clock.t1 - clock.t0)


def plain_rate(cfg, dm, steps: int, warmup: int, precision: str) -> float:
    """Images/s of the plain loop (benchmarks.common.plain_loop) on the device, after ``warmup`` steps."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_module(cfg, dm).to(device)
    t0 = 0.0
    for step in plain_loop(cfg, model, dm.train_set.to(device), warmup + steps, precision):
        if step == warmup:
            sync()
            t0 = time.perf_counter()
    sync()
    return steps * int(cfg.data.batch_size) / (time.perf_counter() - t0)


def measure(name: str, experiment: str, root, cache_dir: str, out: str, args, big: bool, per_pass: int = 0) -> None:
    """Print ``experiment``'s rows: Trainer and plain loop, each precision, at its batch (and at
    ``--big-batch`` if ``big``); with ``per_pass``, the seconds a pass over that many records takes."""
    base = compose_cfg(experiment, root, cache_dir, out, GPU)
    L.seed_everything(0, workers=False)
    dm = datamodule(base)
    batches = [int(base.data.batch_size)] + ([args.big_batch] if big and args.big_batch else [])
    for bs in batches:
        for precision in PRECISIONS:
            cfg = compose_cfg(experiment, root, cache_dir, out, [*GPU, f"trainer.precision={precision}"])
            cfg.data.batch_size = bs
            dm.hparams.batch_size = bs
            lit = lightning_rate(cfg, dm, args.steps, args.warmup)
            plain = plain_rate(cfg, dm, args.steps, args.warmup, precision)
            row = f"{name:12s} {bs:5d} {precision:>10s} {lit:16,.0f} {plain:12,.0f} {lit / plain:6.2f}"
            if per_pass:
                row += f"   pass {per_pass / lit:.1f} s (plain {per_pass / plain:.1f} s)"
            print(row, flush=True)


def whole_run(experiment: str, root: str | None) -> dict:
    """``train.py experiment=… trainer=gpu`` in a fresh process, without a cache: its metrics and
    the process's seconds."""
    t0 = time.perf_counter()
    overrides = [f"experiment={experiment}", "trainer=gpu", *([f"data.root={root}"] if root else [])]
    metrics = train_run(Path(tempfile.mkdtemp(prefix="maist-gpu-run-")), "false", overrides)
    metrics["process_seconds"] = time.perf_counter() - t0
    return metrics


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="ETL data (default: the generated sample)")
    p.add_argument("--steps", type=int, default=300, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--big-batch", type=int, default=1024, help="the second batch size measured (0: skip)")
    p.add_argument("--kanji-files", type=int, default=4, help="ETL9G-shaped files kanji trains on (0: skip it)")
    p.add_argument("--whole", action="store_true", help="also time whole train.py runs in fresh processes")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_throughput: no CUDA device here (this benchmark measures a GPU)")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    register_configs()
    torch.backends.cudnn.benchmark = True
    out = tempfile.mkdtemp(prefix="maist-gpu-")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, lightning {L.__version__}", flush=True)
    print(
        f"{'recipe':12s} {'batch':>5s} {'precision':>10s} {'lightning img/s':>16s} {'plain img/s':>12s} {'ratio':>6s}"
    )
    for name, experiment in RECIPES.items():
        measure(name, experiment, args.root, "false", out, args, big=True)
    if args.kanji_files:
        folder = Path(out) / "ETL9G"
        n = generate(folder, args.kanji_files)
        print(f"kanji: {n:,} generated ETL9G-shaped records (not ETL data); 'pass' = seconds per pass over ETL9G")
        measure("kanji", "kanji", str(folder), str(Path(out) / "cache"), out, args, big=False, per_pass=ETL9G_RECORDS)
    if args.whole:
        print("\nwhole runs (train.py, trainer=gpu: validation, checkpoints, test, TensorBoard):")
        for experiment in ("best", "seed_stepped_dropout"):
            m = whole_run(experiment, args.root)
            print(
                f"  experiment={experiment}: {m.get('train_seconds', float('nan')):.1f} s training, "
                f"{m['process_seconds']:.1f} s process, test/acc {m.get('test/acc', float('nan')):.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
