"""Shared fixtures: a tiny synthetic dataset, a tiny run configuration and the real MVTec 3D-AD subset.

This is the only place that knows where the real data lies: the cable_gland
subset ships beside the project (``../shared/data``), not in it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from incad.data.synthetic import SyntheticConfig, ensure_synthetic

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "data"

TINY_SYNTHETIC = SyntheticConfig(
    num_classes=4,
    image_size=64,
    train_per_class=6,
    validation_per_class=1,
    test_good_per_class=3,
    test_defect_per_class=1,
    seed=3,
)


def _real_folder(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"real MVTec 3D-AD subset not found at {path}; clone with ../shared beside it")
    return path


@pytest.fixture(scope="session")
def real_subset_root() -> Path:
    """The real cable_gland subset (20 train, 4 validation, 10 test samples); skips the test when it is absent."""
    return _real_folder(REAL_DATA / "mvtec3d_mini")


@pytest.fixture(scope="session")
def real_extra_root() -> Path:
    """More real cable_gland samples (60 train, 19 validation); skips the test when they are absent."""
    return _real_folder(REAL_DATA / "mvtec3d_extra")


@pytest.fixture(scope="session")
def tiny_synthetic_config() -> SyntheticConfig:
    return TINY_SYNTHETIC


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 synthetic classes at 64 px, generated once per test session."""
    return ensure_synthetic(TINY_SYNTHETIC, tmp_path_factory.mktemp("synthetic"))


@pytest.fixture
def tiny_run_config(tiny_dataset: Path, tmp_path: Path) -> dict:
    """A raw config mapping for a 2-1 with 2 steps run that takes seconds."""
    return {
        "name": "tiny",
        "seed": 0,
        "output_dir": str(tmp_path / "outputs"),
        "dataset": {"name": "mvtec3d", "root": str(tiny_dataset), "image_size": 64},
        "scenario": {"classes": ["dome", "ring", "brick", "wave"], "base": 2, "increment": 1, "steps": 2, "modality": "rgb+depth"},
        "learner": {
            "name": "reconstruction",
            "hidden_dim": 32,
            "num_heads": 2,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "feedforward_dim": 64,
        },
        "strategy": "naive",
        "training": {"epochs": 1, "batch_size": 8},
        "evaluation": {"batch_size": 8},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tests"},
    }
