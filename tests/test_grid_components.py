"""The grid connected components that find the object in preprocessing, against BTF's DBSCAN on every real sample."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from incad.config import validate_config
from incad.data.grid_components import largest_grid_component
from incad.data.preprocess import PreprocessingConfig, largest_cluster, off_plane_mask
from incad.data.readers.base import load_mask, load_xyz
from incad.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
# DBSCAN takes seconds per real sample: its masks are memoised by input and settings (a pure function).
DBSCAN_MEMO = REPO_ROOT / ".cache" / "incad" / "test-dbscan-masks"


def test_components_join_only_near_8_neighbours() -> None:
    """Two blobs, one pixel apart diagonally, joined by a short 3-D step and cut by a long one; the bigger wins."""
    points = np.zeros((6, 6, 3), dtype=np.float32)
    candidates = np.zeros((6, 6), dtype=bool)
    candidates[0:2, 0:2] = True  # 4 pixels
    candidates[2:5, 2:5] = True  # 9 pixels, touching (1, 1) diagonally at (2, 2)
    points[..., 0] = np.arange(6)[:, None] * 0.001
    points[..., 1] = np.arange(6)[None, :] * 0.001
    joined = largest_grid_component(points, candidates, eps=0.002)  # diagonal step sqrt(2) mm < 2 mm
    assert joined.sum() == 13
    points[2:5, 2:5, 2] = 0.01  # the big blob 10 mm behind: the diagonal edge is cut
    cut = largest_grid_component(points, candidates, eps=0.002)
    assert cut.sum() == 9 and cut[2:5, 2:5].all()
    assert largest_grid_component(points, candidates, eps=0.0009).sum() == 1  # 1 mm steps: every pixel alone


def _dbscan_mask(points: np.ndarray, candidates: np.ndarray, settings: PreprocessingConfig) -> np.ndarray:
    key = hashlib.sha256(
        points.tobytes() + candidates.tobytes() + f"{settings.dbscan_eps}|{settings.dbscan_min_points}".encode()
    ).hexdigest()[:20]
    memo = DBSCAN_MEMO / f"{key}.npy"
    if memo.is_file():
        return np.load(memo)
    mask = largest_cluster(points, candidates, settings.model_copy(update={"clustering": "dbscan"}))
    DBSCAN_MEMO.mkdir(parents=True, exist_ok=True)
    np.save(memo, mask)
    return mask


def test_grid_agrees_with_dbscan_on_every_real_sample(real_subset_root: Path, real_extra_root: Path) -> None:
    """>= 99 % of the pixels of every real MVTec 3D-AD sample get the same mask; >= 90 % of defect pixels are kept."""
    settings = PreprocessingConfig(enabled=True)  # BTF's values, full resolution
    files = sorted([*real_subset_root.rglob("xyz/*.tiff"), *real_extra_root.rglob("xyz/*.tiff")])
    assert len(files) >= 100
    agreements, defects = {}, 0
    for file in files:
        points = load_xyz(file)
        candidates = off_plane_mask(points, settings)
        grid = largest_cluster(points, candidates, settings)
        dbscan = _dbscan_mask(points, candidates, settings)
        agreements[file] = (grid == dbscan).mean()
        assert grid.sum() > 0.5 * dbscan.sum() > 0
        mask_file = file.parent.parent / "gt" / f"{file.stem}.png"
        if mask_file.is_file() and (defect := load_mask(mask_file) & points.any(axis=-1)).any():
            defects += 1
            assert grid[defect].mean() >= 0.9, file
    worst = min(agreements, key=agreements.get)
    assert agreements[worst] >= 0.99, f"{worst}: {agreements[worst]:.4f}"
    assert defects >= 8


def test_clustering_setting_is_validated_and_keys_the_cache() -> None:
    grid, dbscan = PreprocessingConfig(), PreprocessingConfig(clustering="dbscan")
    assert grid.clustering == "grid" and grid.fingerprint() != dbscan.fingerprint()
    with pytest.raises(ConfigError, match="clustering"):
        validate_config({"dataset": {"preprocessing": {"clustering": "kmeans"}}})
