"""Text-guided learner: GACM's gate (eq. 3), top-k routing, prompts and the offline text encoder, masking, eq. 16, a run and predict."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from training_helpers import losses_over_steps

from incad.config import validate_config
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.sample import collate
from incad.errors import ConfigError
from incad.evaluation.postprocess import image_scores, upsample_and_smooth
from incad.learners import create_learner
from incad.learners.terms import evaluate_terms
from incad.learners.text_guided import TextGuidedLearner, TextGuidedOptions
from incad.learners.text_guided.gacm import GeometryAwareMapper
from incad.learners.text_guided.octa import TopKMixtureOfExperts
from incad.models.text import (
    NORMAL_STATE_DESCRIPTORS,
    PROMPT_TEMPLATES,
    normal_state_prompts,
    prompt_embeddings,
    readable_class_name,
)
from incad.resolve import resolve_raw
from incad.runner import run_experiment
from incad.strategies.registry import create_strategy

SMALL = TextGuidedOptions(hidden_dim=32, expert_hidden_dim=32, num_experts=3, top_k=2, dropout=0.0)
CLASSES = ("dome", "ring")


def learner_of(**options) -> TextGuidedLearner:
    torch.manual_seed(0)
    return TextGuidedLearner(SMALL.model_copy(update=options), modality="rgb+depth", class_names=CLASSES, image_size=64)


def batch_of(root, classes=("dome",), n=4, split="train"):
    dataset = AnomalyDetectionDataset(root, list(classes), split, image_size=64, object_ids={c: i for i, c in enumerate(CLASSES)})
    return collate([dataset[i] for i in range(n)])


def with_hole(batch):
    """The batch with the top-left 32x32 quarter of every image without 3-D points."""
    batch.valid = batch.valid.clone()
    batch.valid[:, :32, :32] = False
    batch.xyz = batch.xyz * batch.valid[:, None]
    return batch


def test_gate_is_in_unit_interval_and_fuses_as_eq_3():
    torch.manual_seed(0)
    mapper = GeometryAwareMapper(6, 5)
    features = torch.randn(2, 7, 6) * 10
    parts = mapper.gated_fusion(features)
    gate = parts["gate"]
    assert ((gate >= 0) & (gate <= 1)).all() and gate.shape == (2, 7, 5)
    semantic, geometric = features @ mapper.semantic.weight.T + mapper.semantic.bias, features @ mapper.geometric.weight.T + mapper.geometric.bias
    expected_gate = torch.sigmoid(geometric @ mapper.gate.weight.T + mapper.gate.bias)
    torch.testing.assert_close(gate, expected_gate)
    torch.testing.assert_close(parts["fused"], geometric * expected_gate + semantic * (1 - expected_gate))
    expected = features @ mapper.residual.weight.T + mapper.residual.bias + torch.nn.functional.gelu(torch.nn.functional.layer_norm(parts["fused"], (5,), mapper.norm.weight, mapper.norm.bias))
    torch.testing.assert_close(mapper(features), expected)


def test_top_k_routing_uses_exactly_k_experts_per_input():
    torch.manual_seed(0)
    moe = TopKMixtureOfExperts(dim=8, num_experts=5, top_k=2, hidden_dim=16)
    inputs = torch.randn(3, 7, 8)
    weights = moe.routing(inputs.reshape(-1, 8))
    assert ((weights > 0).sum(dim=1) == 2).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(21))
    seen_rows = []
    for expert in moe.experts:
        expert.register_forward_hook(lambda module, args, output: seen_rows.append(len(args[0])))
    output = moe(inputs)
    assert sum(seen_rows) == 2 * 21  # every input went through exactly two experts
    flat = inputs.reshape(-1, 8)
    expected = sum(weights[:, [e]] * moe.experts[e](flat) for e in range(5))
    torch.testing.assert_close(output, expected.reshape(3, 7, 8))


def test_options_refuse_top_k_above_the_expert_count_and_both_weights_zero():
    with pytest.raises(ValueError, match="top_k"):
        TextGuidedOptions(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="alpha and beta"):
        TextGuidedOptions(alpha=0, beta=0)


def test_prompts_are_built_for_every_class():
    names = ["dome", "cable_gland", "CandyCane"]
    assert [readable_class_name(n) for n in names] == ["dome", "cable gland", "candy cane"]
    prompts = normal_state_prompts("cable_gland")
    assert len(prompts) == len(NORMAL_STATE_DESCRIPTORS) * len(PROMPT_TEMPLATES) == len(set(prompts))
    assert "a photo of a flawless cable gland." in prompts and "a photo of the cable gland without defect." in prompts
    embeddings = prompt_embeddings(names)
    assert embeddings.shape == (3, len(prompts), 384)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3, len(prompts)))


def test_different_class_names_give_different_embeddings():
    dome, ring = prompt_embeddings(["dome", "ring"])
    assert (dome - ring).norm(dim=-1).min() > 0.1
    same = (dome * dome).sum(-1).mean()
    across = (dome * ring).sum(-1).mean()
    assert across < same - 0.1


ENCODE_TWICE = """
import socket, torch
def refuse(*args, **kwargs):
    raise OSError("networking is disabled in this test")
