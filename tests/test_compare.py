"""``incad compare``: a parent MLflow run with a child per combination, the table and the plots."""

from __future__ import annotations

import csv

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from incad.cli import main
from incad.compare import run_comparison
from incad.evaluation.results import METRICS


@pytest.fixture(scope="module")
def comparison(tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    raw = {
        "name": "tiny",
        "output_dir": str(folder / "outputs"),
        "dataset": {"name": "mvtec3d", "root": str(tiny_dataset), "image_size": 64},
        "scenario": {"classes": ["dome", "ring", "brick", "wave"], "base": 2, "increment": 1, "steps": 2, "modality": "rgb"},
        "learner": {"name": "reconstruction", "hidden_dim": 32, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "feedforward_dim": 64},
        "training": {"epochs": 1, "batch_size": 8},
        "tracking": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "compare"},
    }
    scenario = folder / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(raw))
    return run_comparison(scenario, strategies=["naive", "replay"], seeds=[0, 1], show_progress=False)


def test_every_combination_is_a_child_of_one_parent_run(comparison):
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    parent = client.get_run(comparison.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(run.info.run_id for run in children) == sorted(run.mlflow_run_id for run in comparison.runs)
    assert sorted((run.data.params["strategy.name"], run.data.params["seed"]) for run in children) == [("naive", "0"), ("naive", "1"), ("replay", "0"), ("replay", "1")]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "comparison.csv", "metric_vs_step.png", "heatmap_i_auroc.png"} <= artifacts


def test_table_rows_are_seed_means_of_the_runs(comparison):
    rows = {row["strategy"]: row for row in comparison.rows}
    assert set(rows) == {"naive", "replay"}
    for strategy, row in rows.items():
        runs = [run for run in comparison.runs if run.strategy == strategy]
        assert [run.seed for run in runs] == [0, 1]
        for name in METRICS:
            finals = np.array([run.summary[f"{name}/final_mean"] for run in runs])
            assert row[f"{name}_mean"] == pytest.approx(finals.mean())
            assert row[f"{name}_std"] == pytest.approx(finals.std(ddof=1))
            fms = np.array([run.summary[f"{name}/fm"] for run in runs])
            assert row[f"{name}_fm_mean"] == pytest.approx(fms.mean())
        assert row["train_seconds_mean"] == pytest.approx(np.mean([run.train_seconds for run in runs]))
        assert 0 < row["trainable_parameters_m"] < row["parameters_m"]
        assert row["megabytes"] > 0 and row["peak_rss_gib_mean"] > 0.1
    naive_seed0 = next(run for run in comparison.runs if run.strategy == "naive" and run.seed == 0)
    assert naive_seed0.config.name == "tiny-reconstruction-naive-s0"


def test_markdown_csv_and_plots_are_written(comparison):
    table = (comparison.output_dir / "comparison.md").read_text()
    assert table.splitlines()[0].startswith("| learner | strategy | seeds | I-AUROC |")
    naive = comparison.rows[0]
    assert f"{naive['i_auroc_mean']:.3f} ± {naive['i_auroc_std']:.3f}" in table
    with (comparison.output_dir / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["strategy"] for row in rows] == ["naive", "replay"]
    assert float(rows[1]["aupro_1_mean"]) == pytest.approx(comparison.rows[1]["aupro_1_mean"])
    for name in ("metric_vs_step.png", "heatmap_i_auroc.png"):
        assert (comparison.output_dir / name).stat().st_size > 10_000


def test_cli_rejects_an_unknown_strategy(tmp_path, capsys, tiny_run_config):
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump({**tiny_run_config, "tracking": {"enabled": False}}))
    assert main(["compare", str(scenario), "--strategies", "naive,no-such-strategy", "--no-progress"]) == 2
    assert "no-such-strategy" in capsys.readouterr().err


def test_report_of_the_comparison_has_a_column_group_per_run(comparison):
    assert main(["report", str(comparison.output_dir)]) == 0
    with (comparison.output_dir / "report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    labels = [f"{run.strategy} ({run.learner}) s{run.seed}" for run in comparison.runs]
    assert list(dict.fromkeys(row["run"] for row in rows)) == labels
    for run, label in zip(comparison.runs, labels):
        mean = next(row for row in rows if row["run"] == label and row["class"] == "mean")
        assert float(mean["i_auroc"]) == run.summary["i_auroc/final_mean"]
        dome = next(row for row in rows if row["run"] == label and row["class"] == "dome")
        assert float(dome["aupro_30"]) == run.matrices.values["aupro_30"][-1, 0]
    assert (comparison.output_dir / "report.md").read_text().count("FM (↓)") == 4
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    assert "report.tex" in {a.path for a in client.list_artifacts(comparison.parent_run_id)}
