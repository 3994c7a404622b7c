"""Mamba's whole selective scan as one fused CPU pass (numba), forward and backward.

The chunked PyTorch scan (``incad/ops/selective_scan.py``) materialises (batch, dim, N, T)
temporaries and pays two exps per state update; at the Mamba decoder's shape it is no faster
than a token loop. The work itself is one exp and two multiply-adds per state update, so this
module runs the recurrence directly, in one pass over L, together with everything element-wise
around it (``softplus(delta + delta_bias)``, ``D * u``, the ``silu(z)`` gate and their
gradients): separate PyTorch operations would each read and write a (batch, dim, L) tensor,
which at this size costs more than the recurrence.

A task is a block of up to ``CHANNELS_PER_TASK`` channels of one (batch item, group of B/C);
the blocks run in parallel (``prange``). Inputs are read in their own (batch, dim, L) layout:
a task first gathers its block's step sizes and drives into small time-major (L, channels)
arrays, so the recurrence's innermost loop runs over channels, which share B_t and C_t:
contiguous, independent, so LLVM vectorizes it. Its outputs are written back per channel; the
backward's per-token gradients go back through blocked transposes (16 tokens at a time, so the
rows read stay in cache), then per channel (contiguous, so they vectorize).

The backward is the reverse-time scan of mamba-ssm's CUDA kernel (Gu & Dao, "Mamba", 2023),
accumulating ``dh_t = dy_t C_t + exp(delta_{t+1} A) dh_{t+1}``. When a gradient is needed the
forward keeps the state entering every ``CHECKPOINT_EVERY``-th token; the backward walks each
block's chunks last first, recomputes a chunk's decays and states from its checkpoint into
chunk-sized arrays (in cache; never a (batch, dim, N, L) tensor) and runs back through it.
Keeping every decay from the forward instead (a (batch, dim, L, N) tensor) saves the exps but
reads the decays back from memory, which costs about as much. Tasks own disjoint slices of every
gradient (B and C per block, A, D and delta_bias per batch item, summed by the wrapper), so
there are no write races.

The transcendentals (the decay ``exp(delta_t A_n)``, softplus, silu) would be glibc's scalar
calls, which do not vectorize; float32 therefore uses Cephes' ``exp2f`` and ``logf`` (range
reduction and a polynomial, relative error near the float32 resolution) written in plain
arithmetic, float64 keeps numpy's. Every exponential is one in base 2: the decay is
``2^(delta_t A_n log2(e))`` with ``A log2(e)`` computed once per block, three fewer operations per
state update than Cephes' ``expf`` (forward+backward at the decoder's shape about 10 % faster), for
one more rounding of the exponent (relative error up to 4e-6 at ``delta A = -87``, the size the
rounding of ``delta A`` itself already has there). Softplus and silu follow PyTorch's formulas
(softplus' threshold 20 included). Of fastmath's flags only two are on: ``contract`` everywhere
(``a * b + c`` may become one fused multiply-add, rounded once instead of twice: the forward about
20 % faster) and ``reassoc`` for the sums over a block's channels in the backward
(``_token_backward``). Kernels are compiled on first use and cached on disk (``cache=True``; ``NUMBA_CACHE_DIR``, set by ``scripts/env.sh``, puts the cache under
the project's ``.cache``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload
from torch import Tensor

from incad.ops.numba_threads import use_torch_threads

# PyTorch's softplus returns x itself above this (F.softplus' default threshold, beta 1).
SOFTPLUS_THRESHOLD = 20.0
LOG2_E, LN_2 = math.log2(math.e), math.log(2.0)


@intrinsic
def _float32_from_bits(typingctx, bits):  # pragma: no cover - compiled
    """The float32 whose IEEE bits are ``bits`` (an int32): how ``2^k`` is built without a call."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _bits_of_float32(typingctx, value):  # pragma: no cover - compiled
    """The IEEE bits of a float32 as an int32: how its exponent and mantissa are read without a call."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


def _exp2(x):
    """``2^x`` in x's precision (numba's implementation is chosen by :func:`_exp2_for_type`)."""
    return np.exp2(x)


@overload(_exp2, inline="always")
def _exp2_for_type(x):
    if x != types.float32:
        return lambda x: np.exp2(x)

    def exp2f(x):  # Cephes exp2f: 2^k 2^f with |f| <= 1/2 exact; the clamp keeps 2^k a normal float32
        x = min(max(x, np.float32(-126.0)), np.float32(127.0))
        k = np.floor(x + np.float32(0.5))
        f = x - k
        p = np.float32(1.535336188319500e-4)
        p = p * f + np.float32(1.339887440266574e-3)
        p = p * f + np.float32(9.618437357674640e-3)
        p = p * f + np.float32(5.550332471162809e-2)
        p = p * f + np.float32(2.402264791363012e-1)
        p = p * f + np.float32(6.931472028550421e-1)
        return (p * f + np.float32(1.0)) * _float32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))

    return exp2f


@njit(inline="always")
def _exp(x):  # pragma: no cover - compiled
    """``exp(x) = 2^(x log2(e))`` in x's precision: one polynomial (Cephes' ``exp2f``) for every exponential."""
    return _exp2(x * _like(x, LOG2_E))


def _log1p(x):
    """``log(1 + x)`` for ``x >= 0`` in x's precision (chosen by :func:`_log1p_for_type`)."""
    return np.log1p(x)