socket.socket.connect = refuse
socket.create_connection = refuse
from incad.models.text import MiniLMEncoder
first = MiniLMEncoder().encode(["a photo of a flawless dome."])
second = MiniLMEncoder().encode(["a photo of a flawless dome."])
assert torch.equal(first, second), (first - second).abs().max()
print("offline-ok", first.shape[-1], round(float(first.norm()), 6))
"""


def test_encoder_is_offline_and_gives_the_same_embedding_twice(tmp_path):
    """Two fresh encoders in a new process without network (``unshare -rn`` where allowed, sockets refused in any case)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-c", ENCODE_TWICE]
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True, check=False).returncode == 0:
        command = [unshare, "-rn", *command]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "offline-ok 384 1.0" in completed.stdout


def test_open_clip_without_weights_is_a_clear_error():
    with pytest.raises(ConfigError, match="learner.clip_weights"):
        TextGuidedLearner(SMALL.model_copy(update={"text_encoder": "open_clip"}), modality="rgb+depth", class_names=CLASSES, image_size=64)


def test_valid_mask_removes_background_from_loss_and_map(tiny_dataset):
    learner = learner_of().eval()
    batch = with_hole(batch_of(tiny_dataset, split="test"))
    maps = learner.anomaly_map(batch)
    assert maps.shape == (4, 4, 4)
    assert (maps[:, :2, :2] == 0).all() and (maps[:, 2:, 2:] > 0).all()
    outputs = learner(batch)
    losses, _ = evaluate_terms(learner, outputs, batch)
    assert set(losses) == {"mapping/2d_to_3d", "mapping/3d_to_2d", "text/rgb", "text/3d"}
    invalid = ~outputs["valid"]
    noisy = dict(outputs)
    for key in ("3d/predicted", "2d/predicted", "2d/text", "3d/text"):
        noisy[key] = outputs[key] + 50 * torch.randn_like(outputs[key]) * invalid[..., None]
    noisy_losses, _ = evaluate_terms(learner, noisy, batch)
    for name, value in losses.items():
        assert noisy_losses[name].item() == pytest.approx(value.item(), rel=1e-6), name


def test_alpha_or_beta_zero_leaves_only_the_other_map(tiny_dataset):
    batch = batch_of(tiny_dataset, split="test")
    full = learner_of().eval()
    with torch.no_grad():
        parts = full.part_maps(batch)
        visual_only = learner_of(beta=0.0).eval().anomaly_map(batch)
        text_only = learner_of(alpha=0.0).eval().anomaly_map(batch)
        both = full.anomaly_map(batch)
    valid = parts["valid"]
    assert parts["text"][valid].std() > 0 and parts["visual"][valid].std() > 0
    torch.testing.assert_close(visual_only.flatten(1), 0.5 * parts["visual"] * valid)
    torch.testing.assert_close(text_only.flatten(1), 0.5 * parts["text"] * valid)
    torch.testing.assert_close(both, visual_only + text_only)


