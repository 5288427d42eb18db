"""An experiment over seeds on the internal real handwriting: mean ± std of test accuracy.

    python -m benchmarks.seeds [--experiment best] [--seeds 0 1 2] [--cases writers cross] [extra overrides…]

Cases (``../shared/data/etl-dev/``, never copied into the project):

- ``writers``: ``etl8b2-46`` split by writer (112 train, 16 validation, 32 test writers);
- ``cross``: trained on ``etl8b2-46`` (validation: 10% of its writers), tested on all of
  ``etl4c-46`` (120 other writers, another scanner);
- ``etl8g71``: ``etl8g-71`` (ETL8G, the article's 71 classes, voiced forms included) split by
  writer; also printed: its test images of a voiced family read as another form of their family
  (ざ→さ, ば→ぱ, …), and its most frequent confusions of any kind, from the run's test analysis.

Each run is ``python train.py experiment=… seed=…`` in a fresh process, one after the other, in a
temporary folder; printed: per-seed test accuracy, training seconds and the 1-minute load average
at the end of the run (the machine may be shared: timings mean little without it), then mean ± std.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ETL_DEV, LEAN, train_run

CASES = {
    "writers": [f"data.root={ETL_DEV / 'etl8b2-46'}"],
    "cross": [f"data.root={ETL_DEV / 'etl8b2-46'}", f"data.test_root={ETL_DEV / 'etl4c-46'}"],
    "etl8g71": [f"data.root={ETL_DEV / 'etl8g-71'}", "analyse_test=true"],
}


def mark_errors(metrics: dict) -> list[str]:
    """The test images of a voiced family read as another form of it, as ``true→predicted``
    (one entry per image), from a run's test analysis (empty without one)."""
    out = []
    for family in (metrics.get("analysis") or {}).get("voiced", []):
        for i, true in enumerate(family["classes"]):
            for j, pred in enumerate(family["classes"]):
                out += [f"{true}→{pred}"] * (int(family["counts"][i][j]) if i != j else 0)
    return out


def confusions(metrics: dict) -> str:
    """The run's most frequent test confusions (its analysis's ``confused_pairs``), ``true→pred``
    with a count above 1 as ``×n``."""
    pairs = (metrics.get("analysis") or {}).get("confused_pairs", [])
    return " ".join(f"{p['true']}→{p['pred']}" + (f"×{p['count']}" if p["count"] > 1 else "") for p in pairs) or "none"


def run(experiment: str, case: str, seed: int, folder: Path, extra: list[str]) -> dict:
    """One seed of ``experiment`` on ``case`` in ``folder/<case>-<seed>`` (its ``metrics.json``;
    ``output_dir`` names the run folder, checkpoints and config included)."""
    overrides = [*LEAN, f"experiment={experiment}", f"seed={seed}", *CASES[case], *extra]
    return train_run(folder / f"{case}-{seed}", folder / "cache", overrides)


def parse_with_overrides(ap: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """``ap``'s arguments and the train.py overrides: every ``key=value`` (or ``~key``) argument,
    wherever it stands (after ``--seeds`` too). Exits when the internal data is not there."""
    argv = sys.argv[1:] if argv is None else argv
    overrides = [a for a in argv if ("=" in a or a.startswith("~")) and not a.startswith("-")]
    args = ap.parse_args([a for a in argv if a not in overrides])
    if not ETL_DEV.is_dir():
        raise SystemExit(f"{ETL_DEV}: the internal data is not here")
    return args, overrides


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="best")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args, overrides = parse_with_overrides(ap, argv)
    with tempfile.TemporaryDirectory(prefix="maist-seeds-") as tmp:  # nothing derived from ETL outlives it
        for case in args.cases:
            accs = []
            for seed in args.seeds:
                m = run(args.experiment, case, seed, Path(tmp), overrides)
                accs.append(100 * m["test/acc"])
                marks = mark_errors(m)
                print(
                    f"{args.experiment} {case} seed {seed}: test/acc {accs[-1]:.2f}%  "
                    + (f"val/acc_best {100 * m['val/acc_best']:.2f}%  " if "val/acc_best" in m else "no validation  ")
                    + (f"voiced-family errors {len(marks)} {' '.join(marks)}  " if m.get("analysis") else "")
                    + (f"(all: {confusions(m)})  " if m.get("analysis") else "")
                    + f"train {m['train_seconds']:.0f} s  (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(
                f"{args.experiment} {case}: {' / '.join(f'{a:.2f}' for a in accs)}%  "
                f"mean {statistics.mean(accs):.2f} ± {std:.2f}%",
                flush=True,
            )


if __name__ == "__main__":
    main()
