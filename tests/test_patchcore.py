"""PatchCore: the exact greedy coreset, chunked nearest neighbours, growing banks, reload, task-agnostic scoring, a whole run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from incad.config import validate_config
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.sample import collate
from incad.learners.patchcore import PatchCoreLearner, PatchCoreOptions
from incad.models.layers.growing import growing_buffer_names
from incad.ops import nearest
from incad.ops.coreset import coverage_radius, greedy_coreset
from incad.ops.nearest import nearest_neighbours, shortlisted_nearest_neighbours, sparse_positions
from incad.runner import run_experiment

REPO_ROOT = Path(__file__).resolve().parents[1]


def plain_greedy(features: torch.Tensor, size: int, first: int) -> torch.Tensor:
    """Reference k-center greedy: every point's distance to every new centre, as anomalib's loop does."""
    min_distance = torch.full((len(features),), float("inf"), dtype=features.dtype)
    selected = [first]
    while len(selected) < size:
        min_distance = torch.minimum(min_distance, (features - features[selected[-1]]).norm(dim=1))
        selected.append(int(min_distance.argmax()))
    return torch.tensor(selected)


def first_pick(num_points: int, seed: int) -> int:
    return int(torch.randint(num_points, (1,), generator=torch.Generator().manual_seed(seed)))


def clustered(num_points: int, dim: int, seed: int) -> torch.Tensor:
    """Points around 30 random centres with unequal spreads: dense and sparse regions, as patch features have."""
    generator = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(30, dim, generator=generator)
    picks = torch.randint(30, (num_points,), generator=generator)
    spread = torch.rand(30, generator=generator)[picks, None] + 0.1
    return centres[picks] + spread * torch.randn(num_points, dim, generator=generator)


@pytest.mark.parametrize("groups", [None, 1, 7, 300])
def test_pruned_coreset_selects_exactly_what_plain_greedy_selects(groups):
    features = clustered(3000, 24, seed=1).double()
    expected = plain_greedy(features, 250, first_pick(3000, seed=5))
    assert torch.equal(greedy_coreset(features, 250, projection_dim=None, seed=5, groups=groups), expected)


def test_coreset_coverage_radius_within_five_percent_of_exact_greedy():
    features = clustered(4000, 64, seed=2)
    exact = plain_greedy(features.double(), 400, first_pick(4000, seed=0))
    exact_radius = coverage_radius(features, features[exact])
    chosen = greedy_coreset(features, 400, seed=0)
    assert len(chosen) == 400 and len(set(chosen.tolist())) == 400
    assert coverage_radius(features, features[chosen]) <= 1.05 * exact_radius
    # A greedy selection covers far better than a random one of the same size.
    random_pick = torch.randperm(4000, generator=torch.Generator().manual_seed(0))[:400]
    assert coverage_radius(features, features[random_pick]) > 1.15 * exact_radius


def test_coreset_stops_once_every_point_is_a_pick():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]).repeat(20, 1)
    chosen = greedy_coreset(features, 50, projection_dim=None, groups=4)
    assert sorted(map(tuple, features[chosen].tolist())) == [(0.0, 0.0), (1.0, 0.0), (5.0, 5.0)]


def test_chunked_nearest_neighbours_equal_one_shot_cdist_min_and_leave_out_groups():
    generator = torch.Generator().manual_seed(3)
    queries, bank = torch.randn(500, 16, generator=generator), torch.randn(300, 16, generator=generator)
    expected = torch.cdist(queries, bank).min(dim=1)
    distances, indices = nearest_neighbours(queries, bank, budget=1000)  # 3 queries at a time
    torch.testing.assert_close(distances, expected.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(indices, expected.indices)
    query_groups, bank_groups = torch.arange(500) % 4, torch.arange(300) % 4
    distances, indices = nearest_neighbours(queries, bank, query_groups, bank_groups, budget=1000)
    masked = torch.cdist(queries, bank).masked_fill(query_groups[:, None] == bank_groups[None], float("inf")).min(dim=1)
    torch.testing.assert_close(distances, masked.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(bank_groups[indices] != query_groups, torch.ones(500, dtype=torch.bool))



@pytest.mark.parametrize("bank_rows", [296, 301])  # a multiple of 8 (shortlists read 8 mask entries per word) and not
def test_shortlisted_search_finds_the_exact_nearest_row(bank_rows, monkeypatch):
    """bfloat16 shortlist + float32 decision: the float64 nearest row, for queries near bank rows and far from all."""
    monkeypatch.setattr(nearest, "nearest_neighbours", None)  # the float32 fallback must not be needed here
    generator = torch.Generator().manual_seed(5)
    bank = 2.0 * torch.rand(bank_rows, 152, generator=generator)  # non-negative like pooled ReLU6 features
    near = bank[torch.randint(bank_rows, (400,), generator=generator)] + 0.05 * torch.randn(400, 152, generator=generator)
    queries = torch.cat([near, 3.0 * torch.rand(400, 152, generator=generator)])
    expected = torch.cdist(queries.double(), bank.double()).min(dim=1)
    distances, indices = shortlisted_nearest_neighbours(queries, bank, budget=100 * bank_rows)
    assert torch.equal(indices, expected.indices)
    torch.testing.assert_close(distances.double(), expected.values, rtol=1e-5, atol=1e-5)


def test_shortlisted_search_falls_back_when_every_row_ties():
    """A bank of one repeated row shortlists everything: the block goes to the float32 product, same answer."""
    bank = torch.ones(100, 8)
    queries = torch.zeros(10, 8)
    distances, indices = shortlisted_nearest_neighbours(queries, bank)
    torch.testing.assert_close(distances, torch.full((10,), 8.0**0.5))
    assert torch.equal(indices, torch.zeros(10, dtype=torch.long))


def test_sparse_positions_equal_nonzero():
    mask = torch.rand(7, 24, generator=torch.Generator().manual_seed(1)) > 0.9
    assert all(torch.equal(a, b) for a, b in zip(sparse_positions(mask), mask.nonzero(as_tuple=True)))


def test_nearest_neighbours_shortlists_only_on_a_cpu_with_native_bfloat16(monkeypatch):
    calls = []
    monkeypatch.setattr(nearest, "shortlisted_nearest_neighbours", lambda *args: calls.append(args) or (torch.zeros(1), torch.zeros(1, dtype=torch.long)))
    queries, bank = torch.randn(1, 4), torch.randn(5, 4)
    monkeypatch.setattr(nearest, "fast_bfloat16", lambda device: False)
    nearest_neighbours(queries, bank, shortlist=True)
    monkeypatch.setattr(nearest, "fast_bfloat16", lambda device: True)
    nearest_neighbours(queries, bank)
    nearest_neighbours(queries, bank, torch.zeros(1), torch.zeros(5), shortlist=True)  # leave-one-out groups: float32 only
    assert calls == []
    nearest_neighbours(queries, bank, shortlist=True)
    assert len(calls) == 1

def batch_of(root, classes, split="train", n=6):
    dataset = AnomalyDetectionDataset(root, list(classes), split, image_size=64, object_ids={c: i for i, c in enumerate(classes)})
    return collate([dataset[i] for i in range(min(n, len(dataset)))])


def fitted_learner(root, **options) -> PatchCoreLearner:
    learner = PatchCoreLearner(PatchCoreOptions(**options), "rgb+depth", class_names=("a", "b", "c", "d"), image_size=64).eval()
    learner.fit([batch_of(root, ["dome"])])
    return learner


def test_banks_grow_per_experience_and_old_entries_stay_bit_identical(tiny_dataset):
    learner = fitted_learner(tiny_dataset)
    assert growing_buffer_names(learner) == ["bank_depth", "bank_rgb"]
    first = {m: learner.bank(m).clone() for m in learner.modalities}
    # 6 images x 8 x 8 patches, ratio 0.1 -> 39 entries per modality.
    assert learner.step_report() == {"bank_size/rgb": 39.0, "bank_size/depth": 39.0}
    ring = batch_of(tiny_dataset, ["ring"])
    before = learner.modality_maps(ring)["rgb"].mean()
    learner.fit([ring])
    assert learner.step_report() == {"bank_size/rgb": 78.0, "bank_size/depth": 78.0}
    for modality, old in first.items():
        assert torch.equal(learner.bank(modality)[: len(old)], old)
    # The new class is now in the bank: its training patches are much closer to it.
    assert learner.modality_maps(ring)["rgb"].mean() < 0.5 * before


def test_map_scales_come_from_leave_one_image_out_image_scores(tiny_dataset):
    """Training patches are ~in the bank; the leave-out image score is nearer to what unseen normal images get."""
    learner = fitted_learner(tiny_dataset)
    in_sample = {m: values.flatten(1).amax(dim=1).mean() for m, values in learner.scored_modality_maps(batch_of(tiny_dataset, ["dome"])).items()}
    test = batch_of(tiny_dataset, ["dome"], split="test")
    unseen = {m: values[test.label == 0].flatten(1).amax(dim=1).mean() for m, values in learner.scored_modality_maps(test).items()}
    for index, modality in enumerate(learner.modalities):
        scale = learner.map_scale[index]
        assert scale > in_sample[modality]
        assert abs(scale - unseen[modality]) < abs(in_sample[modality] - unseen[modality])


def test_map_scale_is_the_mean_of_every_experiences_scale(tiny_dataset, monkeypatch):
    """Old classes' entries never change, so the shared scale averages all experiences instead of following the latest."""
    learner = fitted_learner(tiny_dataset)
    first = learner.map_scale.clone()
    latest = []
    leave_one_out = learner.leave_one_image_out_scale

    def recorded(*args):
        latest.append(leave_one_out(*args))
        return latest[-1]

    monkeypatch.setattr(learner, "leave_one_image_out_scale", recorded)
    learner.fit([batch_of(tiny_dataset, ["ring"])])
    second = torch.stack(latest)
    assert not torch.allclose(second, first)
    torch.testing.assert_close(learner.map_scale, (first + second) / 2)


