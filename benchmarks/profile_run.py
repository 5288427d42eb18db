"""Where the time of a short training run goes: data, augment, forward, loss/metrics/logging,
backward, optimizer, logger writes, and the rest of Lightning's loop.

    python -m benchmarks.profile_run [--experiment best] [--root DIR] [--steps 200] [--quick] [overrides…]

Builds the run from the project's Hydra configs (``conf/train.yaml`` + ``experiment=…`` +
any extra ``key=value`` overrides), runs ``Trainer.fit`` for ``--steps`` steps with the
configured logger (into a temporary folder) and no validation, and times each part with hooks:

- data: fetching each batch from the train loader;
- augment / net forward: forward hooks on ``module.augment`` and ``module.net``;
- loss + metric + self.log: the rest of ``training_step`` (``self.log`` alone is also shown);
- backward: ``on_before_backward`` → ``on_after_backward``;
- optimizer: ``optimizer.step`` (pre/post hooks) minus the closure that Lightning runs inside it
  (training_step, zero_grad, backward); ``zero_grad``; scheduler: ``lr_scheduler.step``;
- logger writes: the loggers' ``log_metrics``;
- Lightning loop (rest): the step's wall time minus all of the above.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import torch

from benchmarks.common import bench_trainer, compose_cfg, configured_callbacks, configured_loggers, datamodule
from maist.run import build_module


class Timers:
    def __init__(self):
        self.total = defaultdict(float)
        self.count = defaultdict(int)
        self.open: dict[str, float] = {}
        self.active = False

    def start(self, key):
        self.open[key] = time.perf_counter()

    def stop(self, key):
        t = self.open.pop(key, None)
        if t is not None and self.active:
            self.total[key] += time.perf_counter() - t
            self.count[key] += 1

    def wrap(self, obj, name, key):
        fn = getattr(obj, name)

        def timed(*a, **k):
            self.start(key)
            try:
                return fn(*a, **k)
            finally:
                self.stop(key)

        setattr(obj, name, timed)

    def hooks(self, module, key):
        module.register_forward_pre_hook(lambda *_: self.start(key))
        module.register_forward_hook(lambda *_: self.stop(key))


class TimedLoader:
    """Wraps the train loader: times each ``next`` and ``convert`` (the datamodule's uint8 → float
    step, which Lightning calls only when it is given the datamodule)."""

    def __init__(self, loader, timers: Timers, convert=lambda batch: batch):
        self.loader, self.timers, self.convert = loader, timers, convert

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            self.timers.start("data")
            try:
                batch = self.convert(next(it))
            except StopIteration:
                self.timers.open.pop("data", None)
                return
            self.timers.stop("data")
            yield batch


class StepHooks(L.Callback):
    def __init__(self, timers: Timers, warmup: int):
        self.t, self.warmup = timers, warmup
        self.t0 = self.t1 = None

    def on_train_start(self, trainer, pl_module):
        for opt in trainer.optimizers:
            opt.register_step_pre_hook(lambda *_: self.t.start("optimizer step"))
            opt.register_step_post_hook(lambda *_: self.t.stop("optimizer step"))
            self.t.wrap(opt, "zero_grad", "optimizer zero_grad")
        for cfg in trainer.lr_scheduler_configs:
            self.t.wrap(cfg.scheduler, "step", "scheduler step")
        for lg in trainer.loggers:
            self.t.wrap(lg, "log_metrics", "logger writes")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.t.active, self.t0 = True, time.perf_counter()

    def on_before_backward(self, trainer, pl_module, loss):
        self.t.start("backward")

    def on_after_backward(self, trainer, pl_module):
        self.t.stop("backward")

    def on_train_end(self, trainer, pl_module):
        self.t1 = time.perf_counter()


def profile(cfg, steps: int, warmup: int) -> tuple[dict, float, int]:
    L.seed_everything(int(cfg.seed), workers=False)
    dm = datamodule(cfg)
    model = build_module(cfg, dm)
    t = Timers()
    t.hooks(model.net, "net forward")
    if model.augment is not None:
        t.hooks(model.augment, "augment")
    t.wrap(model, "training_step", "training_step (all)")
    t.wrap(model, "log", "self.log")
    hooks = StepHooks(t, warmup)
    loggers = configured_loggers(cfg)
    trainer = bench_trainer(cfg, warmup + steps, configured_callbacks(cfg, bool(loggers)) + [hooks], loggers)
    loader = TimedLoader(dm.train_dataloader(), t, lambda batch: dm.on_after_batch_transfer(batch, 0))
    trainer.fit(model, train_dataloaders=loader)
    return dict(t.total), hooks.t1 - hooks.t0, int(cfg.data.batch_size)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="best")
    p.add_argument("--root", default=None, help="ETL8G data (default: the generated sample)")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "maist-bench-cache"))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="default: the experiment's torch_threads")
    p.add_argument("--quick", action="store_true", help="about a minute: 60 steps")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, key=value")
    args = p.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 60)
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    out = tempfile.mkdtemp(prefix="maist-profile-")
    cfg = compose_cfg(args.experiment, args.root, args.cache_dir, out, args.overrides)
    threads = args.threads or cfg.get("torch_threads") or torch.get_num_threads()
    torch.set_num_threads(int(threads))

    totals, wall, bs = profile(cfg, args.steps, args.warmup)
    ts = totals.get("training_step (all)", 0.0)
    inner = sum(totals.get(k, 0.0) for k in ("augment", "net forward", "self.log"))
    rows = [
        ("data (loader next)", totals.get("data", 0.0)),
        ("augment", totals.get("augment", 0.0)),
        ("net forward", totals.get("net forward", 0.0)),
        ("loss + rest of training_step", ts - inner),
        ("self.log", totals.get("self.log", 0.0)),
        ("backward", totals.get("backward", 0.0)),
        # Lightning runs training_step, zero_grad and backward inside optimizer.step(closure)
        (
            "optimizer step (without closure)",
            totals.get("optimizer step", 0.0)
            - ts
            - totals.get("backward", 0.0)
            - totals.get("optimizer zero_grad", 0.0),
        ),
        ("optimizer zero_grad", totals.get("optimizer zero_grad", 0.0)),
        ("scheduler step", totals.get("scheduler step", 0.0)),
        ("logger writes", totals.get("logger writes", 0.0)),
    ]
    rest = wall - sum(v for _, v in rows)
    rows.append(("Lightning loop (rest)", rest))
    print(
        f"\nprofile: experiment={args.experiment} {' '.join(args.overrides)}  batch {bs}, {threads} thread(s), "
        f"{args.steps} steps after {args.warmup} warm-up, {wall:.2f} s ({args.steps * bs / wall:.0f} images/s)"
    )
    print(f"{'part':34s} {'ms/step':>9s} {'share':>7s}")
    for name, v in rows:
        print(f"{name:34s} {v / args.steps * 1e3:9.2f} {v / wall:7.1%}")
    print(f"{'total':34s} {wall / args.steps * 1e3:9.2f} {1:7.1%}")


if __name__ == "__main__":
    main()
