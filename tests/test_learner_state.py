"""Every registered learner restores into a freshly built one: after a kill (``--resume``), from its state dict
and from the model registry (``incad predict``'s loader).

Parametrised over the learner registry, so a learner added later is covered
the moment it is registered: it only needs a line in ``TINY_OPTIONS`` (a test
fails until it has one). Learners whose state grows (codebooks, memory banks)
are the reason this exists: a buffer that starts empty must load its grown
shape (``incad.models.layers.growing``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin

from incad.config import validate_config
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.sample import collate
from incad.evaluation.results import METRICS
from incad.models.layers.growing import growing_buffer_names
from incad.learners import LEARNERS, create_learner
from incad.resolve import resolve
from incad.runner import run_experiment
from incad.tracking.anomaly_model import load_registered_model

CLASSES = ["dome", "ring", "brick"]
# Small options per registered learner, so a 64-px two-step run takes seconds.
TINY_OPTIONS: dict[str, dict] = {
    "reconstruction": {"hidden_dim": 32, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "feedforward_dim": 64},
    "ib_iumad": {"hidden_dim": 32, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 3, "feedforward_dim": 64, "mamba_state_dim": 4},
    "rlr": {"hidden_dims": [16, 16], "num_blocks": 1, "num_heads": 2, "feedforward_ratio": 2, "windows": [3, 3]},
    "cfm": {"hidden_dim": 32},
    "cfr": {"hidden_dim": 32, "max_memory_per_step": 64},
    "patchcore": {"coreset_ratio": 0.25},
    "uni_rcm": {"hidden_dim": 32, "num_blocks": 1, "codes_per_fit_2d": 16, "codes_per_fit_3d": 8, "quantizer_levels": 3},
    "text_guided": {"hidden_dim": 32, "expert_hidden_dim": 32, "num_experts": 3, "top_k": 2},
}


class SimulatedCrash(RuntimeError):
    """Stands for a kill: raised when training of step 1 starts."""


class CrashAtStepOne(SupervisedPlugin):
    def before_training_exp(self, strategy, **kwargs) -> None:
        if strategy.experience.current_experience == 1:
            raise SimulatedCrash("killed before step 1")


def test_every_registered_learner_has_tiny_options():
    missing = sorted(set(LEARNERS.names()) - set(TINY_OPTIONS))
    assert not missing, f"add small options for {missing} to TINY_OPTIONS so their reload is tested"


@pytest.fixture(scope="module", params=LEARNERS.names())
def runs(request, tiny_dataset, tmp_path_factory):
    """One learner: an uninterrupted two-step run, and the same run killed before step 1 and resumed."""
    name = request.param
    folder = tmp_path_factory.mktemp(f"state-{name}")
    raw = {
        "seed": 2,
        "output_dir": str(folder / "outputs"),
        "dataset": {"name": "mvtec3d", "root": str(tiny_dataset), "image_size": 64},
        "scenario": {"classes": CLASSES, "base": 2, "increment": 1, "steps": 1, "modality": "rgb+depth"},
        "learner": {"name": name, **TINY_OPTIONS.get(name, {})},
        "training": {"epochs": 1, "batch_size": 4},
        "evaluation": {"batch_size": 8},
        "tracking": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "state"},
    }
    registry = {**raw["tracking"], "registry": {"enabled": True, "model_name": f"state-{name}"}}
    uninterrupted = run_experiment(validate_config({**raw, "name": "uninterrupted", "tracking": registry}), show_progress=False)
    interrupted = validate_config({**raw, "name": "interrupted"})
    with pytest.raises(SimulatedCrash):
        run_experiment(interrupted, show_progress=False, extra_plugins=(CrashAtStepOne(),))
    resumed = run_experiment(interrupted, show_progress=False, resume=True)
    return {"name": name, "uninterrupted": uninterrupted, "resumed": resumed, "tracking_uri": raw["tracking"]["tracking_uri"]}


def test_resume_equals_the_uninterrupted_run(runs):
    for metric in METRICS:
        expected = runs["uninterrupted"].matrices.values[metric]
        assert np.isfinite(expected[-1]).all(), metric
        np.testing.assert_allclose(runs["resumed"].matrices.values[metric], expected, atol=1e-6, equal_nan=True, err_msg=metric)
    expected_state, resumed_state = runs["uninterrupted"].learner.state_dict(), runs["resumed"].learner.state_dict()
    assert expected_state.keys() == resumed_state.keys()
    for key, value in expected_state.items():
        torch.testing.assert_close(resumed_state[key], value, atol=1e-6, rtol=0, msg=key)


def test_trained_learner_loads_into_a_fresh_one(runs, tiny_dataset):
    trained = runs["uninterrupted"].learner.cpu().eval()
    state = trained.state_dict()
    for key in growing_buffer_names(trained):
        assert state[key].shape[0] > 0, f"{key} grew during training"
    fresh = create_learner(resolve(runs["uninterrupted"].config), CLASSES).eval()
    fresh.load_state_dict(state)
    registered = load_registered_model(f"models:/state-{runs['name']}/latest", tracking_uri=runs["tracking_uri"]).learner
    dataset = AnomalyDetectionDataset(tiny_dataset, CLASSES, "test", image_size=64, object_ids={c: i for i, c in enumerate(CLASSES)})
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        expected = trained.anomaly_map(batch)
        torch.testing.assert_close(fresh.anomaly_map(batch), expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(registered.anomaly_map(batch), expected, atol=1e-6, rtol=1e-5)
