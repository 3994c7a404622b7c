"""The selective scan's recurrence as one fused CPU loop (numba), forward and backward.

The chunked PyTorch scan (``incad/ops/selective_scan.py``) materialises (batch, dim, N, T)
temporaries and pays two exps per state update; at the Mamba decoder's shape it is no faster
than a token loop. The work itself is one exp and two multiply-adds per state update, so this
module runs the recurrence directly, in one pass over L. A task is a block of up to
``CHANNELS_PER_TASK`` channels of one (batch item, group of B/C); the blocks run in parallel
(``prange``) and each keeps its (N, channels) state in a small local array, the innermost loop
running over channels, which share B_t and C_t: contiguous, independent, so LLVM vectorizes it.
Inputs are therefore laid out time-major, (batch, L, dim), by the autograd wrapper.

The backward is the reverse-time scan of mamba-ssm's CUDA kernel (Gu & Dao, "Mamba", 2023):
each task recomputes its block's states and decays (L x N x channels, never a
(batch, dim, N, L) tensor), then walks back accumulating
``dh_t = dy_t C_t + exp(delta_{t+1} A) dh_{t+1}``. Tasks own disjoint slices of every gradient
(B and C per block, A per batch item, summed by the wrapper), so there are no write races.

A decay ``exp(delta_t A_n)`` is the one transcendental per state update; glibc's scalar
``expf`` does not vectorize, so float32 uses Cephes' ``expf`` (range reduction to ``2^k e^r``,
a degree-6 polynomial; relative error below 1e-7, the float32 resolution) written in plain
arithmetic; float64 keeps ``np.exp``. fastmath stays off, except for the sums over a block's
channels in the backward (``_lane_sum``), which may be reassociated.

Only the recurrence ``y_t = <C_t, h_t>`` is here: softplus, delta_bias, D and the z gate are
element-wise and stay in PyTorch (``selective_scan``), where autograd differentiates them.
Kernels are compiled on first use and cached on disk (``cache=True``; ``NUMBA_CACHE_DIR``, set
by ``scripts/env.sh``, puts the cache under the project's ``.cache``).
"""

from __future__ import annotations

import os

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload
from torch import Tensor

# numba's OpenMP layer shares torch's OpenMP runtime and resets its thread count (torch.set_num_threads(1)
# silently became 2); its own thread pool ("workqueue") leaves torch alone. An explicit choice is kept.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


@intrinsic
def _float32_from_bits(typingctx, bits):  # pragma: no cover - compiled
    """The float32 whose IEEE bits are ``bits`` (an int32): how ``2^k`` is built without a call."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def _exp(x):
    """``exp(x)`` in x's precision (numba's implementation is chosen by :func:`_exp_for_type`)."""
    return np.exp(x)


@overload(_exp, inline="always")
def _exp_for_type(x):
    if x != types.float32:
        return lambda x: np.exp(x)

    def expf(x):  # Cephes expf; the clamp keeps 2^k a normal float32 (e^-87 is below any decay that matters)
        x = min(max(x, np.float32(-87.0)), np.float32(88.0))
        k = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        return (p * (r * r) + r + np.float32(1.0)) * _float32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))

    return expf


@njit(inline="always")
def _block(task, groups, per_group, width):  # pragma: no cover - compiled
    """(batch item, group, first channel, channels) of a task: a block of up to ``width`` channels of one group."""
    blocks = (per_group + width - 1) // width
    b, rest = task // (groups * blocks), task % (groups * blocks)
    g, block = rest // blocks, rest % blocks
    first = g * per_group + block * width
    return b, g, first, min(width, (g + 1) * per_group - first)


@njit(fastmath={"reassoc"})
def _lane_sum(lanes, count):  # pragma: no cover - compiled
    """Sum of ``lanes[:count]``; reassociation (only here) lets it run in vector registers."""
    total = lanes[0]
    for c in range(1, count):
        total += lanes[c]
    return total


@njit(parallel=True, cache=True, fastmath=False)
def _scan_forward(u, delta, A, B, C, y, width):  # pragma: no cover - compiled
    """y[b, t, d] = <C[b, g, t], h_t[d]>, tasks of ``width`` channels, the inner loop over channels.

    Time-major (batch, L, dim) ``u``, ``delta`` and ``y``, (N, dim) ``A``, (batch, groups, L, N)
    ``B`` and ``C``: every inner loop runs over contiguous channels, which share B_t and C_t.
    """
    batch, length, dim = u.shape
    groups, state_size = B.shape[1], A.shape[0]
    per_group = dim // groups
    tasks = batch * groups * ((per_group + width - 1) // width)
    for task in prange(tasks):
        b, g, first, count = _block(task, groups, per_group, width)
        A_block = np.ascontiguousarray(A[:, first : first + count])
        state = np.zeros((state_size, count), dtype=u.dtype)
        output = np.empty(count, dtype=u.dtype)
        for t in range(length):
            step, u_t = delta[b, t, first : first + count], u[b, t, first : first + count]
            output[:] = 0.0
            for n in range(state_size):
                B_tn, C_tn = B[b, g, t, n], C[b, g, t, n]
                for c in range(count):
                    h = _exp(step[c] * A_block[n, c]) * state[n, c] + step[c] * u_t[c] * B_tn
                    state[n, c] = h
                    output[c] += h * C_tn
            y[b, t, first : first + count] = output


@njit(parallel=True, cache=True, fastmath=False)
def _scan_backward(
    u, delta, A, B, C, grad_y, width, grad_u, grad_delta, grad_A_per_batch, grad_B_per_block, grad_C_per_block
):  # pragma: no cover - compiled
    """Gradients of sum(grad_y * y), laid out as in :func:`_scan_forward`, one task per channel block.

    A task recomputes its block's states and decays (L, N, width each), then runs back in time. B and C
    gradients sum over the block's channels and are written per block (summed by the caller),
    dA per batch item: tasks never write the same element.
    """
    batch, length, dim = u.shape
    groups, state_size = B.shape[1], A.shape[0]
    per_group = dim // groups
    blocks = (per_group + width - 1) // width
    for task in prange(batch * groups * blocks):
        b, g, first, count = _block(task, groups, per_group, width)
        block = task % blocks
        A_block = np.ascontiguousarray(A[:, first : first + count])
        states = np.empty((length + 1, state_size, count), dtype=u.dtype)  # states[t + 1] = h_t
        decays = np.empty((length, state_size, count), dtype=u.dtype)  # exp(delta_t A)
        states[0] = 0.0
        for t in range(length):
            step, u_t = delta[b, t, first : first + count], u[b, t, first : first + count]
            for n in range(state_size):
                B_tn = B[b, g, t, n]
                for c in range(count):
                    decay = _exp(step[c] * A_block[n, c])
                    decays[t, n, c] = decay
                    states[t + 1, n, c] = decay * states[t, n, c] + step[c] * u_t[c] * B_tn
        carried = np.zeros((state_size, count), dtype=u.dtype)  # exp(delta_{t+1} A) * dh_{t+1}
        grad_A = np.zeros((state_size, count), dtype=u.dtype)
        grad_u_t, grad_step = np.empty(count, dtype=u.dtype), np.empty(count, dtype=u.dtype)
        lanes_B, lanes_C = np.empty(count, dtype=u.dtype), np.empty(count, dtype=u.dtype)
        for t in range(length - 1, -1, -1):
            step, u_t = delta[b, t, first : first + count], u[b, t, first : first + count]
            grad_y_t = grad_y[b, t, first : first + count]
            grad_u_t[:] = 0.0
            grad_step[:] = 0.0
            for n in range(state_size):
                B_tn, C_tn = B[b, g, t, n], C[b, g, t, n]
                for c in range(count):
                    decay = decays[t, n, c]
                    grad_h = grad_y_t[c] * C_tn + carried[n, c]  # dh_t
                    through_decay = grad_h * decay * states[t, n, c]  # dh_t * exp(delta_t A) * h_{t-1}
                    lanes_C[c] = grad_y_t[c] * states[t + 1, n, c]
                    lanes_B[c] = grad_h * step[c] * u_t[c]
                    grad_A[n, c] += step[c] * through_decay
                    grad_u_t[c] += grad_h * B_tn
                    grad_step[c] += grad_h * u_t[c] * B_tn + A_block[n, c] * through_decay
                    carried[n, c] = grad_h * decay
                grad_B_per_block[b, g, block, t, n] = _lane_sum(lanes_B, count)
                grad_C_per_block[b, g, block, t, n] = _lane_sum(lanes_C, count)
            for c in range(count):
                grad_u[b, t, first + c] = grad_u_t[c] * step[c]
                grad_delta[b, t, first + c] = grad_step[c]
        grad_A_per_batch[b, :, first : first + count] = grad_A


def _use_torch_threads() -> None:
    """numba's pool follows torch's thread setting, so ``torch.set_num_threads`` governs both."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


