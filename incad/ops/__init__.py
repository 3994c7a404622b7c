"""Numerical operators with a CUDA kernel where one exists and a pure-PyTorch path everywhere."""

from incad.ops.selective_scan import selective_scan, selective_scan_reference

__all__ = ["selective_scan", "selective_scan_reference"]
