"""A sweep reads as one table: each run's settings next to its final metrics in TensorBoard's
HParams dashboard, in MLflow (its default local store, read back through `mlflow ui`) and in
W&B (offline runs), and folders named by what they are."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import metrics, run_train

SHORT = ["model=linear", "trainer.max_steps=20", "trainer.val_check_interval=10"]  # every run here

pytestmark = pytest.mark.slow


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


def test_a_sweep_is_one_hparams_table_with_named_folders(tmp_path, sample_cache):
    run_train(
        "-m",
        "schedule=constant,stepped",
        f"hydra.sweep.dir={tmp_path}",
        f"data.cache_dir={sample_cache}",
        "~callbacks.feature_maps",
        *SHORT,
    )
    jobs = sorted(p for p in tmp_path.iterdir() if (p / "metrics.json").is_file())
    assert [p.name.split(",")[0] for p in jobs] == ["0_model=linear", "1_model=linear"]
    assert "schedule=constant" in jobs[0].name and "schedule=stepped" in jobs[1].name
    for job, schedule in zip(jobs, ("constant", "stepped")):
        settings, finals = hparams_row(job / "tensorboard")
        m = metrics(job)
        assert settings["schedule"] == schedule and settings["model"] == "linear"
        assert settings["trainer.max_steps"] == 20 and settings["data.batch_size"] == 50
        assert finals["final/test/acc"] == pytest.approx(m["test/acc"], abs=1e-6)
        assert finals["final/val/acc_best"] == pytest.approx(m["val/acc_best"], abs=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_ui(folder: Path, store: str):
    """`mlflow ui --backend-store-uri <store>` started in ``folder`` on a free loopback port, once it
    answers; returns (the process, a function that GETs or POSTs one of its REST paths → bytes)."""
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", store]
    ui = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def call(path: str, body: dict | None = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/{path}", data, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    deadline = time.time() + 180
    while ui.poll() is None and time.time() < deadline:
        try:
            call("health")
            return ui, call
        except OSError:
            time.sleep(0.5)
    ui.kill()
    pytest.fail(f"mlflow ui did not answer: {ui.communicate()[0][-3000:]}")


def test_mlflow_ui_opens_the_default_store(tmp_path, sample_cache, monkeypatch):
    """A run logged with logger=mlflow's default store, read back through the README's
    `mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db` as the browser reads it: its
    experiment, run, settings, metrics and figures (no MLFLOW_ALLOW_FILE_STORE needed)."""
    pytest.importorskip("mlflow", reason="logger=mlflow needs the mlflow extra")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    run_dir = tmp_path / "run"
    run_train(
        "logger=mlflow",
        "schedule=stepped",
        f"hydra.run.dir={run_dir}",
        "trainer.log_every_n_steps=5",
        f"data.cache_dir={sample_cache}",
        *SHORT,
        cwd=tmp_path,  # the store is outputs/mlflow.db in the folder trained in
    )
    ui, call = mlflow_ui(tmp_path, "sqlite:///outputs/mlflow.db")
    try:
        experiments = json.loads(call("ajax-api/2.0/mlflow/experiments/search", {"max_results": 100}))
        (experiment,) = [e for e in experiments["experiments"] if e["name"] == "train"]
        runs = json.loads(call("ajax-api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]}))
        (run,) = runs["runs"]
        run_id = run["info"]["run_id"]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        logged = {p["key"]: p["value"] for p in run["data"]["metrics"]}
        history = json.loads(call(f"ajax-api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=val/acc"))
        listed = json.loads(call(f"ajax-api/2.0/mlflow/artifacts/list?run_id={run_id}&path=test/confusion"))
        (figure,) = [f["path"] for f in listed["files"]]
        png = call(f"get-artifact?path={figure}&run_uuid={run_id}")
    finally:
        ui.terminate()
        ui.wait(30)
    m = metrics(run_dir)
    assert params["schedule"] == "stepped" and params["model"] == "linear" and params["trainer.max_steps"] == "20"
    assert logged["final/test/acc"] == pytest.approx(m["test/acc"], abs=1e-6)
    assert "train/loss" in logged and len(history["metrics"]) == 2  # validated every 10 of 20 steps
    assert "schedule=stepped" in run["info"]["run_name"] and "logger" not in run["info"]["run_name"]
    assert figure == f"test/confusion/step{m['steps']:06d}.png" and png.startswith(b"\x89PNG")


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run's ``.wandb`` file, which ``wandb sync`` uploads: a 7-byte
    header, then LevelDB's log format (32 KiB blocks of chunks, each a 7-byte header — checksum,
    length, type: 1 whole, 2 first, 3 middle, 4 last — then its bytes)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:  # a block's last few bytes are padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(chunk))
            chunk = b""
    return records


def wandb_run(folder: Path) -> dict:
    """One offline W&B run under ``folder``: its name, config, summary, history rows and exit code."""
    (log,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    run = {"dir": log.parent, "config": {}, "summary": {}, "history": [], "exit_code": None}
    for r in wandb_records(log):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run["name"] = r.run.display_name
        elif kind in ("config", "summary"):
            items = getattr(r, kind).update
            run[kind].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
        elif kind == "history":
            run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "exit":
            run["exit_code"] = r.exit.exit_code
    return run


def wandb_offline(tmp_path) -> dict:
    """Environment for W&B runs that stay on this machine, with its own settings and caches."""
    return {
        "WANDB_MODE": "offline",
        **{f"WANDB_{d}_DIR": str(tmp_path / d.lower()) for d in ("CONFIG", "CACHE", "DATA")},
    }


def test_wandb_gets_the_settings_metrics_and_figures_one_run_per_job(tmp_path, sample_cache):
    pytest.importorskip("wandb", reason="logger=wandb needs the wandb extra")
    run_train(
        "-m",
        "logger=wandb",
        "schedule=constant,stepped",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "trainer.log_every_n_steps=5",
        f"data.cache_dir={sample_cache}",
        *SHORT,
        env=wandb_offline(tmp_path),
    )
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if (p / "metrics.json").is_file())
    assert len(jobs) == 2
    for job, schedule in zip(jobs, ("constant", "stepped")):
        run, m = wandb_run(job), metrics(job)
        assert run["exit_code"] == 0, "log_summary ends each job's run"
        assert run["config"]["schedule"] == schedule and run["config"]["model"] == "linear"
        assert run["config"]["trainer.max_steps"] == 20 and "logger" not in run["name"]
        assert run["summary"]["final/test/acc"] == pytest.approx(m["test/acc"], abs=1e-6)
        assert len([h for h in run["history"] if "val/acc" in h]) == 2  # validated every 10 of 20 steps
        assert any("train/loss" in h for h in run["history"])
        (figure,) = run["summary"]["test/confusion/filenames"]
        assert (run["dir"] / "files" / figure).read_bytes().startswith(b"\x89PNG")


def test_a_wandb_run_left_open_by_a_failed_job_ends_failed(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="logger=wandb needs the wandb extra")
    from maist.tracking import WandbRunLogger

    for key, value in wandb_offline(tmp_path).items():
        monkeypatch.setenv(key, value)
    wandb.init(project="maist", dir=tmp_path / "failed")
    WandbRunLogger(save_dir=tmp_path / "next")
    assert wandb.run is None
    assert wandb_run(tmp_path / "failed")["exit_code"] == 1


@pytest.mark.parametrize("name", ["hiragana71", "hiragana75", "katakana48", "kanji881"])
def test_per_class_metric_names_are_ascii_unique_and_readable(name):
    """MLflow keeps only [A-Za-z0-9_./ -] in a metric name: ours are ASCII already, one per class."""
    import re

    from maist.data.kana import class_set
    from maist.module import per_class_name

    classes = class_set(name).classes
    names = [per_class_name(i, c) for i, c in enumerate(classes)]
    assert all(re.fullmatch(r"test_per_class/\d+_[a-z0-9_]+", n) for n in names)
    assert len(set(names)) == len(names)
    if name == "hiragana71":
        assert names[0] == "test_per_class/00_a" and "test_per_class/60_ya" in names
