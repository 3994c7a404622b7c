"""Uni-RCM's extra loss term: a small MSE on valid tokens next to CFM's 1 - cos."""

from __future__ import annotations

from torch import Tensor

from incad.data.sample import Batch
from incad.learners.cfm.loss import masked_mean


def mapping_mse_term(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """MSE between mapped and true features of both directions, over valid tokens (weight 0.01 in the public code)."""
    valid = outputs["valid"]
    errors = [
        masked_mean((outputs[f"{side}/predicted"] - outputs[f"{side}/features"]).pow(2).mean(dim=-1), valid)
        for side in ("2d", "3d")
    ]
    return sum(errors)