def test_lambda_zero_removes_its_term_and_the_text_map_follows_the_class(tiny_dataset):
    assert {t.name for t in learner_of(lambda_v2t=0.0, lambda_g2t=0.0).loss_terms()} == {"mapping/2d_to_3d", "mapping/3d_to_2d"}
    assert {t.name for t in learner_of(lambda_v2g=0.0).loss_terms()} == {"mapping/3d_to_2d", "text/rgb", "text/3d"}
    learner = learner_of().eval()
    batch = batch_of(tiny_dataset, split="test")
    with torch.no_grad():
        as_dome = learner.part_maps(batch)["text"]
        batch.object_id = torch.ones_like(batch.object_id)
        as_ring = learner.part_maps(batch)["text"]
        batch.object_id = torch.full_like(batch.object_id, -1)
        learner.seen_objects[1] = True  # only ring is known: an unknown class is scored against ring's anchor
        unknown = learner.part_maps(batch)["text"]
    assert not torch.allclose(as_dome, as_ring)
    torch.testing.assert_close(unknown, as_ring)


def test_a_few_steps_lower_both_losses(tiny_dataset):
    learner = learner_of()
    batch = batch_of(tiny_dataset, n=6)
    before, _ = evaluate_terms(learner, learner(batch), batch)
    losses_over_steps(learner, batch, steps=30)
    after, _ = evaluate_terms(learner, learner(batch), batch)
    for name in before:
        assert after[name] < 0.5 * before[name], name


def test_non_finite_gradients_skip_the_update(tiny_run_config):
    run = resolve_raw({**tiny_run_config, "learner": {"name": "text_guided", "hidden_dim": 16, "expert_hidden_dim": 16}})
    learner = create_learner(run, run.config.scenario.classes)
    strategy = create_strategy(run, learner, [], torch.device("cpu"))
    strategy.optimizer = torch.optim.SGD(learner.parameters(), lr=0.1)
    before = [p.detach().clone() for p in learner.parameters()]
    for parameter in learner.parameters():
        parameter.grad = torch.ones_like(parameter)
    next(learner.octa.parameters()).grad[..., 0] = math.nan
    strategy.optimizer_step()
    assert all(torch.equal(p, b) for p, b in zip(learner.parameters(), before))
    next(learner.octa.parameters()).grad.fill_(1.0)
    strategy.optimizer_step()
    assert not any(torch.equal(p, b) for p, b in zip(learner.parameters(), before))


def test_two_step_run_and_predict_through_the_registry(tiny_run_config, tiny_dataset, tmp_path):
    tiny_run_config["learner"] = {"name": "text_guided", "hidden_dim": 32, "expert_hidden_dim": 32}
    tiny_run_config["tracking"]["registry"] = {"enabled": True, "model_name": "tiny-text"}
    result = run_experiment(validate_config(tiny_run_config), show_progress=False)
    assert result.matrices.values["p_auroc"].shape == (3, 4)
    assert all(math.isfinite(v) for v in result.matrices.values["i_auroc"][-1])
    assert result.learner.seen_objects.all()
    out = tmp_path / "predictions"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tiny_run_config["tracking"]["tracking_uri"]}
    for name, extra in (("dome", ["--object", "dome"]), ("unknown", [])):
        completed = subprocess.run(
            [sys.executable, "-m", "incad.cli", "predict", "--model", "models:/tiny-text/latest", str(tiny_dataset / "dome" / "test"), "--out", str(out / name), *extra],
            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path, check=False,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
    # With the class given, the registered model scores dome's test images as the run did (same maps, same class anchor).
    learner = result.learner.cpu().eval()
    dataset = AnomalyDetectionDataset(tiny_dataset, ["dome"], "test", image_size=64, object_ids={"dome": 0})
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        expected = image_scores(upsample_and_smooth(learner.anomaly_map(batch), (64, 64), result.config.evaluation.smoothing_sigma))
    records = {r["image"]: r["score"] for r in json.loads((out / "dome" / "scores.json").read_text())["images"]}
    assert [records[p] for p in batch.path] == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-6)
    completed = subprocess.run(
        [sys.executable, "-m", "incad.cli", "predict", "--model", "models:/tiny-text/latest", str(tiny_dataset / "dome" / "test"), "--out", str(out / "bad"), "--object", "teapot"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path, check=False,
    )
    assert completed.returncode == 2 and "teapot" in completed.stderr and "dome" in completed.stderr
