"""End to end through train.py on the shipped sample: learn, evaluate a checkpoint in a new
process, resume at the same step, and a sweep whose failing job does not stop the others."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "torch_threads=1"]


def train(*overrides, cwd=ROOT, check=True):
    proc = subprocess.run([sys.executable, "train.py", *overrides, *FAST], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """The article's CNN, 200 steps of 50 on the generated sample, validated every 100 steps."""
    base = tmp_path_factory.mktemp("train")
    run_dir = base / "run"
    train("model=cnn", "trainer.max_steps=200", "trainer.val_check_interval=100",
          f"data.cache_dir={base / 'cache'}", f"hydra.run.dir={run_dir}")
    return base, run_dir


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


def test_checkpoint_evaluates_the_same_in_a_new_process(sample_run):
    base, run_dir = sample_run
    eval_dir = base / "eval"
    train("train=false", f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", f"data.cache_dir={base / 'cache'}",
          f"hydra.run.dir={eval_dir}")
    assert metrics(eval_dir)["test/acc"] == pytest.approx(metrics(run_dir)["test/acc"], abs=1e-6)


def test_evaluating_a_missing_checkpoint_says_so(tmp_path):
    proc = train("train=false", f"ckpt_path={tmp_path / 'nope.ckpt'}", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode != 0
    assert "nope.ckpt: no such checkpoint" in proc.stderr + proc.stdout


def test_resume_continues_at_the_same_step(sample_run):
    base, run_dir = sample_run
    resumed = base / "resumed"
    proc = train("model=cnn", f"ckpt_path={run_dir / 'checkpoints/last.ckpt'}", "trainer.max_steps=230",
                 "trainer.val_check_interval=100", "test=false", f"data.cache_dir={base / 'cache'}",
                 f"hydra.run.dir={resumed}")
    assert "Restoring states from the checkpoint path" in proc.stderr + proc.stdout
    assert metrics(resumed)["steps"] == 230


def test_sweep_reports_a_failing_job_and_runs_the_others(tmp_path):
    proc = train("-m", "data.class_set=hiragana71,no_such_set", "model=linear", "trainer.max_steps=20",
                 "trainer.val_check_interval=10", f"data.cache_dir={tmp_path / 'cache'}",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}", "~callbacks.feature_maps")
    good, bad = metrics(tmp_path / "sweep/0"), metrics(tmp_path / "sweep/1")
    assert "test/acc" in good and "failed" not in good
    assert "unknown class set 'no_such_set'" in bad["failed"]
    assert "sweep summary" in proc.stdout and "FAILED" in proc.stdout
