"""An exponential moving average of a model's weights, exported in place of the last step's.

The average of the weights along the last part of training tends to sit in a flatter region of
the loss than any single step, and to carry over better to cameras the model never saw; it
costs nothing at run time (the same network, other numbers). Early on the decay is lower
(``(1 + n) / (10 + n)`` after n updates, up to ``decay``), so the ImageNet starting point does
not linger in the average of a short run. Batch-norm statistics are averaged as weights are;
integer buffers (counts) follow the model.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError("decay must be in [0, 1)")
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        for name, average in self.module.state_dict().items():
            new = current[name].detach()
            if average.dtype.is_floating_point:
                average.mul_(decay).add_(new, alpha=1.0 - decay)
            else:
                average.copy_(new)
