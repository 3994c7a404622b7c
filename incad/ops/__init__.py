"""Numerical operators: a CUDA kernel where one exists, a fused numba CPU kernel for the selective scan, and a pure-PyTorch path everywhere."""

from incad.ops.selective_scan import selective_scan, selective_scan_reference

__all__ = ["selective_scan", "selective_scan_reference"]
