"""Train and test one model: ``maist-train model=cnn schedule=stepped`` (or ``python train.py …``
in a checkout); the configs are ``conf/``."""

import sys

import hydra
from omegaconf import DictConfig

from maist.config import CONFIG_DIR, register_configs
from maist.distributed import lost_rank_message
from maist.errors import user_error
from maist.run import optimized_value, run_or_report
from maist.text import printable

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return optimized_value(cfg, run_or_report(cfg))
    except Exception as err:
        if (problem := user_error(err)) is not None:
            print(f"error: {printable(problem)}", file=sys.stderr)  # bad input: one line, not a traceback
            sys.exit(2)
        if (lost := lost_rank_message(err)) is not None:
            print(f"error: {lost}", file=sys.stderr)  # several processes: one line, not a gloo traceback
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
