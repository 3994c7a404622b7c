"""Anomaly-detection and continual-learning metrics, computed exactly.

All functions take numpy arrays or torch tensors and return a plain float
(``pixel_metrics`` a dict of them).
Undefined values (a single class, no defect region, a single step) are NaN
rather than an exception, so one degenerate object does not abort a whole
evaluation; malformed inputs raise ValueError naming the argument at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    curve = _pixel_curve(maps, masks, with_pro=False)
    return float("nan") if curve is None else _auroc(curve)


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
    _check_fpr_limit(fpr_limit)
    maps, masks = _maps_and_masks(maps, masks)
    curve = _pixel_curve(maps, masks, with_pro=True)
    return float("nan") if curve is None else _aupro(curve, fpr_limit)


def pixel_metrics(maps: Any, masks: Any, fpr_limits: tuple[float, ...] = (0.3, 0.01)) -> dict[str, float]:
    """Pixel AUROC and AUPRO at each of ``fpr_limits`` from a single sort of the scores.

    Same values as :func:`pixel_auroc` and :func:`aupro` (same inputs, same
    checks, same NaN cases), but the pixels are sorted and the ROC and PRO
    curves built once for all of them. Returns ``{"p_auroc": ...,
    "aupro@0.3": ..., "aupro@0.01": ...}``, one ``aupro@{limit:g}`` key per limit.
    """
    for fpr_limit in fpr_limits:
        _check_fpr_limit(fpr_limit)
    maps, masks = _maps_and_masks(maps, masks)
    curve = _pixel_curve(maps, masks, with_pro=bool(fpr_limits))
    result = {"p_auroc": float("nan") if curve is None else _auroc(curve)}
    for fpr_limit in fpr_limits:
        result[f"aupro@{fpr_limit:g}"] = float("nan") if curve is None else _aupro(curve, fpr_limit)
    return result


@dataclass(frozen=True)
class _PixelCurve:
    """Cumulative counts at every distinct score, highest score first (threshold ``score >= t``).

    ``true_positives`` / ``false_positives`` count the defect / normal pixels
    at or above each distinct score; ``overlap`` is the summed coverage of the
    ground-truth regions there (each region adds up to 1), None when the
    regions were not labelled.
    """

    true_positives: np.ndarray
    false_positives: np.ndarray
    overlap: np.ndarray | None
    num_defect: int
    num_normal: int
    num_regions: int


def _pixel_curve(maps: np.ndarray, masks: np.ndarray, with_pro: bool) -> _PixelCurve | None:
    """The exact ROC (and, ``with_pro``, PRO) counts from one descending sort of all pixels.

    None when there is no defect or no normal pixel (both curves are undefined).
    """
    num_defect = int(np.count_nonzero(masks))
    num_normal = masks.size - num_defect
    if num_defect == 0 or num_normal == 0:
        return None
    overlap_per_pixel = None
    if with_pro:
        region_ids, num_regions = ndimage.label(masks, structure=_EIGHT_CONNECTED_PER_IMAGE)
        # A defect pixel adds 1/size of its region to the summed overlap; normal pixels add 0.
        region_sizes = np.bincount(region_ids[masks], minlength=num_regions + 1)  # defect pixels only
        overlap_per_pixel = np.zeros(num_regions + 1)
        overlap_per_pixel[1:] = 1.0 / region_sizes[1:]
    else:
        region_ids, num_regions = masks, 1  # every defect pixel in "region" 1; no PRO computed

    last_of_tie, sorted_ids = _sort_by_descending_score(maps, region_ids)
    del region_ids
    # ~10 M pixels: each full-size temporary is freed before the next is made.
    overlap = None
    if overlap_per_pixel is not None:
        running = overlap_per_pixel[sorted_ids]  # float64
        np.cumsum(running, out=running)
        overlap = running[last_of_tie]
        del running
    running_defects = (sorted_ids != 0).astype(np.int64)  # cumsum of a bool array would cast a copy
    del sorted_ids
    np.cumsum(running_defects, out=running_defects)
    true_positives = running_defects[last_of_tie]
    del running_defects
    # Pixels at or above a score: its last index + 1, of which the rest are normal.
    false_positives = np.subtract(last_of_tie, true_positives, out=last_of_tie)
    false_positives += 1
    return _PixelCurve(true_positives, false_positives, overlap, num_defect, num_normal, num_regions)


def _sort_by_descending_score(maps: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort ``ids`` (same shape as ``maps``, non-negative) by descending score.

    Returns ``(last_of_tie, sorted_ids)``: ``sorted_ids`` flattened in that
    order, and the index of the last pixel of every run of equal scores, the
    only valid thresholds. The order inside a run of ties is arbitrary, since
    only its end is used. float32 (and smaller) scores are packed with their id
    into one uint64 key and sorted directly, faster than an argsort followed by
    two random-access gathers; float64 scores do not fit and take the argsort.
    """
    if maps.dtype.itemsize <= 4 and ids.dtype.itemsize <= 4:  # ids: bool masks or int32 labels
        # Order-preserving integer of the float32 bits: flip the magnitude bits of
        # negatives. "+ 0" turns -0.0 into +0.0, which compares equal to it.
        bits = (maps.astype(np.float32, copy=False).ravel() + np.float32(0)).view(np.int32)
        bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)
        np.invert(bits, out=bits)  # now decreasing in the score
        descending = bits.view(np.uint32) ^ np.uint32(0x80000000)  # same order, unsigned
        del bits
        keys = descending.astype(np.uint64)
        del descending
        keys <<= np.uint64(32)
        np.bitwise_or(keys, ids.ravel(), out=keys, dtype=np.uint64, casting="unsafe")  # ids >= 0
        keys.sort()
        sorted_ids = keys.astype(np.uint32)  # low 32 bits: the id
        keys >>= np.uint64(32)  # high 32 bits: the score's rank key
        sorted_scores = keys
    else:
        order = np.argsort(maps, axis=None)[::-1]
        sorted_ids = ids.ravel()[order]
        sorted_scores = maps.ravel()[order]
        del order
    # A run ends where the next score differs (np.diff(...) != 0 without its full-size
    # temporary; np.unique would sort again), and at the last pixel.
    is_last_of_tie = np.empty(sorted_scores.size, dtype=bool)
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=is_last_of_tie[:-1])
    is_last_of_tie[-1] = True
    del sorted_scores
    return np.flatnonzero(is_last_of_tie), sorted_ids


