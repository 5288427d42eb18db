"""Test accuracy against training wall-clock: the article's best recipe against ``best``.

    python -m benchmarks.time_to_accuracy [--root DIR] [--article-steps 2000] [--quick] [--threads 1]

Both runs are built from the project's Hydra configs (``experiment=seed_stepped_dropout`` and
``experiment=best``, with their model, optimizer, schedule callbacks, augmentation, batch size and
preprocessing) and trained by the ``Trainer`` that ``train.py`` makes (``maist.trainer.make_trainer``,
through :mod:`benchmarks.common`'s helpers), on the same data
and the same writer-disjoint split (``data.split_by=writer``: the article's config says random,
which would put test writers into training). Differences from a plain ``train.py`` run, the same
for both: no validation and no checkpoints (they are not training), no logger, the feature-map
callback and the LR monitor off. A callback evaluates test accuracy ``--points`` times in the run;
the clock stops while it does, so the curves show training time only.

``--article-steps`` cuts the article's 20,000 steps to fit the time (its rate and dropout tables
are keyed by step, so a cut run follows the same schedule up to that step); the output says so.
Printed: both curves, then the time each recipe needs to reach the article run's final accuracy
and their ratio.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from benchmarks.common import ETL_DEV, bench_trainer, compose_cfg, configured_callbacks, datamodule
from maist.config import register_configs
from maist.inference import logits
from maist.run import build_module

DEFAULT_ROOT = ETL_DEV / "etl8b2-46"


class AccuracyClock(L.Callback):
    """Every ``every`` steps: accuracy on ``part`` (a data module's part) and the training seconds
    so far (eval time excluded)."""

    def __init__(self, part, every: int):
        self.part, self.every = part, max(1, every)
        self.curve: list[tuple[int, float, float]] = []
        self.t0 = 0.0
        self.paused = 0.0

    def accuracy(self, module) -> float:
        return float((logits(module, self.part).argmax(1) == self.part.targets).float().mean())

    def on_train_start(self, trainer, pl_module):
        self.t0, self.paused = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every and step != trainer.max_steps:
            return
        now = time.perf_counter()
        acc = self.accuracy(pl_module)
        self.curve.append((step, now - self.t0 - self.paused, acc))
        self.paused += time.perf_counter() - now


def train_curve(cfg, points: int) -> tuple[list, dict]:
    L.seed_everything(int(cfg.seed), workers=False)
    dm = datamodule(cfg)
    model = build_module(cfg, dm)
    steps = int(cfg.trainer.max_steps)
    clock = AccuracyClock(dm.test_set, steps // points)
    callbacks = configured_callbacks(cfg, logger=False) + [clock]
    trainer = bench_trainer(cfg, steps, callbacks, logger=False)
    trainer.fit(model, datamodule=dm)
    info = {
        "steps": steps,
        "batch": int(cfg.data.batch_size),
        "image_size": int(cfg.data.image_size),
        "test": len(dm.test_set),
        "train": len(dm.train_set),
    }
    return clock.curve, info


def time_to(curve, target: float) -> float | None:
    """First training time at which the curve reaches ``target`` (None: never)."""
    return next((t for _, t, acc in curve if acc >= target - 1e-12), None)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(DEFAULT_ROOT))
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "maist-bench-cache"))
    p.add_argument("--article", default="seed_stepped_dropout")
    p.add_argument("--article-steps", type=int, default=2000, help="cut the article's 20,000 steps (0: all)")
    p.add_argument("--best", default="best")
    p.add_argument("--best-steps", type=int, default=0, help="override best's trainer.max_steps (0: as configured)")
    p.add_argument("--points", type=int, default=10, help="evaluations per run")
    p.add_argument("--threads", type=int, default=1, help="torch threads for both runs")
    p.add_argument("--quick", action="store_true", help="about 1–2 minutes: 600 article steps, best cut to 150")
    args = p.parse_args(argv)
    if args.quick:
        args.article_steps, args.best_steps, args.points = 600, 150, 6
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    register_configs()
    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp(prefix="maist-tta-")

    runs = {}
    art_extra = [f"trainer.max_steps={args.article_steps}"] if args.article_steps else []
    best_extra = [f"trainer.max_steps={args.best_steps}"] if args.best_steps else []
    for name, exp, extra in (("article", args.article, art_extra), ("best", args.best, best_extra)):
        # the writer-disjoint split whatever the experiment says; no LR monitor (no logger)
        cfg = compose_cfg(exp, args.root, args.cache_dir, f"{out}/{name}", ["data.split_by=writer", *extra])
        curve, info = train_curve(cfg, args.points)
        runs[name] = (exp, curve, info)

    print(
        f"\ntime to accuracy on {args.root} (writer-disjoint split), {args.threads} thread(s), "
        "training seconds (evaluation excluded)"
    )
    for name, (exp, curve, info) in runs.items():
        cut = ""
        if name == "article" and args.article_steps:
            cut = f"  [CUT to {args.article_steps:,} of the article's 20,000 steps]"
        if name == "best" and args.best_steps:
            cut = f"  [max_steps overridden to {args.best_steps}]"
        print(
            f"\n{name}: experiment={exp}, {info['steps']:,} steps × batch {info['batch']}, "
            f"{info['image_size']}×{info['image_size']}, {info['train']:,} train / {info['test']:,} test{cut}"
        )
        print(f"  {'step':>7s} {'seconds':>9s} {'test acc':>9s}")
        for step, t, acc in curve:
            print(f"  {step:7d} {t:9.1f} {acc:9.4f}")
    target = runs["article"][1][-1][2]
    t_art = time_to(runs["article"][1], target)
    t_best = time_to(runs["best"][1], target)
    print(f"\ntarget = the article recipe's final accuracy {target:.4f}")
    print(f"  article reaches it after {t_art:.1f} s" if t_art is not None else "  article: never")
    if t_best is None:
        print(f"  best never reaches it (final {runs['best'][1][-1][2]:.4f})")
    else:
        print(f"  best reaches it after {t_best:.1f} s  →  {t_art / max(t_best, 1e-9):.1f}× faster")
    print(
        f"  final: article {target:.4f} in {runs['article'][1][-1][1]:.1f} s; "
        f"best {runs['best'][1][-1][2]:.4f} in {runs['best'][1][-1][1]:.1f} s"
    )


if __name__ == "__main__":
    main()
