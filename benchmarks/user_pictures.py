"""Other people's pictures: accuracy through ``maist.predict`` with and without stroke-width matching.

    python -m benchmarks.user_pictures [--train etl4c etl8b2] [--experiment best] [--seed 0] [--per-source 600]

A model trained on one internal set's writers (``experiment=best`` on its writer split, trained
here in a temporary folder: ``etl4c-46``, grey scans with ETL8G-like brush strokes, ~2.6 px wide
at 28×28, and ``etl8b2-46``, binarised, ~1.9 px; ``--train etl8g71``: real ETL8G, 71 classes,
voiced forms included, reading both of the others) reads pictures unlike its training images,
written as PNG files (dark ink on white paper) and read back
through :class:`maist.predict.Predictor` exactly as ``python -m maist.predict`` reads a user's
files. Each picture is predicted twice, side by side: as before (no stroke matching) and with its
strokes made as wide as the training images' (:func:`maist.images.match_stroke_width`, the
checkpoint's ``stroke_width`` hparam or, when it has none, :func:`maist.images.stroke_width` of the
training images measured here).

Sources (the 46 basic hiragana, which every model was trained on):

- the training set's own writers held out of training (the datamodule's test split);
- the other sets' writers (another scanner, other people);
- ``fonts``: the shipped sample's font renderings (``maist/data/sample``), 60 "writers".

Pens: ``scan`` is the record itself as a picture (dark on white, 128 × 127); every other pen
redraws the character's skeleton (Zhang–Suen thinning of the preprocessed character at 128 px)
with a round pen of the given width on a canvas of the given size, the character filling ~80% of
it, with light paper noise:

=============  ==========  ==========================================  =====================
pen            canvas      width (share of the character's height)     like
=============  ==========  ==========================================  =====================
``fine``       84 × 83     2.5% (≈ 1.7 px)                              the issue's pen scans
``hairline``   400 × 400   1%   (≈ 3 px)                                a fine pen, photographed
``ballpoint``  200 × 200   4%   (≈ 6 px)                                a ball-point
``marker``     84 × 83     16%  (≈ 11 px)                               a felt marker
=============  ==========  ==========================================  =====================

Everything derived from ETL data (pictures, checkpoint) lives in a temporary folder that is
deleted at the end. Printed: per source and pen, accuracy without and with matching, and the
median stroke width of the network input (pixels at the input size) against the training one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.common import ETL_DEV, LEAN, train_run
from maist import morphology

PENS = {  # name: (canvas height, canvas width, pen width as a share of the character's height)
    "fine": (83, 84, 0.025),
    "hairline": (400, 400, 0.01),
    "ballpoint": (200, 200, 0.04),
    "marker": (83, 84, 0.16),
}
SETS = {"etl4c": "etl4c-46", "etl8b2": "etl8b2-46", "etl8g71": "etl8g-71"}
# the other people read by a model trained on each set (etl8g71's model, 71 classes, reads both)
OTHERS = {"etl4c": ["etl8b2"], "etl8b2": ["etl4c"], "etl8g71": ["etl4c", "etl8b2"]}
SUPER = 4  # pens are drawn at this multiple of the canvas, then averaged down (antialiasing)


# ---------------------------------------------------------------------- drawing
def zhang_suen(mask: torch.Tensor, max_iter: int = 200) -> torch.Tensor:
    """Zhang–Suen thinning of (N, H, W) bool masks to 1-px skeletons (8-connected)."""
    m = F.pad(mask.bool(), (1, 1, 1, 1))
    for _ in range(max_iter):
        changed = False
        for step in (0, 1):
            p = m.to(torch.uint8)
            # neighbours P2..P9 clockwise from north
            n = [
                p[:, :-2, 1:-1],
                p[:, :-2, 2:],
                p[:, 1:-1, 2:],
                p[:, 2:, 2:],
                p[:, 2:, 1:-1],
                p[:, 2:, :-2],
                p[:, 1:-1, :-2],
                p[:, :-2, :-2],
            ]
            b = sum(n)
            a = sum(((n[i] == 0) & (n[(i + 1) % 8] == 1)).to(torch.uint8) for i in range(8))
            p2, p4, p6, p8 = n[0], n[2], n[4], n[6]
            if step == 0:
                c1, c2 = p2 * p4 * p6, p4 * p6 * p8
            else:
                c1, c2 = p2 * p4 * p8, p2 * p6 * p8
            centre = m[:, 1:-1, 1:-1]
            drop = centre & (b >= 2) & (b <= 6) & (a == 1) & (c1 == 0) & (c2 == 0)
            if drop.any():
                changed = True
                inner = centre & ~drop
                m = F.pad(inner, (1, 1, 1, 1))
        if not changed:
            break
    return m[:, 1:-1, 1:-1]


def disk_dilate(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """(N, H, W) bool → dilated by a disk of (real) ``radius`` pixels."""
    return morphology.dilate(mask, morphology.disk(radius, slack=1e-6))


def skeletons(chars: torch.Tensor) -> torch.Tensor:
    """Preprocessed characters (N, 128, 128) ink-bright → their skeletons (N, 128, 128) bool."""
    return zhang_suen(chars > 0.5)


def draw(skel: torch.Tensor, height: int, width: int, pen: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Skeletons (N, 128, 128), the character filling its frame → uint8 pictures (height, width),
    dark ink on white: the skeleton scaled to ~80% of the canvas and drawn with a round pen
    ``pen`` × the character's height wide, antialiased, with faint paper noise."""
    out = []
    side = int(round(0.8 * min(height, width))) * SUPER
    for s in skel:
        big = F.interpolate(s[None, None].float(), size=(side, side), mode="nearest")[0, 0] > 0.5
        # the nearest-upsampled 1-px skeleton is SUPER px wide: thin it back to one line
        big = zhang_suen(big[None])[0]
        ink = disk_dilate(big[None], max(0.5, pen * side / 2))[0].float()
        canvas = torch.zeros(height * SUPER, width * SUPER)
        top, left = (height * SUPER - side) // 2, (width * SUPER - side) // 2
        canvas[top : top + side, left : left + side] = ink
        cover = F.avg_pool2d(canvas[None, None], SUPER)[0, 0].numpy()
        paper = 245 + rng.normal(0, 3, cover.shape)
        pic = paper * (1 - cover) + 30 * cover
        out.append(np.clip(np.rint(pic), 0, 255).astype(np.uint8))
    return out


