"""Train and test one model: `python train.py model=cnn schedule=stepped` (configs: conf/)."""

from maist.train import main

if __name__ == "__main__":
    main()
