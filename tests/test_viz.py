"""The drawing functions: grid arithmetic, normalisation, and the article's figures."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from maist import viz
from maist.analysis import _voiced_figure, voiced_confusions
from maist.data.kana import CLASS_SET_NAMES, class_set
from maist.fonts import FONT
from maist.fonts.make_subset import characters
from maist.models import DeepMnistCNN, LinearSoftmax


# ---------------------------------------------------------------- tile_grid
def test_grid_columns_prefers_even_layouts():
    assert viz.grid_columns(32) == 8  # 8 × 4
    assert viz.grid_columns(64) == 8  # 8 × 8
    assert viz.grid_columns(71) == 9  # prime: ⌈√71⌉ → 9 × 8
    assert viz.grid_columns(1) == 1
    assert viz.grid_columns(5) == 3


def test_tile_grid_shape_and_row_major_placement():
    k, h, w = 6, 4, 5
    maps = np.zeros((k, h, w))
    for i in range(k):
        maps[i, 0, 0] = i + 1  # one bright pixel in the top-left corner of every tile
    out = viz.tile_grid(maps, ncols=4, pad=2, scale=3)
    assert out.dtype == np.uint8
    # 2 rows × 4 columns of 12×15 tiles, 2 px between
    assert out.shape == (2 * 12 + 2, 4 * 15 + 3 * 2)
    for i in range(k):
        r, c = divmod(i, 4)
        y, x = r * (12 + 2), c * (15 + 2)
        assert (out[y : y + 3, x : x + 3] == 255).all()  # the bright pixel, 3×3 after scaling
        assert (out[y + 3 : y + 12, x + 3 : x + 15] == 0).all()
    assert (out[:, 15:17] == 255).all()  # white gap between columns
    assert (out[14:, 2 * 17 :] == 255).all()  # two empty cells in the last row stay background


def test_tile_grid_auto_scale_makes_small_maps_visible():
    assert viz.tile_grid(np.random.rand(4, 7, 7), ncols=4, pad=0).shape == (28, 112)
    assert viz.tile_grid(np.random.rand(1, 28, 28)).shape == (28, 28)
    assert viz.tile_grid(np.random.rand(2, 7, 7), ncols=2, pad=0, min_size=56).shape == (56, 112)


def test_tile_grid_accepts_tensors_and_batched_shapes():
    t = torch.rand(3, 1, 6, 6)
    a = viz.tile_grid(t, ncols=3, pad=0, scale=1)
    b = viz.tile_grid(t.squeeze(1).unsqueeze(0).numpy(), ncols=3, pad=0, scale=1)  # (1, K, H, W)
    assert a.shape == (6, 18) and np.array_equal(a, b)
    with pytest.raises(ValueError):
        viz.tile_grid(np.zeros((2, 3, 4, 4)))


def test_tile_grid_normalises_each_tile():
    ramp = np.arange(16, dtype=float).reshape(4, 4)
    maps = np.stack([np.full((4, 4), 3.7), ramp * 0.01, ramp * 100 - 50])
    out = viz.tile_grid(maps, ncols=3, pad=0, scale=1)
    constant, small, large = out[:, 0:4], out[:, 4:8], out[:, 8:12]
    assert (constant == 0).all()  # no contrast: black, not noise
    for tile in (small, large):
        assert tile[3, 3] == 255 and tile[0, 0] == 0  # the known max and min
        assert tile[1, 2] == round(6 / 15 * 255)
    assert np.array_equal(small, large)  # each tile on its own scale


def test_tile_grid_normalize_all_and_fixed_range():
    maps = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)])
    out = viz.tile_grid(maps, ncols=2, pad=0, scale=1, normalize="all")
    assert (out[:, :2] == 0).all() and (out[:, 2:] == 255).all()
    out = viz.tile_grid(np.array([[[0.0, 0.5], [1.0, 2.0]]]), pad=0, scale=1, normalize="none")
    assert out.tolist() == [[0, 128], [255, 255]]
    nan = np.array([[[np.nan, 1.0], [0.0, 0.5]]])
    assert viz.tile_grid(nan, scale=1, normalize="each")[0, 0] == 0  # NaN draws as 0, no crash
    with pytest.raises(ValueError):
        viz.tile_grid(maps, normalize="bogus")


# ---------------------------------------------------------------- filter_grid
def test_filter_grid_diverging_scale():
    w = torch.zeros(4, 1, 5, 5)
    w[1, 0, 0, 0], w[1, 0, 4, 4] = 0.3, -0.3
    w[2] = 0.05
    out = viz.filter_grid(w, ncols=4, pad=0, scale=1)
    assert out.shape == (5, 20)
    assert (out[:, 0:5] == 128).all()  # zero is mid grey
    assert out[0, 5] == 255 and out[4, 9] == 0 and out[2, 7] == 128  # sign shows
    assert (out[:, 10:15] == 255).all()  # each filter on its own scale
    both = viz.filter_grid(w, ncols=4, pad=0, scale=1, normalize="all")
    assert both[0, 10] == round(255 * (0.5 + 0.5 * 0.05 / 0.3))


def test_filter_grid_enlarges_and_handles_input_channels():
    assert viz.filter_grid(torch.zeros(32, 1, 5, 5)).shape == (4 * 40 + 3 * 4, 8 * 40 + 7 * 4)
    # (C_out, C_in, k, k): one row per output filter
    assert viz.filter_grid(torch.randn(3, 2, 3, 3), pad=0, scale=1).shape == (9, 6)


# ---------------------------------------------------------------- feature_figures
def test_feature_figures_deep_mnist_grid_dimensions():
    torch.manual_seed(0)
    net = DeepMnistCNN(num_classes=5, hidden=16, init="pytorch").eval()
    img = torch.zeros(1, 1, 28, 28)
    img[0, 0, 6:22, 12:16] = 1.0
    figs = viz.feature_figures(net, img, min_size=28)
    assert list(figs) == ["input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "filters"]
    assert all(a.dtype == np.uint8 and a.ndim == 2 for a in figs.values())
    assert figs["input"].shape == (112, 112)  # 28 px enlarged ×4
    assert figs["input"].max() == 255 and figs["input"].min() == 0
    # 32 maps: 8 columns × 4 rows of 28×28 tiles (pool1's 14×14 maps enlarged ×2), 1 px gaps
    for name in ("conv1", "relu1", "pool1"):
        assert figs[name].shape == (4 * 28 + 3, 8 * 28 + 7), name
    # 64 maps of 7×7, enlarged ×4: 8 × 8 tiles of 28 px
    for name in ("conv2", "relu2", "pool2"):
        assert figs[name].shape == (8 * 28 + 7, 8 * 28 + 7), name
    assert figs["filters"].shape == (4 * 40 + 3 * 4, 8 * 40 + 7 * 4)
    # pool1 is a 2× max-pool of relu1: tile 0 of pool1 is relu1's tile 0 pooled
    maps = net.features(img)
    expected = viz.tile_grid(maps["pool1"][0, :1], scale=2, pad=0)
    assert np.array_equal(figs["pool1"][:28, :28], expected)


def test_feature_figures_default_size_and_no_grad():
    net = DeepMnistCNN(num_classes=3, hidden=16, init="pytorch")
    figs = viz.feature_figures(net, torch.rand(28, 28))
    assert figs["pool2"].shape == (8 * 56 + 7, 8 * 56 + 7)  # 7×7 → ×8 by default
    assert all(p.grad is None for p in net.parameters())


def test_feature_figures_linear_model_templates():
    net = LinearSoftmax(num_classes=4, image_size=8, zero_init=True)
    figs = viz.feature_figures(net, torch.rand(1, 1, 8, 8), min_size=8)
    assert set(figs) == {"input", "weights"}
    assert figs["weights"].shape == (8 + 4 + 8, 8 + 4 + 8)  # 4 templates: 2 × 2
    assert (figs["weights"][:8, :8] == 128).all()  # zero init: mid grey
    with torch.no_grad():
        net.fc.weight[2, 0] = 1.0  # class 2, pixel (0, 0)
    figs = viz.feature_figures(net, torch.rand(1, 1, 8, 8), min_size=8)
    assert figs["weights"][12, 0] == 255


def test_feature_figures_plain_model_gives_input_only():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    assert set(viz.feature_figures(net, torch.rand(1, 1, 4, 4))) == {"input"}


# ---------------------------------------------------------------- charts
def test_confusion_image_identity_has_bright_diagonal():
    n, cell = 71, 6
    img = viz.confusion_image(np.eye(n) * 20, cell=cell, labels=False)
    assert img.shape == (n * cell, n * cell, 3)
    lum = img.astype(float) @ [0.299, 0.587, 0.114]
    diag = np.array([lum[i * cell + 3, i * cell + 3] for i in range(n)])
    off = np.array([lum[i * cell + 3, ((i + 1) % n) * cell + 3] for i in range(n)])
    assert diag.min() > 180 and off.max() < 60


def test_confusion_image_rows_normalised_and_labelled():
    cm = np.array([[90, 10], [0, 1]])
    img = viz.confusion_image(cm, ["あ", "い"], cell=10, labels=False)
    lum = img.astype(float) @ [0.299, 0.587, 0.114]
    assert lum[15, 15] > lum[5, 5] > lum[5, 15] > lum[15, 5]  # recall 1.0 > 0.9 > 0.1 > 0
    labelled = viz.confusion_image(np.eye(71), [str(i) for i in range(71)], cell=6)
    assert labelled.shape[0] > 71 * 6 and labelled.shape[0] == labelled.shape[1]
    assert viz.confusion_image(np.eye(3), cell=1, labels=False).shape == (18, 18, 3)  # ≥ 6 px cells


def test_bar_chart_bar_lengths_follow_probabilities():
    img = viz.bar_chart(["あ", "い", 2], [0.75, 0.25, 0.0], width=400, row_height=40, classes=["あ", "い", "う"])
    assert img.shape == (3 * 40 + 8, 400, 3)
    top, second = viz.BAR_TOP, viz.BAR

    def bar_len(row, colour):
        y = 4 + row * 40 + 20
        return int((img[y] == colour).all(axis=1).sum())

    a, b = bar_len(0, top), bar_len(1, second)
    assert a > 0 and abs(a / b - 3.0) < 0.1
    assert bar_len(2, second) == 0 and bar_len(2, top) == 0
    with pytest.raises(ValueError):
        viz.bar_chart(["a"], [0.5, 0.5])


def test_gallery_layout():
    imgs = torch.rand(5, 1, 28, 28)
    out = viz.gallery(imgs, [0, 1, 2, 0, 1], [1, 2, 0, 2, 0], ["あ", "い", "う"], ncols=3, scale=2, pad=4)
    assert out.ndim == 3 and out.shape[1] == 4 + 3 * (56 + 4)
    assert out.shape[0] > 2 * 56
    first = out[4:60, 4:60, 0]  # the first image, enlarged ×2 with nearest neighbour
    expected = np.round(imgs[0, 0].numpy() * 255).astype(np.uint8).repeat(2, 0).repeat(2, 1)
    assert np.abs(first.astype(int) - expected).max() <= 1


# ---------------------------------------------------------------- fonts and files
# This machine and CI have no Japanese font: every glyph below comes from the font MAIST ships.
NOT_IN_FONT = "\ue000"  # a private-use character: the font draws its .notdef box


def _drawn(text: str, size: int = 24) -> np.ndarray:
    """``text`` as viz draws a label, black on white."""
    img = Image.new("L", (4 * size, 2 * size), 255)
    viz._draw_text(ImageDraw.Draw(img), (size, size), text, size, 0, "lm")
    return np.asarray(img)


def test_figures_use_the_shipped_font_unless_maist_font_names_another(monkeypatch, tmp_path):
    monkeypatch.delenv("MAIST_FONT", raising=False)
    assert viz.font_path() == FONT and FONT.stat().st_size < 1_000_000
    other = tmp_path / "other.otf"
    shutil.copy(FONT, other)
    monkeypatch.setenv("MAIST_FONT", str(other))
    assert viz.font_path() == other
    monkeypatch.setenv("MAIST_FONT", str(tmp_path / "missing.otf"))
    assert viz.font_path() == FONT
    monkeypatch.setattr(viz, "FONT", tmp_path / "gone.otf")
    with pytest.raises(FileNotFoundError, match="package data"):
        viz.font_path()


def test_a_kana_and_a_kanji_label_draw_as_glyphs():
    drawn = {t: _drawn(t) for t in ("か", "が", "漢", NOT_IN_FONT, "#0", "#1")}
    assert all((d < 128).any() for d in drawn.values())  # ink for each …
    keys = list(drawn)
    for i, a in enumerate(keys):  # … and each its own: not one box for all, nor an index
        assert all(not np.array_equal(drawn[a], drawn[b]) for b in keys[i + 1 :]), a


def test_the_font_draws_every_class_sets_character():
    font = viz._font(16)
    box = font.getmask(NOT_IN_FONT)
    box = (box.size, bytes(box))
    wanted = set(characters())
    for name in CLASS_SET_NAMES:
        assert set(class_set(name).classes) <= wanted, name
    for ch in sorted(wanted):
        if not ch.isspace():
            mask = font.getmask(ch)
            assert any(bytes(mask)) and (mask.size, bytes(mask)) != box, f"U+{ord(ch):04X} {ch}"


def test_label_text_names_classes():
    assert viz._label_text(3, ["a", "b", "c", "ぬ"]) == "ぬ"
    assert viz._label_text(torch.tensor(1), "あい") == "い"
    assert viz._label_text(7, ["a"]) == "#7" and viz._label_text(2, None) == "#2"  # no name to give
    assert viz._label_text("漢", None) == "漢"


def test_confusion_image_and_gallery_label_with_glyphs():
    def confusion(names):
        return viz.confusion_image(np.array([[5, 1], [0, 6]]), names, cell=20)

    kana, other, boxes = confusion(["か", "が"]), confusion(["ぬ", "ね"]), confusion([NOT_IN_FONT] * 2)
    assert kana.shape == other.shape == boxes.shape
    assert not np.array_equal(kana, other) and not np.array_equal(kana, boxes)

    images = torch.zeros(2, 1, 28, 28)

    def gallery(names):
        return viz.gallery(images, [0, 1], [1, 0], names, ncols=2)

    kana, other, boxes = gallery(["か", "が"]), gallery(["ぬ", "ね"]), gallery([NOT_IN_FONT] * 2)
    assert not np.array_equal(kana, other) and not np.array_equal(kana, boxes)


def test_voiced_figure_names_every_family_and_shows_its_counts(monkeypatch):
    classes = class_set("hiragana71").classes
    cm = np.diag(np.arange(10, 10 + len(classes)))
    ka, ga, ha, ba, pa = (classes.index(c) for c in "かがはばぱ")
    cm[ka, ga], cm[ha, ba], cm[pa, ba], cm[ha, ka] = 2, 3, 1, 4  # the last: outside any family
    voiced = voiced_confusions(cm, classes)
    drawn = []
    real = viz._draw_text

    def spy(draw, xy, text, *args):
        drawn.append(text)
        real(draw, xy, text, *args)

    monkeypatch.setattr(viz, "_draw_text", spy)
    figure = _voiced_figure(voiced)
    # each family's characters twice (true down the left, predicted along the top) and its counts
    expected = Counter()
    for f in voiced:
        expected.update(f["classes"] * 2)
        expected.update(str(c) for row in f["counts"] for c in row)
    assert Counter(drawn) == expected
    assert len(voiced) == 20 and {"か", "が", "は", "ば", "ぱ"} <= set(drawn)
    assert {"2", "3", "1"} <= set(drawn) and not any(t.startswith("#") for t in drawn)
    boxes = [{**f, "classes": [NOT_IN_FONT] * len(f["classes"])} for f in voiced]
    assert not np.array_equal(figure, _voiced_figure(boxes))  # the names are glyphs, not boxes


def test_save_png_round_trip_and_atomic(tmp_path):
    arr = (np.arange(12 * 7).reshape(12, 7) % 256).astype(np.uint8)
    path = viz.save_png(arr, tmp_path / "a" / "b" / "x.png")
    assert np.array_equal(np.asarray(Image.open(path)), arr)
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 1] = 200
    viz.save_png(rgb, path)  # overwrite in place
    assert np.array_equal(np.asarray(Image.open(path)), rgb)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]  # no temp files left


def test_histogram_bars_are_proportional():
    img = viz.histogram([0.05] * 4 + [0.95] * 2, bins=10, value_range=(0.0, 1.0), width=240, height=140)
    left, right, top, bottom = viz.HISTOGRAM_MARGINS
    plot_h, bar_w = 140 - top - bottom, (240 - left - right) / 10
    blue = (img == np.array(viz.BAR_TOP, np.uint8)).all(axis=2)

    def height(i):  # the bar of bin i, measured in its middle column
        return int(blue[:, left + int((i + 0.5) * bar_w)].sum())

    assert height(0) == plot_h and height(9) == plot_h // 2
    assert all(height(i) == 0 for i in range(1, 9))


def test_stack_rows():
    a, b = np.zeros((3, 5, 3), np.uint8), np.zeros((2, 8, 3), np.uint8)
    out = viz.stack_rows([a, b], pad=1)
    assert out.shape == (6, 8, 3)
    assert (out[3] == 255).all() and (out[:3, 5:] == 255).all() and (out[4:, :] == 0).all()
