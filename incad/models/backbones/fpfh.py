"""FPFH point features (open3d) pooled onto the stride-16 token grid.

CFM and Uni-RCM map RGB features to 3-D point features and back. Their papers
use Point-MAE, whose weights are not available offline; Fast Point Feature
Histograms (33 bins per point) are a training-free 3-D descriptor that M3DM and
BTF use for the same data. Choices written down:

- neighbourhood radii are multiples of the median distance between
  horizontally adjacent valid points of the organized cloud (normals: 3x, FPFH:
  8x), so the descriptor covers the same few pixels whatever the scene's units
  or the image size;
- each token's feature is the mean FPFH of the valid points in its 16x16 cell,
  zero where the cell has none (such tokens are masked out anyway).
"""

from __future__ import annotations

import math

import numpy as np
import open3d as o3d
import torch
from torch import Tensor

FPFH_DIM = 33
NORMAL_RADIUS_STEPS = 3.0
FPFH_RADIUS_STEPS = 8.0


def point_spacing(xyz: np.ndarray, valid: np.ndarray) -> float:
    """Median distance between horizontally adjacent valid points of an (H, W, 3) organized cloud."""
    both = valid[:, 1:] & valid[:, :-1]
    steps = np.linalg.norm(xyz[:, 1:] - xyz[:, :-1], axis=-1)[both]
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def fpfh_points(xyz: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(N, 33) FPFH of the valid points of an (H, W, 3) organized cloud, in row-major pixel order."""
    points = xyz[valid].astype(np.float64)
    if len(points) == 0:
        return np.zeros((0, FPFH_DIM))
    spacing = point_spacing(xyz, valid)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=NORMAL_RADIUS_STEPS * spacing, max_nn=30))
    features = o3d.pipelines.registration.compute_fpfh_feature(
        cloud, o3d.geometry.KDTreeSearchParamHybrid(radius=FPFH_RADIUS_STEPS * spacing, max_nn=100)
    )
    return np.asarray(features.data).T


def fpfh_grid_features(xyz: Tensor, stride: int = 16) -> Tensor:
    """(B, 3, H, W) organized clouds (0 = no point) -> (B, 33, ceil(H/stride), ceil(W/stride)) mean FPFH per cell."""
    batch, _, height, width = xyz.shape
    grid = (math.ceil(height / stride), math.ceil(width / stride))
    cell = (np.arange(height)[:, None] // stride) * grid[1] + np.arange(width)[None, :] // stride
    out = torch.zeros(batch, FPFH_DIM, grid[0] * grid[1])
    for index, cloud in enumerate(xyz.detach().cpu().permute(0, 2, 3, 1).numpy()):
        valid = np.any(cloud != 0, axis=-1)
        features = fpfh_points(cloud, valid)
        if len(features) == 0:
            continue
        cells = cell[valid]
        sums = np.zeros((grid[0] * grid[1], FPFH_DIM))
        np.add.at(sums, cells, features)
        counts = np.bincount(cells, minlength=grid[0] * grid[1])[:, None]
        out[index] = torch.from_numpy(sums / np.maximum(counts, 1)).T.float()
    return out.reshape(batch, FPFH_DIM, *grid).to(xyz.device)