@overload(_log1p, inline="always")
def _log1p_for_type(x):
    if x != types.float32:
        return lambda x: np.log1p(x)

    def log1pf(x):  # Cephes logf of u = 1 + x, times x / (u - 1) (Goldberg): exact where 1 + x rounds
        u = np.float32(1.0) + x
        bits = _bits_of_float32(u)
        exponent = (bits >> np.int32(23)) - np.int32(126)  # u = m 2^exponent, m in [0.5, 1)
        m = _float32_from_bits((bits & np.int32(0x007FFFFF)) | np.int32(0x3F000000))
        small = m < np.float32(0.707106781186547524)
        e = np.float32(exponent - np.int32(1)) if small else np.float32(exponent)
        m = (m + m - np.float32(1.0)) if small else (m - np.float32(1.0))
        z = m * m
        p = np.float32(7.0376836292e-2)
        p = p * m - np.float32(1.1514610310e-1)
        p = p * m + np.float32(1.1676998740e-1)
        p = p * m - np.float32(1.2420140846e-1)
        p = p * m + np.float32(1.4249322787e-1)
        p = p * m - np.float32(1.6668057665e-1)
        p = p * m + np.float32(2.0000714765e-1)
        p = p * m - np.float32(2.4999993993e-1)
        p = p * m + np.float32(3.3333331174e-1)
        log_u = m + (p * m * z + e * np.float32(-2.12194440e-4) - np.float32(0.5) * z) + e * np.float32(0.693359375)
        grown = u - np.float32(1.0)
        return x if grown == np.float32(0.0) else log_u * (x / grown)

    return log1pf


def _like(x, value):
    """``value`` as a number of x's type: a Python float would turn float32 arithmetic into float64."""
    return value


@overload(_like, inline="always")
def _like_for_type(x, value):
    float_type = np.float32 if x == types.float32 else np.float64
    return lambda x, value: float_type(value)


@njit(inline="always")
def _softplus(x):  # pragma: no cover - compiled
    """PyTorch's softplus: ``log1p(exp(x))``, x itself above the threshold."""
    threshold = _like(x, SOFTPLUS_THRESHOLD)
    return x if x > threshold else _log1p(_exp(min(x, threshold)))


@njit(inline="always")
def _softplus_slope(x):  # pragma: no cover - compiled
    """d softplus / dx as PyTorch's backward computes it: ``e / (e + 1)``, ``e = exp(x)``, 1 above the threshold."""
    threshold, one = _like(x, SOFTPLUS_THRESHOLD), _like(x, 1.0)
    e = _exp(min(x, threshold))
    return one if x > threshold else e / (e + one)


@njit(inline="always")
def _sigmoid(x):  # pragma: no cover - compiled
    one = _like(x, 1.0)
    return one / (one + _exp(-x))


@njit(inline="always")
def _block(task, groups, per_group, width):  # pragma: no cover - compiled
    """(batch item, group, first channel, channels) of a task: a block of up to ``width`` channels of one group."""
    blocks = (per_group + width - 1) // width
    b, rest = task // (groups * blocks), task % (groups * blocks)
    g, block = rest // blocks, rest % blocks
    first = g * per_group + block * width
    return b, g, first, min(width, (g + 1) * per_group - first)


