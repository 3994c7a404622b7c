"""Mamba's selective scan: mamba-ssm's CUDA kernel when it is there, a fused numba loop on CPU
(``incad/ops/fused_scan.py``), a pure-PyTorch chunked scan where neither is available.

Every public anomaly-detection Mamba imports the CUDA kernel unconditionally, so none runs on a
CPU; this module gives the same function (``selective_scan_fn``'s arguments, shapes and
semantics) on any device.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# The kernel computes in float32 and accepts these input dtypes; float64 goes to the pure path.
_KERNEL_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Largest |log-decay| a chunk may span: exp of it times any realistic drive stays finite.
_LOG_RANGE = {torch.float32: 60.0, torch.float64: 600.0}
# Above this many bytes per (batch, dim, N, L) tensor, chunks are checkpointed to bound memory.
_CHECKPOINT_ABOVE_BYTES = 256 * 2**20


@functools.cache
def _cuda_kernel() -> Callable[..., Tensor] | None:
    """mamba-ssm's fused kernel, or None: it is an optional extra that only imports with CUDA."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError):
        return None
    return selective_scan_fn


CpuScan = Literal["auto", "fused", "chunked"]


@functools.cache
def _fused_kernel() -> Callable[..., Tensor] | None:
    """The numba scan of ``incad/ops/fused_scan.py``, or None where numba does not import."""
    try:
        from incad.ops.fused_scan import fused_scan
    except ImportError:
        return None
    return fused_scan