def test_scoring_uses_no_class_id(tiny_dataset):
    learner = fitted_learner(tiny_dataset, reweighting=True)
    batch = batch_of(tiny_dataset, ["dome", "ring"], split="test")
    maps = learner.anomaly_map(batch)
    batch.object_id = torch.zeros_like(batch.object_id)
    assert torch.equal(learner.anomaly_map(batch), maps)
    batch.object_id = torch.randperm(len(batch))
    assert torch.equal(learner.anomaly_map(batch), maps)


def test_reweighting_scales_each_image_map_by_one_weight_in_zero_one(tiny_dataset):
    plain = fitted_learner(tiny_dataset)
    weighted = fitted_learner(tiny_dataset, reweighting=True)
    batch = batch_of(tiny_dataset, ["dome", "ring"], split="test")
    for modality in plain.modalities:
        ratio = weighted.modality_maps(batch)[modality].flatten(1) / plain.modality_maps(batch)[modality].flatten(1)
        weight = ratio.nanmean(dim=1)
        assert torch.all((weight > 0) & (weight <= 1))
        torch.testing.assert_close(ratio, weight[:, None].expand_as(ratio), equal_nan=True)


def test_fpfh_banks_hold_valid_tokens_only(tiny_dataset):
    learner = fitted_learner(tiny_dataset, three_d="fpfh")
    assert learner.bank("depth").shape[1] == 33
    assert torch.all(learner.bank("depth").abs().sum(dim=1) > 0)
    maps = learner.anomaly_map(batch_of(tiny_dataset, ["dome", "ring"], split="test"))
    assert maps.shape == (6, 8, 8) and torch.isfinite(maps).all()


