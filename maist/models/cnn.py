"""The TensorFlow "Deep MNIST for experts" network that the article trains on hiragana.

conv 5×5 (32) → ReLU → pool 2 → conv 5×5 (64) → ReLU → pool 2 → fc 1024 → ReLU → dropout → fc.
The dropout's keep probability is an attribute (``keep_prob``) that a schedule may change.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from maist import checks
from maist.errors import ConfigError

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
INITS = ("tensorflow", "pytorch")


def init_like_tensorflow(module: nn.Module, std: float, bias: float) -> None:
    """Truncated normal weights (cut at 2 std, as tf.truncated_normal) and constant biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.constant_(m.bias, bias)


class DeepMnistCNN(nn.Module):
    """The article's CNN: two conv-ReLU-pool blocks, a hidden fully connected layer, dropout, logits.

    Args:
        num_classes: outputs (the class set's size).
        image_size: side of the square input (pooling is TensorFlow's SAME: 28 → 14 → 7).
        filters: channels of the two convolutions (the article: 32, 64; ``[1, 64]`` its one-filter remark).
        kernel_size: side of both convolution kernels (odd: SAME padding).
        hidden: width of the fully connected layer (the article: 1024).
        pool: ``max`` (the article's) or ``avg``.
        keep_prob: dropout keep probability in training (a schedule may change ``self.keep_prob``).
        init: ``tensorflow`` (truncated normal weights, constant biases, as the article) or ``pytorch``.
        init_std: standard deviation of the TensorFlow initialisation's weights.
        init_bias: the TensorFlow initialisation's bias value.
    """

    def __init__(
        self,
        num_classes: int = 71,
        image_size: int = 28,
        filters: tuple[int, int] = (32, 64),
        kernel_size: int = 5,
        hidden: int = 1024,
        pool: str = "max",
        keep_prob: float = 0.5,
        init: str = "tensorflow",
        init_std: float = 0.1,
        init_bias: float = 0.1,
    ):
        super().__init__()
        net = "model.net."
        checks.whole(net + "num_classes", num_classes, 1)
        checks.whole(net + "image_size", image_size, 4)
        c1, c2 = checks.wholes(net + "filters", filters, length=2)
        if checks.whole(net + "kernel_size", kernel_size, 1) % 2 == 0:
            raise ConfigError(f"{net}kernel_size={kernel_size}: must be odd (SAME padding)")
        checks.whole(net + "hidden", hidden, 1)
        checks.choice(net + "pool", pool, POOLS)
        checks.probability(net + "keep_prob", keep_prob)
        checks.choice(net + "init", init, INITS)
        checks.positive(net + "init_std", init_std)
        checks.number(net + "init_bias", init_bias)
        pad = kernel_size // 2  # SAME padding for odd kernels
        self.conv1 = nn.Conv2d(1, c1, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size, padding=pad)
        self.pool = POOLS[pool](2, 2)
        side = math.ceil(math.ceil(image_size / 2) / 2)  # SAME pooling: 28 → 14 → 7
        self.fc1 = nn.Linear(c2 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.keep_prob = keep_prob
        if init == "tensorflow":
            init_like_tensorflow(self, init_std, init_bias)

    def _pool(self, x):
        if x.shape[-1] % 2:  # TF's SAME pooling pads odd sizes on the bottom/right
            x = F.pad(x, (0, 1, 0, 1), value=float("-inf") if isinstance(self.pool, nn.MaxPool2d) else 0.0)
        return self.pool(x)

    def features(self, x) -> dict[str, torch.Tensor]:
        """Every intermediate map the article draws, by name."""
        conv1 = self.conv1(x)
        relu1 = F.relu(conv1)
        pool1 = self._pool(relu1)
        conv2 = self.conv2(pool1)
        relu2 = F.relu(conv2)
        pool2 = self._pool(relu2)
        return {"conv1": conv1, "relu1": relu1, "pool1": pool1, "conv2": conv2, "relu2": relu2, "pool2": pool2}

    def forward(self, x):
        x = self._pool(F.relu(self.conv1(x)))
        x = self._pool(F.relu(self.conv2(x)))
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.dropout(x, p=1.0 - self.keep_prob, training=self.training)
        return self.fc2(x)
