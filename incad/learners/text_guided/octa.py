"""OCTA, the Object-Conditioned Textual Feature Adaptor (text-guided paper, III-B, eq. 5-8).

A class's prompt embeddings (one per normal-state sentence) go through a
top-k mixture of experts (eq. 5); learnable prototypes read the enhanced
prompts by cross-attention (eq. 6) and are refined by an MLP and a
transformer-style feed-forward block (eq. 7-8). The result is the class's
text anchor in the text space: ``F_text->rgb = F_text->3d``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def expert_mlp(dim: int, hidden_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))


class TopKMixtureOfExperts(nn.Module):
    """Eq. 5: ``sum_{i in top-k} g_i(x) E_i(x)``; each input runs through exactly ``top_k`` experts.

    The gate is a linear layer; the weights ``g_i`` are the softmax of its
    ``top_k`` largest logits (0 for every other expert), and an expert only
    sees the inputs routed to it.
    """

    def __init__(self, dim: int, num_experts: int, top_k: int, hidden_dim: int) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts ({num_experts}), got {top_k}")
        self.top_k = top_k
        self.gate = nn.Linear(dim, num_experts)
        self.experts = nn.ModuleList(expert_mlp(dim, hidden_dim) for _ in range(num_experts))

    def routing(self, inputs: Tensor) -> Tensor:
        """(N, num_experts) gate weights of (N, dim) inputs: ``top_k`` positive entries per row summing to 1, the rest 0."""
        top = self.gate(inputs).topk(self.top_k, dim=-1)
        return torch.zeros(len(inputs), len(self.experts), dtype=inputs.dtype, device=inputs.device).scatter(-1, top.indices, top.values.softmax(dim=-1))

    def forward(self, inputs: Tensor) -> Tensor:
        flat = inputs.reshape(-1, inputs.shape[-1])
        weights = self.routing(flat)
        output = torch.zeros_like(flat)
        for index, expert in enumerate(self.experts):
            rows = weights[:, index] > 0
            if rows.any():
                output[rows] = output[rows] + weights[rows, index, None] * expert(flat[rows])
        return output.reshape(inputs.shape)


class PrototypeCrossAttention(nn.Module):
    """Eq. 6-8: learnable prototypes P query the enhanced text; ``LN(F^p + Dropout(FFN(F^p)))`` with ``F^p = MLP(P + F_p)``."""

    def __init__(self, dim: int, num_prototypes: int, dropout: float) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim) * 0.02)
        self.query = nn.Linear(dim, dim, bias=False)  # W_Q
        self.key = nn.Linear(dim, dim, bias=False)  # W_K
        self.value = nn.Linear(dim, dim, bias=False)  # W_V
        self.mlp = expert_mlp(dim, dim)
        self.feedforward = expert_mlp(dim, 4 * dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, text: Tensor) -> Tensor:
        """(C, T, dim) enhanced prompt embeddings of C classes -> (C, num_prototypes, dim) anchors."""
        queries = self.query(self.prototypes)
        attention = (queries @ self.key(text).transpose(-1, -2) / math.sqrt(text.shape[-1])).softmax(dim=-1)
        attended = attention @ self.value(text)  # F_p, (C, P, dim)
        refined = self.mlp(self.prototypes + attended)
        return self.norm(refined + self.dropout(self.feedforward(refined)))


class ObjectConditionedTextAdaptor(nn.Module):
    """OCTA: prompt embeddings (C, T, dim) of C classes -> text anchors (C, num_prototypes, dim)."""

    def __init__(self, dim: int, num_experts: int, top_k: int, expert_hidden_dim: int, num_prototypes: int, dropout: float) -> None:
        super().__init__()
        self.experts = TopKMixtureOfExperts(dim, num_experts, top_k, expert_hidden_dim)
        self.attention = PrototypeCrossAttention(dim, num_prototypes, dropout)

    def forward(self, prompt_embeddings: Tensor) -> Tensor:
        return self.attention(self.experts(prompt_embeddings))
