"""The numba kernel of :mod:`incad.ops.dropout`: ``x * mask`` in one pass, the mask hashed from a seed."""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from torch import Tensor

from incad.ops.numba_threads import use_torch_threads

# SplitMix64 (Steele, Lea & Flood 2014): the golden-ratio increment and the output function's multipliers.
GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
FIRST_MULTIPLIER, SECOND_MULTIPLIER = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@njit(inline="always")
def _hash_of_word(seed, word):  # pragma: no cover - compiled
    """SplitMix64's output for the ``word``-th step from ``seed``: 64 well-mixed bits, four 16-bit levels."""
    z = seed + np.uint64(word) * GOLDEN_GAMMA
    z = (z ^ (z >> np.uint64(30))) * FIRST_MULTIPLIER
    z = (z ^ (z >> np.uint64(27))) * SECOND_MULTIPLIER
    return z ^ (z >> np.uint64(31))


@njit(inline="always")
def _level(bits, j):  # pragma: no cover - compiled
    return (bits >> np.uint64(16 * j)) & np.uint64(0xFFFF)


@njit(parallel=True, cache=True)
def _masked(x, out, seed, keep_below, scale):  # pragma: no cover - compiled
    """``out = x * scale`` where a value's level is below ``keep_below``, else ``x * 0`` (NaN stays NaN, as in torch)."""
    length, zero = x.shape[0], scale * 0
    words = length // 4
    for word in prange(words):
        bits = _hash_of_word(seed, word)
        for j in range(4):
            out[4 * word + j] = x[4 * word + j] * (scale if _level(bits, j) < keep_below else zero)
    bits = _hash_of_word(seed, words)
    for i in range(4 * words, length):
        out[i] = x[i] * (scale if _level(bits, i - 4 * words) < keep_below else zero)


def masked(x: Tensor, out: Tensor, seed: int, keep_below: int, scale: float) -> None:
    """Write ``x * mask`` into ``out`` (both contiguous CPU tensors of one float dtype, same shape); ``seed`` is
    taken modulo 2^64, so a signed and an unsigned 64-bit seed with the same bits give the same mask."""
    use_torch_threads()
    values = x.detach().reshape(-1).numpy()
    _masked(values, out.view(-1).numpy(), np.uint64(seed % 2**64), np.uint64(keep_below), values.dtype.type(scale))
