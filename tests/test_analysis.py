"""analyse_test on a fake model whose predictions are written into its input images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from maist.analysis import analyse_test, confused_pairs, confusion_matrix
from maist.data.datamodule import Part
from maist.data.kana import class_set

CLASSES = list(class_set("hiragana71").classes)
C = len(CLASSES)
HA, BA, PA, A = (CLASSES.index(c) for c in "はばぱあ")


class ReadsItsAnswer(nn.Module):
    """Predicts the class stored in pixel (0, 0) of each image."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long(), C).float() + self.dummy


class FakeExperiment:
    def __init__(self):
        self.images = {}

    def add_image(self, tag, img, step, dataformats="CHW"):
        self.images[tag] = (np.asarray(img).shape, dataformats)


# (writer, true, predicted): writer 10 all right, writer 11 three wrong, writer 12 one wrong
ROWS = ([(10, t, t) for t in (A, HA, BA, PA, HA, BA)]
        + [(11, HA, BA), (11, HA, BA), (11, PA, BA), (11, A, A), (11, BA, BA), (11, PA, PA)]
        + [(12, HA, BA), (12, A, A), (12, BA, BA), (12, PA, PA), (12, HA, HA), (12, A, A)])


@pytest.fixture
def fake():
    writers = torch.tensor([r[0] for r in ROWS])
    targets = torch.tensor([r[1] for r in ROWS])
    preds = torch.tensor([r[2] for r in ROWS])
    data = torch.rand(len(ROWS), 1, 12, 12) * 0.5
    data[:, 0, 0, 0] = preds.float()  # the model reads its answer here
    dm = SimpleNamespace(classes=CLASSES, test_set=Part(data, targets, writers),
                         hparams=SimpleNamespace(eval_batch_size=5))  # several batches
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
    for name in ("confusion", "misclassified", "worst_writers"):
        png = tmp_path / "figures" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{name}.png" in report
    assert set(logger.experiment.images) == {"test/confusion", "test/misclassified", "test/worst_writers"}
    assert all(fmt in ("HWC", "HW") for _, fmt in logger.experiment.images.values())
    assert Path(summary["report"]) == tmp_path / "report.md"


def test_confusion_png_is_71_by_71_cells(fake, tmp_path, monkeypatch):
    model, dm = fake
    seen = {}
    import maist.viz as viz

    real = viz.confusion_image

    def spy(cm, classes=None, **kw):
        seen["cm"], seen["classes"] = np.asarray(cm), list(classes)
        return real(cm, classes, **kw)

    monkeypatch.setattr(viz, "confusion_image", spy)
    analyse_test(model, dm, tmp_path, [])
    assert seen["cm"].shape == (71, 71) and seen["classes"] == CLASSES
    assert seen["cm"][HA, BA] == 3 and np.trace(seen["cm"]) == 14


def test_no_errors_still_reports(tmp_path):
    targets = torch.tensor([A, HA, BA])
    data = torch.zeros(3, 1, 8, 8)
    data[:, 0, 0, 0] = targets.float()
    dm = SimpleNamespace(classes=CLASSES, test_set=Part(data, targets, torch.tensor([1, 1, 2])),
                         hparams=SimpleNamespace(eval_batch_size=1000))
    summary = analyse_test(ReadsItsAnswer(), dm, tmp_path, [])
    assert summary["errors"] == 0 and summary["confused_pairs"] == [] and summary["writer_acc_min"] == 1.0
    assert (tmp_path / "figures" / "confusion.png").is_file()
    assert "No confusions" in (tmp_path / "report.md").read_text(encoding="utf-8")
