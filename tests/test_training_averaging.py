"""The moving average of weights a training run may export (`--ema`)."""

from __future__ import annotations

import pytest
import torch
from training.averaging import WeightAverage


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))


def test_the_average_follows_the_weights_slowly_and_counts_follow_at_once() -> None:
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    average = WeightAverage(model, decay=0.9)
    assert not average.module.training and not any(p.requires_grad for p in average.module.parameters())

    model.train()
    model(torch.randn(8, 2))  # batch norm statistics and its batch count move
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update(model)
    # First update: decay (1 + 1) / (10 + 1), not 0.9 — the starting point fades fast in a short run.
    decay = 2 / 11
    averaged = average.module.state_dict()
    now = model.state_dict()
    for name in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
        assert torch.allclose(averaged[name], decay * start[name] + (1 - decay) * now[name]), name
    assert averaged["1.num_batches_tracked"] == now["1.num_batches_tracked"] == 1

    # Its own tensors: the model training on does not move the average.
    before = averaged["0.weight"].clone()
    with torch.no_grad():
        model[0].weight.add_(5.0)
    assert torch.equal(average.module.state_dict()["0.weight"], before)

    for _ in range(200):
        average.update(model)
    assert average.updates == 201
    assert torch.allclose(average.module.state_dict()["0.weight"], model.state_dict()["0.weight"], atol=1e-3)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_a_decay_outside_zero_to_one_is_refused(decay: float) -> None:
    with pytest.raises(ValueError):
        WeightAverage(_model(), decay)
