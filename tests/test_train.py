"""End to end through train.py on the shipped sample: learn, evaluate a checkpoint in a new
process, resume at the same step, and a sweep whose failing job does not stop the others."""

from pathlib import Path

import pytest

from tests.helpers import compose_cfg, metrics, run_train


def step_losses(run_dir: Path) -> dict[int, float]:
    """train/loss at every step, from the CSV logger (``trainer.log_every_n_steps=1``)."""
    import csv

    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def ckpt_step(path: Path) -> int:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


# The article's CNN, 200 steps of 50 on the generated sample (63 batches an epoch), validated
# every 75 steps (75 and 150: the last validation is not the last step), testing last.ckpt.
RUN = (
    "model=cnn",
    "trainer.max_steps=200",
    "trainer.val_check_interval=75",
    "test_ckpt=last",
    "logger=tensorboard_csv",
    "trainer.log_every_n_steps=1",
)

KILLER = """
import os, signal
import lightning as L

class KillAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, sample_cache):
    base = tmp_path_factory.mktemp("train")
    run_dir = base / "run"
    run_train(*RUN, f"data.cache_dir={sample_cache}", f"hydra.run.dir={run_dir}")
    return base, run_dir


@pytest.mark.slow
def test_short_run_learns_and_writes_its_outputs(sample_run):
    _, run_dir = sample_run
    m = metrics(run_dir)
    assert m["steps"] == 200
    # 71 classes: chance is 1.4%; 200 steps on the sample already read most held-out writers
    assert m["test/acc"] > 0.5, m
    assert m["test/acc_top5"] >= m["test/acc"]
    assert 0 < m["val/acc_best"] <= 1
    assert len(m["test/acc_per_class"]) == 71
    for path in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", ".hydra/config.yaml"):
        assert (run_dir / path).is_file(), path
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run_dir / "figures").glob("**/*.png"))
    assert not list((run_dir / "checkpoints").glob(".*tmp")), "a temporary checkpoint was left behind"


@pytest.mark.slow
def test_last_checkpoint_holds_the_final_weights_and_is_what_was_tested(sample_run):
    _, run_dir = sample_run
    assert ckpt_step(run_dir / "checkpoints/last.ckpt") == 200  # not the last validation's step, 150
    assert ckpt_step(run_dir / "checkpoints/best.ckpt") in (75, 150, 200)  # validated at the end too
    assert metrics(run_dir)["tested_checkpoint"] == str(run_dir / "checkpoints/last.ckpt")


@pytest.mark.slow
def test_checkpoint_evaluates_the_same_in_a_new_process(sample_run, sample_cache):
    base, run_dir = sample_run
    eval_dir = base / "eval"
    run_train(
        "train=false",
        f"ckpt_path={run_dir / 'checkpoints/last.ckpt'}",
        f"data.cache_dir={sample_cache}",
        f"hydra.run.dir={eval_dir}",
    )
    assert metrics(eval_dir)["test/acc"] == pytest.approx(metrics(run_dir)["test/acc"], abs=1e-6)
    assert metrics(eval_dir)["tested_checkpoint"] == str(run_dir / "checkpoints/last.ckpt")
    assert metrics(eval_dir)["task_name"] == "eval" and metrics(run_dir)["task_name"] == "train"


@pytest.mark.parametrize("train, folder", [("true", "outputs/train/"), ("false", "outputs/eval/")])
def test_an_evaluation_is_filed_under_its_own_task(train, folder):
    """``train=false`` runs go to ``outputs/eval/…``, not among the training runs."""
    from omegaconf import OmegaConf

    cfg = compose_cfg(f"train={train}", hydra=True)
    OmegaConf.resolve(cfg.hydra.run)
    assert cfg.hydra.run.dir.startswith(folder)


@pytest.mark.slow
def test_evaluating_a_missing_checkpoint_says_so_in_one_line(tmp_path):
    proc = run_train("train=false", f"ckpt_path={tmp_path / 'nope.ckpt'}", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'nope.ckpt'}: no such checkpoint")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_killed_run_resumes_mid_epoch_with_the_same_batches(sample_run, sample_cache, tmp_path):
    """Killed at step 120: last.ckpt holds step 75 (at most one validation interval lost); resumed
    from it, the run draws the same batches and dropout masks as the uninterrupted one, so every
    step's loss from 75 (mid-epoch: batch 12 of epoch 1) to 199 is the same."""
    _, run_dir = sample_run
    (tmp_path / "killer.py").write_text(KILLER)
    killed = tmp_path / "killed"
    proc = run_train(
        *RUN,
        "+callbacks.kill._target_=killer.KillAt",
        "+callbacks.kill.step=120",
        f"data.cache_dir={sample_cache}",
        f"hydra.run.dir={killed}",
        env={"PYTHONPATH": str(tmp_path)},
        check=False,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    last = killed / "checkpoints/last.ckpt"
    assert ckpt_step(last) == 75
    resumed = tmp_path / "resumed"
    run_train(*RUN, f"ckpt_path={last}", "test=false", f"data.cache_dir={sample_cache}", f"hydra.run.dir={resumed}")
    assert metrics(resumed)["steps"] == 200
    again, original = step_losses(resumed), step_losses(run_dir)
    assert sorted(again) == list(range(75, 200))
    for step in again:
        assert again[step] == pytest.approx(original[step], rel=1e-5), f"step {step}"


@pytest.mark.slow
def test_sweep_of_short_runs_validates_and_reports_a_failing_job(tmp_path, sample_cache):
    """A job whose max_steps is below val_check_interval (the default 1,000) still ends validated,
    with a best.ckpt and val/acc_best; a failing job does not stop the others."""
    proc = run_train(
        "-m",
        "data.class_set=hiragana71,no_such_set",
        "model=linear",
        "trainer.max_steps=20",
        f"data.cache_dir={sample_cache}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "~callbacks.feature_maps",
    )
    good_dir = next((tmp_path / "sweep").glob("0_*"))
    good, bad = (metrics(next((tmp_path / "sweep").glob(f"{n}_*"))) for n in (0, 1))
    assert "test/acc" in good and "failed" not in good
    assert 0 < good["val/acc_best"] <= 1 and ckpt_step(good_dir / "checkpoints/best.ckpt") == 20
    assert good["tested_checkpoint"] == str(good_dir / "checkpoints/best.ckpt")
    assert "unknown class set 'no_such_set'" in bad["failed"]
    assert "sweep summary" in proc.stdout and "FAILED" in proc.stdout


def test_the_trainer_profiles_nothing_unless_a_profiler_is_configured(tmp_path):
    from lightning.pytorch.profilers import SimpleProfiler
    from omegaconf import OmegaConf

    from maist.trainer import QuietProfiler, make_trainer

    cfg = OmegaConf.create(
        {"trainer": {"_target_": "lightning.Trainer", "accelerator": "cpu", "default_root_dir": str(tmp_path)}}
    )
    trainer = make_trainer(cfg, logger=False, enable_progress_bar=False)
    assert isinstance(trainer.profiler, QuietProfiler)
    with trainer.profiler.profile("[Callback]x.on_train_batch_start"):  # what Lightning does ~35 times a step
        pass
    assert trainer.profiler.summary() == ""
    cfg.trainer.profiler = "simple"  # +trainer.profiler=simple on the command line
    assert isinstance(make_trainer(cfg, logger=False).profiler, SimpleProfiler)


def test_the_progress_bar_counts_the_runs_steps_across_epochs(tmp_path):
    """One bar for the run: step / max_steps (a resumed run starts at its step), redrawn every
    refresh_rate steps and at the last, not reset when an epoch of sampled batches ends."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import TQDMProgressBar
    from omegaconf import OmegaConf

    from maist.callbacks.progress import StepProgressBar
    from maist.trainer import make_trainer

    bar = StepProgressBar(refresh_rate=4)
    trainer = SimpleNamespace(max_steps=10, global_step=2)  # resumed at step 2
    bar.get_metrics = lambda *a: {}
    bar.on_train_start(trainer, None)
    drawn, tqdm = [], bar.train_progress_bar
    tqdm.refresh = lambda **kw: drawn.append(tqdm.n)
    assert (tqdm.total, tqdm.n) == (10, 2)
    for step in range(3, 11):
        trainer.global_step = step
        bar.on_train_batch_end(trainer, None, None, None, (step - 1) % 5)
        if step == 5:
            bar.on_train_epoch_end(trainer, None)
            bar.on_train_epoch_start(trainer)
    assert drawn == [4, 8, 10] and tqdm.total == 10

    cfg = OmegaConf.create(
        {"trainer": {"_target_": "lightning.Trainer", "accelerator": "cpu", "default_root_dir": str(tmp_path)}}
    )
    assert isinstance(make_trainer(cfg, logger=False).progress_bar_callback, StepProgressBar)
    assert make_trainer(cfg, logger=False, enable_progress_bar=False).progress_bar_callback is None
    mine = TQDMProgressBar(refresh_rate=5)  # a configured bar is kept
    assert make_trainer(cfg, logger=False, callbacks=[mine]).progress_bar_callback is mine
