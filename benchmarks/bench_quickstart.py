"""Wall time and peak memory of the quickstart, first run included (data generation too).

Runs ``incad run experiments/quickstart.yaml`` in a child process with a fresh
data cache, MLflow store and output folder, then prints the figures and the
final results. Targets (issue 2): under 10 minutes and 4 GB on 2 CPU cores.

    .venv/bin/python benchmarks/bench_quickstart.py [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_threads_option, start_benchmark

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default=str(REPO_ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--set", action="append", default=[])
    add_threads_option(parser)
    args = parser.parse_args()
    start_benchmark(args.threads)
    with tempfile.TemporaryDirectory(prefix="incad-bench-") as scratch:
        scratch_path = Path(scratch)
        overrides = [
            f"dataset.root={scratch_path / 'data'}",
            f"output_dir={scratch_path / 'outputs'}",
            f"tracking.tracking_uri=sqlite:///{scratch_path / 'mlflow.db'}",
            *args.set,
        ]
        command = [sys.executable, "-m", "incad.cli", "run", args.scenario, "--no-progress"]
        for item in overrides:
            command += ["--set", item]
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=REPO_ROOT, env=os.environ.copy(), capture_output=True, text=True)
        wall = time.perf_counter() - started
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        if completed.returncode != 0:
            print(completed.stdout[-4000:], completed.stderr[-4000:], sep="\n")
            sys.exit(completed.returncode)
        results_file = next((scratch_path / "outputs").rglob("results.json"))
        results = json.loads(results_file.read_text())
    table_start = completed.stdout.find("class ")
    print(completed.stdout[table_start:].split("\nOutputs")[0])
    print(f"\ncores: {os.cpu_count()}, torch threads: default")
    print(f"wall time, first run included: {wall:.1f} s (target < 600 s)")
    print(f"training time (sum over steps): {sum(results['step_seconds']):.1f} s")
    print(f"peak resident memory: {peak_gib:.2f} GiB (target < 4 GiB)")
    summary = results["summary"]
    print(f"final mean I-AUROC {summary['i_auroc/final_mean']:.3f}, FM {summary['i_auroc/fm']:.3f}")


if __name__ == "__main__":
    main()
