"""Anomaly-detection and continual-learning metrics, computed exactly.

All functions take numpy arrays or torch tensors and return a plain float.
Undefined values (a single class, no defect region, a single step) are NaN
rather than an exception, so one degenerate object does not abort a whole
evaluation; malformed inputs raise ValueError naming the argument at fault.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

# 8-connectivity inside each image, no connection between images of the stack.
_EIGHT_CONNECTED_PER_IMAGE = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED_PER_IMAGE[1] = True


def image_auroc(scores: Any, labels: Any) -> float:
    """Image-level AUROC, reported as is (never flipped to ``1 - auroc``).

    ``scores`` (N,) higher = more anomalous, ``labels`` (N,) 1 = defective.
    NaN when only one class is present, since AUROC is undefined then.
    """
    scores = _finite_scores(scores, "scores", ndim=1)
    labels = _binary(labels, "labels", ndim=1)
    _check_same_shape(scores, "scores", labels, "labels")
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel-level AUROC pooled over every pixel of every image.

    ``maps`` (N, H, W) anomaly scores, ``masks`` (N, H, W) 1 = defective pixel.
    NaN when there is no defective or no normal pixel.
    """
    maps, masks = _maps_and_masks(maps, masks)
    if masks.all() or not masks.any():
        return float("nan")
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO-vs-FPR curve up to ``fpr_limit`` (MVTec AD).

    Ground-truth regions are the 8-connected components of each mask, and every
    region counts equally in the per-region overlap (PRO), so small defects
    weigh as much as large ones. FPR is taken over all normal pixels of all
    images. The curve is exact (one point per distinct score, ties kept
    together), starts at (0, 0), is cut at ``fpr_limit`` by linear
    interpolation, integrated by the trapezoid rule and divided by
    ``fpr_limit``, so a perfect map scores 1 and a random one about
    ``fpr_limit / 2``. NaN when there is no defect region or no normal pixel.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    maps, masks = _maps_and_masks(maps, masks)
    curve = _pro_curve(maps, masks)
    if curve is None:
        return float("nan")
    fpr, pro = curve
    area = _area_up_to(fpr, pro, fpr_limit)
    return float(np.clip(area / fpr_limit, 0.0, 1.0))


def _pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The exact (FPR, PRO) curve, one point per distinct score, from (0, 0).

    Thresholding is ``score >= t`` for every distinct score ``t`` in
    decreasing order, so both coordinates are non-decreasing. None when there
    is no defect region or no normal pixel (the curve is undefined).
    """
    region_ids, num_regions = ndimage.label(masks, structure=_EIGHT_CONNECTED_PER_IMAGE)
    region_sizes = np.bincount(region_ids.ravel(), minlength=num_regions + 1)
    num_normal = int(region_sizes[0])
    if num_regions == 0 or num_normal == 0:
        return None

    descending = np.argsort(maps, axis=None)[::-1]
    sorted_scores = maps.ravel()[descending]
    sorted_ids = region_ids.ravel()[descending]
    del descending, region_ids  # ~10 M pixels per class: free what is no longer needed

    # A defect pixel adds 1/size of its region to the summed overlap; normal pixels add 0.
    overlap_per_region = np.zeros(num_regions + 1)
    overlap_per_region[1:] = 1.0 / region_sizes[1:]
    overlap_sum = overlap_per_region[sorted_ids]
    np.cumsum(overlap_sum, out=overlap_sum)
    false_positives = np.cumsum(sorted_ids == 0)

    # Only the last pixel of each run of equal scores is a valid threshold.
    last_of_tie = np.append(np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), sorted_scores.size - 1)
    fpr = np.concatenate([[0.0], false_positives[last_of_tie] / num_normal])
    pro = np.concatenate([[0.0], overlap_sum[last_of_tie] / num_regions])
    return fpr, np.minimum(pro, 1.0)


def forgetting_measure(matrix: Any) -> float:
    """Forgetting measure (IB-IUMAD eq. 1) from a step x object metric matrix.

    ``matrix[s, o]`` is the metric of object ``o`` after step ``s``, NaN before
    ``o`` is learned. For each object already learned before the final step,
    the drop is its best earlier value minus its final value (negative when
    it improved; kept, so gains offset losses as in the paper); the result is
    the mean drop. NaN with a single step or no object learned before the last.
    """
    matrix = _step_object_matrix(matrix)
    if matrix.shape[0] < 2:
        return float("nan")
    earlier, final = matrix[:-1], matrix[-1]
    learned_before = ~np.isnan(earlier).all(axis=0)
    if not learned_before.any():
        return float("nan")
    missing_final = learned_before & np.isnan(final)
    if missing_final.any():
        raise ValueError(
            f"matrix: objects {np.flatnonzero(missing_final).tolist()} were learned before "
            "the final step but have no value at the final step"
        )
    best_earlier = np.nanmax(earlier[:, learned_before], axis=0)
    return float(np.mean(best_earlier - final[learned_before]))


def average_per_step(matrix: Any) -> np.ndarray:
    """Mean metric over the objects seen so far, one value per step (NaN if none)."""
    matrix = _step_object_matrix(matrix)
    seen = ~np.isnan(matrix)
    counts = seen.sum(axis=1)
    sums = np.where(seen, matrix, 0.0).sum(axis=1)
    return np.divide(sums, counts, out=np.full(counts.shape, np.nan), where=counts > 0)


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under a curve with non-decreasing ``x``, cut exactly at ``limit``."""
    inside = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:inside], y[:inside]
    if inside < x.size:
        y_at_limit = np.interp(limit, x[inside - 1 : inside + 1], y[inside - 1 : inside + 1])
        xs, ys = np.append(xs, limit), np.append(ys, y_at_limit)
    return float(np.trapezoid(ys, xs))


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _finite_scores(value: Any, name: str, ndim: int) -> np.ndarray:
    """Scores as a float array; float32 stays float32 to keep memory low on pixel maps."""
    array = _as_numpy(value)
    if not np.issubdtype(array.dtype, np.floating):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
        array = array.astype(np.float64)
    _check_ndim(array, name, ndim)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return array


def _binary(value: Any, name: str, ndim: int) -> np.ndarray:
    array = _as_numpy(value)
    _check_ndim(array, name, ndim)
    if array.dtype != bool:
        if not np.issubdtype(array.dtype, np.number) or not ((array == 0) | (array == 1)).all():
            raise ValueError(f"{name} must be binary (bool or 0/1); threshold soft masks first")
        array = array.astype(bool)
    return array


def _check_ndim(array: np.ndarray, name: str, ndim: int) -> None:
    if array.ndim != ndim:
        expected = "(N,)" if ndim == 1 else "(N, H, W)"
        raise ValueError(f"{name} must have shape {expected}, got {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")


def _check_same_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} {a.shape} and {b_name} {b.shape} must have the same shape")


def _maps_and_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    maps = _finite_scores(maps, "maps", ndim=3)
    masks = _binary(masks, "masks", ndim=3)
    _check_same_shape(maps, "maps", masks, "masks")
    return maps, masks


def _step_object_matrix(value: Any) -> np.ndarray:
    matrix = _as_numpy(value).astype(np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"matrix must be a non-empty (steps, objects) array, got shape {matrix.shape}")
    if np.isinf(matrix).any():
        raise ValueError("matrix contains inf values")
    return matrix
