"""A Hydra callback that ends a multirun with one line per job: what it varied and its result."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from maist.run import METRICS_FILE


class SweepSummary(Callback):
    """Collects each job's overrides and folder; when the multirun ends, prints one line per job
    (what it varied, its result) from its ``metrics.json``. Takes no arguments."""

    def __init__(self):
        self.jobs: list[tuple[list[str], Path]] = []

    def on_job_end(self, config, job_return, **kwargs) -> None:
        folder = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
        self.jobs.append((list(job_return.overrides or []), folder))

    def on_multirun_end(self, config, **kwargs) -> None:
        if not self.jobs:  # the jobs ran in other processes (submitit): read their folders
            self.jobs = self._jobs_on_disk(Path(config.hydra.sweep.dir))
        if not self.jobs:
            return
        common = set.intersection(*(set(o) for o, _ in self.jobs))
        lines = ["sweep summary:"]
        for overrides, folder in self.jobs:
            try:
                metrics = json.loads((folder / METRICS_FILE).read_text())
            except (OSError, ValueError):
                metrics = {"failed": "no metrics.json (the job did not finish)"}
            if "failed" in metrics:
                result = f"FAILED ({metrics['failed']})"
            else:
                result = "  ".join(f"{k}={metrics[k]:.4f}" for k in ("test/acc", "val/acc_best") if k in metrics)
            varied = " ".join(o for o in overrides if o not in common) or "(no overrides)"
            lines.append(f"  [{varied}] {result}  → {folder}")
        print("\n".join(lines), flush=True)

    @staticmethod
    def _jobs_on_disk(sweep_dir: Path) -> list[tuple[list[str], Path]]:
        jobs = []

        def job_number(overrides: Path) -> tuple:
            num = overrides.parent.parent.name.split("_")[0]
            return (int(num) if num.isdigit() else 0, overrides.parent.parent.name)

        for overrides in sorted(sweep_dir.glob("*/.hydra/overrides.yaml"), key=job_number):
            jobs.append((list(OmegaConf.load(overrides)), overrides.parent.parent))
        return jobs
