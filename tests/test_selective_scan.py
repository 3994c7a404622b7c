"""The CPU selective scans (fused numba, chunked PyTorch) against the token-by-token recurrence, and the dispatch."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from incad.ops import selective_scan, selective_scan_reference

# The package exports a function of the same name, so the attribute incad.ops.selective_scan is not the module.
selective_scan_module = importlib.import_module("incad.ops.selective_scan")

INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def random_inputs(
    batch: int = 2,
    dim: int = 4,
    state_size: int = 3,
    length: int = 37,
    groups: int | None = None,
    with_D: bool = True,
    with_z: bool = True,
    with_delta_bias: bool = True,
    delta_softplus: bool = True,
    mixed_sign_A: bool = False,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> dict:
    """Keyword arguments of selective_scan; ``groups=None`` gives 3-D B and C (batch, N, L)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype)

    bc_shape = (batch, state_size, length) if groups is None else (batch, groups, state_size, length)
    # Without softplus delta must already be a step size (positive), as in Mamba.
    if delta_softplus:
        delta = randn(batch, dim, length)
    else:
        delta = 0.5 * torch.rand(batch, dim, length, generator=generator, dtype=dtype)
    return {
        "u": randn(batch, dim, length),
        "delta": delta,
        "A": randn(dim, state_size) if mixed_sign_A else -torch.exp(randn(dim, state_size)),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim) if with_D else None,
        "z": randn(batch, dim, length) if with_z else None,
        "delta_bias": 0.5 * randn(dim) if with_delta_bias else None,
        "delta_softplus": delta_softplus,
    }


