"""Train and test one model: ``maist-train model=cnn schedule=stepped`` (or ``python train.py …``
in a checkout); the configs are ``conf/``."""

import sys

import hydra
from omegaconf import DictConfig

from maist.config import CONFIG_DIR, register_configs
from maist.errors import user_error
from maist.run import optimized_value, run_or_report

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return optimized_value(cfg, run_or_report(cfg))
    except Exception as err:
        problem = user_error(err)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)  # bad input: one line, not a traceback
        sys.exit(2)


if __name__ == "__main__":
    main()
