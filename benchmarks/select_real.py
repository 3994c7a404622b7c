"""Choose settings on real data without its test samples: rank candidates on a pseudo-defect validation set.

    .venv/bin/python benchmarks/select_real.py --candidates benchmarks/candidates_real.yaml [--only NAME ...]

Steps: the real training and validation samples (default: the merged MVTec 3D-AD
cable_gland subset of ``../shared/data``, linked as ``bench_real.py`` does) are
preprocessed with the run's recipe (cached, shared with ``bench_real.py``), then :mod:`validation_proxy` makes a labelled set from the
normal validation samples (each as it is, and with a pseudo-defect). Every
candidate (a scenario YAML plus ``--set`` overrides) is trained on the training
samples and evaluated on that set in its own process; the table gives the four
metrics and the training seconds. The real test samples are never read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, add_threads_option, in_own_process, markdown_table, run_figures, start_benchmark  # noqa: E402
from bench_real import MERGED_CACHE, REAL_SOURCES, link_merged_root  # noqa: E402
from validation_proxy import build_validation_proxy  # noqa: E402

CACHE = REPO_ROOT / ".cache" / "select_real"
COLUMNS = {"i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "aupro_30": "AUPRO@0.3", "aupro_1": "AUPRO@0.01", "train_s": "train s"}


def prepared_class(root: Path, class_name: str, image_size: int) -> Path:
    """The class folder of ``root`` after the MVTec 3D-AD preprocessing recipe (cached)."""
    from incad.config import DatasetConfig
    from incad.data.datasets import prepare_dataset

    config = DatasetConfig(name="mvtec3d", root=root, image_size=image_size, preprocessing={"enabled": True})
    return prepare_dataset(config, [class_name], show_progress=True).root / class_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=Path, default=Path(__file__).with_name("candidates_real.yaml"))
    parser.add_argument("--only", nargs="*", default=None, help="names of the candidates to run (default: all)")
    parser.add_argument("--root", type=Path, default=None, help="a class-folder root in the MVTec 3D-AD layout (default: merged real subset)")
    parser.add_argument("--class-name", default="cable_gland")
    add_threads_option(parser)
    args = parser.parse_args()
    start_benchmark(args.threads)

    root = args.root or link_merged_root(REAL_SOURCES, MERGED_CACHE / "cable_gland-merged")
    proxy_root = build_validation_proxy(prepared_class(root, args.class_name, 224), CACHE / "proxy")
    spec = yaml.safe_load(args.candidates.read_text())
    base = [
        f"dataset.root={proxy_root}", "dataset.name=mvtec3d", "dataset.preprocessing.enabled=false", f"scenario.classes=[{args.class_name}]",
        "scenario.base=1", "scenario.increment=0", "scenario.steps=0", "tracking.enabled=false", f"output_dir={CACHE / 'outputs'}",
    ]
    rows = {}
    for name, candidate in spec["candidates"].items():
        if args.only and name not in args.only:
            continue
        overrides = [*base, f"name=select-{name}", *candidate.get("set", [])]
        rows[name] = in_own_process(run_figures, REPO_ROOT / candidate["scenario"], overrides)
        print(f"{name}: " + ", ".join(f"{key} {rows[name][key]:.3f}" for key in COLUMNS), flush=True)
    print(markdown_table(COLUMNS, rows, "candidate (pseudo-defect validation)"))


if __name__ == "__main__":
    main()