def output_and_grads(scan, inputs: dict, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """y and the gradients of a random projection of y with respect to every tensor input."""
    inputs = {k: v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    y = scan(**inputs, **kwargs)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype).to(y.device)
    tensors = [inputs[name] for name in INPUT_NAMES if inputs[name] is not None]
    return y, list(torch.autograd.grad((y * weights).sum(), tensors))


CASES = {
    "L not a multiple of the chunk": ({"length": 37}, 8),
    "L shorter than the chunk": ({"length": 5}, 64),
    "L a multiple of the chunk": ({"length": 32}, 16),
    "grouped B/C, one group": ({"groups": 1}, 16),
    "grouped B/C, two groups": ({"groups": 2}, 16),
    "no D, no z, no bias": ({"with_D": False, "with_z": False, "with_delta_bias": False}, 16),
    "no softplus, no bias": ({"delta_softplus": False, "with_delta_bias": False}, 16),
    "no softplus, bias": ({"delta_softplus": False, "groups": 2, "with_z": False}, 8),
    "A of both signs": ({"mixed_sign_A": True, "length": 20}, 8),
    "chunk of one token": ({"length": 6}, 1),
}


@pytest.mark.parametrize(("settings", "chunk_size"), CASES.values(), ids=CASES.keys())
def test_matches_reference_forward_and_gradients(settings: dict, chunk_size: int) -> None:
    inputs = random_inputs(**settings)
    y, grads = output_and_grads(selective_scan, inputs, chunk_size=chunk_size, cpu_scan="chunked")
    y_ref, grads_ref = output_and_grads(selective_scan_reference, inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the path without a graph
        y_no_graph = selective_scan(**inputs, chunk_size=chunk_size, cpu_scan="chunked")
        torch.testing.assert_close(y_no_graph, y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("settings", [settings for settings, _ in CASES.values()], ids=CASES.keys())
def test_fused_matches_reference_forward_and_gradients(settings: dict) -> None:
    """The numba kernel and its reverse-time backward: every output and gradient to 1e-6 in float64."""
    inputs = random_inputs(**settings)
    y, grads = output_and_grads(selective_scan, inputs, cpu_scan="fused")
    y_ref, grads_ref = output_and_grads(selective_scan_reference, inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    assert len(grads) == len(grads_ref)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-6)


def test_fused_channel_blocks_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups split into several channel blocks, one uneven, on two threads: same values as the loop, torch's thread count untouched."""
    monkeypatch.setattr(importlib.import_module("incad.ops.fused_scan"), "CHANNELS_PER_TASK", 4)
    inputs = random_inputs(batch=3, dim=10, length=23, groups=2)  # 5 channels per group: blocks of 4 and 1
    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        y, grads = output_and_grads(selective_scan, inputs, cpu_scan="fused")
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        selective_scan(**inputs, cpu_scan="fused")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads_before)
    y_ref, grads_ref = output_and_grads(selective_scan_reference, inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-6)


FIRST_KERNEL_IN_FRESH_PROCESS = """
import json, torch
torch.set_num_threads(1)
from incad.ops import selective_scan
import numba
inputs = {name: torch.randn(*shape, dtype=torch.float64) for name, shape in
          {"u": (2, 4, 5), "delta": (2, 4, 5), "A": (4, 3), "B": (2, 3, 5), "C": (2, 3, 5)}.items()}
selective_scan(**inputs, cpu_scan="fused")
try:
    import numba.np.ufunc.omppool
    omp_loads = True
except ImportError:
    omp_loads = False
print(json.dumps({"torch_threads": torch.get_num_threads(), "layer": numba.threading_layer(), "omp_loads": omp_loads}))
"""


def test_fused_kernel_starts_numba_on_torchs_openmp_keeping_its_thread_count() -> None:
    """The first kernel call starts numba's OpenMP layer (it shares torch's threads) and leaves torch's count as set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("NUMBA_THREADING_LAYER")}
    completed = subprocess.run([sys.executable, "-c", FIRST_KERNEL_IN_FRESH_PROCESS], capture_output=True, text=True, env=env, check=True)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["torch_threads"] == 1
    assert report["layer"] == ("omp" if report["omp_loads"] else "workqueue")


@pytest.mark.parametrize("length", [37, 8, 3])
def test_fused_backward_chunks(monkeypatch: pytest.MonkeyPatch, length: int) -> None:
    """Backward chunks of 4 tokens from the forward's checkpoints (several, the last one short or full,
    or one chunk shorter than 4): the recurrence's gradients; a second backward (retain_graph) gives the same."""
    monkeypatch.setattr(importlib.import_module("incad.ops.fused_scan"), "CHECKPOINT_EVERY", 4)
    inputs = {k: v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in random_inputs(length=length, groups=2).items()}
    tensors = [inputs[name] for name in INPUT_NAMES]
    y = selective_scan(**inputs, cpu_scan="fused")
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    grads = torch.autograd.grad((y * weights).sum(), tensors, retain_graph=True)
    grads_again = torch.autograd.grad((y * weights).sum(), tensors)
    _, grads_ref = output_and_grads(selective_scan_reference, inputs)
    for grad, grad_again, grad_ref in zip(grads, grads_again, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-6)
        assert torch.equal(grad, grad_again)


def test_fused_without_grad_builds_no_graph() -> None:
    """Under no_grad and inference_mode the forward keeps nothing for a backward and gives the same y."""
    inputs = {k: v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in random_inputs().items()}
    y = selective_scan(**inputs, cpu_scan="fused")
    with torch.no_grad():
        y_no_grad = selective_scan(**inputs, cpu_scan="fused")
    with torch.inference_mode():
        y_inference = selective_scan(**inputs, cpu_scan="fused")
    assert y.grad_fn is not None and y_no_grad.grad_fn is None and y_inference.grad_fn is None
    assert torch.equal(y_no_grad, y.detach()) and torch.equal(y_inference, y.detach())


def test_fused_float32_matches_float64() -> None:
    """float32 uses its own exponential (Cephes' exp2f): within float32 resolution of the float64 recurrence."""
    inputs64 = random_inputs(groups=2, length=50)
    inputs32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in inputs64.items()}
    y = selective_scan(**inputs32, cpu_scan="fused")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), selective_scan_reference(**inputs64), rtol=1e-4, atol=1e-4)
    y32, grads32 = output_and_grads(selective_scan, inputs32, cpu_scan="fused")
    _, grads64 = output_and_grads(selective_scan, inputs32, cpu_scan="chunked")
    for grad, grad_chunked in zip(grads32, grads64, strict=True):
        torch.testing.assert_close(grad, grad_chunked, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_softplus_across_its_range(dtype: torch.dtype) -> None:
    """The kernel's own softplus: PyTorch's (x itself above the threshold 20) from far below zero to far above."""
    inputs = random_inputs(length=24, dtype=dtype)
    inputs["delta"] = torch.linspace(-40.0, 40.0, 2 * 4 * 24, dtype=dtype).view(2, 4, 24)
    tolerance = 1e-6 if dtype == torch.float64 else 1e-4
    y, grads = output_and_grads(selective_scan, inputs, cpu_scan="fused")
    y_ref, grads_ref = output_and_grads(selective_scan_reference, inputs)
    torch.testing.assert_close(y, y_ref, rtol=tolerance, atol=tolerance)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=tolerance, atol=tolerance)


