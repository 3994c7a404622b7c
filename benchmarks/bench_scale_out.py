"""Wall time of a small grid with ``incad compare --executor local`` and ``--executor ray``, and of one run on 1 and 2 processes (torchrun).

Everything runs as the user would run it, each command in its own process
(interpreter and library start-up included), on a small synthetic scenario
generated into a scratch folder (4 classes, 3-1 with 1 step, RGB). The grid is
naive and replay x seeds 0 and 1; Ray starts locally on every core (one CPU
per combination). The run on 2 processes uses ``torchrun --standalone`` with
gloo (or nccl on CUDA) and the same global batch. On a 2-core machine expect
little speed-up: the point is that the same commands run on a GPU box or a
cluster unchanged.

    .venv/bin/python benchmarks/bench_scale_out.py [--image-size 96] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from incad.data.synthetic import SyntheticConfig, ensure_synthetic  # noqa: E402


def timed(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``command``; stops the benchmark with its output if it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="the global batch (each of 2 processes takes half)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    incad = [sys.executable, "-m", "incad"]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    with tempfile.TemporaryDirectory(prefix="incad-bench-scale-") as scratch:
        folder = Path(scratch)
        synthetic = SyntheticConfig(num_classes=4, image_size=args.image_size, train_per_class=16, validation_per_class=1, test_good_per_class=6, test_defect_per_class=4, seed=0)
        data = ensure_synthetic(synthetic, folder / "data")
        scenario = folder / "scenario.yaml"
        scenario.write_text(yaml.safe_dump({
            "name": "bench",
            "output_dir": str(folder / "outputs"),
            "dataset": {"name": "mvtec3d", "root": str(data), "image_size": args.image_size},
            "scenario": {"classes": ["dome", "ring", "brick", "wave"], "base": 3, "increment": 1, "steps": 1, "modality": "rgb"},
            "learner": {"name": "reconstruction", "hidden_dim": 64, "num_heads": 4, "encoder_layers": 2, "decoder_layers": 2, "feedforward_dim": 128},
            "training": {"epochs": args.epochs, "batch_size": args.batch_size},
            "tracking": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "bench-scale-out"},
        }))  # fmt: skip
        grid = ["compare", str(scenario), "--strategies", "naive,replay", "--seeds", "0,1", "--no-progress"]
        figures = {
            "grid of 4, --executor local": timed([*incad, *grid, "--set", "name=local"], env),
            "grid of 4, --executor ray (local Ray, 1 CPU per run)": timed([*incad, *grid, "--set", "name=ray", "--executor", "ray", "--cpus-per-run", "1"], env),
            "one run, 1 process": timed([*incad, "run", str(scenario), "--set", "name=one", "--no-progress"], env),
            "one run, torchrun 2 processes": timed(
                [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "incad", "run", str(scenario), "--set", "name=two", "--no-progress"],
                {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))},
            ),
        }
    print(f"{os.cpu_count()} CPUs, image size {args.image_size}, {args.epochs} epochs, global batch {args.batch_size}; wall seconds per command:")
    width = max(len(name) for name in figures)
    for name, seconds in figures.items():
        print(f"  {name:<{width}}  {seconds:7.1f}")


if __name__ == "__main__":
    main()
