"""analyse_test on a fake model whose predictions are written into its input images (stored as
uint8, as the cache holds them: the model reads its answer back as round(255 x))."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from maist import viz
from maist.analysis import (
    ERRORS_PER_CLASS,
    READABLE_CLASSES,
    WORST_CLASSES,
    analyse_test,
    class_accuracy,
    confused_pairs,
    confusion_matrix,
    predict,
    voiced_confusions,
    voiced_families,
)
from maist.data.datamodule import Part
from maist.data.kana import class_set

CLASSES = list(class_set("hiragana71").classes)
C = len(CLASSES)
HA, BA, PA, A = (CLASSES.index(c) for c in "はばぱあ")


class ReadsItsAnswer(nn.Module):
    """Predicts the class stored in pixel (0, 0) of each image (float in [0, 1], as the networks
    get them: the stored value is round(255 x))."""

    def __init__(self, num_classes: int = C):
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        assert x.dtype == torch.float32 and float(x.max()) <= 1.0
        return nn.functional.one_hot((x[:, 0, 0, 0] * 255).round().long(), self.num_classes).float() + self.dummy


def answer_store(preds, side=12, seed=0) -> torch.Tensor:
    """uint8 images (N, 1, side, side) of noise, each with its prediction in pixel (0, 0)."""
    g = torch.Generator().manual_seed(seed)
    store = torch.randint(0, 128, (len(preds), 1, side, side), generator=g, dtype=torch.uint8)
    store[:, 0, 0, 0] = torch.as_tensor(preds, dtype=torch.uint8)
    return store


class FakeExperiment:
    def __init__(self):
        self.images = {}

    def add_image(self, tag, img, step, dataformats="CHW"):
        self.images[tag] = (np.asarray(img).shape, dataformats)


# (writer, true, predicted): writer 10 all right, writer 11 three wrong, writer 12 one wrong
ROWS = (
    [(10, t, t) for t in (A, HA, BA, PA, HA, BA)]
    + [(11, HA, BA), (11, HA, BA), (11, PA, BA), (11, A, A), (11, BA, BA), (11, PA, PA)]
    + [(12, HA, BA), (12, A, A), (12, BA, BA), (12, PA, PA), (12, HA, HA), (12, A, A)]
)


@pytest.fixture
def fake():
    writers = torch.tensor([r[0] for r in ROWS])
    targets = torch.tensor([r[1] for r in ROWS])
    preds = torch.tensor([r[2] for r in ROWS])
    # The test part is every other row of a store twice as long (as a split's parts are).
    store = answer_store(torch.stack([preds, torch.zeros_like(preds)], 1).reshape(-1))
    part = Part(store, targets, writers, rows=torch.arange(0, 2 * len(ROWS), 2))
    dm = SimpleNamespace(classes=CLASSES, test_set=part, hparams=SimpleNamespace(eval_batch_size=5))  # several batches
    return ReadsItsAnswer(), dm


def test_confusion_helpers():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 1, 1, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 2, 0]]
    pairs = confused_pairs(cm, ["a", "b", "c"], top=2)
    assert [(p["true"], p["pred"], p["count"]) for p in pairs] == [("c", "b", 2), ("a", "b", 1)]


def test_analyse_test_counts_pairs_writers_and_files(fake, tmp_path):
    model, dm = fake
    logger = SimpleNamespace(experiment=FakeExperiment())
    no_images = SimpleNamespace(experiment=object())  # e.g. a CSV logger: skipped
    summary = analyse_test(model, dm, tmp_path, [logger, no_images], metrics={"test/acc": 0.7778})

    assert summary["n_test"] == 18 and summary["errors"] == 4
    assert summary["test_acc"] == pytest.approx(14 / 18, abs=1e-6)
    top = summary["confused_pairs"][0]
    assert (top["true"], top["pred"], top["count"]) == ("は", "ば", 3)
    assert top["of_true"] == pytest.approx(3 / 6, abs=1e-4)
    assert [(p["true"], p["pred"], p["count"]) for p in summary["confused_pairs"]] == [("は", "ば", 3), ("ぱ", "ば", 1)]

    assert summary["writer_acc_min"] == pytest.approx(0.5)
    worst = summary["worst_writers"]
    assert [w["writer"] for w in worst] == [11, 12, 10]
    assert [w["acc"] for w in worst] == pytest.approx([0.5, 5 / 6, 1.0], abs=1e-4)
    assert sorted(worst[0]["errors"]) == ["は→ば", "は→ば", "ぱ→ば"]

    # the matrix itself, from what was drawn: recompute through the public helper
    cm = confusion_matrix([r[1] for r in ROWS], [r[2] for r in ROWS], C)
    assert cm.shape == (71, 71) and cm[HA, BA] == 3 and cm[PA, BA] == 1 and cm[HA, HA] == 3 and cm.sum() == 18

    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| は | ば | 3 |" in report and "11" in report and "test/acc" in report
    for name in ("confusion", "misclassified", "worst_writers", "voiced"):
        png = tmp_path / "figures" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{name}.png" in report
    assert set(logger.experiment.images) == {
        "test/confusion",
        "test/misclassified",
        "test/worst_writers",
        "test/voiced",
    }
    assert all(fmt in ("HWC", "HW") for _, fmt in logger.experiment.images.values())
    assert Path(summary["report"]) == tmp_path / "report.md"


def test_confusion_png_is_71_by_71_cells(fake, tmp_path, monkeypatch):
    model, dm = fake
    seen = {}
    import maist.viz as viz

    real = viz.confusion_image

    def spy(cm, classes=None, **kw):
        if len(classes) == C:  # the whole matrix, not a voiced family's
            seen["cm"], seen["classes"] = np.asarray(cm), list(classes)
        return real(cm, classes, **kw)

    monkeypatch.setattr(viz, "confusion_image", spy)
    analyse_test(model, dm, tmp_path, [])
    assert seen["cm"].shape == (71, 71) and seen["classes"] == CLASSES
    assert seen["cm"][HA, BA] == 3 and np.trace(seen["cm"]) == 14


def test_no_errors_still_reports(tmp_path):
    targets = torch.tensor([A, HA, BA])
    dm = SimpleNamespace(
        classes=CLASSES,
        test_set=Part(answer_store(targets, side=8), targets, torch.tensor([1, 1, 2])),
        hparams=SimpleNamespace(eval_batch_size=1000),
    )
    summary = analyse_test(ReadsItsAnswer(), dm, tmp_path, [])
    assert summary["errors"] == 0 and summary["confused_pairs"] == [] and summary["writer_acc_min"] == 1.0
    assert (tmp_path / "figures" / "confusion.png").is_file()
    assert "No confusions" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_predict_takes_parts_and_tensors_uint8_or_float():
    preds = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    store = answer_store(preds)
    model = ReadsItsAnswer()
    assert predict(model, Part(store, preds, preds), batch_size=3).tolist() == preds.tolist()
    assert predict(model, store, batch_size=3).tolist() == preds.tolist()
    assert predict(model, store.float() / 255, batch_size=100).tolist() == preds.tolist()
    assert predict(model, store[:0]).tolist() == []


def test_class_accuracy_lists_the_classes_present_worst_first():
    cm = confusion_matrix([0, 0, 0, 2, 2, 3], [0, 1, 1, 2, 2, 0], 4)
    rows = class_accuracy(cm, ["a", "b", "c", "d"])
    assert [(r["class"], r["n"], r["acc"], r["taken_for"]) for r in rows] == [
        ("d", 1, 0.0, "a"),
        ("a", 3, 0.3333, "b"),
        ("c", 2, 1.0, None),
    ]  # b has no test image


# ---------------------------------------------------------------- more classes than a matrix can show
BIG = [f"k{i}" for i in range(READABLE_CLASSES + 50)]


def big_test_set():
    """12 classes present of 150; class k (k < 10) is right on all but k of its 10 images (taken
    for class 100 + k); classes 10 and 11 are always right."""
    targets, preds = [], []
    for k in range(12):
        wrong = k if k < 10 else 0
        targets += [k] * 10
        preds += [100 + k] * wrong + [k] * (10 - wrong)
    targets, preds = torch.tensor(targets), torch.tensor(preds)
    writers = torch.arange(len(targets)) % 4
    part = Part(answer_store(preds), targets, writers)
    return SimpleNamespace(classes=BIG, test_set=part, hparams=SimpleNamespace(eval_batch_size=50))


def test_many_classes_get_a_histogram_and_the_worst_classes(tmp_path, monkeypatch):
    seen = {}
    real_hist, real_gallery = viz.histogram, viz.gallery

    def hist(values, **kw):
        seen["values"] = list(values)
        return real_hist(values, **kw)

    def gallery(images, t, p, classes=None, **kw):
        seen.setdefault("galleries", []).append((t.tolist(), p.tolist(), kw.get("ncols")))
        return real_gallery(images, t, p, classes, **kw)

    monkeypatch.setattr(viz, "histogram", hist)
    monkeypatch.setattr(viz, "gallery", gallery)
    logger = SimpleNamespace(experiment=FakeExperiment())
    summary = analyse_test(ReadsItsAnswer(len(BIG)), big_test_set(), tmp_path, [logger])

    assert summary["errors"] == sum(range(10)) and summary["classes_in_test"] == 12
    # the 12 classes present, no others: accuracy 1.0 (k = 0, 10, 11), 0.9, …, 0.1
    assert sorted(seen["values"]) == sorted([1.0] * 3 + [round(1 - k / 10, 4) for k in range(1, 10)])
    assert set(logger.experiment.images) == {
        "test/class_accuracy",
        "test/worst_classes",
        "test/misclassified",
        "test/worst_writers",
    }
    assert not (tmp_path / "figures" / "confusion.png").exists()
    worst = summary["worst_classes"]
    assert len(worst) == WORST_CLASSES
    assert [(w["class"], w["acc"], w["taken_for"]) for w in worst[:3]] == [
        ("k9", 0.1, "k109"),
        ("k8", 0.2, "k108"),
        ("k7", 0.3, "k107"),
    ]
    # one gallery row per worst class, at most ERRORS_PER_CLASS of its errors each
    rows = [g for g in seen["galleries"] if g[2] == ERRORS_PER_CLASS]
    assert [t[0] for t, _, _ in rows] == [9, 8, 7, 6, 5, 4, 3, 2]
    assert [len(t) for t, _, _ in rows] == [8, 8, 7, 6, 5, 4, 3, 2]
    assert all(p == [100 + t[0]] * len(t) for t, p, _ in rows)
    pairs = summary["confused_pairs"]
    assert (pairs[0]["true"], pairs[0]["pred"], pairs[0]["count"]) == ("k9", "k109", 9)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| k9 | 10 | 10.0% | k109 |" in report and "figures/class_accuracy.png" in report
    assert "- classes: 12 of 150 in the test set" in report


# ---------------------------------------------------------------- voiced marks
def test_voiced_families_come_from_the_class_set():
    fams = voiced_families(CLASSES)
    named = ["".join(CLASSES[i] for i in f) for f in fams]
    assert len(fams) == 20 and named[0] == "かが" and "はばぱ" in named and "ほぼぽ" in named
    assert sum(len(f) - 1 for f in fams) == 25  # every voiced form of hiragana71, once
    assert voiced_families(list("ぱあは")) == [[2, 0]]  # plain first, then dakuten, handakuten
    assert voiced_families(list("あヴゔうウ")) == [[4, 1], [3, 2]]  # ゔ and ヴ are voiced forms too
    assert voiced_families(list("あいう")) == [] and voiced_families(BIG) == []


def test_voiced_confusions_of_a_known_table():
    """は→ば 3, ぱ→ば 1 (the fake's table), and は→あ once, which leaves the family and is not a
    mark error."""
    t = [r[1] for r in ROWS] + [HA]
    p = [r[2] for r in ROWS] + [A]
    fams = {"/".join(f["classes"]): f for f in voiced_confusions(confusion_matrix(t, p, C), CLASSES)}
    ha = fams["は/ば/ぱ"]
    assert ha["counts"] == [[3, 3, 0], [0, 4, 0], [0, 1, 3]]
    assert ha["mark_errors"] == 4 and ha["n"] == 15
    assert fams["か/が"] == {"classes": ["か", "が"], "counts": [[0, 0], [0, 0]], "n": 0, "mark_errors": 0}
    assert sum(f["mark_errors"] for f in fams.values()) == 4


def test_the_voiced_figure_and_report_line(fake, tmp_path, monkeypatch):
    model, dm = fake
    seen = []
    real = viz.confusion_image

    def spy(cm, classes=None, **kw):
        seen.append((np.asarray(cm).tolist(), list(classes)))
        return real(cm, classes, **kw)

    monkeypatch.setattr(viz, "confusion_image", spy)
    summary = analyse_test(model, dm, tmp_path, [])
    small = [(cm, c) for cm, c in seen if len(c) <= 3]
    assert len(small) == 20 and (([[3, 3, 0], [0, 4, 0], [0, 1, 3]], ["は", "ば", "ぱ"]) in small)
    assert sum(f["mark_errors"] for f in summary["voiced"]) == 4
    png = tmp_path / "figures" / "voiced.png"
    assert png.is_file() and summary["figures"]["voiced"] == str(png)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert (
        "- voiced marks: 4 of 14 test images of the 20 voiced families read as another form of their family" in report
    )
    assert "(most: は/ば/ぱ, 4)" in report


def test_no_voiced_figure_without_voiced_classes(tmp_path):
    classes = [c for c in CLASSES if c not in "がぎぐげござじずぜぞだぢづでどばびぶべぼぱぴぷぺぽ"]
    targets = torch.tensor([0, 1, 2])
    dm = SimpleNamespace(
        classes=classes,
        test_set=Part(answer_store(torch.tensor([0, 2, 2]), side=8), targets, torch.tensor([1, 1, 2])),
        hparams=SimpleNamespace(eval_batch_size=1000),
    )
    summary = analyse_test(ReadsItsAnswer(len(classes)), dm, tmp_path, [])
    assert summary["voiced"] == [] and not (tmp_path / "figures" / "voiced.png").exists()
    assert "voiced" not in (tmp_path / "report.md").read_text(encoding="utf-8")
