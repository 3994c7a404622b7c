"""The CPU dropout with hashed masks (incad/ops/dropout.py) and the layers that use it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import incad.models.layers.fast_dropout as fast_dropout_layers
from incad.models.layers import FastDropout, FastDropoutAttention, use_fast_dropout
from incad.ops import dropout as dropout_module
from incad.ops.dropout import KEEP_LEVELS, dropout, keep_bound
from incad.ops.dropout_kernel import masked


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_keeps_the_stated_fraction_and_scales_by_its_inverse(p: float) -> None:
    """Over 2^20 values the kept fraction is within 5 standard deviations of the bound's, kept values are
    scaled exactly by its inverse, and the mean stays 1 (unbiased)."""
    torch.manual_seed(0)
    ones = torch.ones(2**20)
    kept = dropout(ones, p)
    keep = keep_bound(p) / KEEP_LEVELS
    assert abs(keep - (1 - p)) < 1e-5
    fraction = (kept != 0).double().mean().item()
    assert abs(fraction - keep) < 5 * (keep * (1 - keep) / ones.numel()) ** 0.5
    assert torch.equal(kept[kept != 0], torch.full_like(kept[kept != 0], KEEP_LEVELS / keep_bound(p)))
    assert abs(kept.double().mean().item() - 1.0) < 5 * ((1 - keep) / keep / ones.numel()) ** 0.5


def test_mask_values_are_independent_of_their_neighbours() -> None:
    """Pairs of neighbouring values (same hash, or next hash) are kept together as often as independence says."""
    torch.manual_seed(1)
    kept = dropout(torch.ones(2**20), 0.5) != 0
    for lag in (1, 4):
        both = (kept[:-lag] & kept[lag:]).double().mean().item()
        assert abs(both - 0.25) < 5 * (0.25 * 0.75 / kept.numel()) ** 0.5


def test_backward_applies_the_forward_mask() -> None:
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    y = dropout(x, 0.3)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    mask = (y != 0).double() * (KEEP_LEVELS / keep_bound(0.3))
    torch.testing.assert_close(y, x.detach() * mask, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, upstream * mask, rtol=0, atol=0)


def test_masks_follow_torch_seed_and_differ_between_calls() -> None:
    x = torch.ones(1000)
    torch.manual_seed(3)
    first, second = dropout(x, 0.2), dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2), first)
    assert not torch.equal(first, second)


def test_tail_values_take_the_next_hash() -> None:
    """A length that is not a multiple of 4 reads its last values from the next word's hash, as a longer tensor would."""
    x = torch.arange(1.0, 12.0)
    short, long = torch.empty(7), torch.empty(11)
    masked(x[:7].contiguous(), short, 12345, keep_bound(0.5), 2.0)
    masked(x, long, 12345, keep_bound(0.5), 2.0)
    assert torch.equal(short, long[:7])
    assert 0 < int((long != 0).sum()) < 11


def test_nan_stays_nan_like_torch() -> None:
    torch.manual_seed(0)
    x = torch.full((64,), float("nan"))
    assert torch.isnan(dropout(x, 0.5)).all()


def test_identity_outside_training_and_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation and p = 0 return the input itself; without the kernel (or for float16) it is torch's dropout, same seed, same mask."""
    x = torch.randn(50)
    assert dropout(x, 0.4, training=False) is x
    assert dropout(x, 0.0) is x
    for tensor in (x, x.half()):
        if tensor.dtype == torch.float32:
            monkeypatch.setattr(dropout_module, "_masked_kernel", lambda: None)
        torch.manual_seed(5)
        expected = F.dropout(tensor, 0.4, True)
        torch.manual_seed(5)
        assert torch.equal(dropout(tensor, 0.4), expected)


def _attention_pair(**options) -> tuple[nn.MultiheadAttention, FastDropoutAttention]:
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(16, 4, batch_first=True, **options)
    fast = use_fast_dropout(copy.deepcopy(reference))
    assert type(fast) is FastDropoutAttention
    return reference, fast


@pytest.mark.parametrize("case", ["self", "cross, key is value", "cross, key and value apart"])
def test_attention_path_matches_torch_without_the_mask(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the mask replaced by the identity, the training path equals nn.MultiheadAttention's without dropout:
    projections, heads, scaling, softmax and the output projection are the same computation."""
    reference, fast = _attention_pair(dropout=0.3)
    reference.dropout = 0.0
    monkeypatch.setattr(fast_dropout_layers, "dropout", lambda x, p, training=True: x)
    query = torch.randn(2, 9, 16)
    memory = torch.randn(2, 5, 16)
    key, value = {"self": (query, query), "cross, key is value": (memory, memory), "cross, key and value apart": (memory, memory + 1)}[case]
    expected, _ = reference(query, key, value, need_weights=False)
    got, weights = fast(query, key, value, need_weights=False)
    assert weights is None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_attention_drops_weights_in_training_only() -> None:
    reference, fast = _attention_pair(dropout=0.5)
    tokens = torch.randn(2, 9, 16)
    fast.eval()
    reference.eval()
    torch.testing.assert_close(fast(tokens, tokens, tokens)[0], reference(tokens, tokens, tokens)[0])
    fast.train()
    torch.manual_seed(7)
    first = fast(tokens, tokens, tokens, need_weights=False)[0]
    torch.manual_seed(7)
    assert torch.equal(fast(tokens, tokens, tokens, need_weights=False)[0], first)
    reference.dropout = 0.0
    assert not torch.allclose(first, reference(tokens, tokens, tokens, need_weights=False)[0])


def test_use_fast_dropout_keeps_state_and_evaluation_outputs() -> None:
    """Torch's transformer layers switched in place: same state dict, same evaluation output, dropout layers and
    attention of the new classes, gradients flowing in training."""
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(16, 4, dim_feedforward=32, dropout=0.1, batch_first=True, norm_first=True)
    switched = use_fast_dropout(copy.deepcopy(layer))
    assert switched.state_dict().keys() == layer.state_dict().keys()
    assert all(torch.equal(switched.state_dict()[key], value) for key, value in layer.state_dict().items())
    assert {type(module) for module in switched.modules()} >= {FastDropout, FastDropoutAttention}
    assert not any(type(module) in (nn.Dropout, nn.MultiheadAttention) for module in switched.modules())
    tokens, memory = torch.randn(2, 9, 16), torch.randn(2, 5, 16)
    layer.eval()
    switched.eval()
    torch.testing.assert_close(switched(tokens, memory), layer(tokens, memory))
    switched.train()
    switched(tokens, memory).sum().backward()
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in switched.parameters())


def test_training_under_the_profiler_with_shapes_recorded() -> None:
    """torch.profiler's record_shapes casts every autograd input to a C++ type: the seed must fit a signed 64-bit int."""
    torch.manual_seed(0)
    layer = use_fast_dropout(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as trace:
        layer(torch.randn(2, 5, 16)).sum().backward()
    assert any(event.key == "_MaskedBySeed" for event in trace.key_averages())
    assert all(parameter.grad is not None for parameter in layer.parameters())


def test_signed_and_unsigned_seeds_with_the_same_bits_give_the_same_mask() -> None:
    x = torch.ones(103)
    signed, unsigned = torch.empty(103), torch.empty(103)
    masked(x, signed, -12345, keep_bound(0.5), 2.0)
    masked(x, unsigned, 2**64 - 12345, keep_bound(0.5), 2.0)
    assert torch.equal(signed, unsigned) and 0 < int((signed != 0).sum()) < 103
