"""Kanji at scale, end to end on generated records: `experiment=kanji` (the modern net, 64×64,
3,036 outputs for ETL9G's etl9g_all) trains on an ETL9G-layout folder written here, in which a
few dozen kanji are present, each a distinct synthetic glyph; then its checkpoint is used by the
model commands (predict, visualize), which must work for any class set a checkpoint carries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from maist.data.etl import ETL9G, write_etl
from maist.data.kana import char_to_jis, class_set
from tests.helpers import metrics, run_train

KANJI = class_set("kanji2965").classes[100:124]  # 24 kanji, none of them hiragana
WRITERS = 20  # a writer split: 14 train, 2 validate, 4 test
STROKES = 3  # random strokes per glyph


def glyph_strokes(k: int) -> np.ndarray:
    """Class ``k``'s glyph: ``STROKES`` line segments, (x0, y0, x1, y1) in a unit square."""
    return np.random.default_rng(1000 + k).uniform(0.1, 0.9, size=(STROKES, 4))


def draw_glyph(k: int, rng: np.random.Generator, height: int = 127, width: int = 128, ink: int = 15) -> np.ndarray:
    """One writer's rendering of glyph ``k`` as ETL levels (0 paper … ``ink``): shifted, scaled
    and of a stroke width of its own, on faint noise."""
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    scale, dx, dy = rng.uniform(0.75, 0.95), rng.uniform(-6, 6), rng.uniform(-6, 6)
    stroke = int(rng.integers(5, 9))
    for x0, y0, x1, y1 in glyph_strokes(k):
        points = [
            (width * (0.5 + scale * (x - 0.5)) + dx, height * (0.5 + scale * (y - 0.5)) + dy)
            for x, y in ((x0, y0), (x1, y1))
        ]
        draw.line(points, fill=int(rng.integers(max(1, ink * 3 // 5), ink + 1)), width=stroke)
    levels = np.asarray(img, np.uint8)
    return np.maximum(levels, rng.integers(0, 2, size=levels.shape, dtype=np.uint8) * (ink > 1))


def write_kanji_folder(root: Path) -> None:
    """ETL9G_01, ETL9G_02: every writer writes every kanji of KANJI once."""
    rng = np.random.default_rng(0)
    codes = [char_to_jis(c) for c in KANJI]
    for f, writers in enumerate((range(1, 11), range(11, WRITERS + 1)), start=1):
        images = [draw_glyph(k, rng) for _ in writers for k in range(len(KANJI))]
        write_etl(
            root / f"ETL9G_{f:02d}", ETL9G, np.stack(images), codes * len(writers), np.repeat(list(writers), len(KANJI))
        )


# The kanji experiment as configured, cut to a CPU-sized run: fewer steps and channels.
SHORT = [
    "experiment=kanji",
    "trainer.max_steps=200",
    "trainer.val_check_interval=100",
    "data.batch_size=48",
    "data.eval_batch_size=256",
    "model.net.channels=[8,16,32,32]",
    "model.net.convs_per_stage=1",
    "model.net.dropout=0.0",
    "trainer.log_every_n_steps=20",
]


@pytest.fixture(scope="module")
def kanji_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("kanji")
    write_kanji_folder(base / "ETL9G")
    run_dir = base / "run"
    run_train(*SHORT, f"data.root={base / 'ETL9G'}", f"data.cache_dir={base / 'cache'}", f"hydra.run.dir={run_dir}")
    return base, run_dir


@pytest.mark.slow
def test_kanji_experiment_learns_the_classes_present(kanji_run):
    _, run_dir = kanji_run
    m = metrics(run_dir)
    assert m["steps"] == 200
    # 3,036 outputs, 24 classes present: chance is 1/24 (4%) at best
    assert m["test/acc"] > 0.6, m
    analysis = m["analysis"]
    assert analysis["classes_in_test"] == 24 and analysis["n_test"] == 4 * 24
    assert set(m["test/acc_per_class"]) == set(KANJI)  # the classes present, no others
    figures = run_dir / "figures"
    assert (figures / "class_accuracy.png").is_file() and not (figures / "confusion.png").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run_dir / "tensorboard").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "test/acc" in scalars and not [t for t in scalars if t.startswith("test_per_class/")]


@pytest.mark.slow
def test_predict_and_visualize_with_a_kanji_checkpoint(kanji_run, tmp_path, capsys):
    from maist import predict, visualize

    base, run_dir = kanji_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    # A picture as a user would draw it: dark strokes on white paper, larger than a record.
    pictures = []
    for k in (0, 7, 13):
        levels = draw_glyph(k, np.random.default_rng(50 + k), 254, 256, ink=1)
        path = tmp_path / f"glyph{k}.png"
        Image.fromarray((255 - 255 * levels).astype(np.uint8)).save(path)
        pictures.append(path)
    assert predict.main([f"ckpt_path={ckpt}", f"inputs=[{','.join(map(str, pictures))}]", "format=json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    etl9g_all = class_set("etl9g_all").classes
    assert [len(r["top5"]) for r in rows] == [5, 5, 5]
    assert all(c in etl9g_all for r in rows for c, _ in r["top5"])
    assert sum(r["top5"][0][0] == KANJI[k] for r, k in zip(rows, (0, 7, 13))) >= 2, rows

    out = tmp_path / "vis"
    char = KANJI[7]
    assert (
        visualize.main([f"ckpt_path={ckpt}", f"char={char}", f"data_root={base / 'ETL9G'}", "record=3", f"out={out}"])
        == 0
    )
    captured = capsys.readouterr()
    assert (out / "00_input.png").is_file() and (out / "01_filters.png").is_file()
    assert captured.err.startswith(f"top-5: {char} ")  # a record of its training data: read right


def test_visualize_reads_a_record_of_any_layout_at_its_own_levels(tmp_path):
    """A binary ETL9B record (levels 0/1) is ink 1.0, as training reads it, not 1/15."""
    from maist.data.etl import ETL9B
    from maist.visualize import record_of

    rng = np.random.default_rng(0)
    images = np.stack([draw_glyph(k, rng, 63, 64, ink=1) for k in range(3)])
    write_etl(tmp_path / "ETL9B_1", ETL9B, images, [char_to_jis(c) for c in KANJI[:3]], [1, 1, 1])
    image = record_of(KANJI[1], tmp_path)
    assert image.shape == (63, 64) and image.dtype == np.float32
    np.testing.assert_array_equal(image, images[1].astype(np.float32))
