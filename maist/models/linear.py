"""The article's beginner model: flatten, one weight matrix, softmax (in the loss)."""

from __future__ import annotations

from torch import nn

from maist import checks


class LinearSoftmax(nn.Module):
    """One linear layer from the flattened image to the logits (the softmax is in the loss).

    Args:
        num_classes: outputs (the class set's size).
        image_size: side of the square input.
        zero_init: start from zero weights and biases, as the article's ``tf.zeros`` (uniform predictions).
    """

    def __init__(self, num_classes: int = 71, image_size: int = 28, zero_init: bool = True):
        super().__init__()
        checks.whole("model.net.num_classes", num_classes, 1)
        checks.whole("model.net.image_size", image_size, 4)
        checks.flag("model.net.zero_init", zero_init)
        self.fc = nn.Linear(image_size * image_size, num_classes)
        if zero_init:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(x.flatten(1))
