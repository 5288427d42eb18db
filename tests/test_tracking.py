"""A sweep reads as one table: each run's settings next to its final metrics in TensorBoard's
HParams dashboard and in MLflow (a real local store), and folders named by what they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUIET = [
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "torch_threads=1",
    "model=linear",
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
]

pytestmark = pytest.mark.slow


def train(*overrides, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "train.py", *overrides, *QUIET],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def hparams_row(tensorboard_dir: Path) -> tuple[dict, dict]:
    """(settings, final metrics) of one run, as TensorBoard's HParams dashboard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(tensorboard_dir))
    acc.Reload()
    content = acc.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    settings = {k: v.string_value or v.number_value for k, v in info.hparams.items()}
    finals = {t: acc.Scalars(t)[-1].value for t in acc.Tags()["scalars"] if t.startswith("final/")}
    return settings, finals


def test_a_sweep_is_one_hparams_table_with_named_folders(tmp_path):
    train(
        "-m",
        "schedule=constant,stepped",
        f"hydra.sweep.dir={tmp_path}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "~callbacks.feature_maps",
    )
    jobs = sorted(p for p in tmp_path.iterdir() if (p / "metrics.json").is_file())
    assert [p.name.split(",")[0] for p in jobs] == ["0_model=linear", "1_model=linear"]
    assert "schedule=constant" in jobs[0].name and "schedule=stepped" in jobs[1].name
    for job, schedule in zip(jobs, ("constant", "stepped")):
        settings, finals = hparams_row(job / "tensorboard")
        m = json.loads((job / "metrics.json").read_text())
        assert settings["schedule"] == schedule and settings["model"] == "linear"
        assert settings["trainer.max_steps"] == 20 and settings["data.batch_size"] == 50
        assert finals["final/test/acc"] == pytest.approx(m["test/acc"], abs=1e-6)
        assert finals["final/val/acc_best"] == pytest.approx(m["val/acc_best"], abs=1e-6)


def test_mlflow_gets_the_settings_metrics_and_figures(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="logger=mlflow needs the mlflow extra")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store, as MAIST's logger uses
    store = (tmp_path / "mlruns").as_uri()
    run_dir = tmp_path / "run"
    train(
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={store}",
        "schedule=stepped",
        f"hydra.run.dir={run_dir}",
        "trainer.log_every_n_steps=5",
        f"data.cache_dir={tmp_path / 'cache'}",
        env={"MLFLOW_ALLOW_FILE_STORE": "true"},
    )
    client = mlflow.tracking.MlflowClient(store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "train"]
    (run,) = client.search_runs([experiment.experiment_id])
    m = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.params["schedule"] == "stepped" and run.data.params["model"] == "linear"
    assert run.data.metrics["final/test/acc"] == pytest.approx(m["test/acc"], abs=1e-6)
    assert "train/loss" in run.data.metrics and "val/acc" in run.data.metrics
    assert "schedule=stepped" in run.info.run_name and "logger" not in run.info.run_name
    figures = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any(p.startswith("analysis") or p.startswith("filters") or p.startswith("features") for p in figures), (
        figures
    )