def _auroc(curve: _PixelCurve) -> float:
    """Trapezoid area under the ROC curve, ties as one point: Mann-Whitney U with ties counted 1/2.

    Summed on the integer counts, so exact up to the final division.
    """
    # Trapezoid i spans fp[i-1]..fp[i] with heights tp[i-1] and tp[i], both counts taken
    # as 0 before the first point (the curve starts at (0, 0)); two dot products avoid a
    # second full-size temporary.
    true_positives = curve.true_positives
    new_false_positives = np.empty_like(curve.false_positives)  # np.diff(fp, prepend=0), one temporary
    new_false_positives[0] = curve.false_positives[0]
    np.subtract(curve.false_positives[1:], curve.false_positives[:-1], out=new_false_positives[1:])
    twice_area = int(np.dot(new_false_positives, true_positives))
    twice_area += int(np.dot(new_false_positives[1:], true_positives[:-1]))
    return twice_area / (2.0 * curve.num_defect * curve.num_normal)


def _aupro(curve: _PixelCurve, fpr_limit: float) -> float:
    """Normalised area under the (FPR, PRO) curve, from (0, 0), up to ``fpr_limit``.

    Only the points up to the limit and two beyond (one for the interpolation,
    one against rounding in ``fpr_limit * num_normal``) are turned into rates.
    """
    assert curve.overlap is not None, "the PRO curve needs the labelled regions"
    used = int(np.searchsorted(curve.false_positives, fpr_limit * curve.num_normal, side="right")) + 2
    used = min(used, curve.false_positives.size)
    fpr, pro = np.zeros(used + 1), np.zeros(used + 1)  # both start at 0
    np.divide(curve.false_positives[:used], curve.num_normal, out=fpr[1:])
    np.divide(curve.overlap[:used], curve.num_regions, out=pro[1:])
    np.minimum(pro, 1.0, out=pro)
    area = _area_up_to(fpr, pro, fpr_limit)
    return float(np.clip(area / fpr_limit, 0.0, 1.0))


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def forgetting_per_object(matrix: Any) -> np.ndarray:
    """Each object's drop (IB-IUMAD eq. 1): its best value before the final step minus its final value.

    ``matrix[s, o]`` is the metric of object ``o`` after step ``s``, NaN before
    ``o`` is learned. Negative when the object improved. NaN for an object
    first learned at the final step (and for every object with a single step).
    """
    matrix = _step_object_matrix(matrix)
    drops = np.full(matrix.shape[1], np.nan)
    if matrix.shape[0] < 2:
        return drops
    earlier, final = matrix[:-1], matrix[-1]
    learned_before = ~np.isnan(earlier).all(axis=0)
    missing_final = learned_before & np.isnan(final)
    if missing_final.any():
        raise ValueError(
            f"matrix: objects {np.flatnonzero(missing_final).tolist()} were learned before "
            "the final step but have no value at the final step"
        )
    if learned_before.any():
        drops[learned_before] = np.nanmax(earlier[:, learned_before], axis=0) - final[learned_before]
    return drops


def forgetting_measure(matrix: Any) -> float:
    """Forgetting measure (IB-IUMAD eq. 1) from a step x object metric matrix.

    The mean of :func:`forgetting_per_object` over the objects learned before
    the final step (drops kept negative where an object improved, so gains
    offset losses as in the paper). NaN with a single step or no object learned before the last.
    """
    drops = forgetting_per_object(matrix)
    learned_before = np.isfinite(drops)
    return float(np.mean(drops[learned_before])) if learned_before.any() else float("nan")


def average_per_step(matrix: Any) -> np.ndarray:
    """Mean metric over the objects seen so far, one value per step (NaN if none)."""
    matrix = _step_object_matrix(matrix)
    seen = ~np.isnan(matrix)
    counts = seen.sum(axis=1)
    sums = np.where(seen, matrix, 0.0).sum(axis=1)
    return np.divide(sums, counts, out=np.full(counts.shape, np.nan), where=counts > 0)


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under a curve with non-decreasing ``x`` from ``x[0] <= limit``, cut exactly at ``limit``."""
    inside = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:inside], y[:inside]  # views: the curve can have millions of points
    area = 0.5 * float(np.dot(np.diff(xs), ys[1:] + ys[:-1]))
    if inside < x.size:
        y_at_limit = np.interp(limit, x[inside - 1 : inside + 1], y[inside - 1 : inside + 1])
        area += 0.5 * (limit - xs[-1]) * (ys[-1] + y_at_limit)
    return area


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