def test_auto_takes_fused_kernel_and_reports_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    chunked_calls = []
    monkeypatch.setattr(selective_scan_module, "_chunked_scan", lambda *args: chunked_calls.append(args))
    selective_scan_module._report_cpu_scan.cache_clear()
    inputs = random_inputs()
    with caplog.at_level(logging.INFO, logger="incad"):
        y = selective_scan(**inputs)
        selective_scan(**inputs)
    assert not chunked_calls
    torch.testing.assert_close(y, selective_scan_reference(**inputs), rtol=1e-6, atol=1e-6)
    assert [record.getMessage() for record in caplog.records] == ["selective scan on CPU: the fused numba kernel"]


def test_fallback_to_chunked_scan_without_numba(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Where numba does not import, "auto" takes the chunked scan and says so once; "fused" refuses."""
    monkeypatch.setattr(selective_scan_module, "_fused_kernel", lambda: None)
    selective_scan_module._report_cpu_scan.cache_clear()
    chunk_calls = []
    chunked_scan = selective_scan_module._chunked_scan

    def recording_chunked_scan(*args: object) -> torch.Tensor:
        chunk_calls.append(args)
        return chunked_scan(*args)

    monkeypatch.setattr(selective_scan_module, "_chunked_scan", recording_chunked_scan)
    inputs = random_inputs()
    with caplog.at_level(logging.INFO, logger="incad"):
        y = selective_scan(**inputs)
        selective_scan(**inputs)
    assert len(chunk_calls) == 2
    torch.testing.assert_close(y, selective_scan_reference(**inputs), rtol=1e-5, atol=1e-5)
    assert [record.getMessage() for record in caplog.records] == [
        "selective scan on CPU: numba does not import, using the slower chunked PyTorch scan"
    ]
    selective_scan_module._report_cpu_scan.cache_clear()
    with pytest.raises(RuntimeError, match="needs numba"):
        selective_scan(**inputs, cpu_scan="fused")
    with pytest.raises(ValueError, match="cpu_scan must be"):
        selective_scan(**inputs, cpu_scan="numba")


def test_checkpointed_chunks_match_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large scans checkpoint each chunk; forcing that path on a small one must not change a value."""
    monkeypatch.setattr(selective_scan_module, "_CHECKPOINT_ABOVE_BYTES", 0)
    inputs = random_inputs(length=45, groups=2)
    y, grads = output_and_grads(selective_scan, inputs, chunk_size=8, cpu_scan="chunked")
    y_ref, grads_ref = output_and_grads(selective_scan_reference, inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)


def test_large_decays_shorten_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk may span at most _LOG_RANGE of log-decay: with |delta * A| up to 20, float32 chunks hold 3 tokens."""
    chunk_lengths = []
    scan_chunk = selective_scan_module._scan_chunk

    def recording_scan_chunk(u: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        chunk_lengths.append(u.shape[-1])
        return scan_chunk(u, *args)

    monkeypatch.setattr(selective_scan_module, "_scan_chunk", recording_scan_chunk)
    inputs = random_inputs(length=10, delta_softplus=False, with_delta_bias=False, dtype=torch.float32)
    inputs["delta"] = torch.full_like(inputs["delta"], 2.0)
    inputs["A"] = torch.full_like(inputs["A"], -10.0)
    y = selective_scan(**inputs, chunk_size=64, cpu_scan="chunked")
    assert chunk_lengths == [3, 3, 3, 1]
    torch.testing.assert_close(y, selective_scan_reference(**inputs), rtol=1e-5, atol=1e-5)


def test_float32_keeps_dtype_and_matches_float64() -> None:
    inputs64 = random_inputs(groups=2, length=50)
    inputs32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in inputs64.items()}
    y = selective_scan(**inputs32, chunk_size=16, cpu_scan="chunked")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), selective_scan_reference(**inputs64), rtol=1e-4, atol=1e-4)


def test_reference_matches_hand_computed_two_steps() -> None:
    values = (0.7, 0.3, -1.5, 2.0, -0.4, 0.25, 0.9, 0.1)
    u, delta, A, B, C, D, z, bias = (torch.tensor(v, dtype=torch.float64) for v in values)
    step = F.softplus(delta + bias)
    h1 = step * B * u
    h2 = torch.exp(step * A) * h1 + step * B * u
    expected = torch.stack([C * h1 + D * u, C * h2 + D * u]) * F.silu(z)
    y = selective_scan_reference(
        u.expand(1, 1, 2), delta.expand(1, 1, 2), A.view(1, 1), B.expand(1, 1, 2), C.expand(1, 1, 2),
        D.view(1), z.expand(1, 1, 2), bias.view(1), delta_softplus=True,
    )
    torch.testing.assert_close(y.flatten(), expected)


@pytest.mark.parametrize("cpu_scan", ["chunked", "fused"])
def test_large_decays_stay_finite(cpu_scan: str) -> None:
    """delta * |A| up to 1e5: one-token chunks, log-decays clipped at -_LOG_RANGE (fused: exp clamped at -87), still finite and exact."""
    inputs = random_inputs(length=70, groups=2, delta_softplus=False, with_delta_bias=False, dtype=torch.float32)
    generator = torch.Generator().manual_seed(2)
    inputs["delta"] = 10 ** (3 * torch.rand(inputs["delta"].shape, generator=generator) - 1)  # 0.1 .. 100
    inputs["A"] = -(10 ** (3 * torch.rand(inputs["A"].shape, generator=generator)))  # -1 .. -1000
    y, grads = output_and_grads(selective_scan, inputs, chunk_size=32, cpu_scan=cpu_scan)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    y_ref = selective_scan_reference(**inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4 * y_ref.abs().max().item())


@pytest.mark.parametrize("cpu_scan", ["chunked", "fused"])
def test_groups_must_divide_dim(cpu_scan: str) -> None:
    with pytest.raises(ValueError, match="not divisible"):
        selective_scan(**random_inputs(dim=5, groups=2), cpu_scan=cpu_scan)


def test_cpu_uses_pure_path(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel_calls = []
    monkeypatch.setattr(selective_scan_module, "_cuda_kernel", lambda: lambda *args: kernel_calls.append(args))
    inputs = random_inputs(dtype=torch.float32)
    y = selective_scan(**inputs)
    assert not kernel_calls
    torch.testing.assert_close(y, selective_scan_reference(**inputs), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kernel_matches_pure_path(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = selective_scan_module._cuda_kernel()
    if kernel is None:
        pytest.skip("mamba-ssm's kernel does not import")
    kernel_calls = []

    def counted_kernel(*args: object) -> torch.Tensor:
        kernel_calls.append(args)
        return kernel(*args)

    monkeypatch.setattr(selective_scan_module, "_cuda_kernel", lambda: counted_kernel)
    cpu_inputs = random_inputs(batch=2, dim=64, state_size=16, length=300, groups=2, dtype=torch.float32)
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in cpu_inputs.items()}
    y_kernel, grads_kernel = output_and_grads(selective_scan, inputs)
    assert kernel_calls
    monkeypatch.setattr(selective_scan_module, "_cuda_kernel", lambda: None)
    y_pure, grads_pure = output_and_grads(selective_scan, inputs)
    torch.testing.assert_close(y_kernel, y_pure, rtol=1e-3, atol=1e-4 * y_pure.abs().max().item())
    for grad_kernel, grad_pure in zip(grads_kernel, grads_pure, strict=True):
        torch.testing.assert_close(grad_kernel, grad_pure, rtol=1e-3, atol=1e-4 * grad_pure.abs().max().item())
