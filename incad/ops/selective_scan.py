"""Mamba's selective scan: mamba-ssm's CUDA kernel when it is there, a pure-PyTorch chunked scan otherwise.

Every public anomaly-detection Mamba imports the CUDA kernel unconditionally, so none runs on a
CPU; this module gives the same function (``selective_scan_fn``'s arguments, shapes and
semantics) on any device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# The kernel computes in float32 and accepts these input dtypes; float64 goes to the pure path.
_KERNEL_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def _cuda_kernel() -> Callable[..., Tensor] | None:
    """mamba-ssm's fused kernel, or None: it is an optional extra that only imports with CUDA."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError):
        return None
    return selective_scan_fn


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int = 8,
) -> Tensor:
    """mamba-ssm's ``selective_scan_fn`` on any device.

    Shapes: ``u``, ``delta``, ``z`` (batch, dim, L); ``A`` (dim, N), real; ``B``, ``C``
    (batch, N, L) or grouped (batch, groups, N, L), channel ``d`` reading group
    ``d // (dim // groups)``; ``D``, ``delta_bias`` (dim,). Returns ``y`` (batch, dim, L) in
    ``u``'s dtype, computed in at least float32 like the kernel.

    ``delta = softplus(delta + delta_bias)`` (each part optional),
    ``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t``, ``y_t = <C_t, h_t> + D * u_t``,
    then ``y * silu(z)``.

    CUDA tensors of a dtype the kernel takes go to mamba-ssm's kernel when it imports; the rest
    to the chunked scan (see ``_chunked_scan`` for its cost and memory). ``chunk_size`` only
    affects the chunked scan: work and memory grow with it, and 8 was fastest on one CPU thread
    from L 49 to 3136 (16 up to 2x and 64 3-7x slower; see
    ``benchmarks/bench_selective_scan.py``).
    """
    kernel = _cuda_kernel() if u.is_cuda else None
    if kernel is not None and u.dtype in _KERNEL_INPUT_DTYPES and A.dtype == torch.float32:
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    compute_dtype = torch.promote_types(u.dtype, torch.float32)
    delta = _effective_delta(delta.to(compute_dtype), delta_bias, delta_softplus)
    u_compute = u.to(compute_dtype)
    B, C = _grouped(B).to(compute_dtype), _grouped(C).to(compute_dtype)
    y = _chunked_scan(u_compute, delta, A.to(compute_dtype), B, C, chunk_size)
    return _skip_and_gate(y, u_compute, D, z).to(u.dtype)


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """The recurrence token by token: ground truth for the tests, baseline for the benchmarks."""
    compute_dtype = torch.promote_types(u.dtype, torch.float32)
    delta = _effective_delta(delta.to(compute_dtype), delta_bias, delta_softplus)
    u_compute, A = u.to(compute_dtype), A.to(compute_dtype)
    B_per_channel, C_per_channel = (_per_channel(M, u.shape[1]).to(compute_dtype) for M in (B, C))
    state = u_compute.new_zeros(*u.shape[:2], A.shape[1])
    outputs = []
    # unbind, not [..., t]: the backward of each index would allocate a full-length gradient (O(L^2)).
    steps = zip(*(x.unbind(-1) for x in (delta, u_compute, B_per_channel, C_per_channel)))
    for delta_t, u_t, B_t, C_t in steps:
        state = torch.exp(delta_t[..., None] * A) * state + (delta_t * u_t)[..., None] * B_t
        outputs.append((state * C_t).sum(-1))
    return _skip_and_gate(torch.stack(outputs, dim=-1), u_compute, D, z).to(u.dtype)


def _effective_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].to(delta.dtype)
    return F.softplus(delta) if delta_softplus else delta


