"""A few optimisation steps of a learner on one batch, on its whole declared objective."""

from __future__ import annotations

import torch

from incad.data.sample import Batch
from incad.learners.base import Learner
from incad.learners.terms import total_loss


def losses_over_steps(learner: Learner, batch: Batch, steps: int, lr: float = 3e-3) -> list[float]:
    """Total loss at each of ``steps`` Adam steps: the weighted sum of every term the learner declares."""
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=lr)
    learner.train()
    losses = []
    for _ in range(steps):
        outputs = learner(batch)
        loss = total_loss(learner, outputs, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
