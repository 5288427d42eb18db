"""More than one process: 2 CPU ranks on gloo (trainer=ddp_cpu), sweeps whose jobs use them, and
sweeps through submitit's local executor (what hydra/launcher=slurm uses on a cluster)."""

from __future__ import annotations

import pytest
import torch

from maist.data.datamodule import BatchIndexSampler, ShardBatches
from tests.helpers import compose_cfg, metrics, run_train

INJECT = """
import lightning as L

class NanOnRank(L.Callback):
    '''Makes one rank's batch NaN at one step: that rank's loss is not finite, the others' is.'''
    def __init__(self, rank, step):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            batch[0].fill_(float("nan"))
"""


# ---------------------------------------------------------------- samplers, in one process
@pytest.mark.parametrize("replacement", [True, False])
def test_ranks_take_disjoint_slices_of_one_global_draw(replacement):
    whole = list(BatchIndexSampler(103, 10, replacement, seed=5))
    ranks = [list(BatchIndexSampler(103, 10, replacement, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    for k, batch in enumerate(whole):
        assert torch.equal(torch.cat([ranks[0][k], ranks[1][k]]), batch)
        assert len(ranks[0][k]) == len(ranks[1][k]) == 5


def test_a_global_batch_must_split_over_the_ranks():
    from maist.errors import ConfigError

    with pytest.raises(ConfigError, match="data.batch_size=50 does not split over 3 processes"):
        BatchIndexSampler(100, 50, True, world_size=3)


@pytest.mark.parametrize("n, world", [(2272, 2), (7, 3), (1, 2), (1000, 4)])
def test_evaluation_shards_cover_every_example_exactly_once(n, world):
    seen = torch.cat(
        [torch.cat(list(ShardBatches(n, 300, r, world)) or [torch.empty(0, dtype=torch.long)]) for r in range(world)]
    )
    assert torch.equal(seen, torch.arange(n))  # no padding, no repeats, nothing missing


# ---------------------------------------------------------------- 2 processes
@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, sample_cache):
    base = tmp_path_factory.mktemp("ddp")
    run_dir = base / "run"
    proc = run_train(
        "trainer=ddp_cpu",
        "model=cnn",
        "trainer.max_steps=60",
        "trainer.val_check_interval=30",
        f"data.cache_dir={sample_cache}",
        f"hydra.run.dir={run_dir}",
    )
    return base, run_dir, proc


@pytest.mark.slow
def test_two_processes_learn_and_rank_zero_alone_writes(ddp_run):
    _, run_dir, proc = ddp_run
    out = proc.stdout + proc.stderr
    assert "MEMBER: 1/2" in out and "MEMBER: 2/2" in out
    m = metrics(run_dir)
    assert m["steps"] == 60 and m["test/acc"] > 0.3  # 71 classes: chance is 1.4%
    assert out.count("test/acc = ") == 1  # one report
    assert sorted(p.name for p in run_dir.glob("*.json")) == ["metrics.json"]
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob(".*tmp"))
    assert (run_dir / "report.md").is_file() and (run_dir / "checkpoints/last.ckpt").is_file()
    assert not (run_dir / ".pl_hydra_rank_1").exists()


@pytest.mark.slow
def test_a_checkpoint_evaluates_the_same_in_one_and_two_processes(ddp_run, sample_cache):
    base, run_dir, _ = ddp_run
    results = {}
    for trainer in ("cpu", "ddp_cpu"):
        folder = base / f"eval-{trainer}"
        run_train(
            "train=false",
            f"trainer={trainer}",
            f"ckpt_path={run_dir / 'checkpoints/last.ckpt'}",
            f"data.cache_dir={sample_cache}",
            f"hydra.run.dir={folder}",
        )
        results[trainer] = metrics(folder)
    one, two = results["cpu"], results["ddp_cpu"]
    for key in ("test/acc", "test/acc_top5", "test/loss"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    assert two["test/acc_per_class"] == pytest.approx(one["test/acc_per_class"], abs=1e-6)
    assert two["analysis"]["n_test"] == one["analysis"]["n_test"] == 852  # every test image once
    assert two["analysis"]["errors"] == one["analysis"]["errors"]


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True])
def test_a_nonfinite_loss_on_one_rank_stops_every_rank_at_once(tmp_path, sample_cache, fused):
    """Decided on the host every step, or (a fused optimizer) on the device and read on the
    logging steps: either way every rank skips the update and stops at the same step."""
    (tmp_path / "inject.py").write_text(INJECT)
    run_dir = tmp_path / "run"
    run_train(
        "trainer=ddp_cpu",
        "model=linear",
        *(["+model.optimizer.fused=true", "trainer.log_every_n_steps=5"] if fused else []),
        "trainer.max_steps=40",
        "trainer.val_check_interval=20",
        "+callbacks.inject._target_=inject.NanOnRank",
        "+callbacks.inject.rank=1",
        "+callbacks.inject.step=7",
        f"data.cache_dir={sample_cache}",
        f"hydra.run.dir={run_dir}",
        "~callbacks.feature_maps",
        env={"PYTHONPATH": str(tmp_path)},
        timeout=240,  # a hang would time out
    )
    m = metrics(run_dir)
    assert m["stopped"] == "the training loss was not finite at step 7"
    if fused:  # read on the first logging step after step 7
        assert 8 < m["steps"] <= 7 + 5 + 1
    else:  # step 7 made no update on either rank; the guard stopped both after it
        assert m["steps"] == 8
    state = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