@functools.cache
def _report_cpu_scan(fused: bool) -> None:
    """One line, the first time ``cpu_scan="auto"`` picks a CPU implementation, saying which."""
    logger = logging.getLogger("incad")
    if fused:
        logger.info("selective scan on CPU: the fused numba kernel")
    else:
        logger.warning("selective scan on CPU: numba does not import, using the slower chunked PyTorch scan")


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
    chunk_size: int = 64,
    cpu_scan: CpuScan = "auto",
) -> Tensor:
    """mamba-ssm's ``selective_scan_fn`` on any device.

    Shapes: ``u``, ``delta``, ``z`` (batch, dim, L); ``A`` (dim, N), real; ``B``, ``C``
    (batch, N, L) or grouped (batch, groups, N, L), channel ``d`` reading group
    ``d // (dim // groups)``; ``D``, ``delta_bias`` (dim,). Returns ``y`` (batch, dim, L) in
    ``u``'s dtype, computed in at least float32 like the kernel.

    ``delta = softplus(delta + delta_bias)`` (each part optional),
    ``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t``, ``y_t = <C_t, h_t> + D * u_t``,
    then ``y * silu(z)``.

    CUDA tensors of a dtype the kernel takes go to mamba-ssm's kernel when it imports. CPU
    tensors go to the fused numba scan (``cpu_scan="auto"`` when numba imports, or ``"fused"``,
    which fails without it), else to the chunked scan (``"chunked"``; see ``_chunked_scan`` for
    its cost, range and memory); the choice is logged once. ``chunk_size`` is the chunked scan's
    longest chunk; large decays make chunks shorter (down to one token). Each chunk is one Python
    iteration, so longer chunks only save loop overhead (``benchmarks/bench_selective_scan.py``
    compares the implementations with the token loop).
    """
    kernel = _cuda_kernel() if u.is_cuda else None
    if kernel is not None and u.dtype in _KERNEL_INPUT_DTYPES and A.dtype == torch.float32:
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if cpu_scan not in ("auto", "fused", "chunked"):
        raise ValueError(f"cpu_scan must be 'auto', 'fused' or 'chunked', not {cpu_scan!r}")
    compute_dtype = torch.promote_types(u.dtype, torch.float32)
    B, C = _grouped(B).to(compute_dtype), _grouped(C).to(compute_dtype)
    if u.shape[1] % B.shape[1]:
        raise ValueError(f"dim {u.shape[1]} is not divisible by the {B.shape[1]} groups of B and C")
    fused = _fused_kernel() if cpu_scan != "chunked" and not u.is_cuda else None
    if cpu_scan == "fused" and fused is None:
        raise RuntimeError("cpu_scan='fused' needs numba on a CPU tensor: install numba or use cpu_scan='auto'")
    if cpu_scan == "auto" and not u.is_cuda:
        _report_cpu_scan(fused is not None)
    if fused is not None:  # the kernel applies delta_bias, softplus, D and the gate itself
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        u, delta, A, B, C, D, z, delta_bias = (None if x is None else x.to(compute_dtype).contiguous() for x in inputs)
        return fused(u, delta, A, B, C, D, z, delta_bias, delta_softplus).to(inputs[0].dtype)
    delta = _effective_delta(delta.to(compute_dtype), delta_bias, delta_softplus)
    u_compute = u.to(compute_dtype)
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
    """``<C_t, h_t>`` for all t, a chunk of tokens at a time, the state carried between chunks.

    Inside a chunk the recurrence has a closed form (``_scan_chunk``) made of cumulative sums,
    so the Python loop runs over chunks, never tokens, and the work per token is that of the
    recurrence (two exps instead of one). The closed form multiplies ``exp(-cum)`` by
    ``exp(cum)``, where ``cum`` is the log-decay accumulated since the chunk started, so a chunk
    must be short enough that ``|cum|`` stays below ``_LOG_RANGE`` of the compute dtype: the
    chunks end where the sum of each token's largest ``|delta * A|`` would pass that range, or at
    ``chunk_size`` tokens.
    Per-token log-decays below ``-_LOG_RANGE`` are clipped there first: the decay is then
    ``exp(-60)`` (float32) instead of smaller, a difference far below the dtype's resolution.

    Memory: autograd keeps a few (batch, dim, N, L) tensors, like the token loop keeps every
    state. Above ``_CHECKPOINT_ABOVE_BYTES`` each chunk is checkpointed instead, so the graph
    holds only chunk inputs and carried states, and backward recomputes one chunk at a time.
    """
    batch, dim, length = u.shape
    groups, state_size = B.shape[1], A.shape[1]
    # (batch, groups, channels per group, ...) lets B and C broadcast over their group's channels.
    grouped_shape = (batch, groups, dim // groups)
    u, delta = u.view(*grouped_shape, length), delta.view(*grouped_shape, length)
    A = A.view(*grouped_shape[1:], state_size)
    log_range = _LOG_RANGE[u.dtype]
    with torch.no_grad():
        largest_log_decays = (delta.abs().amax(dim=(0, 1, 2)) * A.abs().amax()).clamp(max=log_range)
    boundaries = _chunk_boundaries(largest_log_decays.tolist(), log_range, chunk_size)
    state = u.new_zeros(*grouped_shape, state_size)
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    state_bytes = u.element_size() * batch * dim * state_size * length
    use_checkpoints = needs_graph and state_bytes > _CHECKPOINT_ABOVE_BYTES
    outputs = []
    for start, end in zip(boundaries[:-1], boundaries[1:]):
        chunk = slice(start, end)
        args = (u[..., chunk], delta[..., chunk], A, B[..., chunk], C[..., chunk], state, log_range)
        if use_checkpoints:
            y, state = checkpoint(_scan_chunk, *args, use_reentrant=False, preserve_rng_state=False)
        else:
            y, state = _scan_chunk(*args)
        outputs.append(y)
    return torch.cat(outputs, dim=-1).reshape(batch, dim, length)


def _chunk_boundaries(largest_log_decays: list[float], log_range: float, chunk_size: int) -> list[int]:
    """Chunk starts (and the end): each chunk as long as possible, up to ``chunk_size`` tokens
    and a total largest log-decay of ``log_range``."""
    boundaries, span = [0], 0.0
    for token, log_decay in enumerate(largest_log_decays):
        if token > boundaries[-1] and (token - boundaries[-1] == chunk_size or span + log_decay > log_range):
            boundaries.append(token)
            span = 0.0
        span += log_decay
    return [*boundaries, len(largest_log_decays)]


def _scan_chunk(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, state_in: Tensor, log_range: float
) -> tuple[Tensor, Tensor]:
    """Outputs (batch, groups, channels, T) and end state of one chunk, from the state before it.

    With ``cum_t`` the log-decay from the chunk start through token t and ``d_j = delta_j B_j u_j``,
    ``h_t = exp(cum_t) * (h_in + sum_{j<=t} exp(-cum_j) d_j)``: one cumsum for the decays, one
    for the drives.
    """
    log_decay = (delta[..., None, :] * A[..., None]).clamp(min=-log_range).cumsum(-1)  # (b, g, c, N, T)
    drive = (delta * u)[..., None, :] * B[:, :, None]  # (b, g, c, N, T)
    states = log_decay.exp() * (state_in[..., None] + (drive * (-log_decay).exp()).cumsum(-1))
    y = torch.einsum("bgcnt,bgnt->bgct", states, C)
    return y, states[..., -1]
