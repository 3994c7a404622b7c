"""Every continual strategy trains on a tiny 2-1 with 2 steps scenario and builds its specific state."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin

from incad.data.sample import Batch
from incad.errors import ConfigError
from incad.learners.base import Learner
from incad.plugins.contract import PluginHost, eval_pass
from incad.plugins.distillation import ReconstructionDistillationPlugin
from incad.plugins.importance import EWCPlugin, MASPlugin, SynapticIntelligence
from incad.plugins.iuf import IUFPlugin
from incad.plugins.rehearsal import ReplayBufferPlugin
from incad.learners import create_learner
from incad.resolve import load_run, resolve_raw
from incad.runner import prepare_data, run_experiment, seed_everything
from incad.scenario import build_scenario
from incad.strategies import STRATEGIES, create_strategy
from incad.strategies.iuf import IUF
from test_resume import CrashAtStep, SimulatedCrash

REPO_ROOT = Path(__file__).resolve().parents[1]
IB_IUMAD_SMALL = dict(name="ib_iumad", hidden_dim=32, num_heads=2, encoder_layers=1, decoder_layers=3, feedforward_dim=64, mamba_state_dim=4)


@dataclass
class Recorder(SupervisedPlugin):
    """Keeps, per training iteration, the step, the loss terms and the batch's object ids; per step, the training set's ids."""

    iterations: list[tuple[int, dict[str, float], list[int]]] = field(default_factory=list)
    step_objects: list[set[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def before_training_exp(self, strategy, **kwargs) -> None:
        self.step_objects.append({int(t) for t in strategy.adapted_dataset.targets})

    def after_training_iteration(self, strategy, **kwargs) -> None:
        assert isinstance(strategy.mbatch, Batch)
        self.iterations.append((strategy.clock.train_exp_counter, dict(strategy.loss_terms), strategy.mbatch.object_id.tolist()))

    def terms(self, step: int, name: str) -> list[float]:
        return [terms[name] for exp, terms, _ in self.iterations if exp == step and name in terms]


@dataclass
class Trained:
    strategy: object
    recorder: Recorder
    num_steps: int

    def plugin(self, kind: type):
        return next(p for p in self.strategy.plugins if isinstance(p, kind))


def train(raw: dict, strategy, learner: dict | None = None) -> Trained:
    """Train every step of the scenario (no evaluation: the strategies' state is what is tested here)."""
    raw = {**raw, "strategy": strategy, "tracking": {"enabled": False}, "device": "cpu", "training": {"epochs": 1, "batch_size": 4}}
    if learner is not None:
        raw["learner"] = learner
    run = resolve_raw(raw)
    seed_everything(run.config.seed)
    scenario = run.strategy.factory.adapt_scenario(build_scenario(run.config, prepare_data(run.config)))
    recorder = Recorder()
    strategy = create_strategy(run, create_learner(run, scenario.class_order), [recorder], torch.device("cpu"))
    for experience in scenario.benchmark.train_stream:
        strategy.train(experience)
    return Trained(strategy, recorder, scenario.num_steps)


def test_every_registered_strategy_has_a_valid_yaml(tiny_run_config, tmp_path):
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(str(tiny_run_config).replace("'", '"'))  # JSON is YAML
    for name in STRATEGIES.names():
        run = load_run(scenario, strategy_file=REPO_ROOT / "strategies" / f"{name}.yaml")
        assert run.config.strategy.name == name


def test_unknown_strategy_option_is_named(tiny_run_config):
    tiny_run_config["strategy"] = {"name": "ewc", "wieght": 5}
    with pytest.raises(ConfigError, match="strategy.wieght"):
        resolve_raw(tiny_run_config)
    tiny_run_config["strategy"] = {"name": "replay", "buffer_size": 8, "per_class": 2}
    with pytest.raises(ConfigError, match="per_class"):
        resolve_raw(tiny_run_config)


def test_naive_trains_each_step_on_its_own_classes(tiny_run_config):
    trained = train(tiny_run_config, "naive")
    assert trained.recorder.step_objects == [{0, 1}, {2}, {3}]
    assert all(math.isfinite(sum(terms.values())) for _, terms, _ in trained.recorder.iterations)


def test_joint_runs_one_step_with_every_class(tiny_run_config):
    tiny_run_config.update(strategy="joint", tracking={"enabled": False}, device="cpu")
    result = run_experiment(resolve_raw(tiny_run_config), show_progress=False)
    assert result.scenario.step_classes == [["dome", "ring", "brick", "wave"]]
    i_auroc = result.matrices.values["i_auroc"]
    assert i_auroc.shape == (1, 4) and np.isfinite(i_auroc).all()
    assert math.isnan(result.summary["i_auroc/fm"])  # nothing learned before the last step, nothing to forget


def test_cumulative_trains_on_every_class_seen_so_far(tiny_run_config):
    trained = train(tiny_run_config, "cumulative")
    assert trained.recorder.step_objects == [{0, 1}, {0, 1, 2}, {0, 1, 2, 3}]
    assert {obj for exp, _, ids in trained.recorder.iterations if exp == 2 for obj in ids} == {0, 1, 2, 3}


def buffer_objects(plugin: ReplayBufferPlugin) -> list[int]:
    return sorted(int(t) for t in plugin.storage_policy.buffer.targets)


def test_replay_buffer_is_balanced_over_steps_and_replayed(tiny_run_config):
    trained = train(tiny_run_config, {"name": "replay", "buffer_size": 6, "batch_size_mem": 2})
    replay = trained.plugin(ReplayBufferPlugin)
    objects = buffer_objects(replay)
    assert len(objects) == 6
    assert sum(o in (0, 1) for o in objects) == 2 and objects.count(2) == 2 and objects.count(3) == 2  # 2 per step
    step_two = [ids for exp, _, ids in trained.recorder.iterations if exp == 2]
    assert all(len(ids) == 6 for ids in step_two[:-1])  # 4 current + 2 replayed
    assert {o for ids in step_two for o in ids} & {0, 1, 2}  # earlier classes are in the batches

    fresh = ReplayBufferPlugin(type(replay.storage_policy)(max_size=6))
    fresh.load_state_dict(replay.state_dict())
    fresh.storage_policy.stream = replay.storage_policy.stream
    assert [s.path for s in fresh.storage_policy.buffer] == [s.path for s in replay.storage_policy.buffer]


def test_replay_per_class_keeps_that_many_of_each_class(tiny_run_config):
    trained = train(tiny_run_config, {"name": "replay", "per_class": 2})
    assert buffer_objects(trained.plugin(ReplayBufferPlugin)) == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize(("name", "kind"), [("ewc", EWCPlugin), ("mas", MASPlugin)])
def test_importance_is_estimated_and_penalises_later_steps(tiny_run_config, name, kind):
    trained = train(tiny_run_config, name)
    plugin = trained.plugin(kind)
    importance = torch.cat([value.flatten() for value in plugin.importance.values()])
    assert (importance >= 0).all() and (importance > 0).float().mean() > 0.5
    assert set(plugin.anchor) == set(plugin.importance)
    recorder = trained.recorder
    assert recorder.terms(0, name) == []
    later = recorder.terms(1, name) + recorder.terms(2, name)
    assert later[0] == 0.0 and max(later) > 0  # zero at the anchor, positive once the parameters move


def test_synaptic_intelligence_accumulates_importance(tiny_run_config):
    trained = train(tiny_run_config, "si")
    plugin = trained.plugin(SynapticIntelligence)
    importance = torch.cat([value.flatten() for value in plugin.importance.values()])
    assert (importance >= 0).all() and importance.sum() > 0
    assert trained.recorder.terms(0, "si") == []
    assert max(trained.recorder.terms(2, "si")) > 0

    restored = SynapticIntelligence(weight=1.0, damping=1e-3)
    restored.load_state_dict(plugin.state_dict())
    with torch.no_grad():
        assert float(restored.penalty(trained.strategy.model)) == pytest.approx(float(plugin.penalty(trained.strategy.model)))


def test_lwf_distils_from_the_second_step_on(tiny_run_config):
    trained = train(tiny_run_config, "lwf")
    recorder = trained.recorder
    assert set(recorder.terms(0, "distillation")) == {0.0}
    assert min(recorder.terms(1, "distillation")) > 0 and min(recorder.terms(2, "distillation")) > 0
    assert trained.plugin(ReconstructionDistillationPlugin).previous


def test_iuf_compresses_then_projects_gradients_out_of_the_stored_subspace(tiny_run_config):
    # A loose threshold: with 32 channels and a few rows, IUF's 0.1/C catches no singular value yet.
    trained = train(tiny_run_config, {"name": "iuf", "compression_threshold": 2.0})
    recorder, plugin = trained.recorder, trained.plugin(IUFPlugin)
    assert max(recorder.terms(0, "semantic_compression")) > 0
    assert recorder.terms(1, "semantic_compression") == recorder.terms(2, "semantic_compression") == []
    assert isinstance(trained.strategy.optimizer, torch.optim.SGD)

    layer, projection = plugin.output_layers[0], plugin.projections[0]
    channels = layer.out_features
    _, _, directions = torch.linalg.svd(plugin.stored_features[0], full_matrices=False)
    gradient = torch.randn_like(layer.weight)
    layer.weight.grad = gradient.clone()
    plugin.project_gradients()
    before, after = directions @ gradient, directions @ layer.weight.grad
    assert after[0].abs().max() < 1e-4 * before[0].abs().max()  # the top direction is removed entirely
    for index in (1, 5, channels - 1):
        kept = math.log(index + 1) / math.log(channels)
        assert torch.allclose(after[index], kept * before[index], atol=1e-4)
    assert projection.shape == (channels, channels)


def test_iuf_needs_transformer_decoders():
    with pytest.raises(ConfigError, match="nn.TransformerDecoder"):
        IUF.plugins(IUF.Options(), Learner("rgb", class_names=("object",)))


def test_iuf_serves_ib_iumad(tiny_run_config):
    # SGD at IUF's default 0.01 diverges (NaN) in the incremental step with 3+ decoder layers on this tiny set.
    trained = train(tiny_run_config, {"name": "iuf", "incremental_lr": 0.001}, learner=IB_IUMAD_SMALL)
    plugin = trained.plugin(IUFPlugin)
    assert len(plugin.output_layers) == 6  # 2 modalities x 3 decoder layers
    assert all(features.shape[1] == 32 for features in plugin.stored_features.values())


def test_every_declared_term_and_the_strategy_term_are_logged_by_name(tiny_run_config):
    """IB-IUMAD's eq. 10 terms and its reconstruction terms all go through the template; EWC's penalty joins from step 1."""
    trained = train(tiny_run_config, {"name": "ewc"}, learner=IB_IUMAD_SMALL)
    declared = {term.name for term in trained.strategy.model.loss_terms()}
    assert declared == {
        "reconstruction/rgb", "reconstruction/depth", "fusion", "classifier/rgb", "classifier/depth",
        "information_bottleneck", "classifier/fused",
    }
    names_by_step = [{name for exp, terms, _ in trained.recorder.iterations if exp == step for name in terms} for step in range(2)]
    assert names_by_step == [declared, declared | {"ewc"}]


def test_the_template_provides_what_plugins_may_read(tiny_run_config):
    run = resolve_raw({**tiny_run_config, "device": "cpu"})
    strategy = create_strategy(run, create_learner(run, run.config.scenario.classes), [], torch.device("cpu"))
    assert all(hasattr(strategy, name) for name in [*PluginHost.__annotations__, "loader"])


def test_eval_pass_runs_in_eval_mode_unshuffled_and_restores_the_mode():
    learner = Learner("rgb", class_names=("object",))
    modes_seen: list[bool] = []

    class Item:
        def to(self, device):
            modes_seen.append(learner.training)
            return self

    def loader(batch_size: int, shuffle: bool) -> list[Item]:
        assert not shuffle
        return [Item(), Item()]

    host = SimpleNamespace(model=learner, device=torch.device("cpu"), loader=loader)
    for mode in (True, False):
        learner.train(mode)
        with eval_pass(host, batch_size=4) as batches:
            assert len(list(batches)) == 2
        assert learner.training == mode
    assert modes_seen == [False] * 4


def test_ib_iumad_with_replay_runs_end_to_end(tiny_run_config):
    tiny_run_config.update(learner=IB_IUMAD_SMALL, strategy={"name": "replay", "per_class": 2}, tracking={"enabled": False}, device="cpu")
    result = run_experiment(resolve_raw(tiny_run_config), show_progress=False)
    assert np.isfinite(result.matrices.values["i_auroc"][-1]).all()


@pytest.mark.parametrize("strategy", [{"name": "replay", "buffer_size": 6}, "iuf"])
def test_strategy_state_survives_a_resume(tiny_run_config, strategy):
    tiny_run_config.update(strategy=strategy, tracking={"enabled": False}, device="cpu", training={"epochs": 1, "batch_size": 4})
    uninterrupted = run_experiment(resolve_raw({**tiny_run_config, "name": "whole"}), show_progress=False)
    config = resolve_raw({**tiny_run_config, "name": "killed"})
    with pytest.raises(SimulatedCrash):
        run_experiment(config, show_progress=False, extra_plugins=(CrashAtStep(2),))
    resumed = run_experiment(config, show_progress=False, resume=True)
    for name, matrix in uninterrupted.matrices.values.items():
        np.testing.assert_allclose(resumed.matrices.values[name], matrix, atol=1e-6, err_msg=name)
