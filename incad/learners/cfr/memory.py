"""CFR's compact attention over a key-value memory: top-k keys by cosine similarity, softmax-weighted values.

Queries are processed in chunks of ``budget // M`` rows against the M memory
rows, so at most ``budget`` similarities exist at once whatever the memory size
(as :mod:`incad.ops.nearest` does for nearest neighbours).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from incad.ops.nearest import DISTANCE_BUDGET


def attend(queries: Tensor, keys: Tensor, values: Tensor, top_k: int, temperature: float, budget: int = DISTANCE_BUDGET) -> Tensor:
    """(N, Ck) queries -> (N, Cv): the values of each query's ``top_k`` most cosine-similar (M, Ck) keys, weighted by softmax(similarity / temperature)."""
    if keys.shape[0] == 0:
        raise ValueError("cfr: the crossmodal memory is empty; calibrate the learner on normal data before it scores")
    k = min(top_k, keys.shape[0])
    unit_keys = F.normalize(keys, dim=-1)
    rows = max(1, budget // keys.shape[0])
    retrieved = []
    for start in range(0, queries.shape[0], rows):
        similarity = F.normalize(queries[start : start + rows], dim=-1) @ unit_keys.T
        best = similarity.topk(k, dim=1)
        weights = torch.softmax(best.values / temperature, dim=1)
        retrieved.append(torch.einsum("nk,nkc->nc", weights, values[best.indices]))
    if not retrieved:
        return values.new_zeros(0, values.shape[1])
    return torch.cat(retrieved)
