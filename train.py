"""Train and test one model: `python train.py model=cnn schedule=stepped` (see conf/)."""

import hydra
from omegaconf import DictConfig

from maist.config import register_resolvers
from maist.run import optimized_value, run_or_report

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return optimized_value(cfg, run_or_report(cfg))


if __name__ == "__main__":
    main()
