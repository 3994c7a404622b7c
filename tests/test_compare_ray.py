"""``incad compare --executor ray`` on a real local Ray (this machine's 2 CPUs) against ``--executor local``."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from incad.compare import RayOptions, run_comparison
from incad.evaluation.results import METRICS

FIGURES = [key for name in METRICS for key in (f"{name}_mean", f"{name}_std", f"{name}_fm_mean", f"{name}_fm_std")]


@pytest.fixture(scope="module")
def comparisons(tiny_dataset, tmp_path_factory):
    """The same 4-combination grid run locally and on Ray; on Ray with a third strategy whose two seeds fail at start."""
    folder = tmp_path_factory.mktemp("compare-ray")
    raw = {
        "name": "grid",
        "output_dir": str(folder / "outputs"),
        "dataset": {"name": "mvtec3d", "root": str(tiny_dataset), "image_size": 64},
        "scenario": {"classes": ["dome", "ring", "brick"], "base": 2, "increment": 1, "steps": 1, "modality": "rgb"},
        "learner": {"name": "reconstruction", "hidden_dim": 32, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "feedforward_dim": 64},
        "training": {"epochs": 1, "batch_size": 8},
        "tracking": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "compare-ray"},
    }
    scenario = folder / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(raw))
    # A valid preset, so the grid's up-front check passes; a file where its runs' output folders go makes both fail at start.
    broken = folder / "broken.yaml"
    broken.write_text(yaml.safe_dump({"name": "naive"}))
    (folder / "outputs").mkdir()
    for seed in (0, 1):
        (folder / "outputs" / f"ray-reconstruction-broken-s{seed}").write_text("not a folder")
    # Each Ray task trains on one torch thread (--cpus-per-run 1); so does the local grid, so that both sum in the same order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_comparison(scenario, strategies=["naive", "replay"], seeds=[0, 1], overrides=["name=local"], show_progress=False)
    finally:
        torch.set_num_threads(threads)
    on_ray = run_comparison(
        scenario, strategies=["naive", "replay", str(broken)], seeds=[0, 1], overrides=["name=ray"], show_progress=False,
        executor="ray", ray_options=RayOptions(cpus_per_run=1),
    )  # fmt: skip
    return {"local": local, "ray": on_ray}


def test_ray_gives_the_local_table(comparisons):
    local = {(row["learner"], row["strategy"]): row for row in comparisons["local"].rows}
    on_ray = {(row["learner"], row["strategy"]): row for row in comparisons["ray"].rows if row["seeds"]}
    assert set(on_ray) == set(local) == {("reconstruction", "naive"), ("reconstruction", "replay")}
    for key, row in local.items():
        assert on_ray[key]["seeds"] == row["seeds"] == 2
        assert on_ray[key]["failed"] == ""
        for figure in FIGURES:
            assert on_ray[key][figure] == pytest.approx(row[figure], abs=1e-6, nan_ok=True), (key, figure)
    for local_run, ray_run in zip(comparisons["local"].runs, comparisons["ray"].runs):
        assert (local_run.strategy, local_run.seed) == (ray_run.strategy, ray_run.seed)
        for name in METRICS:
            np.testing.assert_allclose(ray_run.matrices.values[name], local_run.matrices.values[name], atol=1e-6, equal_nan=True)


def test_the_failing_combination_is_reported_and_the_others_kept(comparisons):
    on_ray = comparisons["ray"]
    assert len(on_ray.runs) == 4
    assert sorted((failure.strategy, failure.seed) for failure in on_ray.failures) == [("broken", 0), ("broken", 1)]
    assert all(failure.error.startswith("OutputError: ") and "ray-reconstruction-broken-s" in failure.error for failure in on_ray.failures)
    (row,) = [row for row in on_ray.rows if row["strategy"] == "broken"]
    assert row["seeds"] == 0 and np.isnan(row["i_auroc_mean"])
    table = (on_ray.output_dir / "comparison.md").read_text()
    assert table.splitlines()[0].endswith("| failed |")
    assert "| reconstruction | broken | 0 |" in table and "s0: OutputError: " in table and "s1: OutputError: " in table
    assert "failed" in (on_ray.output_dir / "comparison.csv").read_text().splitlines()[0]


def test_ray_children_are_nested_runs_of_one_parent_in_the_same_store(comparisons):
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    for comparison in comparisons.values():
        parent = client.get_run(comparison.parent_run_id)
        assert parent.info.status == "FINISHED"
        children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert sorted(run.info.run_id for run in children) == sorted(run.mlflow_run_id for run in comparison.runs)
        assert all(run.info.status == "FINISHED" for run in children)
        assert {"comparison.md", "comparison.csv", "metric_vs_step.png", "heatmap_i_auroc.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    local_plot = (comparisons["local"].output_dir / "heatmap_i_auroc.png").read_bytes()
    assert local_plot == (comparisons["ray"].output_dir / "heatmap_i_auroc.png").read_bytes()


def test_ray_options_need_the_ray_executor(tmp_path, capsys, tiny_run_config):
    from incad.cli import main

    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump({**tiny_run_config, "tracking": {"enabled": False}}))
    assert main(["compare", str(scenario), "--strategies", "naive", "--address", "auto", "--no-progress"]) == 2
    assert "--executor ray" in capsys.readouterr().err
