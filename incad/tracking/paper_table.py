"""``incad report``: the per-class table of a run or a comparison in the layout of IB-IUMAD's Table 1.

IB-IUMAD (Table 1) reports, per setting, I-AUROC and AUPRO (the MVTec 3D-AD
AUPRO, integrated up to a false-positive rate of 0.3: incad's ``aupro_30``)
in percent with one decimal, and the forgetting measure (eq. 1) of both as
"I-AUROC / AUPRO", "-/-" where there is none. Here the rows are the classes,
then their mean; a column group (I-AUROC, AUPRO, FM) per run, so a comparison
parent gives one group per strategy x learner x seed as the paper gives one per
setting. A class's FM is its own drop; the mean row's is the run's FM.

Every number is read from the runs' ``results.json`` (``per_class``,
``summary``), so the tables are the results, rounded. ``report.md``,
``report.csv`` (unrounded fractions) and ``report.tex`` (booktabs) are written
into the folder and logged to the run's MLflow run (a comparison's parent run).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from incad.errors import ConfigError

TABLE_METRICS = {"i_auroc": "I-AUROC", "aupro_30": "AUPRO"}
RESULTS = "results.json"
COMPARE_RUNS = "runs.json"  # written by incad compare: its member runs' folders and labels


@dataclass
class RunResults:
    """One run's label and its ``results.json``."""

    label: str
    folder: Path
    results: dict

    @property
    def classes(self) -> list[str]:
        return list(self.results["classes"])

    def value(self, class_name: str | None, key: str) -> float:
        """A class's final value or drop (``<metric>`` / ``<metric>/fm``); ``class_name`` None: the run's mean or FM."""
        if class_name is None:
            return float(self.results["summary"][key if key.endswith("/fm") else f"{key}/final_mean"])
        return float(self.results["per_class"][class_name][key])


def _read_results(folder: Path) -> dict:
    path = folder / RESULTS
    if not path.is_file():
        raise ConfigError(f"incad report: {path} not found; pass the output folder of a finished run (outputs/<name>) or of incad compare (outputs/<name>-compare)")
    results = json.loads(path.read_text())
    if "per_class" not in results:
        raise ConfigError(f"incad report: {path} has no per-class results (written by an older incad); rerun the scenario")
    return results


def read_report_source(folder: Path) -> tuple[list[RunResults], dict | None]:
    """The runs behind a run folder or a comparison parent, and the MLflow run (``run_id``, ``tracking_uri``) to log to."""
    folder = Path(folder)
    if (folder / COMPARE_RUNS).is_file():
        listing = json.loads((folder / COMPARE_RUNS).read_text())
        runs = [RunResults(member["label"], folder.parent / member["folder"], _read_results(folder.parent / member["folder"])) for member in listing["runs"]]
        return runs, listing.get("mlflow")
    results = _read_results(folder)
    return [RunResults(folder.name, folder, results)], results.get("mlflow")


def _percent(value: float) -> str:
    return f"{100 * value:.1f}" if math.isfinite(value) else "-"


def _fm(run: RunResults, class_name: str | None) -> str:
    drops = [run.value(class_name, f"{name}/fm") for name in TABLE_METRICS]
    if not any(math.isfinite(drop) for drop in drops):
        return "-/-"
    return " / ".join(_percent(drop) for drop in drops)


def _class_rows(runs: list[RunResults]) -> list[str]:
    return list(dict.fromkeys(name for run in runs for name in run.classes))


def table_rows(runs: list[RunResults]) -> list[list[str]]:
    """The rounded table: a row per class, then the mean; per run I-AUROC, AUPRO, FM."""
    rows = []
    for class_name in [*_class_rows(runs), None]:
        cells = ["Mean" if class_name is None else class_name]
        for run in runs:
            if class_name is not None and class_name not in run.classes:
                cells += ["-", "-", "-/-"]
                continue
            cells += [_percent(run.value(class_name, name)) for name in TABLE_METRICS] + [_fm(run, class_name)]
        rows.append(cells)
    return rows


def markdown(runs: list[RunResults]) -> str:
    header = ["class"] + [f"{run.label} {label}" for run in runs for label in (*TABLE_METRICS.values(), "FM (↓)")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(runs)]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#")


def latex(runs: list[RunResults]) -> str:
    groups = len(runs)
    lines = [
        r"\begin{tabular}{l" + "ccc" * groups + "}",
        r"\toprule",
        " & ".join(["Class"] + [rf"\multicolumn{{3}}{{c}}{{{_latex_escape(run.label)}}}" for run in runs]) + r" \\",
        "".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(groups)),
        " & ".join([""] + ["I-AUROC", "AUPRO", r"FM ($\Downarrow$)"] * groups) + r" \\",
        r"\midrule",
    ]
    rows = table_rows(runs)
    for index, row in enumerate(rows):
        if index == len(rows) - 1:
            lines.append(r"\midrule")
        lines.append(" & ".join(_latex_escape(cell) for cell in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_csv(runs: list[RunResults], path: Path) -> Path:
    """Unrounded fractions: a row per (run, class or mean) with both metrics and both drops."""
    keys = [key for name in TABLE_METRICS for key in (name, f"{name}/fm")]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "class", *keys])
        for run in runs:
            for class_name in [*run.classes, None]:
                values = [run.value(class_name, key) for key in keys]
                writer.writerow([run.label, "mean" if class_name is None else class_name, *("" if not math.isfinite(v) else repr(v) for v in values)])
    return path


def write_report(folder: Path) -> tuple[list[Path], dict | None]:
    """Write ``report.{md,csv,tex}`` into ``folder``; returns their paths and the MLflow run to log them to."""
    folder = Path(folder)
    runs, mlflow_run = read_report_source(folder)
    paths = [folder / "report.md", folder / "report.tex"]
    paths[0].write_text(markdown(runs))
    paths[1].write_text(latex(runs))
    paths.insert(1, write_csv(runs, folder / "report.csv"))
    return paths, mlflow_run


def log_report(paths: list[Path], mlflow_run: dict) -> None:
    """Attach the report files to the MLflow run they describe."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(mlflow_run["tracking_uri"])
    client = MlflowClient()
    for path in paths:
        client.log_artifact(mlflow_run["run_id"], str(path))