# Channels per task: wide enough for the inner loop to fill vector registers, narrow enough for
# batch x groups x blocks tasks to keep every thread busy and a backward task's states small.
CHANNELS_PER_TASK = 64


def _time_major(tensor: Tensor) -> np.ndarray:
    """(batch, dim, L) -> a contiguous (batch, L, dim) array; (batch, groups, N, L) -> (batch, groups, L, N)."""
    return tensor.detach().transpose(-1, -2).contiguous().numpy()


class FusedScan(torch.autograd.Function):
    """``<C_t, h_t>`` for (batch, dim, L) ``u`` and ``delta`` (already the step size), (dim, N)
    ``A``, (batch, groups, N, L) ``B`` and ``C``, all CPU tensors of one float dtype."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        ctx.save_for_backward(u, delta, A, B, C)
        _use_torch_threads()
        y = u.new_empty(u.shape[0], u.shape[2], u.shape[1])
        arrays = (_time_major(x) for x in (u, delta, A, B, C))
        _scan_forward(*arrays, y.numpy(), CHANNELS_PER_TASK)
        return y.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, ...]:
        u, delta, A, B, C = ctx.saved_tensors
        _use_torch_threads()
        (batch, dim, length), (groups, state_size) = u.shape, B.shape[1:3]
        blocks = -(-dim // groups // CHANNELS_PER_TASK)
        grad_u, grad_delta = u.new_empty(batch, length, dim), u.new_empty(batch, length, dim)
        grad_A_per_batch = u.new_empty(batch, state_size, dim)
        grad_B_per_block = u.new_empty(batch, groups, blocks, length, state_size)
        grad_C_per_block = torch.empty_like(grad_B_per_block)
        _scan_backward(
            *(_time_major(x) for x in (u, delta, A, B, C, grad_y)), CHANNELS_PER_TASK,
            *(x.numpy() for x in (grad_u, grad_delta, grad_A_per_batch, grad_B_per_block, grad_C_per_block)),
        )
        grad_B, grad_C = (x.sum(2).transpose(-1, -2) for x in (grad_B_per_block, grad_C_per_block))
        return grad_u.transpose(1, 2), grad_delta.transpose(1, 2), grad_A_per_batch.sum(0).T, grad_B, grad_C


def fused_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """See :class:`FusedScan`; ``dim`` must be a multiple of the groups (checked by the caller)."""
    return FusedScan.apply(u, delta, A, B, C)
