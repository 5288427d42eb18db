"""The FeatureMapFigures callback: which samples, when, where the pictures go."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from maist import viz
from maist.callbacks.feature_maps import FeatureMapFigures
from maist.models import DeepMnistCNN, LinearSoftmax
from tests.helpers import quiet_trainer

MAPS = ("input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2")


@pytest.fixture(scope="module")
def cnn():
    """One small CNN for the tests that only draw (the class count does not matter to them)."""
    torch.manual_seed(0)
    return DeepMnistCNN(num_classes=3, hidden=16, init="pytorch")


def make_part(labels, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(len(labels), 1, size, size, generator=g)
    return SimpleNamespace(data=data, targets=torch.tensor(labels), writers=torch.zeros(len(labels)))


class Recorder:
    def __init__(self):
        self.images = []

    def add_image(self, tag, img, step, dataformats):
        self.images.append((tag, step, dataformats, img.shape))


def fake_trainer(tmp_path, classes, labels, split="val", step=0):
    dm = SimpleNamespace(classes=list(classes), **{f"{split}_set": make_part(labels)})
    recorder = Recorder()
    loggers = [SimpleNamespace(experiment=recorder), SimpleNamespace(experiment=SimpleNamespace())]  # 2nd: CSV-like
    trainer = SimpleNamespace(
        global_step=step,
        is_global_zero=True,
        datamodule=dm,
        loggers=loggers,
        default_root_dir=str(tmp_path),
        log_dir=None,
    )
    return trainer, recorder


# ---------------------------------------------------------------- sample choice and output
def test_picks_first_example_of_each_char_and_skips_missing(tmp_path, caplog, cnn):
    classes = ["あ", "い", "ぬ", "ね"]
    labels = [1, 2, 0, 2, 0, 1]
    trainer, rec = fake_trainer(tmp_path, classes, labels)
    cb = FeatureMapFigures(chars=("ぬ", "あ", "ば"), dirpath=str(tmp_path / "fig"))
    with caplog.at_level(logging.INFO, logger="maist.callbacks.feature_maps"):
        cb.draw(trainer, SimpleNamespace(net=cnn))
    assert [n for n, _ in cb.samples] == ["ぬ", "あ"]
    part = trainer.datamodule.val_set
    assert torch.equal(cb.samples[0][1][0], part.data[1]) and torch.equal(cb.samples[1][1][0], part.data[2])
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "ば" in skipped[0] and "ね" not in skipped[0]  # ね is a class, but not chosen

    step_dir = tmp_path / "fig" / "step000000"
    names = sorted(p.name for p in step_dir.iterdir())
    assert names == sorted(["filters.png"] + [f"{c}_{m}.png" for c in ("ぬ", "あ") for m in MAPS])
    tags = {t for t, *_ in rec.images}
    assert tags == {"filters/conv1"} | {f"features/{c}/{m}" for c in ("ぬ", "あ") for m in MAPS}
    assert all(step == 0 and fmt == "HW" for _, step, fmt, _ in rec.images)
    png = np.asarray(Image.open(step_dir / "あ_pool1.png"))
    assert png.shape == (4 * 56 + 3, 8 * 56 + 7)


def test_char_present_in_classes_but_absent_from_data_is_skipped(tmp_path, cnn):
    trainer, _ = fake_trainer(tmp_path, ["あ", "ば", "ぬ"], [0, 2, 2], split="test")
    cb = FeatureMapFigures(split="test", dirpath=str(tmp_path))
    cb.draw(trainer, SimpleNamespace(net=cnn))
    assert [n for n, _ in cb.samples] == ["あ", "ぬ"]


def test_falls_back_to_first_five_classes(tmp_path, cnn):
    classes = ["か", "き", "く", "け", "こ", "さ", "し"]
    trainer, _ = fake_trainer(tmp_path, classes, [6, 5, 4, 3, 2, 1, 0, 6])
    cb = FeatureMapFigures()  # default chars: none of them here
    cb.draw(trainer, SimpleNamespace(net=cnn))
    assert [n for n, _ in cb.samples] == ["か", "き", "く", "け", "こ"]
    assert torch.equal(cb.samples[0][1][0], trainer.datamodule.val_set.data[6])
    assert (tmp_path / "figures" / "step000000" / "こ_conv1.png").is_file()  # default dirpath


def test_no_datamodule_still_draws_the_network(tmp_path):
    trainer, rec = fake_trainer(tmp_path, [], [])
    trainer.datamodule = None
    cb = FeatureMapFigures(dirpath=str(tmp_path))
    cb.draw(trainer, SimpleNamespace(net=LinearSoftmax(num_classes=3, image_size=16)))
    assert [t for t, *_ in rec.images] == ["weights/fc"]
    assert (tmp_path / "step000000" / "weights.png").is_file()


def test_restores_train_mode_and_draws_once_per_step(tmp_path):
    trainer, rec = fake_trainer(tmp_path, ["あ"], [0])
    net = DeepMnistCNN(num_classes=1, hidden=16, init="pytorch")
    net.train()
    net.conv2.eval()  # a submodule deliberately in eval mode stays so
    module = SimpleNamespace(net=net)
    cb = FeatureMapFigures(every_n_steps=5, dirpath=str(tmp_path))
    cb.on_train_start(trainer, module)
    assert net.training and net.conv1.training and not net.conv2.training
    n = len(rec.images)
    cb.on_train_end(trainer, module)  # same step: nothing new
    assert len(rec.images) == n
    for step in (3, 5, 7):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, None, 0)
    assert sorted({s for _, s, *_ in rec.images}) == [0, 5]
    with pytest.raises(ValueError):
        FeatureMapFigures(every_n_steps=0)


# ---------------------------------------------------------------- a real (tiny) training run
class TinyData(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.classes = ["あ", "い", "ぬ"]
        self.train_set = self.val_set = None

    def setup(self, stage=None):
        self.train_set = self.val_set = make_part([2, 0, 1, 0, 2, 1, 1, 0])

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.train_set.data, self.train_set.targets), batch_size=4)


def test_training_run_writes_pngs_and_tensorboard_images(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from maist.module import MaistModule

    torch.manual_seed(0)
    model = MaistModule(
        net={"_target_": "maist.models.DeepMnistCNN", "num_classes": 3, "image_size": 28, "hidden": 32},
        optimizer={"_target_": "torch.optim.Adam", "lr": 1e-2},
        classes=["あ", "い", "ぬ"],
    )
    w0 = model.net.conv1.weight.detach().clone()
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    cb = FeatureMapFigures(every_n_steps=1, dirpath=str(tmp_path / "figures"))
    trainer = quiet_trainer(
        max_steps=2,
        logger=[tb, CSVLogger(str(tmp_path), name="csv")],
        callbacks=[cb],
        default_root_dir=str(tmp_path),
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=TinyData())
    assert trainer.global_step == 2

    figures = tmp_path / "figures"
    assert sorted(p.name for p in figures.iterdir()) == ["step000000", "step000001", "step000002"]
    for step_dir in figures.iterdir():
        names = {p.name for p in step_dir.iterdir()}
        assert {"filters.png", "あ_input.png", "あ_conv1.png", "ぬ_pool2.png"} <= names
        assert not any(n.startswith(("ね", "ば", "ぱ")) for n in names)
    # step 0 is drawn before any update: its filters are the initial weights
    first = np.asarray(Image.open(figures / "step000000" / "filters.png"))
    last = np.asarray(Image.open(figures / "step000002" / "filters.png"))
    assert np.array_equal(first, viz.filter_grid(w0))
    assert not np.array_equal(first, last)

    ea = EventAccumulator(tb.log_dir, size_guidance={"images": 0})
    ea.Reload()
    tags = set(ea.Tags()["images"])
    assert {"filters/conv1", "features/あ/input", "features/あ/conv1", "features/ぬ/pool1", "features/ぬ/pool2"} <= tags
    assert [e.step for e in ea.Images("features/あ/relu1")] == [0, 1, 2]
    img = ea.Images("features/ぬ/pool1")[0]
    assert (img.height, img.width) == (4 * 56 + 3, 8 * 56 + 7)
