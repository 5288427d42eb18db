"""The divergence guard: a non-finite loss or a collapse of validation accuracy stops the run."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from maist import registry
from maist.callbacks.divergence import DivergenceGuard
from maist.module import MaistModule
from tests.helpers import quiet_trainer


class NanAfter(torch.nn.Module):
    """A linear model whose output is NaN after ``after`` forward calls (up to call ``until``)."""

    def __init__(self, num_classes=3, image_size=4, after=5, until=None):
        super().__init__()
        self.fc = torch.nn.Linear(image_size * image_size, num_classes)
        self.after, self.until, self.calls = after, until, 0

    def forward(self, x):
        self.calls += 1
        out = self.fc(x.flatten(1))
        nan = self.calls > self.after and (self.until is None or self.calls <= self.until)
        return out * math.nan if nan else out


def test_nonfinite_loss_stops_training_and_keeps_weights_finite(tmp_path, monkeypatch):
    model, trainer, guard, _ = _nan_run(tmp_path, monkeypatch, after=5, fused=False)
    # five good updates; the sixth batch's loss is NaN: its update is skipped and the run stops there
    assert trainer.global_step == 6
    assert model.nonfinite_step == 5
    assert "not finite at step 5" in guard.reason
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _nan_run(tmp_path, monkeypatch, after: int, fused: bool, momentum: float = 0.0, until=None, fit=(), **trainer):
    monkeypatch.setitem(registry.PARTS["net"], "tests.test_divergence.NanAfter", NanAfter)
    torch.manual_seed(0)
    model = MaistModule(
        net={"_target_": "tests.test_divergence.NanAfter", "after": after, "until": until},
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": momentum, "fused": fused},
        classes=["a", "b", "c"],
    )
    start = [p.detach().clone() for p in model.parameters()]
    data = TensorDataset(torch.rand(64, 1, 4, 4), torch.randint(3, (64,)))
    guard = DivergenceGuard()
    run = quiet_trainer(callbacks=[guard], default_root_dir=tmp_path, **{"max_steps": 50, **trainer})
    run.fit(model, DataLoader(data, batch_size=8), **dict(fit))
    return model, run, guard, start


def test_a_fused_optimizer_skips_on_the_device_and_the_guard_stops_at_the_next_logging_step(tmp_path, monkeypatch):
    host, host_run, _, _ = _nan_run(tmp_path, monkeypatch, after=5, fused=False)
    reads = []
    check = DivergenceGuard._check_nonfinite
    monkeypatch.setattr(DivergenceGuard, "_check_nonfinite", lambda *a: reads.append(1) or check(*a))
    monkeypatch.setattr(MaistModule, "_all_finite", lambda *a: pytest.fail("a host read on the device path"))
    model, run, guard, _ = _nan_run(tmp_path, monkeypatch, after=5, fused=True, log_every_n_steps=4)
    assert len(reads) <= run.global_step // 4 + 2  # on logging steps and at the end, not every step
    assert model.nonfinite_on_device and not host.nonfinite_on_device
    assert model.nonfinite_step == 5 and "not finite at step 5" in guard.reason
    # every step from 5 on was NaN and skipped: read on the logging step after it, not at once
    assert host_run.global_step == 6 and 6 < run.global_step <= 6 + 4
    # the same five updates: the skipped ones changed nothing
    for p, q in zip(model.parameters(), host.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert isinstance(run.optimizers[0].found_inf, torch.Tensor)  # the kernel was given the decision


def test_a_nonfinite_micro_batch_skips_its_accumulated_update_on_the_device(tmp_path, monkeypatch):
    """With two micro-batches an update, a NaN in the first one (the fifth forward: step 2) skips
    the update even though the second one is finite."""
    model, run, guard, _ = _nan_run(
        tmp_path, monkeypatch, after=4, until=5, fused=True, accumulate_grad_batches=2, max_steps=6
    )
    assert model.nonfinite_step == 2 and "not finite at step 2" in guard.reason
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_checkpoint_of_an_unfused_optimizer_resumes_on_the_host_path(tmp_path, monkeypatch):
    """A resumed optimizer takes the checkpoint's param_groups (fused: False there): it is decided
    on the host, and the unfused kernels are never handed a found_inf."""
    _, first, _, _ = _nan_run(tmp_path, monkeypatch, after=10**6, fused=False, max_steps=3)
    ckpt = tmp_path / "unfused.ckpt"
    first.save_checkpoint(ckpt)
    model, run, guard, _ = _nan_run(tmp_path, monkeypatch, after=2, fused=True, max_steps=8, fit={"ckpt_path": ckpt})
    assert not model.nonfinite_on_device and not run.optimizers[0].param_groups[0]["fused"]
    assert model.nonfinite_step == 5 and run.global_step == 6  # steps 3, 4 fine; step 5's forward NaN, skipped


def test_a_skipped_first_update_leaves_the_fused_optimizer_without_state(tmp_path, monkeypatch):
    """Fused SGD makes its momentum buffers on the first update and leaves them as made (empty_like)
    when the device skips it: that update's decision is read, and the state it made dropped."""
    model, run, guard, start = _nan_run(tmp_path, monkeypatch, after=0, fused=True, momentum=0.9)
    assert model.nonfinite_step == 0 and guard.reason
    assert not run.optimizers[0].state  # no buffers made: none of uninitialised memory
    for p, q in zip(model.parameters(), start):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "settings, precision, fused",
    [({}, "32-true", True), ({}, "bf16-mixed", True), ({"fused": False}, "32-true", False)]
    + [({"foreach": True}, "32-true", False), ({}, "16-mixed", False)],  # 16-mixed: GradScaler decides
)
def test_the_optimizer_is_fused_on_a_gpu_unless_chosen_otherwise(settings, precision, fused):
    model = MaistModule(
        net={"_target_": "maist.models.LinearSoftmax", "num_classes": 3, "image_size": 4},
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1, **settings},
        classes=["a", "b", "c"],
    )
    model._trainer = SimpleNamespace(precision=precision)
    model._device = torch.device("cuda", 0)  # what Lightning's device mixin reports there
    assert bool(model.configure_optimizers().defaults["fused"]) is fused
    model._device = torch.device("cpu")
    assert not model.configure_optimizers().defaults["fused"]


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
