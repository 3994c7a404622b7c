"""The reconstruction learner: shapes, frozen backbone, gradients, and that it learns."""

from __future__ import annotations

import pytest
import torch

from incad.data.dataset import AnomalyDetectionDataset
from incad.data.sample import collate
from incad.learners.features import valid_tokens
from incad.learners.reconstruction import ReconstructionLearner, ReconstructionOptions
from incad.learners.reconstruction.torch_model import FeatureReconstructor
from incad.learners.terms import evaluate_terms, total_loss

SMALL = ReconstructionOptions(hidden_dim=32, num_heads=2, encoder_layers=1, decoder_layers=1, feedforward_dim=64)


def batch_of(root, split="train", classes=("dome",), n=4):
    dataset = AnomalyDetectionDataset(root, list(classes), split, image_size=64, object_ids={c: i for i, c in enumerate(classes)})
    return collate([dataset[i] for i in range(n)])


def test_outputs_losses_and_maps_have_the_documented_shapes(tiny_dataset):
    learner = ReconstructionLearner(SMALL, modality="rgb+depth", class_names=("a",), image_size=64)
    batch = batch_of(tiny_dataset)
    outputs = learner(batch)
    channels = learner.backbone.out_channels
    for modality in ("rgb", "depth"):
        assert outputs[f"{modality}/features"].shape == (4, 16, channels)
        assert outputs[f"{modality}/reconstruction"].shape == (4, 16, channels)
    losses, _ = evaluate_terms(learner, outputs, batch)
    assert set(losses) == {"reconstruction/rgb", "reconstruction/depth"}
    assert all(value.item() > 0 for value in losses.values())
    learner.eval()
    assert learner.anomaly_map(batch).shape == (4, 4, 4)


def test_gradients_reach_the_reconstructor_and_never_the_backbone(tiny_dataset):
    learner = ReconstructionLearner(SMALL, modality="rgb", class_names=("a",), image_size=64)
    batch = batch_of(tiny_dataset)
    total_loss(learner, learner(batch), batch).backward()
    assert all(p.grad is None for p in learner.backbone.parameters())
    grads = [p.grad for p in learner.reconstructors.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_training_lowers_the_loss(tiny_dataset):
    torch.manual_seed(0)
    options = SMALL.model_copy(update={"dropout": 0.0})
    learner = ReconstructionLearner(options, modality="rgb+depth", class_names=("a",), image_size=64)
    batch = batch_of(tiny_dataset, n=6)
    optimizer = torch.optim.AdamW([p for p in learner.parameters() if p.requires_grad], lr=3e-3)
    learner.train()
    first = None
    for _ in range(40):
        loss = total_loss(learner, learner(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.7 * first


def test_calibration_sets_each_modality_scale_to_its_mean_image_maximum_on_tokens_with_points(tiny_dataset):
    learner = ReconstructionLearner(SMALL, modality="rgb+depth", class_names=("a",), image_size=64).eval()
    batches = [batch_of(tiny_dataset, n=3), batch_of(tiny_dataset, n=5)]
    learner.calibrate(batches)
    for index, modality in enumerate(("rgb", "depth")):
        maxima = torch.cat(
            [
                (learner.token_distance(*learner.compared_features(learner(b))[modality]) * valid_tokens(b, learner.grid)).amax(dim=1)
                for b in batches
            ]
        )
        assert learner.map_scale[index].item() == pytest.approx(maxima.mean().item(), rel=1e-5)
    pairs = learner.compared_features(learner(batches[0]))
    raw = torch.stack([learner.token_distance(*pairs[m]) for m in ("rgb", "depth")])
    fused = learner.anomaly_map(batches[0]).flatten(1)
    expected = (raw / learner.map_scale[:, None, None]).amax(dim=0) * valid_tokens(batches[0], learner.grid)
    assert torch.allclose(fused, expected)


def test_cosine_map_ignores_feature_magnitude(tiny_dataset):
    options = SMALL.model_copy(update={"map_distance": "cosine"})
    learner = ReconstructionLearner(options, modality="rgb", class_names=("a",), image_size=64).eval()
    features = torch.randn(2, 16, learner.backbone.out_channels)
    assert torch.allclose(learner.token_distance(features, 3.0 * features), torch.zeros(2, 16), atol=1e-6)
    assert torch.allclose(learner.token_distance(features, -features), torch.full((2, 16), 2.0), atol=1e-6)
    l2 = ReconstructionLearner(SMALL, modality="rgb", class_names=("a",), image_size=64)
    assert torch.allclose(l2.token_distance(features, -features), 2 * features.norm(dim=-1))


def test_image_size_not_a_multiple_of_16_uses_the_backbones_rounded_up_grid(tiny_dataset):
    """72 px gives a 5x5 stride-16 grid (a block output rounds up), not 4x4."""
    dataset = AnomalyDetectionDataset(tiny_dataset, ["dome"], "train", image_size=72, object_ids={"dome": 0})
    batch = collate([dataset[i] for i in range(2)])
    learner = ReconstructionLearner(SMALL, modality="rgb+depth", class_names=("a",), image_size=72).eval()
    assert learner.grid == (5, 5)
    assert learner.anomaly_map(batch).shape == (2, 5, 5)


def test_attention_dropout_drops_attention_weights_only_and_defaults_to_dropout():
    def reconstructor(**options):
        torch.manual_seed(0)
        return FeatureReconstructor(8, (4, 4), SMALL.model_copy(update=options)).train()

    tokens = torch.randn(2, 16, 8)
    # No dropout anywhere: training-mode passes agree; attention dropout alone makes them differ.
    quiet = reconstructor(dropout=0.0, attention_dropout=0.0)
    assert torch.equal(quiet(tokens), quiet(tokens))
    noisy = reconstructor(dropout=0.0, attention_dropout=0.5)
    assert not torch.equal(noisy(tokens), noisy(tokens))
    rates = {module.dropout for module in reconstructor(dropout=0.3).modules() if isinstance(module, torch.nn.MultiheadAttention)}
    assert rates == {0.3}
    residual = {module.p for module in reconstructor(dropout=0.3, attention_dropout=0.0).modules() if isinstance(module, torch.nn.Dropout)}
    assert residual == {0.3}


def test_attention_dropout_outside_zero_to_one_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="attention_dropout"):
        ReconstructionOptions(attention_dropout=1.0)