STOP = """
import os, signal
import lightning as L

class StopRank(L.Callback):
    '''Stops (SIGSTOP: frozen) or kills (SIGKILL) one rank at one step.'''
    def __init__(self, rank, step, how):
        self.rank, self.step, self.signal = rank, step, getattr(signal, how)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGSTOP", "SIGKILL"])
def test_a_rank_that_stops_answering_ends_the_run_in_one_line(tmp_path, sample_cache, how):
    """A frozen rank (no answer: the collective timeout) or a dead one (its connection closes):
    rank 0 ends with one line naming the rank it lost, not a hang or a gloo traceback."""
    (tmp_path / "stop.py").write_text(STOP)
    proc = run_train(
        "trainer=ddp_cpu",
        "model=linear",
        "trainer.max_steps=40",
        "trainer.strategy.timeout.seconds=15",
        "+callbacks.stop._target_=stop.StopRank",
        "+callbacks.stop.rank=1",
        "+callbacks.stop.step=5",
        f"+callbacks.stop.how={how}",
        f"data.cache_dir={sample_cache}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "~callbacks.feature_maps",
        env={"PYTHONPATH": str(tmp_path)},
        check=False,
        timeout=200,
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert last.startswith("error: rank 0 of 2 lost rank 1: "), last
    assert ("did not answer within trainer.strategy.timeout" if how == "SIGSTOP" else "connection closed") in last
    assert "Traceback" not in proc.stderr


def sweep_of_two(tmp_path, cache) -> list[str]:
    """A short 2-job sweep (two schedules of the linear model) into ``tmp_path / 'sweep'``."""
    return [
        "model=linear",
        "schedule=constant,stepped",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        f"data.cache_dir={cache}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "~callbacks.feature_maps",
    ]


@pytest.mark.slow
def test_a_sweep_of_ddp_jobs_runs_each_job_once(tmp_path, sample_cache):
    proc = run_train("-m", "trainer=ddp_cpu", *sweep_of_two(tmp_path, sample_cache))
    out = proc.stdout + proc.stderr
    assert out.count("MEMBER: 1/2") == 2 and out.count("MEMBER: 2/2") == 2  # two jobs, two ranks each
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    assert all("test/acc" in metrics(job) for job in jobs)
    assert out.count("sweep summary:") == 1


@pytest.mark.slow
def test_a_submitit_local_sweep_runs_both_jobs(tmp_path, sample_cache):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = run_train("-m", "hydra/launcher=submitit_local", *sweep_of_two(tmp_path, sample_cache))
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2 and all("test/acc" in metrics(job) for job in jobs)
    assert "sweep summary:" in proc.stdout


@pytest.mark.slow
def test_a_requeued_slurm_job_resumes_from_its_last_checkpoint(tmp_path, sample_cache):
    run_dir = tmp_path / "run"
    common = [
        "model=linear",
        "trainer.val_check_interval=10",
        f"data.cache_dir={sample_cache}",
        f"hydra.run.dir={run_dir}",
        "~callbacks.feature_maps",
        "test=false",
    ]
    run_train(*common, "trainer.max_steps=20")
    proc = run_train(*common, "trainer.max_steps=30", env={"SLURM_RESTART_COUNT": "1"})
    assert f"resuming from {run_dir / 'checkpoints/last.ckpt'}" in proc.stdout + proc.stderr
    assert metrics(run_dir)["steps"] == 30


def test_the_slurm_launcher_starts_one_task_per_gpu():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_cfg("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.max_num_timeout > 0
