"""RLR's loss and score (eq. 13-16): squared error plus cosine distance, per token."""

from __future__ import annotations

from torch import Tensor

from incad.data.sample import Batch
from incad.learners.features import cosine_distance


def token_error(reconstruction: Tensor, features: Tensor, with_mse: bool = True) -> Tensor:
    """(B, L, C) pair -> (B, L): mean squared error over channels + (1 - cosine similarity).

    The same quantity is the training loss (averaged) and the anomaly score, as
    in RLR's public code ("MSE + (1 - cos)"); eq. 14 writes the unsquared L2
    norm, which the code does not use. ``with_mse=False`` gives the cosine
    distance alone.
    """
    cosine = cosine_distance(reconstruction, features)
    if not with_mse:
        return cosine
    return (reconstruction - features).pow(2).mean(dim=-1) + cosine


def reconstruction_loss(reconstruction: Tensor, features: Tensor) -> Tensor:
    """Eq. 14 for one level: the token error averaged over tokens and the batch."""
    return token_error(reconstruction, features).mean()


def level_reconstruction_term(outputs: dict[str, Tensor], batch: Batch, key: str) -> Tensor:
    """Eq. 14 for the branch ``key`` (modality and level), read from the learner's named outputs."""
    return reconstruction_loss(outputs[f"{key}/reconstruction"], outputs[f"{key}/features"])
