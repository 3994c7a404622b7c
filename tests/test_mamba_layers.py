"""Mamba decoder layers: ES2D ordering, ESSM direction wiring, shapes, gradients, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from incad.models.layers import ESSM, LabelClassifier, MambaDecoder, MambaDecoderBlock, es2d_scan
from incad.models.layers.mamba import ES2D_DIRECTIONS


def _cumulative_sum(sequences: Tensor) -> Tensor:
    return sequences.cumsum(dim=-1)


@pytest.mark.parametrize("height,width", [(4, 4), (14, 14), (5, 5), (5, 8), (7, 4), (1, 3)])
def test_es2d_with_identity_scan_returns_its_input(height: int, width: int) -> None:
    x = torch.randn(2, 3, height, width)
    assert torch.equal(es2d_scan(x, lambda sequences: sequences), x)


def test_es2d_sub_sequences_follow_efficientvmamba_order_on_4x4() -> None:
    # Token (i, j) holds 4*i + j in channel 0 and 100 + 4*i + j in channel 1.
    grid = torch.arange(16.0).view(1, 1, 4, 4)
    x = torch.cat([grid, grid + 100], dim=1)
    received: list[Tensor] = []

    def recording_cumsum(sequences: Tensor) -> Tensor:
        received.append(sequences)
        return sequences.cumsum(dim=-1)

    out = es2d_scan(x, recording_cumsum)

    # Direction-major channel stacking: channels k*C:(k+1)*C are direction k.
    expected_orders = [
        [0, 2, 8, 10],  # offset (0,0), row-major
        [4, 12, 6, 14],  # offset (1,0), column-major
        [1, 3, 9, 11],  # offset (0,1), row-major
        [5, 13, 7, 15],  # offset (1,1), column-major
    ]
    stacked = received[0].view(1, 4, 2, 4)
    for direction, order in enumerate(expected_orders):
        assert stacked[0, direction, 0].tolist() == order
        assert stacked[0, direction, 1].tolist() == [100 + value for value in order]

    expected = torch.tensor(
        [
            [0.0, 1, 2, 4],
            [4, 5, 22, 25],
            [10, 13, 20, 24],
            [16, 18, 36, 40],
        ]
    )
    assert torch.equal(out[0, 0], expected)
    # Channel 1 adds 100 per token already summed: 100 * (1-based place in its sequence).
    places = torch.tensor([[1.0, 1, 2, 2], [1, 1, 3, 3], [3, 3, 4, 4], [2, 2, 4, 4]])
    assert torch.equal(out[0, 1], expected + 100 * places)


def test_es2d_odd_grid_scans_zero_padding_after_each_short_row() -> None:
    x = torch.ones(1, 1, 3, 3)
    out = es2d_scan(x, _cumulative_sum)
    # Offset (0,1) row-major on the padded 4x4 grid: (0,1), (0,3)=pad, (2,1), (2,3)=pad.
    assert out[0, 0, 0, 1] == 1 and out[0, 0, 2, 1] == 2
    # Offset (1,0) column-major: (1,0), (3,0)=pad, (1,2), (3,2)=pad.
    assert out[0, 0, 1, 0] == 1 and out[0, 0, 1, 2] == 2


def test_essm_direction_parameters_touch_only_their_own_sub_grid() -> None:
    torch.manual_seed(0)
    essm = ESSM(d_model=8, d_state=4).eval()
    tokens = torch.randn(1, 6, 6, 8)
    with torch.no_grad():
        reference = essm(tokens)
        d_inner = essm.d_inner
        for direction, (row, col, _) in enumerate(ES2D_DIRECTIONS):
            channels = slice(direction * d_inner, (direction + 1) * d_inner)
            for parameter, index in [
                (essm.x_proj_weight, direction),
                (essm.dt_proj_weight, direction),
                (essm.dt_proj_bias, direction),
                (essm.A_log, channels),
                (essm.D, channels),
            ]:
                saved = parameter[index].clone()
                parameter[index] += 0.5
                changed = (essm(tokens) - reference).abs().amax(dim=-1)[0] > 1e-6
                parameter[index] = saved
                in_sub_grid = torch.zeros(6, 6, dtype=torch.bool)
                in_sub_grid[row::2, col::2] = True
                # A only acts from a sequence's second token on, so ask for some change, not all.
                assert changed[in_sub_grid].any()
                assert not changed[~in_sub_grid].any()


def test_essm_initialisation_follows_mamba() -> None:
    essm = ESSM(d_model=64)
    assert essm.d_inner == 128 and essm.dt_rank == 4
    assert essm.A_log.shape == (4 * 128, 16)
    assert torch.allclose(-torch.exp(essm.A_log[0]), -torch.arange(1.0, 17))
    assert torch.equal(essm.D, torch.ones(4 * 128))
    dt = F.softplus(essm.dt_proj_bias)
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 1e-1 + 1e-7


@torch.no_grad()
def test_shapes_on_14x14_grid() -> None:
    batch, height, width, dim = 2, 14, 14, 64
    tokens = torch.randn(batch, height * width, dim)
    assert ESSM(dim)(tokens.view(batch, height, width, dim)).shape == (batch, height, width, dim)
    assert MambaDecoderBlock(dim, (height, width))(tokens).shape == tokens.shape
    outputs = MambaDecoder(dim, (height, width))(tokens)
    assert len(outputs) == 5 and all(output.shape == tokens.shape for output in outputs)
    assert LabelClassifier(dim, num_objects=10)(outputs[-1]).shape == (batch, 10)


def test_block_rejects_a_token_count_that_does_not_match_the_grid() -> None:
    with pytest.raises(ValueError, match="14x14"):
        MambaDecoderBlock(16, (14, 14), num_heads=4)(torch.randn(1, 100, 16))


@pytest.mark.parametrize("grid_size", [(6, 6), (5, 7)])
def test_gradients_reach_every_parameter(grid_size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    dim = 32
    decoder = MambaDecoder(dim, grid_size, num_blocks=2, num_heads=4)
    classifier = LabelClassifier(dim, num_objects=3)
    tokens = torch.randn(2, grid_size[0] * grid_size[1], dim)
    outputs = decoder(tokens)
    loss = F.cross_entropy(classifier(outputs[-1]), torch.tensor([0, 2]))
    loss = loss + sum(output.square().mean() for output in outputs)
    loss.backward()
    for name, parameter in [*decoder.named_parameters(), *classifier.named_parameters()]:
        assert parameter.grad is not None, name
        assert parameter.grad.abs().max() > 0, name


def test_label_classifier_learns_three_token_classes() -> None:
    torch.manual_seed(0)
    dim, grid_size, per_class = 16, (6, 6), 6
    prototypes = 0.5 * torch.randn(3, 1, dim)
    labels = torch.arange(3).repeat_interleave(per_class)
    tokens = prototypes[labels] + torch.randn(len(labels), grid_size[0] * grid_size[1], dim)
    decoder = MambaDecoder(dim, grid_size, num_blocks=2, num_heads=4)
    classifier = LabelClassifier(dim, num_objects=3)
    optimizer = torch.optim.Adam([*decoder.parameters(), *classifier.parameters()], lr=1e-3)
    losses = []
    for _ in range(50):
        loss = F.cross_entropy(classifier(decoder(tokens)[-1]), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
