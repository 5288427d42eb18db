"""The divergence guard: a non-finite loss or a collapse of validation accuracy stops the run."""

import math

import torch
from torch.utils.data import DataLoader, TensorDataset

from maist import registry
from maist.callbacks.divergence import DivergenceGuard
from maist.module import MaistModule
from tests.helpers import quiet_trainer


class NanAfter(torch.nn.Module):
    """A linear model whose output turns NaN from a given forward call on."""

    def __init__(self, num_classes=3, image_size=4, after=5):
        super().__init__()
        self.fc = torch.nn.Linear(image_size * image_size, num_classes)
        self.after, self.calls = after, 0

    def forward(self, x):
        self.calls += 1
        out = self.fc(x.flatten(1))
        return out * math.nan if self.calls > self.after else out


def test_nonfinite_loss_stops_training_and_keeps_weights_finite(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.PARTS["net"], "tests.test_divergence.NanAfter", NanAfter)  # buildable by name
    torch.manual_seed(0)
    model = MaistModule(
        net={"_target_": "tests.test_divergence.NanAfter", "after": 5},
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        classes=["a", "b", "c"],
    )
    data = TensorDataset(torch.rand(64, 1, 4, 4), torch.randint(3, (64,)))
    guard = DivergenceGuard()
    trainer = quiet_trainer(max_steps=50, callbacks=[guard], default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(data, batch_size=8))
    # five good updates; the sixth batch's loss is NaN: its update is skipped and the run stops there
    assert trainer.global_step == 6
    assert model.nonfinite_step == 5
    assert "not finite at step 5" in guard.reason
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _Trainer:
    sanity_checking = False

    def __init__(self):
        self.callback_metrics, self.global_step, self.should_stop = {}, 0, False


def test_validation_collapse_stops_only_below_the_fraction_of_the_best():
    guard, trainer = DivergenceGuard(collapse_fraction=0.5, min_best=0.2), _Trainer()
    for step, acc, stops in [
        (1000, 0.1, False),
        (2000, 0.05, False),  # best too low to judge
        (3000, 0.9, False),
        (4000, 0.46, False),
        (5000, 0.44, True),
    ]:
        trainer.global_step, trainer.callback_metrics["val/acc"] = step, torch.tensor(acc)
        guard.on_validation_end(trainer, None)
        assert trainer.should_stop == stops, step
    assert "collapsed to 0.4400 at step 5000 (best 0.9000)" in guard.reason
