"""Uni-RCM: the residual quantizer (per-level error, incremental extension), the fit stage, and a whole run."""

from __future__ import annotations

import math

import pytest
import torch

from incad.config import validate_config
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.sample import collate
from incad.learners.uni_rcm import UniRCMLearner, UniRCMOptions
from incad.models.layers.reference_attention import ReferenceGuidedMapping
from incad.models.layers.residual_quantizer import ResidualQuantizer
from incad.runner import run_experiment
from training_helpers import losses_over_steps

SMALL = UniRCMOptions(hidden_dim=32, num_blocks=1, codes_per_fit_2d=16, codes_per_fit_3d=8, quantizer_levels=3)


def batch_of(root, classes=("dome",), n=4, split="train"):
    dataset = AnomalyDetectionDataset(root, list(classes), split, image_size=64, object_ids={c: i for i, c in enumerate(classes)})
    return collate([dataset[i] for i in range(n)])


def clustered_features(centres: torch.Tensor, n: int, spread: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(centres), (n,), generator=generator)
    return centres[picks] + spread * torch.randn(n, centres.shape[1], generator=generator)


def test_error_falls_with_every_level():
    torch.manual_seed(0)
    features = clustered_features(torch.randn(20, 16), 2000, 0.3, seed=1)
    quantizer = ResidualQuantizer(16, num_levels=4, codes_per_fit=32)
    quantizer.extend(features)
    errors = [residual.norm(dim=-1).mean().item() for residual in quantizer.residuals(features)]
    start = torch.nn.functional.normalize(features, dim=-1).norm(dim=-1).mean().item()
    assert start > errors[0] > errors[1] > errors[2] > errors[3]
    assert torch.allclose(quantizer.error(features), quantizer.residuals(features)[-1].norm(dim=-1))


def test_extending_for_a_new_class_keeps_old_codes_bit_identical_and_learns_the_new_class():
    old_class = clustered_features(torch.randn(10, 16), 1000, 0.2, seed=1)
    new_class = clustered_features(torch.randn(10, 16) + 3.0, 1000, 0.2, seed=2)
    quantizer = ResidualQuantizer(16, num_levels=3, codes_per_fit=24)
    quantizer.extend(old_class)
    old_codebooks = [codebook.clone() for codebook in quantizer.codebooks]
    error_before = quantizer.error(new_class).mean().item()
    quantizer.extend(new_class)
    for old, extended in zip(old_codebooks, quantizer.codebooks):
        assert extended.shape == (len(old) + 24, 16)
        assert torch.equal(extended[: len(old)], old)
    assert quantizer.error(new_class).mean().item() < 0.5 * error_before
    assert int(quantizer.fits) == 2


def test_unfitted_quantizer_says_what_to_do():
    with pytest.raises(RuntimeError, match="extend"):
        ResidualQuantizer(4).error(torch.randn(3, 4))


def test_reference_guided_mapping_shapes_and_gradients():
    mapping = ReferenceGuidedMapping(12, 7, grid=(4, 4), hidden_dim=16, num_blocks=2)
    out = mapping(torch.randn(3, 16, 12))
    assert out.shape == (3, 16, 7)
    out.sum().backward()
    assert mapping.reference.grad.abs().sum() > 0


def test_fit_stage_fits_then_extends_and_maps_are_zero_off_the_object(tiny_dataset):
    learner = UniRCMLearner(SMALL, modality="rgb+depth", class_names=("a", "b"), image_size=64).eval()
    learner.fit([batch_of(tiny_dataset, ("dome",))])
    first = learner.quantizer_2d.codebook_0.clone()
    assert first.shape == (16, learner.backbone.out_channels) and learner.quantizer_3d.codebook_2.shape[0] == 8
    learner.fit([batch_of(tiny_dataset, ("ring",))])
    assert torch.equal(learner.quantizer_2d.codebook_0[:16], first)
    assert learner.quantizer_2d.codebook_0.shape[0] == 32
    batch = batch_of(tiny_dataset, ("dome",), split="test")
    batch.valid = batch.valid.clone()
    batch.valid[:, 32:, :] = False
    maps = learner.anomaly_map(batch)
    assert maps.shape == (4, 4, 4) and torch.isfinite(maps).all()
    assert (maps[:, 2:] == 0).all() and (maps[:, :2] > 0).any()


def test_mse_term_is_declared_and_a_few_steps_lower_the_loss(tiny_dataset):
    torch.manual_seed(0)
    learner = UniRCMLearner(SMALL, modality="rgb+depth", class_names=("a",), image_size=64)
    weights = {term.name: term.weight for term in learner.loss_terms()}
    assert weights == {"mapping/2d_to_3d": 1.0, "mapping/3d_to_2d": 1.0, "mapping/mse": 0.01}
    without_mse = UniRCMLearner(SMALL.model_copy(update={"mse_weight": 0.0}), "rgb+depth", ("a",), 64)
    assert "mapping/mse" not in {term.name for term in without_mse.loss_terms()}
    batch = batch_of(tiny_dataset, n=6)
    losses = losses_over_steps(learner, batch, steps=30)
    assert losses[-1] < 0.5 * losses[0]


def test_one_epoch_run_end_to_end(tiny_run_config):
    tiny_run_config["learner"] = {"name": "uni_rcm", "hidden_dim": 32, "num_blocks": 1, "codes_per_fit_2d": 16, "codes_per_fit_3d": 8}
    tiny_run_config["tracking"]["enabled"] = False
    result = run_experiment(validate_config(tiny_run_config), show_progress=False)
    assert result.matrices.values["i_auroc"].shape == (3, 4)
    assert all(math.isfinite(v) for v in result.matrices.values["p_auroc"][-1])
    assert math.isfinite(result.summary["i_auroc/fm"])
    # One fit per experience: 16 codes per level after the base step, then 16 more at each of the 2 steps.
    assert result.learner.quantizer_2d.codebook_0.shape[0] == 48
