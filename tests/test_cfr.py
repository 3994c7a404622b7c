"""CFR: cycle terms, the growing crossmodal memory, confidence-bounded replacement, and a save/load round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from training_helpers import losses_over_steps

from incad.config import validate_config
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.sample import collate
from incad.learners.cfm import CFMLearner
from incad.learners.cfr import CFRLearner, CFROptions
from incad.learners.cfr.memory import attend
from incad.learners.features import valid_tokens
from incad.learners.terms import evaluate_terms
from incad.runner import run_experiment

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = CFROptions(hidden_dim=32, max_memory_per_step=40)


def batch_of(root, name="dome", n=4, split="train"):
    dataset = AnomalyDetectionDataset(root, [name], split, image_size=64, object_ids={name: 0})
    return collate([dataset[i] for i in range(n)])


def calibrated(root, options=SMALL):
    torch.manual_seed(0)
    learner = CFRLearner(options, modality="rgb+depth", class_names=("a", "b"), image_size=64).eval()
    learner.calibrate([batch_of(root)])
    return learner


def test_cycle_terms_vanish_for_an_identity_pair_and_not_otherwise(tiny_dataset):
    torch.manual_seed(0)
    learner = CFRLearner(SMALL, modality="rgb+depth", class_names=("a",), image_size=64)
    batch = batch_of(tiny_dataset)
    values, _ = evaluate_terms(learner, learner(batch), batch)
    assert set(values) == {"mapping/2d_to_3d", "mapping/3d_to_2d", "cycle/2d", "cycle/3d"}
    assert values["cycle/2d"] > 1e-3 and values["cycle/3d"] > 1e-3
    learner.map_2d_to_3d, learner.map_3d_to_2d = nn.Identity(), nn.Identity()
    values, _ = evaluate_terms(learner, learner(batch), batch)
    assert values["cycle/2d"].item() == pytest.approx(0.0, abs=1e-6)
    assert values["cycle/3d"].item() == pytest.approx(0.0, abs=1e-6)


WEIGHTS = {
    "mapping/2d_to_3d": "mapping_2d_to_3d_weight",
    "mapping/3d_to_2d": "mapping_3d_to_2d_weight",
    "cycle/2d": "cycle_2d_weight",
    "cycle/3d": "cycle_3d_weight",
}


def test_each_term_has_its_own_weight_and_zero_leaves_it_out(tiny_dataset):
    batch = batch_of(tiny_dataset)
    torch.manual_seed(0)
    learner = CFRLearner(SMALL, modality="rgb+depth", class_names=("a",), image_size=64)
    values, total = evaluate_terms(learner, learner(batch), batch)
    for name, option in WEIGHTS.items():
        learner.options = SMALL.model_copy(update={option: 0.0})
        assert [term.name for term in learner.loss_terms()] == [other for other in WEIGHTS if other != name]
        _, without = evaluate_terms(learner, learner(batch), batch)
        torch.testing.assert_close(without, total - values[name])
        learner.options = SMALL.model_copy(update={option: 3.0})
        _, tripled = evaluate_terms(learner, learner(batch), batch)
        torch.testing.assert_close(tripled, total + 2 * values[name])
    learner.options = SMALL.model_copy(update={"cycle_2d_weight": 0.0})
    outputs = learner(batch)
    assert "2d/cycled" not in outputs and "3d/cycled" in outputs


def test_training_lowers_the_loss(tiny_dataset):
    torch.manual_seed(0)
    learner = CFRLearner(SMALL, modality="rgb+depth", class_names=("a",), image_size=64)
    losses = losses_over_steps(learner, batch_of(tiny_dataset, n=6), steps=30)
    assert losses[-1] < 0.5 * losses[0]


def test_memory_extension_keeps_old_entries_and_grows_by_the_step_count(tiny_dataset):
    learner = calibrated(tiny_dataset, SMALL.model_copy(update={"max_memory_per_step": 10_000}))
    first = batch_of(tiny_dataset)
    assert len(learner.memory_2d) == int(valid_tokens(first, learner.grid).sum())
    old_2d, old_3d = learner.memory_2d.clone(), learner.memory_3d.clone()
    second = batch_of(tiny_dataset, "ring", n=3)
    learner.calibrate([second])
    added = int(valid_tokens(second, learner.grid).sum())
    assert len(learner.memory_2d) == len(old_2d) + added and len(learner.memory_3d) == len(old_3d) + added
    assert torch.equal(learner.memory_2d[: len(old_2d)], old_2d) and torch.equal(learner.memory_3d[: len(old_3d)], old_3d)
    capped = calibrated(tiny_dataset)
    capped.calibrate([second])
    assert len(capped.memory_2d) == 2 * SMALL.max_memory_per_step
    assert capped.step_report() == {"memory_size": 2.0 * SMALL.max_memory_per_step}


def test_attention_weights_the_top_k_values_and_chunks_give_the_same_result():
    torch.manual_seed(0)
    keys, values, queries = torch.randn(50, 8), torch.randn(50, 5), torch.randn(30, 8)
    nearest = (torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(keys, dim=-1).T).argmax(dim=1)
    torch.testing.assert_close(attend(queries, keys, values, top_k=1, temperature=0.1), values[nearest])
    whole = attend(queries, keys, values, top_k=4, temperature=0.1)
    torch.testing.assert_close(attend(queries, keys, values, top_k=4, temperature=0.1, budget=60), whole)
    with pytest.raises(ValueError, match="memory is empty"):
        attend(queries, keys[:0], values[:0], top_k=4, temperature=0.1)


def test_replacement_changes_only_tokens_below_the_confidence_bound(tiny_dataset):
    learner = calibrated(tiny_dataset)
    batch = batch_of(tiny_dataset, split="test")
    with torch.no_grad():
        outputs = learner(batch)
        confidence = learner.replace_low_confidence(outputs)["3d/confidence"][outputs["valid"]]
        learner.options = SMALL.model_copy(update={"replace_below": float(confidence.median())})
        replaced = learner.replace_low_confidence(outputs)
    for target in ("2d", "3d"):
        changed = (replaced[f"{target}/predicted"] != outputs[f"{target}/predicted"]).any(dim=-1)
        below = outputs["valid"] & (replaced[f"{target}/confidence"] < learner.options.replace_below)
        assert torch.equal(changed, below)
    assert below.any() and (outputs["valid"] & ~below).any()


def test_without_retrieval_cfr_is_its_mapping_alone(tiny_dataset):
    learner = calibrated(tiny_dataset, SMALL.model_copy(update={"retrieval": False, "replace_below": 1.0}))
    batch = batch_of(tiny_dataset, split="test")
    with torch.no_grad():
        outputs = learner(batch)
        replaced = learner.replace_low_confidence(outputs)
        assert torch.equal(replaced["2d/predicted"], outputs["2d/predicted"]) and torch.equal(replaced["3d/predicted"], outputs["3d/predicted"])
        assert torch.equal(learner.anomaly_map(batch), CFMLearner.anomaly_map(learner, batch))
        learner.options = SMALL.model_copy(update={"replace_below": 1.0})
        assert not torch.equal(learner.anomaly_map(batch), CFMLearner.anomaly_map(learner, batch))


RELOAD_SCRIPT = """
import json, sys, torch
from incad.config import validate_config
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.sample import collate
from incad.learners import create_learner
from incad.resolve import resolve
config_path, state_path, root, out_path = sys.argv[1:5]
config = validate_config(json.loads(open(config_path).read()))
learner = create_learner(resolve(config), config.scenario.classes).eval()
learner.load_state_dict(torch.load(state_path, weights_only=True))
dataset = AnomalyDetectionDataset(root, ["wave"], "test", image_size=64, object_ids={"wave": 0})
with torch.no_grad():
    torch.save(learner.anomaly_map(collate([dataset[i] for i in range(4)])), out_path)
"""


def test_two_step_run_reloads_in_a_new_process_with_the_same_maps(tiny_run_config, tiny_dataset, tmp_path):
    tiny_run_config["learner"] = {"name": "cfr", "hidden_dim": 32, "max_memory_per_step": 50}
    tiny_run_config["tracking"]["enabled"] = False
    result = run_experiment(validate_config(tiny_run_config), show_progress=False)
    trained = result.learner.cpu().eval()
    assert len(trained.memory_2d) == 3 * 50 and int(trained.memory_steps) == 3  # base experience + 2 steps
    (tmp_path / "config.json").write_text(json.dumps(tiny_run_config))
    torch.save(trained.state_dict(), tmp_path / "state.pt")
    with torch.no_grad():
        expected = trained.anomaly_map(batch_of(tiny_dataset, "wave", n=4, split="test"))
    arguments = [str(tmp_path / name) for name in ("config.json", "state.pt")] + [str(tiny_dataset), str(tmp_path / "maps.pt")]
    subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, *arguments], check=True, cwd=REPO_ROOT)
    reloaded = torch.load(tmp_path / "maps.pt", weights_only=True)
    assert expected.abs().max() > 0
    torch.testing.assert_close(reloaded, expected, atol=1e-6, rtol=0)