@njit(inline="always")
def _gather_steps(delta, u, delta_bias, softplus, b, first, count, row, steps, drives):  # pragma: no cover - compiled
    """Time-major step sizes ``softplus(delta + delta_bias)`` and drives ``step * u`` of a block's channels."""
    for c in range(count):
        d = first + c
        bias, delta_row = delta_bias[d], delta[b, d]
        if softplus:
            for t in range(row.shape[0]):  # contiguous, so the transcendental part vectorizes
                row[t] = _softplus(delta_row[t] + bias)
        else:
            for t in range(row.shape[0]):
                row[t] = delta_row[t] + bias
        for t in range(row.shape[0]):
            steps[t, c] = row[t]
            drives[t, c] = row[t] * u[b, d, t]


@njit(inline="always")
def _transpose_tokens(time_major, channel_major, count, into_channel_major):  # pragma: no cover - compiled
    """Copy the first ``count`` channels between time-major (L, channels) and channel-major
    (channels, L) arrays, either way, 16 tokens at a time: the 16 rows read stay in cache across channels."""
    length = time_major.shape[0]
    for start in range(0, length, 16):
        end = min(start + 16, length)
        for c in range(count):
            for t in range(start, end):
                if into_channel_major:
                    channel_major[c, t] = time_major[t, c]
                else:
                    time_major[t, c] = channel_major[c, t]


@njit(inline="always")
def _block_of_A(A, first, count, A_block):  # pragma: no cover - compiled
    """A block's (N, channels) decay rates in base 2, ``A log2(e)``, so the recurrence reads them along
    channels and a decay is ``2^(delta A log2(e))``: base 2 saves exp's scaling and half its range reduction."""
    log2_e = _like(A_block[0, 0], LOG2_E)
    for n in range(A.shape[1]):
        for c in range(count):
            A_block[n, c] = A[first + c, n] * log2_e


