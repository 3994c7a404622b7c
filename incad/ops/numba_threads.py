"""How incad's numba kernels share the CPU with torch: one thread setting, torch's own OpenMP runtime.

numba's OpenMP layer runs on torch's own OpenMP runtime (the libgomp torch loaded), so the kernels
use the threads torch's operations just left. With numba's own pool ("workqueue") instead, torch's
idle OpenMP threads keep spinning for a while after every torch operation and take the cores from
numba's: at 2 threads, the selective scan's forward+backward at the decoder's shape took 38-41 ms with
workqueue and 24-26 ms with omp. workqueue (then tbb) stays the fallback where the OpenMP layer does
not load. An explicit choice (``NUMBA_THREADING_LAYER``) is kept. Import this module before a kernel runs.
"""

from __future__ import annotations

import functools
import os

import numba
import torch

if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]


@functools.cache
def _start_numba_threads() -> None:
    """Start numba's pool once and give torch its thread count back: the OpenMP layer's start sets
    the shared runtime's default to ``NUMBA_NUM_THREADS`` (a ``torch.set_num_threads(1)`` became 2)."""
    threads = torch.get_num_threads()
    numba.get_num_threads()  # starts the pool
    torch.set_num_threads(threads)


def use_torch_threads() -> int:
    """numba's pool follows torch's thread setting, so ``torch.set_num_threads`` governs both; returns it."""
    _start_numba_threads()
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads
