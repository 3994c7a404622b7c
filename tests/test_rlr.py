"""RLR: the attention masks, that no token can copy itself, and that the learner trains and runs."""

from __future__ import annotations

import math

import pytest
import torch

from incad.config import validate_config
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.sample import collate
from incad.learners.rlr import RLRLearner, RLROptions
from incad.learners.rlr.loss import token_error
from incad.learners.terms import evaluate_terms
from incad.models.layers.reference_attention import (
    ReferenceAttention,
    ReferenceReconstructionBlock,
    effective_window,
    neighbourhood,
)
from incad.runner import run_experiment
from training_helpers import losses_over_steps

GRID = (6, 6)
CENTRE = 2 * GRID[1] + 2  # token (2, 2)
SMALL = RLROptions(hidden_dims=[16, 16], num_blocks=1, num_heads=2, feedforward_ratio=2, windows=[3, 3])


def batch_of(root, n=4, split="train"):
    dataset = AnomalyDetectionDataset(root, ["dome"], split, image_size=64, object_ids={"dome": 0})
    return collate([dataset[i] for i in range(n)])


def window_of(token: int, window: int) -> set[int]:
    row, col = divmod(token, GRID[1])
    half = window // 2
    return {
        r * GRID[1] + c
        for r in range(row - half, row + half + 1)
        for c in range(col - half, col + half + 1)
        if 0 <= r < GRID[0] and 0 <= c < GRID[1]
    }


def test_lca_mask_is_the_window_and_mlka_mask_its_complement():
    mask = neighbourhood(GRID, 3)
    for token in range(GRID[0] * GRID[1]):
        assert set(torch.nonzero(mask[token]).flatten().tolist()) == window_of(token, 3)
        assert not (~mask)[token, token], "MLKA must never see the token itself"
    assert mask.sum().item() == sum(len(window_of(t, 3)) for t in range(36))


def test_windows_are_clipped_so_mlka_always_has_keys():
    assert effective_window(7, (32, 32)) == 7
    assert effective_window(5, (4, 4)) == 3
    assert effective_window(7, (5, 5)) == 3
    for grid in [(4, 4), (5, 5), (8, 8)]:
        visible = ~neighbourhood(grid, effective_window(11, grid))
        assert visible.any(dim=1).all()
    with pytest.raises(ValueError, match="odd"):
        effective_window(4, (16, 16))
    with pytest.raises(ValueError, match="larger images"):
        effective_window(3, (1, 1))


def _perturbed(tensor: torch.Tensor, tokens: set[int]) -> torch.Tensor:
    changed = tensor.clone()
    changed[:, sorted(tokens)] += 5.0 * torch.randn_like(changed[:, sorted(tokens)])
    return changed


def test_lca_output_depends_on_the_reference_inside_its_window_only():
    torch.manual_seed(0)
    attention = ReferenceAttention(8, 2, values_from="reference")
    tokens, reference = torch.randn(1, 36, 8), torch.randn(1, 36, 8)
    mask = neighbourhood(GRID, 3)
    inside = window_of(CENTRE, 3)
    outside = set(range(36)) - inside
    base = attention(tokens, reference, mask)[0, CENTRE]
    assert torch.allclose(attention(tokens, _perturbed(reference, outside), mask)[0, CENTRE], base, atol=1e-6)
    assert not torch.allclose(attention(tokens, _perturbed(reference, inside - {CENTRE}), mask)[0, CENTRE], base, atol=1e-3)
    # The other input tokens are never read by LCA.
    assert torch.allclose(attention(_perturbed(tokens, set(range(36)) - {CENTRE}), reference, mask)[0, CENTRE], base, atol=1e-6)


def test_mlka_output_never_depends_on_the_tokens_of_its_own_neighbourhood():
    torch.manual_seed(0)
    attention = ReferenceAttention(8, 2, values_from="input")
    tokens, reference = torch.randn(1, 36, 8), torch.randn(1, 36, 8)
    blind = ~neighbourhood(GRID, 3)
    neighbours = window_of(CENTRE, 3) - {CENTRE}
    outside = set(range(36)) - window_of(CENTRE, 3)
    base = attention(tokens, reference, blind)[0, CENTRE]
    assert torch.allclose(attention(_perturbed(tokens, neighbours), reference, blind)[0, CENTRE], base, atol=1e-6)
    assert not torch.allclose(attention(_perturbed(tokens, outside), reference, blind)[0, CENTRE], base, atol=1e-3)


def test_a_block_has_no_path_from_a_token_or_its_neighbours_to_itself_except_the_query():
    """The whole RLR block: the output at a token ignores the input tokens of its window (no residual)."""
    torch.manual_seed(0)
    block = ReferenceReconstructionBlock(8, 2, 16, alpha=2.0).eval()
    tokens, reference = torch.randn(1, 36, 8), torch.randn(1, 36, 8)
    mask = neighbourhood(GRID, 3)
    base = block(tokens, reference, mask)[0, CENTRE]
    neighbours = window_of(CENTRE, 3) - {CENTRE}
    assert torch.allclose(block(_perturbed(tokens, neighbours), reference, mask)[0, CENTRE], base, atol=1e-5)


def test_score_is_mse_plus_cosine_distance_or_cosine_alone():
    torch.manual_seed(0)
    reconstruction, features = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    cosine = 1 - torch.nn.functional.cosine_similarity(reconstruction, features, dim=-1)
    mse = ((reconstruction - features) ** 2).mean(dim=-1)
    assert torch.allclose(token_error(reconstruction, features), mse + cosine)
    assert torch.allclose(token_error(reconstruction, features, with_mse=False), cosine)
    assert token_error(features, features).abs().max() < 1e-6


def test_learner_levels_shapes_and_frozen_backbone(tiny_dataset):
    learner = RLRLearner(SMALL, modality="rgb+depth", class_names=("a",), image_size=64)
    batch = batch_of(tiny_dataset)
    outputs = learner(batch)
    channels = learner.backbone.out_channels
    assert outputs["rgb_s8/features"].shape == (4, 64, channels)
    assert outputs["depth_s16/reconstruction"].shape == (4, 16, channels)
    losses, total = evaluate_terms(learner, outputs, batch)
    assert set(losses) == {"rlr/rgb_s8", "rlr/rgb_s16", "rlr/depth_s8", "rlr/depth_s16"}
    total.backward()
    assert all(p.grad is None for p in learner.backbone.parameters())
    assert learner.reconstructors["rgb_s8"].reference.grad.abs().sum() > 0
    learner.eval()
    maps = learner.anomaly_map(batch)
    assert maps.shape == (4, 8, 8) and torch.isfinite(maps).all() and (maps >= 0).all()
    rgb_only = RLRLearner(SMALL, modality="rgb", class_names=("a",), image_size=64).eval()
    assert set(rgb_only.reconstructors) == {"rgb_s8", "rgb_s16"}
    assert rgb_only.anomaly_map(batch).shape == (4, 8, 8)


def test_a_few_steps_lower_the_loss(tiny_dataset):
    torch.manual_seed(0)
    learner = RLRLearner(SMALL.model_copy(update={"jitter_scale": 0.0}), modality="depth", class_names=("a",), image_size=64)
    batch = batch_of(tiny_dataset, n=6)
    losses = losses_over_steps(learner, batch, steps=40)
    assert losses[-1] < 0.5 * losses[0]


def test_one_epoch_run_end_to_end(tiny_run_config):
    tiny_run_config["learner"] = {"name": "rlr", "hidden_dims": [16, 16], "num_blocks": 1, "num_heads": 2, "windows": [3, 3]}
    tiny_run_config["tracking"]["enabled"] = False
    result = run_experiment(validate_config(tiny_run_config), show_progress=False)
    i_auroc = result.matrices.values["i_auroc"]
    assert i_auroc.shape == (3, 4)
    assert all(math.isfinite(v) for v in i_auroc[-1])
    # One epoch already localises the synthetic defects (final mean P-AUROC measured 0.754-0.761, seeds 0-2).
    assert result.matrices.final_mean("p_auroc") > 0.7
    assert math.isfinite(result.summary["i_auroc/fm"])
