"""A few optimisation steps of a learner on one batch, its core loss and its plugin terms included."""

from __future__ import annotations

import torch

from incad.data.sample import Batch
from incad.learners.base import Learner


def losses_over_steps(learner: Learner, batch: Batch, steps: int, lr: float = 3e-3) -> list[float]:
    """Total loss at each of ``steps`` Adam steps: ``learner.loss`` terms plus every ``LossTermPlugin`` term, weighted."""
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=lr)
    plugins = learner.plugins()
    learner.train()
    losses = []
    for _ in range(steps):
        outputs = learner(batch)
        loss = sum(learner.loss(outputs, batch).values()) + sum(p.weight * p.term(outputs, batch) for p in plugins)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
