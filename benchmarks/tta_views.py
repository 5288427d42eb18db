"""Which test-time views: errors of the same trained networks read through other view sets.

    python -m benchmarks.tta_views [--experiment best] [--seeds 0 1 2] [--case writers] [extra overrides…]

Each seed trains ``experiment`` once (``python train.py`` in a fresh process, the case of
:mod:`benchmarks.seeds`, in a temporary folder deleted at the end). The network inside its
``TestTimeAugmented`` then reads the validation and test images through every candidate view
once; a view set's prediction is the mean of its views' probabilities, exactly as
:class:`maist.models.TestTimeAugmented` averages them. Printed, for every symmetric set (the image
as it is, plus rotations ±r°, scales 1 ± s and stroke blends ±w): errors per seed on validation
and on test, the configured set marked ``*``, sorted by validation errors (the honest way to
choose), then test errors, then fewer views (each costs one forward pass): the first ``--top``
rows, the configured set and the image alone.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmarks.common import datamodule
from benchmarks.seeds import CASES, parse_with_overrides, run
from maist.checkpoint import load_module
from maist.config import register_configs
from maist.inference import logits
from maist.models.tta import TestTimeAugmented, apply_view, check_view

ROTATE = (0, 3, 6, 9)  # degrees: ±r
SCALE = (0, 0.04, 0.08, 0.12)  # 1 ± s
STROKE = (0, 0.15, 0.3, 0.5)  # ±w


def view_sets() -> dict[str, list[dict]]:
    """Every symmetric set of the grid, by a short name (``r6 s0.08 w0.3``)."""
    sets = {}
    for r, s, w in itertools.product(ROTATE, SCALE, STROKE):
        views = [{}]
        views += [{"rotate": r}, {"rotate": -r}] if r else []
        views += [{"scale": round(1 + s, 2)}, {"scale": round(1 - s, 2)}] if s else []
        views += [{"stroke": w}, {"stroke": -w}] if w else []
        sets[f"r{r} s{s} w{w}"] = views
    return sets


def key(view: dict) -> tuple:
    v = check_view(view)
    return (round(v["rotate"], 4), round(v["scale"], 4), round(v["stroke"], 4))


def view_probs(run: Path, views: list[dict]) -> dict[str, tuple[dict, torch.Tensor]]:
    """For validation and test: {view key: probabilities} and the targets, of the run's network."""
    module, _ = load_module(run / "checkpoints" / "last.ckpt")
    if not isinstance(module.net, TestTimeAugmented):
        raise SystemExit(f"{run}: the experiment's network has no test-time views (model.net is not TestTimeAugmented)")
    net = module.net.net
    dm = datamodule(OmegaConf.load(run / ".hydra" / "config.yaml"))
    out = {}
    for part in ("val", "test"):
        p = getattr(dm, f"{part}_set")
        probs = {}
        for v in {key(v): v for v in views}.values():
            probs[key(v)] = logits(net, p, view=partial(apply_view, **check_view(v))).softmax(-1)
        out[part] = (probs, p.targets)
    return out


def errors(probs: dict, targets: torch.Tensor, views: list[dict]) -> int:
    mean = torch.stack([probs[key(v)] for v in views]).mean(0)
    return int((mean.argmax(-1) != targets).sum())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="best")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--case", default="writers", choices=list(CASES))
    ap.add_argument("--top", type=int, default=20, help="rows printed (the configured set and the image alone always)")
    args, overrides = parse_with_overrides(ap, argv)
    register_configs()
    torch.set_num_threads(1)
    sets = view_sets()
    every_view = [v for views in sets.values() for v in views]
    results, configured = [], None
    with tempfile.TemporaryDirectory(prefix="maist-views-") as tmp:  # nothing derived from ETL outlives it
        for seed in args.seeds:
            m = run(args.experiment, args.case, seed, Path(tmp), overrides)
            folder = Path(m["output_dir"])
            print(f"seed {seed}: test/acc {100 * m['test/acc']:.2f}% with the configured views", flush=True)
            configured = [dict(v) for v in OmegaConf.load(folder / ".hydra" / "config.yaml").model.net.views]
            results.append(view_probs(folder, every_view + configured))
    n = {part: len(results[0][part][1]) for part in ("val", "test")}
    if not any({key(v) for v in views} == {key(v) for v in configured} for views in sets.values()):
        sets = {"configured": configured, **sets}
    rows = []
    for name, views in sets.items():
        val = [errors(*r["val"], views) for r in results]
        test = [errors(*r["test"], views) for r in results]
        mark = "*" if {key(v) for v in views} == {key(v) for v in configured} else " "
        rows.append((sum(val), sum(test), len(views), mark, name, val, test))
    print(
        f"\n{args.experiment} on {args.case}, seeds {args.seeds}: errors per seed "
        f"(validation {n['val']:,} images, test {n['test']:,}); * = the configured views"
    )
    print(f"  {'view set':14s} {'views':>5s}  {'val errors':>18s}  {'test errors':>22s}  test acc (mean)")
    ranked = sorted(rows, key=lambda r: r[:3])
    for rank, (_, test_sum, count, mark, name, val, test) in enumerate(ranked, 1):
        if rank > args.top and mark == " " and count > 1:
            continue
        acc = 100 * (1 - test_sum / (n["test"] * len(test)))
        print(f"{mark} {name:14s} {count:5d}  {str(val):>18s}  {str(test):>22s}  {acc:.2f}%  (#{rank})")


if __name__ == "__main__":
    main()
