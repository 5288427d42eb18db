"""What changes when a run spans several processes (Lightning DDP): which slice of a batch or of
an evaluation set each rank takes, and how Lightning's subprocess launcher restarts this job.

One rule throughout: ``data.batch_size`` is the global batch. Each step the ranks take disjoint
slices of one global draw, so the article's 50 images per step stay 50 (and step-keyed schedules
keep their meaning) whatever the number of processes.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager

import numpy as np
import torch
from omegaconf import read_write

from maist.errors import ConfigError


def world(trainer) -> tuple[int, int]:
    """(rank, world size) of ``trainer`` (0, 1 without one)."""
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """The slice of a global batch each rank trains on; the global batch must split evenly."""
    if batch_size % world_size:
        raise ConfigError(
            f"data.batch_size={batch_size} does not split over {world_size} processes: the batch "
            f"is global (each step draws it once); choose a multiple of {world_size}"
        )
    return batch_size // world_size


def shard(n: int, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of ``range(n)``: every index exactly once over all ranks,
    no padding (shares differ by at most one)."""
    return np.array_split(np.arange(n), world_size)[rank]


def launch_ranks_as_this_job() -> None:
    """Make Lightning's subprocess launcher start the other ranks as plain runs of *this* job.

    The launcher re-runs ``sys.argv`` with ``hydra.run.dir`` set to Hydra's run dir: in a sweep
    (``-m``, ``hparams_search=…``) every child would start a sweep of its own, and the run dir is
    not the job's folder. So the children get this job's overrides (its sweep values included)
    and this job's output folder.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir
    sys.argv = [sys.argv[0], *hc.overrides.task]


def end_launched_ranks(trainer) -> None:
    """Kill the ranks this process launched (Lightning's subprocess launcher), when the run fails
    here: a frozen rank would otherwise outlive the run, holding its output open."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    if isinstance(launcher, _SubprocessScriptLauncher) and getattr(launcher, "procs", None):
        launcher.kill(signal.SIGKILL)


# What a collective that lost a rank fails with (gloo and NCCL errors are RuntimeErrors, some of
# them torch.distributed.DistError), by the words of their messages.
TIMED_OUT = ("Timed out", "timed out", "Timeout")
CONNECTION_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused")


def lost_rank_message(err: BaseException) -> str | None:
    """One line for a run that ended because another rank stopped answering (a collective timed out:
    ``trainer.strategy.timeout``) or died (its connection closed), naming this rank and the others;
    None for any other error."""
    seen = set()
    while err is not None and id(err) not in seen:
        text = str(err)
        if isinstance(err, RuntimeError) and any(w in text for w in TIMED_OUT + CONNECTION_LOST):
            break
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    else:
        return None
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 2))
    others = ", ".join(str(r) for r in range(world) if r != rank)
    why = (
        "it did not answer within trainer.strategy.timeout (frozen or far behind)"
        if any(w in text for w in TIMED_OUT)
        else "its connection closed (the process ended: its own output says why)"
    )
    return f"rank {rank} of {world} lost rank {others}: {why}; the run stopped ({text.splitlines()[0][:160]})"


# What Lightning's subprocess launcher sets in the launching process's environment.
LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def one_job_of_processes():
    """Around one run: afterwards no trace of its ranks is left in this process, so that the next
    job of a sweep launches (and connects) its own: the process group is destroyed and the
    launcher's environment variables are put back as they were."""
    saved = {k: os.environ.get(k) for k in LAUNCHER_VARIABLES}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
