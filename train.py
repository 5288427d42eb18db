"""Train and test one model: `python train.py model=cnn schedule=stepped` (configs: maist/conf/)."""

from maist.train import main

if __name__ == "__main__":
    main()
