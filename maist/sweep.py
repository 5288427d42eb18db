"""A Hydra callback that ends a multirun with one line per job: its overrides and result."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback

from maist.run import METRICS_FILE

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    def __init__(self):
        self.jobs: list[tuple[str, Path]] = []

    def on_job_end(self, config, job_return, **kwargs) -> None:
        overrides = " ".join(job_return.overrides or [])
        self.jobs.append((overrides, Path(job_return.working_dir or config.hydra.runtime.output_dir)))

    def on_multirun_end(self, config, **kwargs) -> None:
        if not self.jobs:
            return
        lines = ["sweep summary:"]
        for overrides, folder in self.jobs:
            path = folder / METRICS_FILE
            try:
                metrics = json.loads(path.read_text())
            except (OSError, ValueError):
                metrics = {"failed": "no metrics.json (the job did not finish)"}
            if "failed" in metrics:
                result = f"FAILED ({metrics['failed']})"
            else:
                result = "  ".join(f"{k}={metrics[k]:.4f}" for k in ("test/acc", "val/acc_best") if k in metrics)
            lines.append(f"  [{overrides}] {result}  → {folder}")
        print("\n".join(lines), flush=True)
