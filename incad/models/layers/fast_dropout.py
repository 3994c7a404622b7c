"""torch's dropout layers with :func:`incad.ops.dropout.dropout`'s CPU mask, same parameters and state.

``use_fast_dropout(module)`` switches every ``nn.Dropout`` and ``nn.MultiheadAttention`` inside a
module (torch's transformer layers included) to the subclasses here. They add no parameters or
buffers, so state dicts, saved models and ``repr`` stay as they were; only the dropout masks come
from another generator (same distribution, still seeded by ``torch.manual_seed``).

Attention dropout needs its own attention: torch's fused kernels cannot take a mask from outside,
and with dropout on a CPU torch already runs the unfused path (``softmax(q k^T / sqrt(d))``, a
Bernoulli mask on it, times v). ``FastDropoutAttention`` runs that same path itself, with this
mask, in training; in evaluation, without attention dropout or with masks and returned weights it is
``nn.MultiheadAttention``'s own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from incad.ops.dropout import dropout


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the fast CPU mask."""

    def forward(self, input: Tensor) -> Tensor:
        return dropout(input, self.p, self.training)


class FastDropoutAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose attention-weight dropout uses the fast CPU mask in training."""

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None, need_weights: bool = True,
        attn_mask: Tensor | None = None, average_attn_weights: bool = True, is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        dropping_on_cpu = self.training and self.dropout > 0 and query.device.type == "cpu"
        plain_layout = self.batch_first and self._qkv_same_embed_dim and self.bias_k is None and not self.add_zero_attn
        no_masks = not need_weights and key_padding_mask is None and attn_mask is None and not is_causal
        if dropping_on_cpu and plain_layout and no_masks:
            return self._attend(query, key, value), None
        return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal)

    def _attend(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """(B, Lq, E) queries over (B, Lk, E) keys and values: projections, dropped-out softmax weights, output projection."""
        dim, weight, bias = self.embed_dim, self.in_proj_weight, self.in_proj_bias
        if query is key is value:  # self-attention: one product for q, k and v
            q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
        else:
            biases = bias.split(dim) if bias is not None else (None, None, None)
            q, k, v = (F.linear(x, w, b) for x, w, b in zip((query, key, value), weight.split(dim), biases, strict=True))
        batch, length = query.shape[:2]

        def heads(x: Tensor) -> Tensor:  # (B, L, E) -> (B, heads, L, head_dim)
            return x.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        # Scaling q, not the (B, heads, Lq, Lk) scores, saves a pass over the scores each way (self-attention
        # at 16 x 196 tokens: 26.4 -> 24.1 ms forward+backward).
        attention = torch.softmax((q * self.head_dim**-0.5) @ k.transpose(-2, -1), dim=-1)
        attended = dropout(attention, self.dropout) @ v
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, dim))


def use_fast_dropout(module: nn.Module) -> nn.Module:
    """Switch every ``nn.Dropout`` and ``nn.MultiheadAttention`` in ``module`` to the classes here, in place; returns it.

    Only the class changes (``__class__``): the subclasses add no state, so the parameters, their
    initialisation and the state dict's keys are untouched.
    """
    for submodule in module.modules():
        if type(submodule) is nn.Dropout:
            submodule.__class__ = FastDropout
        elif type(submodule) is nn.MultiheadAttention:
            submodule.__class__ = FastDropoutAttention
    return module
