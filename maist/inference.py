"""The one inference loop: a network's outputs for a set of images, in eval mode, a batch at a time
(the test analysis, prediction, the benchmarks)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from maist.data.dataset import to_float

BATCH = 1000  # images a forward pass


@torch.no_grad()
def logits(
    net: torch.nn.Module, images, batch_size: int = BATCH, view: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """``net``'s outputs (N, classes) for ``images``, on the CPU: a data module's part (read a batch at
    a time from its uint8 store) or an (N, 1, S, S) tensor, uint8 as stored or float in [0, 1]. Each
    batch is moved to the network's device, made float there, passed through ``view`` if given (a
    test-time view), and read in eval mode (the network's mode is restored afterwards)."""
    take = images.images if callable(getattr(images, "images", None)) else images.__getitem__
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = net.training
    net.eval()
    try:
        out = []
        for i in range(0, len(images), batch_size):
            x = take(slice(i, i + batch_size)).to(device)
            x = to_float(x) if x.dtype == torch.uint8 else x.float()
            out.append(net(view(x) if view is not None else x).cpu())
    finally:
        net.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)