def _skip_and_gate(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    if D is not None:
        y = y + D[:, None].to(y.dtype) * u
    return y if z is None else y * F.silu(z.to(y.dtype))


def _grouped(M: Tensor) -> Tensor:
    """(batch, N, L) is the one-group case of (batch, groups, N, L)."""
    return M.unsqueeze(1) if M.dim() == 3 else M


def _per_channel(M: Tensor, dim: int) -> Tensor:
    """(batch, dim, N, L): each channel's copy of its group's B or C (a copy; the reference only)."""
    M = _grouped(M)
    return M.repeat_interleave(dim // M.shape[1], dim=1)


def _chunked_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int) -> Tensor:
    """``<C_t, h_t>`` for all t, one chunk of ``chunk_size`` tokens at a time.

    Inside a chunk every token's state is a decayed sum over the chunk's earlier tokens plus
    the carried state, computed at once with the (batch, dim, N, T, T) matrix of pairwise
    decays (``_scan_chunk``); only the state at the chunk's end is carried to the next chunk,
    so the Python loop runs over chunks, never tokens. The last chunk is simply shorter when
    ``chunk_size`` does not divide L, so nothing is padded.

    Cost and memory: the pairwise decays take batch*dim*N*T*T values per chunk, so the work
    is T times that of the token-by-token recurrence (an exp per pair). Forward peak memory is
    about one such tensor: 4 bytes * batch*dim*N*T^2 in float32, 1.07 GB at batch 16, dim 256,
    N 16, T 64, 17 MB at T 8. When gradients are needed each chunk is checkpointed, so the
    graph keeps only chunk inputs and carried states (batch*dim*N*L/T values, 105 MB for that
    case at T 8, L 3136) and backward recomputes one chunk at a time, peaking at about three
    pairwise tensors; without checkpointing every chunk's decays would be kept
    (4 bytes * batch*dim*N*T*L: 6.6 GB at T 8, 52 GB at T 64).
    """
    batch, dim, length = u.shape
    groups, state_size = B.shape[1], A.shape[1]
    if dim % groups:
        raise ValueError(f"dim {dim} is not divisible by the {groups} groups of B and C")
    # (batch, groups, channels per group, ...) lets B and C broadcast over their group's channels.
    grouped_shape = (batch, groups, dim // groups)
    u, delta = u.view(*grouped_shape, length), delta.view(*grouped_shape, length)
    A = A.view(*grouped_shape[1:], state_size)
    state = u.new_zeros(*grouped_shape, state_size)
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    outputs = []
    for start in range(0, length, chunk_size):
        chunk = slice(start, start + chunk_size)
        args = (u[..., chunk], delta[..., chunk], A, B[..., chunk], C[..., chunk], state)
        if needs_graph:
            y, state = checkpoint(_scan_chunk, *args, use_reentrant=False, preserve_rng_state=False)
        else:
            y, state = _scan_chunk(*args)
        outputs.append(y)
    return torch.cat(outputs, dim=-1).reshape(batch, dim, length)


def _scan_chunk(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, state_in: Tensor
) -> tuple[Tensor, Tensor]:
    """Outputs (batch, groups, channels, T) and end state of one chunk, from the state before it.

    Uses the segment-sum form: with ``cum_i`` the log-decay from the chunk start to token i,
    the decay from token j to token i is ``exp(cum_i - cum_j)``. Pairs with j > i are set to
    -inf before the exp, so no exp ever sees a large positive number, whatever delta * A is.
    """
    length = u.shape[-1]
    log_decay = (delta[..., None, :] * A[..., None]).cumsum(-1)  # (b, g, c, N, T)
    future = torch.ones(length, length, dtype=torch.bool, device=u.device).triu(1)
    # In place: neither masked_fill_ nor exp_ needs the values it overwrites for backward.
    pairwise_log_decay = log_decay[..., :, None] - log_decay[..., None, :]  # [i, j] = cum_i - cum_j
    pairwise_decay = pairwise_log_decay.masked_fill_(future, float("-inf")).exp_()
    drive = (delta * u)[..., None, :] * B[:, :, None]  # delta_j * B_j * u_j, (b, g, c, N, T)
    states = (pairwise_decay @ drive[..., None]).squeeze(-1) + log_decay.exp() * state_in[..., None]
    y = torch.einsum("bgcnt,bgnt->bgct", states, C)
    return y, states[..., -1]
