"""``incad report``: the IB-IUMAD Table 1 layout of a run, its numbers those of results.json, logged to the run."""

from __future__ import annotations

import csv
import json
import math

import pytest
from mlflow.tracking import MlflowClient

from incad.cli import main
from incad.config import validate_config
from incad.evaluation.results import METRICS
from incad.runner import run_experiment


@pytest.fixture(scope="module")
def run_folder(tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    raw = {
        "name": "tiny-report",
        "output_dir": str(folder / "outputs"),
        "dataset": {"name": "mvtec3d", "root": str(tiny_dataset), "image_size": 64},
        "scenario": {"classes": ["dome", "ring", "brick", "wave"], "base": 2, "increment": 1, "steps": 2, "modality": "rgb"},
        "learner": {"name": "reconstruction", "hidden_dim": 32, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "feedforward_dim": 64},
        "training": {"epochs": 1, "batch_size": 8},
        "tracking": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "report"},
    }
    result = run_experiment(validate_config(raw), show_progress=False)
    return result


def test_results_json_holds_each_class_final_value_and_drop(run_folder):
    results = json.loads((run_folder.output_dir / "results.json").read_text())
    matrices = run_folder.matrices
    for index, name in enumerate(matrices.class_names):
        for metric in METRICS:
            assert results["per_class"][name][metric] == pytest.approx(matrices.values[metric][-1, index])
    drops = [results["per_class"][name]["i_auroc/fm"] for name in matrices.class_names]
    assert math.isnan(drops[-1])  # wave is learned at the last step: no forgetting
    assert sum(drops[:-1]) / 3 == pytest.approx(results["summary"]["i_auroc/fm"])  # the run's FM is the mean drop
    assert results["mlflow"]["run_id"] == run_folder.mlflow_run_id


def test_report_numbers_equal_results_json_and_are_logged(run_folder, capsys):
    assert main(["report", str(run_folder.output_dir)]) == 0
    results = json.loads((run_folder.output_dir / "results.json").read_text())
    with (run_folder.output_dir / "report.csv").open() as handle:
        rows = {row["class"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["dome", "ring", "brick", "wave", "mean"]
    for name in ("dome", "ring", "brick", "wave"):
        for key in ("i_auroc", "aupro_30", "i_auroc/fm", "aupro_30/fm"):
            expected = results["per_class"][name][key]
            assert (rows[name][key] == "") if math.isnan(expected) else float(rows[name][key]) == expected
    for key in ("i_auroc", "aupro_30"):
        assert float(rows["mean"][key]) == results["summary"][f"{key}/final_mean"]
        assert float(rows["mean"][f"{key}/fm"]) == results["summary"][f"{key}/fm"]

    markdown = (run_folder.output_dir / "report.md").read_text().splitlines()
    assert markdown[0] == "| class | tiny-report I-AUROC | tiny-report AUPRO | tiny-report FM (↓) |"
    dome, summary = results["per_class"]["dome"], results["summary"]
    assert markdown[2] == f"| dome | {100 * dome['i_auroc']:.1f} | {100 * dome['aupro_30']:.1f} | {100 * dome['i_auroc/fm']:.1f} / {100 * dome['aupro_30/fm']:.1f} |"
    assert markdown[5].endswith("| -/- |")  # wave: learned last
    assert markdown[6] == (
        f"| Mean | {100 * summary['i_auroc/final_mean']:.1f} | {100 * summary['aupro_30/final_mean']:.1f} | "
        f"{100 * summary['i_auroc/fm']:.1f} / {100 * summary['aupro_30/fm']:.1f} |"
    )
    latex = (run_folder.output_dir / "report.tex").read_text()
    assert r"\multicolumn{3}{c}{tiny-report}" in latex and f"dome & {100 * dome['i_auroc']:.1f} &" in latex

    client = MlflowClient(tracking_uri=results["mlflow"]["tracking_uri"])
    logged = {artifact.path for artifact in client.list_artifacts(run_folder.mlflow_run_id)}
    assert {"report.md", "report.csv", "report.tex"} <= logged
    assert "Logged to MLflow run" in capsys.readouterr().out


def test_report_of_a_folder_without_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json not found" in capsys.readouterr().err
