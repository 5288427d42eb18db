"""A value that cannot work fails before any data is decoded, as one line naming the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from maist.config import CONFIG_DIR, register_configs
from maist.errors import ConfigError
from maist.run import run

REPO = Path(__file__).resolve().parents[1]


def compose_run(tmp_path: Path, *overrides: str):
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *overrides,
                f"paths.output_dir={tmp_path / 'run'}",
                f"data.cache_dir={tmp_path / 'cache'}",
                "trainer.max_steps=1",
            ],
        )
    return cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=abc", "data.batch_size='abc': must be a whole number ≥ 1"),
        ("data.batch_size=0", "data.batch_size=0: must be a whole number ≥ 1"),
        ("data.eval_batch_size=-5", "data.eval_batch_size=-5"),
        ("data.val_fraction=0.85", "must leave some data for training"),
        ("data.split_by=writers", "data.split_by='writers': must be one of writer, random"),
        ("data.class_set=hiragana46", "unknown class set 'hiragana46'"),
        ("torch_threads=abc", "torch_threads='abc': must be a whole number ≥ 1"),
        ("torch_threads=0", "torch_threads=0"),
        ("model.optimizer.lr=-1", "model.optimizer.lr=-1: must be a finite number > 0"),
        (
            "schedule=stepped schedule.lr.values={0:1e-3,1000:-1e-4}",
            "schedule lr: -0.0001 at step 1000 must be a finite number > 0",
        ),
        ("schedule=stepped schedule.lr.values={0:inf}", "schedule lr: inf at step 0 must be a finite number > 0"),
        ("schedule=stepped_dropout schedule.keep_prob.values={0:1.5}", "schedule keep_prob: 1.5 at step 0 must be"),
        ("test_ckpt=best_one", "test_ckpt='best_one': must be one of best, last"),
    ],
)
def test_bad_values_fail_before_the_data_is_decoded(tmp_path, override, message):
    cfg = compose_run(tmp_path, *override.split(" "))
    with pytest.raises(Exception) as info:
        run(cfg)
    err = info.value
    while not isinstance(err, ConfigError) and err.__cause__ is not None:  # Hydra wraps instantiate's errors
        err = err.__cause__
    assert isinstance(err, ConfigError) and message in str(err)
    assert not (tmp_path / "cache").exists(), "data was decoded before the value was checked"


def test_train_py_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "data.batch_size=abc", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: data.batch_size='abc': must be a whole number ≥ 1"]
