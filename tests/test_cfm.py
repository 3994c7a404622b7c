"""CFM: valid-pixel masking, FPFH point features, the modality check, training and a whole run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from incad.config import validate_config
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.sample import collate
from incad.errors import ConfigError
from incad.learners.cfm import CFMLearner, CFMOptions
from incad.learners.cfm.loss import mapping_loss
from incad.learners.features import valid_tokens
from incad.learners.terms import evaluate_terms
from incad.models.backbones.fpfh import FPFH_DIM, fpfh_grid_features
from incad.runner import run_experiment
from training_helpers import losses_over_steps

SMALL = CFMOptions(hidden_dim=32)


def batch_of(root, n=4, split="train"):
    dataset = AnomalyDetectionDataset(root, ["dome"], split, image_size=64, object_ids={"dome": 0})
    return collate([dataset[i] for i in range(n)])


def with_hole(batch):
    """The batch with the top-left 32x32 quarter of every image without 3-D points."""
    batch.valid = batch.valid.clone()
    batch.valid[:, :32, :32] = False
    batch.xyz = batch.xyz * batch.valid[:, None]
    return batch


def test_valid_tokens_follow_the_point_cloud_mask(tiny_dataset):
    batch = with_hole(batch_of(tiny_dataset))
    valid = valid_tokens(batch, (4, 4)).reshape(4, 4, 4)
    assert not valid[:, :2, :2].any()
    expected = torch.nn.functional.adaptive_avg_pool2d(batch.valid[:, None].float(), (4, 4))[:, 0] >= 0.5
    assert torch.equal(valid, expected)


def test_loss_ignores_invalid_tokens():
    torch.manual_seed(0)
    predicted, target = torch.randn(2, 16, 8), torch.randn(2, 16, 8)
    valid = torch.zeros(2, 16, dtype=torch.bool)
    valid[:, 5:] = True
    changed = predicted.clone()
    changed[:, :5] = torch.randn(2, 5, 8) * 100
    assert mapping_loss(changed, target, valid) == pytest.approx(mapping_loss(predicted, target, valid).item())
    manual = (1 - torch.nn.functional.cosine_similarity(predicted[:, 5:], target[:, 5:], dim=-1)).mean()
    assert mapping_loss(predicted, target, valid).item() == pytest.approx(manual.item(), rel=1e-6)
    assert mapping_loss(predicted, target, torch.zeros_like(valid)).item() == 0.0


def test_anomaly_map_is_zero_on_invalid_tokens_and_unaffected_by_them(tiny_dataset):
    learner = CFMLearner(SMALL, modality="rgb+depth", class_names=("a",), image_size=64).eval()
    batch = with_hole(batch_of(tiny_dataset, split="test"))
    maps = learner.anomaly_map(batch)
    assert maps.shape == (4, 4, 4)
    assert (maps[:, :2, :2] == 0).all() and (maps[:, 2:, 2:] > 0).all()
    outputs = learner(batch)
    losses, _ = evaluate_terms(learner, outputs, batch)
    assert set(losses) == {"mapping/2d_to_3d", "mapping/3d_to_2d"}
    invalid = ~outputs["valid"]
    noisy = dict(outputs)
    noisy["3d/predicted"] = outputs["3d/predicted"] + 50 * invalid[..., None]
    assert evaluate_terms(learner, noisy, batch)[0]["mapping/2d_to_3d"].item() == pytest.approx(losses["mapping/2d_to_3d"].item())


def test_fpfh_features_pooled_per_cell(tiny_dataset):
    batch = with_hole(batch_of(tiny_dataset, n=2))
    features = fpfh_grid_features(batch.xyz)
    assert features.shape == (2, FPFH_DIM, 4, 4)
    assert (features[:, :, :2, :2] == 0).all()
    # open3d's FPFH is three 11-bin histograms of 200 each (own 100 + neighbours' 100), so a cell mean sums to 600.
    sums = features[:, :, 2:, 2:].sum(dim=1)
    assert np.allclose(sums.numpy(), 600.0, rtol=1e-4)


def test_fpfh_learner_maps_between_rgb_and_point_features(tiny_dataset):
    learner = CFMLearner(SMALL.model_copy(update={"features_3d": "fpfh"}), modality="rgb+depth", class_names=("a",), image_size=64)
    batch = batch_of(tiny_dataset, n=2)
    outputs = learner(batch)
    assert outputs["3d/features"].shape == (2, 16, FPFH_DIM)
    assert outputs["2d/predicted"].shape == (2, 16, learner.backbone.out_channels)
    assert torch.isfinite(learner.eval().anomaly_map(batch)).all()


@pytest.mark.parametrize("modality", ["rgb", "depth"])
def test_single_modality_is_a_config_error(modality):
    with pytest.raises(ConfigError, match="scenario.modality: rgb\\+depth"):
        CFMLearner(SMALL, modality=modality, class_names=("a",), image_size=64)


def test_a_few_steps_lower_the_loss(tiny_dataset):
    torch.manual_seed(0)
    learner = CFMLearner(SMALL, modality="rgb+depth", class_names=("a",), image_size=64)
    batch = batch_of(tiny_dataset, n=6)
    losses = losses_over_steps(learner, batch, steps=30)
    assert losses[-1] < 0.5 * losses[0]


def test_one_epoch_run_end_to_end(tiny_run_config):
    tiny_run_config["learner"] = {"name": "cfm", "hidden_dim": 32}
    tiny_run_config["tracking"]["enabled"] = False
    result = run_experiment(validate_config(tiny_run_config), show_progress=False)
    assert result.matrices.values["p_auroc"].shape == (3, 4)
    assert all(math.isfinite(v) for v in result.matrices.values["aupro_30"][-1])
    assert math.isfinite(result.summary["i_auroc/fm"])
