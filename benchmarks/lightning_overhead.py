"""Lightning's cost per training step: the project's Trainer loop against a plain PyTorch loop.

    python -m benchmarks.lightning_overhead [--root DIR] [--quick] [--threads 1] [--steps 200] [--rounds 3]

For the article's CNN (``experiment=seed_cnn``) and the linear model (``experiment=seed_beginner``),
both built from the project's Hydra configs: ``MaistModule`` + ``MaistDataModule`` batches in a
``Trainer`` made as ``train.py`` makes it (``maist.trainer.make_trainer``) with the configured logger
(TensorBoard, into a temporary folder), callbacks (minus checkpointing and feature-map figures) and
schedules, no validation, no progress bar; against a plain loop over the same in-memory tensors
with the same network, optimizer, loss, batch size (50) and thread count. The two alternate in
rounds (L, plain, L, plain, …) so that machine noise falls on both; only steps after a warm-up
count. Each step is timed: the table gives the mean (what a run takes) and the median (a typical
step, less moved by other processes taking the cores). Variants of the Lightning side show where
its overhead comes from: without the logger, and with a bare ``training_step`` (no finite-loss
check, no scalars on logging steps).

Then the whole ``experiment=seed_beginner`` run (``train.py`` in a fresh process: 10,000 steps with
its validations, callbacks and logger) against the same 10,000 steps in the plain loop.

Without ``--root`` it runs on the generated sample shipped in the package (speed does not
depend on the handwriting).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from benchmarks.common import (
    bench_trainer,
    compose_cfg,
    configured_callbacks,
    configured_loggers,
    datamodule,
    plain_loop,
    train_run,
)
from maist.module import MaistModule
from maist.run import build_module


class StepClock(L.Callback):
    """perf_counter at the end of each training batch."""

    def __init__(self):
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ends.append(time.perf_counter())


class QuietModule(MaistModule):
    """MaistModule with a bare ``training_step``: forward and loss only (diagnosis only)."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.augment is not None:
            x = self.augment(x)
        return self.loss(self(x), y)

    training_step.__signature__ = inspect.signature(training_step)  # as MaistModule's


def lightning_steps(cfg, dm, state, steps: int, warmup: int, logger: bool = True, quiet: bool = False) -> list[float]:
    """The seconds of each of ``steps`` training steps after ``warmup`` in a fresh Trainer.fit."""
    model = build_module(cfg, dm)
    if quiet:
        model = QuietModule(**model.hparams)
    model.load_state_dict(state)
    clock = StepClock()
    loggers = configured_loggers(cfg) if logger else False
    trainer = bench_trainer(cfg, warmup + steps, configured_callbacks(cfg, bool(loggers)) + [clock], loggers)
    trainer.fit(model, datamodule=dm)
    return [b - a for a, b in zip(clock.ends[warmup - 1 : -1], clock.ends[warmup:])]


def plain_steps(cfg, dm, state, steps: int, warmup: int) -> list[float]:
    """The same work in the plain loop (benchmarks.common.plain_loop over the in-memory training
    part): the seconds of each step after ``warmup``."""
    model = build_module(cfg, dm)
    model.load_state_dict(state)
    # starts[i]: when step i starts (the end of step i - 1); the last: when the last step ended
    starts = [time.perf_counter() for _ in plain_loop(cfg, model, dm.train_set, warmup + steps)]
    starts.append(time.perf_counter())
    return [b - a for a, b in zip(starts[warmup:-1], starts[warmup + 1 :])]


def bench(name: str, experiment: str, args, variants: bool) -> list[tuple]:
    tmp = tempfile.mkdtemp(prefix="maist-overhead-")
    cfg = compose_cfg(experiment, args.root, args.cache_dir, tmp)
    L.seed_everything(0, workers=False)
    dm = datamodule(cfg)
    state = copy.deepcopy(build_module(cfg, dm).state_dict())
    kinds = [("lightning", {}), ("plain", None)]
    if variants:
        kinds += [("lightning, no logger", {"logger": False}), ("lightning, bare training_step", {"quiet": True})]
    times: dict[str, list[float]] = {k: [] for k, _ in kinds}  # every timed step's seconds
    for _ in range(args.rounds):
        for k, kw in kinds:
            if kw is None:
                times[k] += plain_steps(cfg, dm, state, args.steps, args.warmup)
            else:
                times[k] += lightning_steps(cfg, dm, state, args.steps, args.warmup, **kw)
    bs = int(cfg.data.batch_size)
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    return [
        (name, k, bs / mean[k], mean[k] * 1e6, median[k] * 1e6, mean["plain"] / mean[k], median["plain"] / median[k])
        for k, _ in kinds
    ]


def seed_beginner_run(args) -> tuple[float, float]:
    """``train.py experiment=seed_beginner`` (10,000 steps, validation every 1,000, its callbacks and
    logger) in a fresh process: its training seconds, against the same 10,000 steps in a plain loop."""
    tmp = Path(tempfile.mkdtemp(prefix="maist-seed-beginner-"))
    overrides = ["experiment=seed_beginner", f"torch_threads={args.threads}"]
    m = train_run(tmp / "run", args.cache_dir, [*overrides, *([f"data.root={args.root}"] if args.root else [])])
    lightning_s = m["train_seconds"]
    cfg = compose_cfg("seed_beginner", args.root, args.cache_dir, str(tmp / "plain"))
    dm = datamodule(cfg)
    state = build_module(cfg, dm).state_dict()
    plain_s = sum(plain_steps(cfg, dm, state, int(cfg.trainer.max_steps), 0))
    return lightning_s, plain_s


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="ETL8G data (default: the generated sample)")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "maist-bench-cache"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=200, help="timed steps per round and side")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-variants", action="store_true", help="skip the diagnosis variants")
    p.add_argument("--quick", action="store_true", help="about a minute: fewer steps and rounds")
    p.add_argument("--no-seed-beginner", action="store_true", help="skip the whole seed_beginner run")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.warmup = 60, 2, 10
    torch.set_num_threads(args.threads)
    import logging
    import warnings

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    rows = []
    for name, exp in (("article CNN", "seed_cnn"), ("linear", "seed_beginner")):
        rows += bench(name, exp, args, variants=not args.no_variants)
    print(
        f"\nLightning vs plain PyTorch, batch 50, {args.threads} thread(s), {args.rounds} alternating rounds "
        f"× {args.steps} timed steps (after {args.warmup} warm-up) per side"
    )
    print("(mean: all timed steps, what a run takes; median: a typical step, less moved by other work)")
    head = ("images/s", "mean µs", "median µs", "vs plain (mean)", "(median)")
    print(f"{'model':12s} {'loop':30s} " + " ".join(f"{h:>10s}" for h in head[:3]) + f" {head[3]:>16s} {head[4]:>9s}")
    for name, k, ips, mean_us, median_us, ratio, median_ratio in rows:
        print(f"{name:12s} {k:30s} {ips:10.0f} {mean_us:10.0f} {median_us:10.0f} {ratio:15.3f}× {median_ratio:8.3f}×")
    if not args.no_seed_beginner:
        lightning_s, plain_s = seed_beginner_run(args)
        print(
            f"\nexperiment=seed_beginner (10,000 steps with its validations, callbacks and logger): trained in "
            f"{lightning_s:.1f} s; the same steps in a plain loop {plain_s:.1f} s: {lightning_s / plain_s:.2f}× the "
            "plain loop's time"
        )


if __name__ == "__main__":
    main()
