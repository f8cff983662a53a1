"""The step guard on a tiny model: it runs after ``backward`` and before the optimizer step, stops
on a non-finite loss or a fatal loader condition in the shared ``TrainingHealth``, and records
the losses and skip totals there for the hooks."""

import itertools

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

from nrd_rsp.engine import GuardedSimpleTrainer
from nrd_rsp.errors import NonFiniteLossError, TooManyBadSamplesError
from nrd_rsp.training_health import TrainingHealth


class _TinyModel(nn.Module):
    """Loss dict of a linear model; ``poison`` makes ``loss_b`` NaN."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.poison = False

    def forward(self, batch):
        out = self.linear(torch.stack(batch)).mean()
        loss_b = out * float("nan") if self.poison else out * 0.5
        return {"loss_a": out**2, "loss_b": loss_b}


def _trainer(health, check_finite=True):
    model = _TinyModel()
    data = itertools.repeat([torch.ones(2), torch.zeros(2)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return GuardedSimpleTrainer(model, data, optimizer, health=health, check_finite=check_finite)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_records_losses_and_skip_totals_then_steps():
    health = TrainingHealth(num_seen=10, num_skipped=1)
    trainer = _trainer(health)
    before = _params(trainer.model)
    trainer.iter = 3
    with EventStorage(3):
        trainer.run_step()
    assert health.last_losses["iteration"] == 3
    assert set(health.last_losses) == {"iteration", "total_loss", "loss_a", "loss_b"}
    total = health.last_losses["loss_a"] + health.last_losses["loss_b"]
    assert health.last_losses["total_loss"] == pytest.approx(total)
    assert health.skip_totals == (1, 10)
    assert any(not torch.equal(a, b) for a, b in zip(before, _params(trainer.model)))


def test_non_finite_loss_stops_before_the_optimizer_step():
    trainer = _trainer(TrainingHealth())
    trainer.model.poison = True
    before = _params(trainer.model)
    with (
        EventStorage(0),
        pytest.raises(NonFiniteLossError, match=r"^Non-finite loss at iteration 0: loss_b=nan\."),
    ):
        trainer.run_step()
    assert all(torch.equal(a, b) for a, b in zip(before, _params(trainer.model)))


def test_fatal_loader_error_in_health_stops_training():
    health = TrainingHealth(num_seen=8, num_skipped=4, fatal_error="4 of the 8 samples were bad")
    trainer = _trainer(health)
    with (
        EventStorage(0),
        pytest.raises(TooManyBadSamplesError, match="Iteration 0: 4 of the 8 samples were bad"),
    ):
        trainer.run_step()
    assert health.skip_totals == (4, 8)
