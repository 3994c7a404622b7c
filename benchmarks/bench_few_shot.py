"""Few-shot CFR against CFR without retrieval and CFM, at 1, 2 and 4 shots, on the quickstart data and the real class.

Rows per dataset and k (``dataset.shots: k``, drawn with the YAML's seed, so
the three rows of one k train on the same samples):

* ``cfr``: the learner as its YAML sets it;
* ``cfr retrieval off``: the same with ``learner.retrieval=false``, the CFR
  paper's ablation (the cyclic mapping alone, nothing replaced);
* ``cfm``: CFM (direct mapping terms only, no memory) with the same backbone,
  hidden size, data and training settings.

Datasets (``--datasets``):

* ``quickstart``: ``experiments/learners/cfr.yaml`` and ``cfm.yaml`` (5
  synthetic classes, 3-1 with 2 steps, their 15 epochs); final means over the
  classes;
* ``real``: the real MVTec 3D-AD cable_gland of ../shared/data
  (``mvtec3d_mini`` merged with ``mvtec3d_extra``, linked as
  ``bench_real.py`` does), "1-0 with 0 steps", preprocessing on,
  ``experiments/few_shot/mvtec3d-{k}shot.yaml`` (its 50 epochs, batch 8).

Columns: I-AUROC, P-AUROC, AUPRO@0.3, AUPRO@0.01 (test split; nothing is
selected on it) and training seconds (all steps: offline stages, epochs and
calibration). Each row runs in its own process; results also go to
``--output``/results.json.

    .venv/bin/python benchmarks/bench_few_shot.py [--datasets quickstart,real] [--shots 1,2,4] [--rows cfr,cfm] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench_real import MERGED_CACHE, REAL_SOURCES, link_merged_root
from common import REPO_ROOT, in_own_process, markdown_table, run_figures

DATASETS = ("quickstart", "real")
ROWS = ("cfr", "cfr retrieval off", "cfm")
COLUMNS = {"i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "aupro_30": "AUPRO@0.3", "aupro_1": "AUPRO@0.01", "train_s": "train s"}
LEARNERS = REPO_ROOT / "experiments" / "learners"
# CFM in place of the few-shot YAML's CFR section: the same backbone, 3-D features and mapping nets.
CFM_LEARNER = "learner={name: cfm, backbone: efficientnet-lite0, features_3d: depth_backbone, hidden_dim: 512}"


def rows_of(dataset: str, shots: int, real_root: Path | None) -> dict[str, tuple[Path, list[str]]]:
    """Row kind -> (scenario YAML, overrides) of ``dataset`` at ``shots`` shots."""
    if dataset == "quickstart":
        cfr, cfm, data = LEARNERS / "cfr.yaml", LEARNERS / "cfm.yaml", []
    else:
        cfr = cfm = REPO_ROOT / "experiments" / "few_shot" / f"mvtec3d-{shots}shot.yaml"
        data = [f"dataset.root={real_root}", "scenario.classes=[cable_gland]", "scenario.base=1", "scenario.increment=0", "scenario.steps=0"]
    common = [*data, f"dataset.shots={shots}"]
    return {
        "cfr": (cfr, common),
        "cfr retrieval off": (cfr, [*common, "learner.retrieval=false"]),
        "cfm": (cfm, [*common, *([] if dataset == "quickstart" else [CFM_LEARNER])]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, from {', '.join(DATASETS)}")
    parser.add_argument("--shots", default="1,2,4", help="comma-separated k values")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra overrides for every row")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "outputs" / "bench_few_shot", help="folder of results.json")
    args = parser.parse_args()
    datasets = [name.strip() for name in args.datasets.split(",") if name.strip()]
    if set(datasets) - set(DATASETS) or not datasets:
        parser.error(f"--datasets: choose from {', '.join(DATASETS)}")
    shots = [int(value) for value in args.shots.split(",")]
    kinds = [name.strip() for name in args.rows.split(",") if name.strip()]
    if set(kinds) - set(ROWS) or not kinds:
        parser.error(f"--rows: choose from {', '.join(ROWS)}")
    real_root = link_merged_root(REAL_SOURCES, MERGED_CACHE / "cable_gland-merged") if "real" in datasets else None
    results: dict[str, dict[str, dict[str, float]]] = {}
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="incad-bench-few-shot-") as scratch:
        for dataset in datasets:
            results[dataset] = {}
            for k in shots:
                for kind, (scenario, overrides) in rows_of(dataset, k, real_root).items():
                    if kind not in kinds:
                        continue
                    label = f"{kind} {k}-shot"
                    run_overrides = [*overrides, f"output_dir={scratch}/out", "tracking.enabled=false", *args.set]
                    results[dataset][label] = in_own_process(run_figures, scenario, run_overrides)
                    print(f"{dataset} {label}: " + ", ".join(f"{COLUMNS[key]} {results[dataset][label][key]:.3f}" for key in COLUMNS), flush=True)
                    (args.output / "results.json").write_text(json.dumps(results, indent=2))
    for dataset, rows in results.items():
        print(f"\n{dataset}\n")
        print(markdown_table(COLUMNS, rows, "row"))


if __name__ == "__main__":
    main()
