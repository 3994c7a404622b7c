"""IB-IUMAD learner: outputs, ablation switches, declared loss terms, and a short run where every loss term falls."""

from __future__ import annotations

import pytest
import torch

from incad.data.dataset import AnomalyDetectionDataset
from incad.resolve import resolve_raw
from incad.data.sample import collate
from incad.errors import ConfigError
from incad.learners.ib_iumad import IBIUMADLearner, IBIUMADOptions
from incad.learners.terms import evaluate_terms

SMALL = dict(hidden_dim=32, num_heads=2, encoder_layers=1, decoder_layers=3, feedforward_dim=64, mamba_state_dim=4)
CLASSES = ["dome", "ring"]
RECONSTRUCTION_TERMS = {"reconstruction/rgb", "reconstruction/depth"}


def batch_of(root, n_per_class=3):
    dataset = AnomalyDetectionDataset(root, CLASSES, "train", image_size=64, object_ids={c: i for i, c in enumerate(CLASSES)})
    per_class = {c: [i for i, r in enumerate(dataset.records) if r.class_name == c][:n_per_class] for c in CLASSES}
    return collate([dataset[i] for indices in per_class.values() for i in indices])


def learner_with(**options) -> IBIUMADLearner:
    return IBIUMADLearner(IBIUMADOptions(**{**SMALL, **options}), modality="rgb+depth", class_names=("a", "b"), image_size=64)


def term_names(learner: IBIUMADLearner) -> set[str]:
    return {term.name for term in learner.loss_terms()}


def test_full_model_outputs_and_loss_terms(tiny_dataset):
    learner = learner_with()
    batch = batch_of(tiny_dataset)
    outputs = learner(batch)
    channels = learner.backbone.out_channels
    assert outputs["rgb/logits"].shape == outputs["depth/logits"].shape == (6, 2)
    assert outputs["fusion/reconstruction"].shape == (6, 16, 2 * channels)
    assert outputs["fusion/fused_logits"].shape == outputs["fusion/bottlenecked_logits"].shape == (6, 2)
    values, _ = evaluate_terms(learner, outputs, batch)
    assert set(values) == RECONSTRUCTION_TERMS | {"fusion", "classifier/rgb", "classifier/depth", "information_bottleneck", "classifier/fused"}
    learner.eval()
    assert learner.anomaly_map(batch).shape == (6, 4, 4)


@pytest.mark.parametrize(
    "mamba, ibfm, expected_terms",
    [
        (False, True, {"fusion", "information_bottleneck", "classifier/fused"}),
        (True, False, {"classifier/rgb", "classifier/depth"}),
        (False, False, set()),
    ],
)
def test_table5_ablations_remove_their_modules_and_terms(tiny_dataset, mamba, ibfm, expected_terms):
    learner = learner_with(mamba=mamba, ibfm=ibfm)
    assert hasattr(learner, "mamba_decoders") == mamba
    assert hasattr(learner, "ibfm") == ibfm
    assert term_names(learner) == RECONSTRUCTION_TERMS | expected_terms
    outputs = learner(batch_of(tiny_dataset))
    assert ("rgb/logits" in outputs) == mamba and ("fusion/reconstruction" in outputs) == ibfm


def test_zero_weight_switches_a_term_off_and_single_modality_has_no_ibfm():
    assert "information_bottleneck" not in term_names(learner_with(information_bottleneck_weight=0))
    assert "fusion" not in term_names(learner_with(fusion_weight=0))
    rgb_only = IBIUMADLearner(IBIUMADOptions(**SMALL), modality="rgb", class_names=("a", "b"), image_size=64)
    assert not rgb_only.use_ibfm and term_names(rgb_only) == {"reconstruction/rgb", "classifier/rgb"}


def test_ibfm_refuses_a_layer_count_where_its_two_depths_coincide(tiny_run_config):
    tiny_run_config["learner"] = {"name": "ib_iumad", **SMALL, "decoder_layers": 2}
    with pytest.raises(ConfigError, match="learner.decoder_layers"):
        resolve_raw(tiny_run_config)
    tiny_run_config["learner"]["ibfm"] = False
    assert resolve_raw(tiny_run_config).learner.options.decoder_layers == 2