def scan_picture(levels: np.ndarray, max_level: int) -> np.ndarray:
    """An ETL record's image as a picture: dark ink on white paper, as scanned."""
    return np.clip(np.rint(255 - 255 * levels.astype(np.float32) / max_level), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------- the model
def train_checkpoint(folder: Path, train: str, experiment: str, seed: int, extra: list[str]) -> Path:
    out = folder / f"run-{train}"
    overrides = [*LEAN, f"experiment={experiment}", f"seed={seed}", f"data.root={ETL_DEV / SETS[train]}", *extra]
    m = train_run(out, folder / "cache", overrides)
    print(
        f"trained {experiment} seed {seed} on {SETS[train]} writers: test/acc {100 * m['test/acc']:.2f}% "
        f"in {m['train_seconds']:.0f} s",
        flush=True,
    )
    return out / "checkpoints" / "last.ckpt"


def training_data(ckpt: Path, train: str, folder: Path):
    """The checkpoint's data module on its set (its split and preprocessing): (train images,
    test writers)."""
    from maist.checkpoint import data_spec, read_checkpoint
    from maist.data.datamodule import MaistDataModule

    spec = data_spec(read_checkpoint(ckpt))
    dm = MaistDataModule(
        root=str(ETL_DEV / SETS[train]),
        class_set=spec["class_set"],
        preprocess=spec["preprocess"],
        image_size=spec["image_size"],
        cache_dir=str(folder / "cache"),
    )
    dm.setup("fit")
    return dm.train_set, set(dm.test_set.writers.tolist())


# ---------------------------------------------------------------------- the benchmark
def sources(train: str, test_writers: set[int], per_source: int, rng: np.random.Generator):
    """name → (raw levels (N, 127, 128), max_level, chars (N,)), the 46 basic hiragana only: the
    training set's held-out writers, the other set, the fonts."""
    from maist.data.etl import read_etl
    from maist.data.kana import HIRAGANA71, jis_to_char
    from maist.data.sample import SAMPLE_ZIP

    basic = set(HIRAGANA71) - set("がぎぐげござじずぜぞだぢづでどばびぶべぼぱぴぷぺぽ")
    out = {}
    every = lambda r: np.ones(len(r), bool)  # noqa: E731
    for name, path, keep in (
        (f"{train} held-out", ETL_DEV / SETS[train], lambda r: np.isin(r.sheet, list(test_writers))),
        *((other, ETL_DEV / SETS[other], every) for other in OTHERS[train]),
        ("fonts", SAMPLE_ZIP, every),
    ):
        r = read_etl(path)
        chars = np.array([jis_to_char(int(j)) for j in r.jis])
        idx = np.nonzero(keep(r) & np.isin(chars, list(basic)))[0]
        if per_source and len(idx) > per_source:
            idx = np.sort(rng.choice(idx, per_source, replace=False))
        out[name] = (r.images[idx], r.max_level, chars[idx])
    return out


def evaluate(train: str, args, tmp: Path, rng: np.random.Generator) -> list:
    from maist.data.preprocess import Preprocess, etl_levels_to_float
    from maist.images import stroke_width, stroke_widths
    from maist.predict import Predictor

    ckpt = train_checkpoint(tmp, train, args.experiment, args.seed, args.overrides)
    plain = Predictor.from_checkpoint(ckpt, stroke_width=0)
    train_set, test_writers = training_data(ckpt, train, tmp)
    target = plain.recorded_stroke_width or stroke_width(train_set.data)
    matched = Predictor.from_checkpoint(ckpt, stroke_width=target)
    print(
        f"{train}: training images' stroke width at {plain.image_size}×{plain.image_size}: {target:.2f} px"
        f" ({'the checkpoint' if plain.recorded_stroke_width else 'measured here: the checkpoint has none'})",
        flush=True,
    )
    # the character alone, filling a 128-px frame: what the pens redraw
    char_pre = Preprocess(**{**plain.preprocess_dict, "image_size": 128, "margin": 0.0})
    rows = []
    for source, (levels, max_level, chars) in sources(train, test_writers, args.per_source, rng).items():
        skel = None
        for pen in args.pens:
            folder = tmp / train / source / pen
            folder.mkdir(parents=True)
            if pen == "scan":
                pics = [scan_picture(img, max_level) for img in levels]
            else:
                if skel is None:
                    skel = skeletons(char_pre(etl_levels_to_float(levels, max_level)))
                h, w, width = PENS[pen]
                pics = draw(skel, h, w, width, rng)
            files = []
            for i, pic in enumerate(pics):
                files.append(folder / f"{i:05d}.png")
                Image.fromarray(pic).save(files[-1])
            result = {}
            for label, pred in (("as before", plain), ("matched", matched)):
                x = pred.batch(files)
                top = pred.logits(x).argmax(1)
                acc = float(np.mean([pred.classes[int(t)] == c for t, c in zip(top, chars)]))
                result[label] = (acc, float(stroke_widths(x).median()))
            rows.append((train, target, source, pen, len(files), result))
            a, b = result["as before"], result["matched"]
            print(
                f"  {source:16s} {pen:10s} {len(files):5d}  as before {100 * a[0]:6.2f}% (width {a[1]:.2f})   "
                f"matched {100 * b[0]:6.2f}% (width {b[1]:.2f})",
                flush=True,
            )
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", nargs="+", default=["etl4c", "etl8b2"], choices=list(SETS), help="the sets to train on")
    ap.add_argument("--experiment", default="best")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-source", type=int, default=600, help="pictures per source (0: all)")
    ap.add_argument("--pens", nargs="+", default=["scan", *PENS], choices=["scan", *PENS])
    ap.add_argument("overrides", nargs="*", help="train.py overrides for the models trained here")
    args = ap.parse_args(argv)
    if not ETL_DEV.is_dir():
        raise SystemExit(f"{ETL_DEV}: the internal data is not here")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="maist-user-pictures-") as tmp:  # nothing derived from ETL outlives it
        for train in args.train:
            rows += evaluate(train, args, Path(tmp), rng)
    print(
        f"\nuser pictures through maist.predict (experiment={args.experiment}, seed {args.seed}; width: median "
        "stroke width of the network input, pixels)"
    )
    print("| trained on (its width) | pictures | pen | n | as before | width | stroke width matched | width |")
    print("|---|---|---|---|---|---|---|---|")
    for train, target, source, pen, n, r in rows:
        print(
            f"| {train} ({target:.2f}) | {source} | {pen} | {n} | {100 * r['as before'][0]:.2f}% | "
            f"{r['as before'][1]:.2f} | {100 * r['matched'][0]:.2f}% | {r['matched'][1]:.2f} |"
        )
    for train in args.train:
        drawn = [r for t, _, _, pen, _, r in rows if t == train and pen != "scan"]
        scans = [r for t, _, _, pen, _, r in rows if t == train and pen == "scan"]
        for label, part in (("drawn pens", drawn), ("scans", scans)):
            if part:
                print(
                    f"trained on {train}, mean over the {label}: as before "
                    f"{100 * statistics.mean(r['as before'][0] for r in part):.2f}%, matched "
                    f"{100 * statistics.mean(r['matched'][0] for r in part):.2f}%"
                )


if __name__ == "__main__":
    main()
