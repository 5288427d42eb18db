"""The article's beginner model: flatten, one weight matrix, softmax (in the loss)."""

from __future__ import annotations

from torch import nn


class LinearSoftmax(nn.Module):
    """One linear layer from the flattened image to the logits (the softmax is in the loss).

    Args:
        num_classes: outputs (the class set's size).
        image_size: side of the square input.
        zero_init: start from zero weights and biases, as the article's ``tf.zeros`` (uniform predictions).
    """

    def __init__(self, num_classes: int = 71, image_size: int = 28, zero_init: bool = True):
        super().__init__()
        self.fc = nn.Linear(image_size * image_size, num_classes)
        if zero_init:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(x.flatten(1))