@pytest.mark.parametrize("decoder_layers", [3, 4])
def test_ibfm_fuses_the_states_after_layer_two_and_after_the_last_layer(tiny_dataset, decoder_layers):
    """Eq. 4: rec2 and rec4 are two different tensors, the MRN's states after layer 2 and after its last layer."""
    learner = learner_with(decoder_layers=decoder_layers)
    decoded: dict[str, list[torch.Tensor]] = {}
    for modality, reconstructor in learner.reconstructors.items():
        def recording_decode(*args, _decode=reconstructor.decode, _modality=modality):
            decoded[_modality] = _decode(*args)
            return decoded[_modality]
        reconstructor.decode = recording_decode
    fused_inputs = {}
    learner.ibfm.register_forward_pre_hook(lambda module, args, kwargs: fused_inputs.update(kwargs), with_kwargs=True)
    learner(batch_of(tiny_dataset))
    for modality in ("rgb", "depth"):
        states = decoded[modality]
        assert len(states) == decoder_layers
        assert fused_inputs[f"{modality}_rec2"] is states[1]
        assert fused_inputs[f"{modality}_rec4"] is states[-1]
        assert not torch.allclose(fused_inputs[f"{modality}_rec2"], fused_inputs[f"{modality}_rec4"])


def test_ablation_and_fusion_yamls_are_valid():
    from pathlib import Path

    from incad.config import load_config

    folder = Path(__file__).resolve().parents[1] / "experiments" / "ablations"
    fusions = {load_config(path).learner_options().get("fusion") for path in folder.glob("table6_*.yaml")}
    assert fusions == {"add", "concat_fc", "linear_glu", "cross_attention"}
    switches = {(load_config(p).learner_options()["mamba"], load_config(p).learner_options()["ibfm"]) for p in folder.glob("table5_*.yaml")}
    assert switches == {(True, True), (True, False), (False, True), (False, False)}


def test_every_loss_term_decreases_in_a_short_run(tiny_dataset):
    """Each term of eq. 10 falls when optimised. Phase A trains every term but the IB KL
    (which starts near 0 because both heads predict uniformly at initialisation, and grows
    as the classifiers learn); phase B then optimises the KL, which must fall."""
    torch.manual_seed(0)
    learner = learner_with(dropout=0.0, bottleneck_dropout=0.0, jitter_scale=5.0)
    batch = batch_of(tiny_dataset)
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=3e-3)

    def terms() -> dict[str, torch.Tensor]:
        outputs = learner(batch)
        return {term.name: term.weight * term.compute(outputs, batch) for term in learner.loss_terms()}

    def run(steps: int, optimised: set[str]) -> dict[str, list[float]]:
        history: dict[str, list[float]] = {}
        for _ in range(steps):
            values = terms()
            optimizer.zero_grad()
            sum(v for k, v in values.items() if k in optimised).backward()
            optimizer.step()
            for name, value in values.items():
                history.setdefault(name, []).append(value.item())
        return history

    learner.train()
    all_terms = set(terms())
    assert all_terms == {"reconstruction/rgb", "reconstruction/depth", "fusion", "classifier/rgb", "classifier/depth", "classifier/fused", "information_bottleneck"}
    phase_a = run(30, all_terms - {"information_bottleneck"})
    for name in all_terms - {"information_bottleneck"}:
        start, end = sum(phase_a[name][:3]) / 3, sum(phase_a[name][-3:]) / 3
        assert end < 0.8 * start, (name, start, end)
    phase_b = run(15, {"information_bottleneck"})["information_bottleneck"]
    assert phase_b[0] > 0.01 and sum(phase_b[-3:]) / 3 < 0.8 * phase_b[0], phase_b


def test_registered_and_configurable_by_name(tiny_run_config):
    tiny_run_config["learner"] = {"name": "ib_iumad", "fusion": "linear_glu", "mamba": False}
    run = resolve_raw(tiny_run_config)
    assert run.config.learner.name == "ib_iumad"
    tiny_run_config["learner"]["fusion"] = "sum"
    with pytest.raises(ConfigError, match="learner.fusion"):
        resolve_raw(tiny_run_config)
