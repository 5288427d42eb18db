"""Step schedules: the value at and around each boundary, applied before the step, after resume."""

import pytest
import torch
from omegaconf import OmegaConf

from maist.callbacks.schedules import StepSchedule, StepTable
from maist.config import CONFIG_DIR

CONF = CONFIG_DIR / "schedule"


def table(name, param):
    return StepTable(OmegaConf.load(f"{CONF}/{name}.yaml")[param]["values"])


@pytest.mark.parametrize(
    "step, lr",
    [
        (0, 1e-3),
        (999, 1e-3),
        (1000, 1e-4),
        (1001, 1e-4),
        (4999, 1e-4),
        (5000, 1e-5),
        (9999, 1e-5),
        (10000, 1e-6),
        (10001, 1e-6),
        (19999, 1e-6),
    ],
)
def test_stepped_rate_at_boundaries(step, lr):
    assert table("stepped", "lr")(step) == pytest.approx(lr)


@pytest.mark.parametrize(
    "step, lr, keep",
    [
        (0, 1e-3, 1.0),
        (999, 1e-3, 1.0),
        (1000, 1e-4, 1.0),
        (2999, 1e-4, 1.0),
        (3000, 1e-5, 0.3),
        (6999, 1e-5, 0.3),
        (7000, 1e-6, 0.3),
        (9999, 1e-6, 0.3),
        (10000, 1e-7, 0.1),
        (13999, 1e-7, 0.1),
        (14000, 1e-8, 0.1),
        (14999, 1e-8, 0.1),
        (15000, 1e-8, 0.05),
        (18999, 1e-8, 0.05),
        (19000, 1e-9, 0.8),
        (19999, 1e-9, 0.8),
    ],
)
def test_stepped_dropout_tables_at_boundaries(step, lr, keep):
    assert table("stepped_dropout", "lr")(step) == pytest.approx(lr)
    assert table("stepped_dropout", "keep_prob")(step) == pytest.approx(keep)


def test_table_must_start_at_zero_and_not_be_empty():
    with pytest.raises(ValueError, match="step 0"):
        StepTable({10: 1.0})
    with pytest.raises(ValueError, match="at least one"):
        StepTable({})


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)
        self.keep_prob = 0.5


class _Trainer:
    def __init__(self, step, optimizer):
        self.global_step, self.optimizers, self.loggers = step, [optimizer], [_Logger()]


class _Logger:
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step):
        self.calls.append((step, metrics))


class _Module:
    def __init__(self):
        self.net = _Net()


def test_callback_sets_rate_and_keep_prob_before_the_step_and_logs_changes_only():
    module = _Module()
    opt = torch.optim.Adam(module.net.parameters(), lr=0.123)
    lr_cb = StepSchedule("lr", {0: 1e-3, 1000: 1e-4})
    keep_cb = StepSchedule("keep_prob", {0: 1.0, 1000: 0.3})
    for step, want_lr, want_keep, logged in [
        (0, 1e-3, 1.0, True),
        (999, 1e-3, 1.0, False),
        (1000, 1e-4, 0.3, True),
        (1001, 1e-4, 0.3, False),
    ]:
        trainer = _Trainer(step, opt)
        lr_cb.on_train_batch_start(trainer, module, None, 0)
        keep_cb.on_train_batch_start(trainer, module, None, 0)
        assert opt.param_groups[0]["lr"] == pytest.approx(want_lr)
        assert module.net.keep_prob == pytest.approx(want_keep)
        assert bool(trainer.loggers[0].calls) == logged
        if logged:
            assert trainer.loggers[0].calls[0] == (step, {"schedule/lr": want_lr})


def test_resumed_callback_applies_the_right_value_at_once():
    """A fresh callback (as after loading a checkpoint) at step 5,000 sets 1e-5 straight away,
    whatever rate the restored optimizer state carried."""
    module = _Module()
    opt = torch.optim.Adam(module.net.parameters(), lr=1e-3)
    cb = StepSchedule("lr", OmegaConf.load(f"{CONF}/stepped.yaml")["lr"]["values"])
    cb.on_train_batch_start(_Trainer(5000, opt), module, None, 0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_unknown_param_is_rejected():
    with pytest.raises(ValueError, match="lr"):
        StepSchedule("momentum", {0: 0.9})


@pytest.mark.parametrize("max_steps, warned", [(1000, True), (999, True), (1001, False), (-1, False)])
def test_a_run_that_ends_before_the_first_change_is_told_it_equals_constant(caplog, max_steps, warned):
    """``stepped`` changes the rate first at step 1,000: a run of at most 1,000 steps never sees
    it, and is told so (a sweep's ``stepped`` and ``constant`` runs cannot differ)."""
    trainer = _Trainer(0, None)
    trainer.max_steps = max_steps
    cb = StepSchedule("lr", OmegaConf.load(f"{CONF}/stepped.yaml")["lr"]["values"])
    with caplog.at_level("WARNING", logger="maist.callbacks.schedules"):
        cb.on_train_start(trainer, _Module())
    assert ("cannot differ" in caplog.text) == warned
    if warned:
        assert "step 1000" in caplog.text and f"ends at step {max_steps}" in caplog.text
