"""The article's figures for one character, as PNG files.

    python -m maist.visualize ckpt_path=CKPT char=ぬ                  # a record of the shipped sample
    python -m maist.visualize ckpt_path=CKPT char=ぬ data_root=ETL8G  # … or of your ETL data
    python -m maist.visualize ckpt_path=CKPT char=亜 data_root=ETL9G  # (any layout, any class set)
    python -m maist.visualize ckpt_path=CKPT input=my.png             # your own picture

Writes, into ``out=`` (default ``outputs/visualize/<char or picture stem>/``): the input as the
network sees it, the first-layer filters, the filtered images (conv1), after ReLU (relu1), the
14×14 pooled maps (pool1), the second block (conv2, relu2, pool2) and the top-5 bar chart; drawn
by :mod:`maist.viz`, the same code as the TensorBoard figures. Prints the paths written.

A record of ``char`` (``record=`` picks which, default the first) goes through the training
preprocessing only, exactly as in training; a picture goes through :mod:`maist.images` first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from maist.cli import cli, parse_cli
from maist.errors import UsageError
from maist.predict import Predictor, predictor_from_cli
from maist.text import printable

USAGE = (
    "usage: python -m maist.visualize ckpt_path=CKPT (char=ぬ [data_root=ETL8G|ETL9G|…] [record=0] | input=my.png) "
    "[out=DIR] [k=5]"
)

DEFAULTS = {
    "ckpt_path": None,
    "char": None,
    "input": None,
    "data_root": None,
    "record": 0,
    "out": None,
    "k": 5,
    "ink_ratio": None,
    "torch_threads": 1,
}

# The article's order; maps a network does not have are skipped.
ORDER = ("input", "filters", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "weights")


def record_of(char: str, data_root=None, record: int = 0) -> np.ndarray:
    """The ``record``-th record of ``char`` under ``data_root`` (any layout ``maist.data.etl``
    reads; default: the shipped, generated sample) as (H, W) float in [0, 1], ink bright, as
    training reads it (levels over the layout's own maximum: 15, or 1 for binary records)."""
    from maist.data.etl import EtlFormatError, read_etl
    from maist.data.kana import char_to_jis
    from maist.data.preprocess import etl_levels_to_float
    from maist.data.sample import SAMPLE_ZIP

    try:
        code = char_to_jis(char)
    except (ValueError, UnicodeEncodeError) as err:
        raise UsageError(f"char={char!r}: not one JIS X 0208 character") from err
    root = Path(str(data_root)).expanduser() if data_root else SAMPLE_ZIP
    try:
        recs = read_etl(root, codes=[code])
    except (EtlFormatError, OSError) as err:
        raise UsageError(f"data_root: {str(err).splitlines()[0]}") from err
    if len(recs) == 0:
        raise UsageError(f"{root}: no record of {char!r}")
    if not 0 <= int(record) < len(recs):
        raise UsageError(f"record={record}: {root} holds {len(recs)} records of {char!r} (0…{len(recs) - 1})")
    return etl_levels_to_float(recs.images[int(record)], recs.max_level)


def write_figures(predictor: Predictor, x, out: Path, k: int = 5) -> list[Path]:
    """Draw the figures of one network input ``x`` (1, 1, S, S) into ``out``; returns the paths."""
    from maist.viz import bar_chart, save_png

    figs = predictor.features(x)
    top = predictor.top_k(x, k=k)[0]
    names = [n for n in ORDER if n in figs] + [n for n in figs if n not in ORDER]
    paths = [save_png(figs[n], out / f"{i:02d}_{n}.png") for i, n in enumerate(names)]
    chart = bar_chart([c for c, _ in top], [p for _, p in top])
    paths.append(save_png(chart, out / f"{len(names):02d}_top{k}.png"))
    return paths


@cli
def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, DEFAULTS, USAGE)
    if bool(cfg["char"]) == bool(cfg["input"]):
        raise UsageError(f"give either char= or input=\n{USAGE}")
    char = str(cfg["char"]) if cfg["char"] else None
    if char is not None and len(char) != 1:
        raise UsageError(f"char={char!r}: give one character")
    image = record_of(char, cfg["data_root"], cfg["record"]) if char else None
    predictor = predictor_from_cli(cfg, USAGE)
    if char:
        x = predictor.preprocess(image)[:, None]  # an ETL record: the training preprocessing only
        name = char
    else:
        x = predictor.prepare(str(cfg["input"]))
        name = Path(str(cfg["input"])).stem
    out = Path(str(cfg["out"])) if cfg["out"] else Path("outputs") / "visualize" / name
    top = predictor.top_k(x, k=int(cfg["k"]))[0]
    for path in write_figures(predictor, x, out, int(cfg["k"])):
        print(path)
    print(f"top-{len(top)}: " + "  ".join(f"{printable(c)} {p:.1%}" for c, p in top), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