def test_empty_bank_says_what_to_do(tiny_dataset):
    learner = PatchCoreLearner(PatchCoreOptions(), "rgb", class_names=("a",), image_size=64).eval()
    with pytest.raises(Exception, match="fitted on an experience"):
        learner.anomaly_map(batch_of(tiny_dataset, ["dome"], split="test"))


RELOAD_SCRIPT = """
import sys, torch
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.sample import collate
from incad.learners.patchcore import PatchCoreLearner, PatchCoreOptions
root, state_path, out_path = sys.argv[1:4]
learner = PatchCoreLearner(PatchCoreOptions(reweighting=True), "rgb+depth", class_names=("a", "b", "c", "d"), image_size=64).eval()
learner.load_state_dict(torch.load(state_path, weights_only=True))
dataset = AnomalyDetectionDataset(root, ["dome", "ring"], "test", image_size=64, object_ids={"dome": 0, "ring": 1})
torch.save(learner.anomaly_map(collate([dataset[i] for i in range(6)])), out_path)
"""


def test_saved_learner_reloads_in_a_new_process_with_identical_maps(tiny_dataset, tmp_path):
    learner = fitted_learner(tiny_dataset, reweighting=True)
    learner.fit([batch_of(tiny_dataset, ["ring"])])
    torch.save(learner.state_dict(), tmp_path / "state.pt")
    expected = learner.anomaly_map(batch_of(tiny_dataset, ["dome", "ring"], split="test"))
    subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(tiny_dataset), str(tmp_path / "state.pt"), str(tmp_path / "maps.pt")],
        check=True,
        cwd=REPO_ROOT,
    )
    assert torch.equal(torch.load(tmp_path / "maps.pt", weights_only=True), expected)


@pytest.mark.parametrize("epochs", [0, 1])
def test_whole_incremental_run_with_patchcore(tiny_run_config, epochs):
    """Epochs 0 (the YAML's) and 1 (skipped: nothing to train) both run; bank sizes are logged per step."""
    tiny_run_config["learner"] = {"name": "patchcore", "coreset_ratio": 0.2}
    tiny_run_config["training"]["epochs"] = epochs
    tiny_run_config["tracking"]["enabled"] = epochs == 0
    result = run_experiment(validate_config(tiny_run_config), show_progress=False)
    # Base step: 2 classes x 6 images x 64 patches x 0.2 -> 154 entries; each of the 2 steps: 1 class -> 77 more.
    assert result.learner.step_report() == {"bank_size/rgb": 308.0, "bank_size/depth": 308.0}
    final = result.matrices.values["i_auroc"][-1]
    # No training, a seeded coreset: the same scores at every run (final mean I-AUROC measured 0.667).
    assert final.shape == (4,) and final.mean() > 0.6, final
    results = json.loads((result.output_dir / "results.json").read_text())
    assert results["summary"] and results["learner_report"] == {"bank_size/rgb": 308.0, "bank_size/depth": 308.0}
    if epochs == 0:
        client = mlflow.MlflowClient(tiny_run_config["tracking"]["tracking_uri"])
        history = client.get_metric_history(result.mlflow_run_id, "bank_size/rgb")
        assert [(m.step, m.value) for m in history] == [(0, 154.0), (1, 231.0), (2, 308.0)]