@njit(parallel=True, cache=True, fastmath={"contract"})
def _scan_forward(
    u, delta, A, B, C, D, z, delta_bias, softplus, gated, y, width, workers,
    keep, every, checkpoints, pre_gate,
):  # pragma: no cover - compiled
    """y = (<C_t, h_t> + D u_t) * silu(z_t) (without the gate unless ``gated``), in tasks of ``width`` channels.

    (batch, dim, L) ``u``, ``delta``, ``z`` and ``y``, (dim, N) ``A``, (batch, groups, N, L)
    ``B`` and ``C``, (dim,) ``D`` and ``delta_bias``; ``delta`` becomes
    ``softplus(delta + delta_bias)`` when ``softplus``, else ``delta + delta_bias``. Each of the
    ``workers`` threads allocates its arrays once and runs every ``workers``-th task in them.
    With ``keep`` it also writes what :func:`_scan_backward` reads: the state entering every
    ``every``-th token into ``checkpoints`` (tasks, chunks, N, width) and, when ``gated``, the
    output before the gate into ``pre_gate`` (batch, dim, L).
    """
    batch, dim, length = u.shape
    groups, state_size = B.shape[1], A.shape[1]
    per_group = dim // groups
    tasks = batch * groups * ((per_group + width - 1) // width)
    workers = min(workers, tasks)
    for worker in prange(workers):
        A_block, state = np.empty((state_size, width), dtype=u.dtype), np.empty((state_size, width), dtype=u.dtype)
        steps, drives = np.empty((length, width), dtype=u.dtype), np.empty((length, width), dtype=u.dtype)
        outputs, row = np.empty((length, width), dtype=u.dtype), np.empty(length, dtype=u.dtype)
        for task in range(worker, tasks, workers):
            b, g, first, count = _block(task, groups, per_group, width)
            _block_of_A(A, first, count, A_block)
            _gather_steps(delta, u, delta_bias, softplus, b, first, count, row, steps, drives)
            state[:] = 0.0
            outputs[:] = 0.0
            for start in range(0, length, every):
                if keep:
                    checkpoints[task, start // every] = state
                for t in range(start, min(start + every, length)):
                    step, drive, output = steps[t], drives[t], outputs[t]
                    for n in range(state_size):
                        B_tn, C_tn = B[b, g, n, t], C[b, g, n, t]
                        for c in range(count):
                            h = _exp2(step[c] * A_block[n, c]) * state[n, c] + drive[c] * B_tn
                            state[n, c] = h
                            output[c] += h * C_tn
            for c in range(count):
                d = first + c
                skip, u_row, y_row = D[d], u[b, d], y[b, d]
                for t in range(length):
                    row[t] = outputs[t, c] + skip * u_row[t]
                if gated:
                    if keep:
                        pre_gate[b, d] = row
                    z_row = z[b, d]
                    for t in range(length):
                        y_row[t] = row[t] * (z_row[t] * _sigmoid(z_row[t]))
                else:
                    for t in range(length):
                        y_row[t] = row[t]


@njit(fastmath={"reassoc", "contract"})
def _token_backward(
    count, decays, h_before, h_after, grad_scan, step, drive, A_block, B_t, C_t,
    carried, grad_A, grad_drive, grad_log_decay, grad_B_t, grad_C_t,
):  # pragma: no cover - compiled
    """One token of the reverse scan: ``dh_t = dy_t C_t + carried`` per state, and what it contributes.

    ``carried`` holds ``exp(delta_{t+1} A) dh_{t+1}`` and becomes ``exp(delta_t A) dh_t``;
    ``grad_log_decay`` gathers ``sum_n A log2(e) dh_t exp(delta_t A) h_{t-1}`` (``A_block`` is in base 2); the
    sums over the block's channels (B's and C's gradients) may be reassociated (only here, so they
    run in vector registers).
    """
    zero = _like(step[0], 0.0)
    for n in range(B_t.shape[0]):
        B_tn, C_tn = B_t[n], C_t[n]
        sum_B, sum_C = zero, zero
        for c in range(count):
            grad_h = grad_scan[c] * C_tn + carried[n, c]
            carried[n, c] = grad_h * decays[n, c]
            through_decay = carried[n, c] * h_before[n, c]  # dh_t exp(delta_t A) h_{t-1}
            sum_C += grad_scan[c] * h_after[n, c]
            sum_B += grad_h * drive[c]
            grad_A[n, c] += step[c] * through_decay
            grad_drive[c] += grad_h * B_tn
            grad_log_decay[c] += A_block[n, c] * through_decay
        grad_B_t[n] = sum_B
        grad_C_t[n] = sum_C


@njit(parallel=True, cache=True, fastmath={"contract"})
def _scan_backward(
    u, delta, A, B, C, D, z, delta_bias, softplus, gated, grad_y, width, workers,
    every, checkpoints, pre_gate,
    grad_u, grad_delta, grad_z, grad_A_per_batch, grad_B_per_block, grad_C_per_block, grad_D_per_batch, grad_bias_per_batch,
):  # pragma: no cover - compiled
    """Gradients of sum(grad_y * y) for :func:`_scan_forward`'s inputs, in its tasks and workers.

    A task walks back over its block's chunks of ``every`` tokens, last first: it recomputes the
    chunk's decays and states from the forward's checkpoint into chunk-sized arrays (in cache),
    then runs the chunk back in time. ``grad_u``, ``grad_delta`` and ``grad_z`` are
    (batch, dim, L); B and C gradients sum over the block's channels and are written per block,
    (batch, groups, blocks, L, N); A's per batch item, (batch, dim, N); D's and delta_bias' per
    batch item, (batch, dim): the caller sums them, and no two tasks write the same element.
    """
    batch, dim, length = u.shape
    groups, state_size = B.shape[1], A.shape[1]
    per_group = dim // groups
    blocks = (per_group + width - 1) // width
    tasks = batch * groups * blocks
    workers = min(workers, tasks)
    ln_2 = _like(u[0, 0, 0], LN_2)
    for worker in prange(workers):
        A_block = np.empty((state_size, width), dtype=u.dtype)
        row = np.empty(length, dtype=u.dtype)
        steps, drives = np.empty((length, width), dtype=u.dtype), np.empty((length, width), dtype=u.dtype)
        grads_scan = np.empty((length, width), dtype=u.dtype)  # d loss / d <C_t, h_t>: grad_y through the gate
        states = np.empty((every + 1, state_size, width), dtype=u.dtype)  # a chunk's states, h_{start-1} first
        decays = np.empty((every, state_size, width), dtype=u.dtype)  # a chunk's exp(delta_t A)
        B_rows, C_rows = np.empty((length, state_size), dtype=u.dtype), np.empty((length, state_size), dtype=u.dtype)
        carried = np.empty((state_size, width), dtype=u.dtype)  # exp(delta_{t+1} A) * dh_{t+1}
        grad_A = np.empty((state_size, width), dtype=u.dtype)
        grads_drive = np.empty((length, width), dtype=u.dtype)  # sum_n dh_t B_t: d loss / d (step u)
        grads_log_decay = np.empty((length, width), dtype=u.dtype)  # sum_n A log2(e) dh_t exp(delta_t A) h_{t-1}
        by_channel = np.empty((4, width, length), dtype=u.dtype)  # steps and the three above, channel-major
        for task in range(worker, tasks, workers):
            b, g, first, count = _block(task, groups, per_group, width)
            block = task % blocks
            _block_of_A(A, first, count, A_block)
            for n in range(state_size):  # token-major B and C: each token's are contiguous
                for t in range(length):
                    B_rows[t, n], C_rows[t, n] = B[b, g, n, t], C[b, g, n, t]
            _gather_steps(delta, u, delta_bias, softplus, b, first, count, row, steps, drives)
            _transpose_tokens(steps, by_channel[0], count, True)
            for c in range(count):
                grad_y_row, grad_scan = grad_y[b, first + c], by_channel[2, c]
                if gated:
                    z_row = z[b, first + c]
                    for t in range(length):
                        grad_scan[t] = grad_y_row[t] * (z_row[t] * _sigmoid(z_row[t]))
                else:
                    for t in range(length):
                        grad_scan[t] = grad_y_row[t]
            _transpose_tokens(grads_scan, by_channel[2], count, False)
            carried[:] = 0.0
            grad_A[:] = 0.0
            grads_drive[:] = 0.0
            grads_log_decay[:] = 0.0
            for start in range(((length - 1) // every) * every, -1, -every):
                end = min(start + every, length)
                states[0] = checkpoints[task, start // every]
                for t in range(start, end):
                    step, drive, h_before, h_after = steps[t], drives[t], states[t - start], states[t - start + 1]
                    for n in range(state_size):
                        B_tn, decay = B_rows[t, n], decays[t - start, n]
                        for c in range(count):
                            decay[c] = _exp2(step[c] * A_block[n, c])
                        for c in range(count):
                            h_after[n, c] = decay[c] * h_before[n, c] + drive[c] * B_tn
                for t in range(end - 1, start - 1, -1):
                    _token_backward(
                        count, decays[t - start], states[t - start], states[t - start + 1], grads_scan[t], steps[t],
                        drives[t], A_block, B_rows[t], C_rows[t], carried, grad_A, grads_drive[t], grads_log_decay[t],
                        grad_B_per_block[b, g, block, t], grad_C_per_block[b, g, block, t],
                    )
            _transpose_tokens(grads_drive, by_channel[1], count, True)
            _transpose_tokens(grads_log_decay, by_channel[3], count, True)
            for c in range(count):  # channel-major from here, like the inputs and gradients
                d = first + c
                skip, bias = D[d], delta_bias[d]
                u_row, delta_row, grad_y_row = u[b, d], delta[b, d], grad_y[b, d]
                grad_u_row, grad_delta_row = grad_u[b, d], grad_delta[b, d]
                step, grad_drive, grad_scan, grad_log_decay = by_channel[0, c], by_channel[1, c], by_channel[2, c], by_channel[3, c]
                for t in range(length):  # grad_u = dL/d(step u) * step + dL/dy_scan * D
                    grad_u_row[t] = grad_drive[t] * step[t] + grad_scan[t] * skip
                    row[t] = grad_scan[t] * u_row[t]
                grad_D_per_batch[b, d] = row.sum()
                for t in range(length):  # d loss / d step, before softplus
                    grad_delta_row[t] = grad_drive[t] * u_row[t] + grad_log_decay[t] * ln_2
                if softplus:
                    for t in range(length):
                        grad_delta_row[t] *= _softplus_slope(delta_row[t] + bias)
                grad_bias_per_batch[b, d] = grad_delta_row.sum()
                if gated:
                    z_row, grad_z_row, pre_gate_row = z[b, d], grad_z[b, d], pre_gate[b, d]
                    for t in range(length):  # silu'(z) = s (1 + z (1 - s)), s = sigmoid(z)
                        s, one = _sigmoid(z_row[t]), _like(skip, 1.0)
                        slope = s * (one + z_row[t] * (one - s))
                        grad_z_row[t] = grad_y_row[t] * pre_gate_row[t] * slope
            for c in range(count):
                for n in range(state_size):
                    grad_A_per_batch[b, first + c, n] = grad_A[n, c]


# Channels per task: wide enough for the inner loop to fill vector registers, narrow enough for
# batch x groups x blocks tasks to keep every thread busy and a backward task's states small.
CHANNELS_PER_TASK = 64
# Tokens per chunk of the backward: the forward keeps the state entering each chunk (1/32 of all
# states), the backward recomputes one chunk's decays and states at a time (a few hundred kB per worker).
CHECKPOINT_EVERY = 32


class FusedScan(torch.autograd.Function):
    """mamba-ssm's ``selective_scan_fn`` on contiguous CPU tensors of one float dtype: (batch, dim, L)
    ``u``, ``delta`` and ``z`` (or None), (dim, N) ``A``, (batch, groups, N, L) ``B`` and ``C``,
    (dim,) ``D`` and ``delta_bias`` (or None).

    When a gradient is needed the forward keeps, besides its inputs, the state entering every
    ``CHECKPOINT_EVERY``-th token and the output before the gate (1/CHECKPOINT_EVERY and 1/N of a
    (batch, dim, N, L) tensor), so the backward recomputes one chunk at a time; without a gradient
    (``torch.no_grad``, ``torch.inference_mode``) it keeps nothing.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, grad_enabled: bool) -> Tensor:
        workers = use_torch_threads()
        (batch, dim, length), (groups, state_size) = u.shape, B.shape[1:3]
        tasks = batch * groups * -(-dim // groups // CHANNELS_PER_TASK)
        dtype = u.numpy().dtype
        keep = grad_enabled and any(ctx.needs_input_grad)  # needs_input_grad ignores torch.no_grad
        nothing = np.empty((1, 1, 1, 1), dtype=dtype)
        checkpoints_shape = (tasks, -(-length // CHECKPOINT_EVERY), state_size, CHANNELS_PER_TASK)
        checkpoints = np.empty(checkpoints_shape, dtype=dtype) if keep else nothing
        pre_gate = np.empty(u.shape, dtype=dtype) if keep and z is not None else nothing[0]
        y = torch.empty_like(u)
        _scan_forward(
            *_kernel_arrays(u, delta, A, B, C, D, z, delta_bias), delta_softplus, z is not None, y.numpy(),
            CHANNELS_PER_TASK, workers, keep, CHECKPOINT_EVERY, checkpoints, pre_gate,
        )
        if keep:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
            ctx.delta_softplus, ctx.channels_per_task, ctx.every = delta_softplus, CHANNELS_PER_TASK, CHECKPOINT_EVERY
            ctx.checkpoints, ctx.pre_gate = checkpoints, pre_gate
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        workers = use_torch_threads()
        (batch, dim, length), (groups, state_size) = u.shape, B.shape[1:3]
        width = ctx.channels_per_task
        blocks = -(-dim // groups // width)
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(u)
        grad_z = torch.empty_like(u) if z is not None else u.new_empty(1, 1, 1)
        grad_A_per_batch = u.new_empty(batch, dim, state_size)
        grad_B_per_block = u.new_empty(batch, groups, blocks, length, state_size)
        grad_C_per_block = torch.empty_like(grad_B_per_block)
        grad_D_per_batch, grad_bias_per_batch = u.new_empty(batch, dim), u.new_empty(batch, dim)
        grads = (grad_u, grad_delta, grad_z, grad_A_per_batch, grad_B_per_block, grad_C_per_block, grad_D_per_batch, grad_bias_per_batch)
        _scan_backward(
            *_kernel_arrays(u, delta, A, B, C, D, z, delta_bias), ctx.delta_softplus, z is not None,
            grad_y.contiguous().numpy(), width, workers, ctx.every, ctx.checkpoints, ctx.pre_gate,
            *(x.numpy() for x in grads),
        )
        grad_B, grad_C = ((x[:, :, 0] if blocks == 1 else x.sum(2)).transpose(2, 3) for x in (grad_B_per_block, grad_C_per_block))
        return (
            grad_u, grad_delta, grad_A_per_batch.sum(0), grad_B, grad_C,
            grad_D_per_batch.sum(0) if D is not None else None,
            grad_z if z is not None else None,
            grad_bias_per_batch.sum(0) if delta_bias is not None else None,
            None,
            None,
        )


def _kernel_arrays(u, delta, A, B, C, D, z, delta_bias) -> tuple[np.ndarray, ...]:
    """The kernels' arguments: absent D and delta_bias as zeros, an absent z as ``u`` (not read)."""
    zeros = u.new_zeros(u.shape[1])
    tensors = (u, delta, A, B, C, zeros if D is None else D, u if z is None else z, zeros if delta_bias is None else delta_bias)
    return tuple(x.detach().numpy() for x in tensors)


def fused_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool,
) -> Tensor:
    """See :class:`FusedScan`; ``dim`` must be a multiple of the groups (checked by the caller)."""
    return FusedScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, torch.is_grad_enabled())
