"""Metrics against hand-worked values and an independent brute-force AUPRO."""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from incad.metrics import (
    aupro,
    average_per_step,
    forgetting_measure,
    image_auroc,
    pixel_auroc,
    pixel_metrics,
)


def brute_force_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """AUPRO straight from the definition: every distinct threshold, regions one by one."""
    eight_connected = np.ones((3, 3), dtype=bool)
    regions = []
    for image_index, mask in enumerate(masks):
        labeled, count = ndimage.label(mask, structure=eight_connected)
        regions += [(image_index, labeled == k) for k in range(1, count + 1)]
    normal = ~masks.astype(bool)
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        above = maps >= threshold
        fpr = above[normal].mean()
        pro = np.mean([above[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= fpr_limit or x1 == x0:
            continue
        x_end = min(x1, fpr_limit)
        y_end = y0 + (y1 - y0) * (x_end - x0) / (x1 - x0)
        area += (x_end - x0) * (y0 + y_end) / 2
    return area / fpr_limit


def random_blob_masks(rng: np.random.Generator, shape: tuple[int, int, int], seed_rate: float) -> np.ndarray:
    """Blobs of assorted sizes: sparse seeds grown by 1 to 3 dilations (scipy's 0 would fill the image)."""
    masks = np.zeros(shape, dtype=bool)
    for image_index in range(shape[0]):
        seeds = rng.random(shape[1:]) < seed_rate
        masks[image_index] = ndimage.binary_dilation(seeds, iterations=int(rng.integers(1, 4)))
    return masks


# ---------------------------------------------------------------- image AUROC


def test_image_auroc_counts_ties_as_half() -> None:
    # Positive/negative pairs: (0.4,0.1)=1, (0.4,0.4)=0.5, (0.8,0.1)=1, (0.8,0.4)=1 -> 3.5/4.
    assert image_auroc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == pytest.approx(0.875)


def test_image_auroc_perfect_and_inverted_is_not_flipped() -> None:
    assert image_auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert image_auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0


def test_image_auroc_single_class_is_nan_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(image_auroc([0.1, 0.5, 0.9], [0, 0, 0]))
        assert math.isnan(image_auroc([0.1, 0.5, 0.9], [1, 1, 1]))


def test_image_auroc_accepts_torch_tensors() -> None:
    scores = torch.tensor([0.1, 0.4, 0.4, 0.8], dtype=torch.bfloat16)
    assert image_auroc(scores, torch.tensor([False, False, True, True])) == pytest.approx(0.875)


# ---------------------------------------------------------------- pixel AUROC


def test_pixel_auroc_pools_pixels_of_all_images() -> None:
    # Defect pixels {0.4, 0.8}, normal {0.1, 0.4}, one from each image: pairs 1 + 0.5 + 1 + 1 -> 0.875.
    maps = np.array([[[0.1, 0.4]], [[0.4, 0.8]]], dtype=np.float32)
    masks = np.array([[[0, 1]], [[0, 1]]])
    assert pixel_auroc(maps, masks) == pytest.approx(0.875)


def test_pixel_auroc_without_a_defect_or_normal_pixel_is_nan() -> None:
    maps = np.random.default_rng(0).random((2, 3, 3))
    assert math.isnan(pixel_auroc(maps, np.zeros((2, 3, 3))))
    assert math.isnan(pixel_auroc(maps, np.ones((2, 3, 3))))


# ---------------------------------------------------------------- AUPRO

# 12 pixels, 8 normal; region A = (0,0), region B = (2,1..3), not 8-connected to A.
HAND_MASK = np.array([[[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]]])
HAND_MAP = np.array([[[0.9, 0.7, 0.5, 0.3], [0.2, 0.1, 0.1, 0.1], [0.1, 0.8, 0.3, 0.3]]])


@pytest.mark.parametrize(
    ("fpr_limit", "expected"),
    [(0.3, 61 / 90), (0.01, 2 / 3), (1.0, 43 / 48)],
)
def test_aupro_hand_worked_example(fpr_limit: float, expected: float) -> None:
    # Thresholds (score >= t), FPR over 8 normal pixels, PRO = mean of A and B coverage:
    #   t=0.9: A=1, B=0   -> (0,     1/2)
    #   t=0.8: A=1, B=1/3 -> (0,     2/3)
    #   t=0.7:             -> (1/8,   2/3)
    #   t=0.5:             -> (2/8,   2/3)
    #   t=0.3: one normal and two B pixels tie, one point -> (3/8, 1)
    #   t=0.2, 0.1         -> (4/8, 1), (1, 1)
    # Limit 0.3: 2/3 * 0.25 + 0.05 * (2/3 + PRO(0.3)) / 2 with PRO(0.3) = 2/3 + (1/3) * 0.05/0.125 = 0.8
    #   = 1/6 + 11/300 = 61/300, / 0.3 = 61/90.
    #   (Splitting the tie normal-first would give 2/3, defect-first 0.7222.)
    # Limit 0.01: flat at 2/3 from FPR 0 -> 2/3.
    # Limit 1: 1/6 + 0.125 * (2/3 + 1) / 2 + 0.625 * 1 = 8/48 + 5/48 + 30/48 = 43/48.
    assert aupro(HAND_MAP, HAND_MASK, fpr_limit) == pytest.approx(expected, abs=1e-12)


def test_aupro_single_pixel_defect() -> None:
    normal_scores = np.arange(10) / 10  # 10 normal pixels, one per step of FPR 0.1
    masks = np.array([[[0] * 10 + [1]]])
    # Above all normals: PRO = 1 at FPR 0.
    assert aupro(np.array([[[*normal_scores, 2.0]]]), masks) == pytest.approx(1.0)
    # Below all normals: PRO stays 0 until FPR 1.
    assert aupro(np.array([[[*normal_scores, -1.0]]]), masks) == pytest.approx(0.0)
    # One normal strictly above: PRO jumps to 1 at FPR 0.1 -> (0.3 - 0.1) / 0.3.
    assert aupro(np.array([[[*normal_scores, 0.85]]]), masks) == pytest.approx(2 / 3)
    # Tied with the top normal: one point (0.1, 1) -> (0.1 / 2 + 0.2) / 0.3.
    assert aupro(np.array([[[*normal_scores, 0.9]]]), masks) == pytest.approx(0.25 / 0.3)


def test_aupro_regions_count_equally_whatever_their_size() -> None:
    masks = np.zeros((1, 12, 12), dtype=bool)
    masks[0, :5, :5] = True  # 25-pixel region, found
    masks[0, 10, 10] = True  # 1-pixel region, missed
    maps = np.where(masks, 0.0, 0.5)
    maps[0, :5, :5] = 1.0
    # PRO = (1 + 0) / 2 up to FPR 1, not 25/26.
    assert aupro(maps, masks) == pytest.approx(0.5)


def test_aupro_uses_eight_connectivity() -> None:
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, [0, 1, 2], [0, 1, 2]] = True  # diagonal chain: one region with 8-connectivity, three with 4
    masks[0, 5, 5] = True
    maps = np.full(masks.shape, 0.5)
    maps[0, [0, 1, 2], [0, 1, 2]] = 0.0
    maps[0, 5, 5] = 1.0
    # 8-connectivity: PRO = (0 + 1) / 2 until FPR 1; 4-connectivity would give 1/4.
    assert aupro(maps, masks, 0.01) == pytest.approx(0.5)


def test_aupro_regions_do_not_join_across_images() -> None:
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2, :2] = True  # found
    masks[1, 0, 0] = True  # same place in the next image, missed
    maps = np.where(masks, 0.0, 0.5)
    maps[0, :2, :2] = 1.0
    # Two regions: PRO 1/2; joined into one 5-pixel region it would be 4/5.
    assert aupro(maps, masks) == pytest.approx(0.5)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.01])
@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_aupro_matches_brute_force(fpr_limit: float, decimals: int | None) -> None:
    rng = np.random.default_rng(1234 + (decimals or 0))
    masks = random_blob_masks(rng, (3, 24, 24), seed_rate=0.01)
    # Scores mildly related to the mask; rounding makes many ties, between and within classes.
    maps = rng.random(masks.shape) + 0.5 * masks * rng.random(masks.shape)
    if decimals is not None:
        maps = np.round(maps, decimals)
    assert aupro(maps, masks, fpr_limit) == pytest.approx(brute_force_aupro(maps, masks, fpr_limit), abs=1e-9)


def test_aupro_perfect_map_is_one() -> None:
    masks = random_blob_masks(np.random.default_rng(2), (4, 32, 32), seed_rate=0.01)
    for fpr_limit in (0.3, 0.01):
        assert aupro(masks.astype(np.float32), masks, fpr_limit) == pytest.approx(1.0)


@pytest.mark.parametrize(("fpr_limit", "relative_tolerance"), [(0.3, 0.05), (0.01, 0.25)])
def test_aupro_of_random_scores_is_half_the_limit(fpr_limit: float, relative_tolerance: float) -> None:
    # Scores independent of the mask: every region's coverage at FPR f is about f, so
    # PRO ~ FPR, the area up to L is L^2 / 2 and the normalised AUPRO is L / 2 (not 0.5).
    # Over 20 seeds of this setup the ratio to L / 2 had a spread of 1.3 % at L = 0.3 and
    # 6.5 % at L = 0.01 (few pixels per region lie above so high a threshold); tolerances ~4 sigma.
    rng = np.random.default_rng(3)
    masks = random_blob_masks(rng, (200, 64, 64), seed_rate=0.004)
    maps = rng.random(masks.shape, dtype=np.float32)
    assert aupro(maps, masks, fpr_limit) == pytest.approx(fpr_limit / 2, rel=relative_tolerance)


def test_aupro_without_defect_or_normal_pixel_is_nan() -> None:
    maps = np.random.default_rng(4).random((2, 5, 5))
    assert math.isnan(aupro(maps, np.zeros((2, 5, 5))))
    assert math.isnan(aupro(maps, np.ones((2, 5, 5))))


def test_aupro_accepts_torch_tensors() -> None:
    expected = aupro(HAND_MAP, HAND_MASK)
    assert aupro(torch.from_numpy(HAND_MAP).float(), torch.from_numpy(HAND_MASK).bool()) == pytest.approx(expected)


# ---------------------------------------------------------------- all pixel metrics from one sort


def random_maps_with_ties(seed: int, decimals: int | None, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Blob masks and scores mildly related to them; rounding makes ties between and within classes."""
    rng = np.random.default_rng(seed)
    masks = random_blob_masks(rng, (3, 24, 24), seed_rate=0.01)
    maps = rng.random(masks.shape) + 0.5 * masks * rng.random(masks.shape)
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps.astype(dtype), masks


# float32 scores are sorted as packed integer keys, float64 ones by argsort: check both.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_pixel_metrics_match_sklearn_and_brute_force(dtype: type, decimals: int | None) -> None:
    maps, masks = random_maps_with_ties(99 + (decimals or 0), decimals, dtype)
    result = pixel_metrics(maps, masks)
    assert list(result) == ["p_auroc", "aupro@0.3", "aupro@0.01"]
    assert result["p_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    for fpr_limit in (0.3, 0.01):
        expected = brute_force_aupro(maps, masks, fpr_limit)
        assert result[f"aupro@{fpr_limit:g}"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wrappers_equal_pixel_metrics(dtype: type) -> None:
    maps, masks = random_maps_with_ties(7, 2, dtype)
    result = pixel_metrics(maps, masks, fpr_limits=(1.0, 0.05))
    assert list(result) == ["p_auroc", "aupro@1", "aupro@0.05"]
    assert pixel_auroc(maps, masks) == result["p_auroc"]
    assert aupro(maps, masks, 1.0) == result["aupro@1"]
    assert aupro(maps, masks, 0.05) == result["aupro@0.05"]


def test_pixel_auroc_matches_sklearn_on_a_large_float32_stack() -> None:
    rng = np.random.default_rng(8)
    masks = random_blob_masks(rng, (20, 64, 64), seed_rate=0.004)
    maps = np.round(rng.standard_normal(masks.shape) + masks, 2).astype(np.float32)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)


def test_pixel_metrics_float32_signs_and_zeros() -> None:
    # Negative, positive and both zeros: -0.0 == +0.0, so they tie (one curve point).
    maps = np.array([[[-2.0, -0.0, 0.0, 1.5, -1e-30, 3.0e30, -0.0, 0.0]]], dtype=np.float32)
    masks = np.array([[[0, 1, 0, 1, 0, 1, 0, 1]]])
    for dtype in (np.float32, np.float64):
        result = pixel_metrics(maps.astype(dtype), masks, fpr_limits=(1.0,))
        assert result["p_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
        assert result["aupro@1"] == pytest.approx(brute_force_aupro(maps, masks, 1.0), abs=1e-12)


def test_pixel_metrics_hand_worked_example() -> None:
    result = pixel_metrics(HAND_MAP, HAND_MASK, fpr_limits=(0.3, 0.01, 1.0))
    assert result["aupro@0.3"] == pytest.approx(61 / 90, abs=1e-12)
    assert result["aupro@0.01"] == pytest.approx(2 / 3, abs=1e-12)
    assert result["aupro@1"] == pytest.approx(43 / 48, abs=1e-12)
    # Pairs of 4 defect x 8 normal pixels: each tied 0.3 pair counts 1/2.
    assert result["p_auroc"] == pytest.approx(roc_auc_score(HAND_MASK.ravel(), HAND_MAP.ravel()), abs=1e-12)


def test_pixel_metrics_without_defect_or_normal_pixel_is_all_nan() -> None:
    maps = np.random.default_rng(4).random((2, 5, 5)).astype(np.float32)
    for masks in (np.zeros((2, 5, 5)), np.ones((2, 5, 5))):
        result = pixel_metrics(maps, masks)
        assert list(result) == ["p_auroc", "aupro@0.3", "aupro@0.01"]
        assert all(math.isnan(value) for value in result.values())


def test_pixel_metrics_accepts_torch_tensors() -> None:
    expected = pixel_metrics(HAND_MAP.astype(np.float32), HAND_MASK)
    assert pixel_metrics(torch.from_numpy(HAND_MAP).float(), torch.from_numpy(HAND_MASK).bool()) == expected


# ---------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5))), "same shape"),
        (lambda: pixel_auroc(np.zeros((4, 4)), np.zeros((4, 4))), r"maps must have shape \(N, H, W\)"),
        (lambda: aupro(np.full((1, 2, 2), np.nan), np.eye(2)[None]), "maps contains NaN"),
        (lambda: image_auroc([0.1, np.inf], [0, 1]), "scores contains NaN or inf"),
        (lambda: image_auroc([], []), "scores is empty"),
        (lambda: image_auroc([0.1, 0.2], [0, 1, 1]), "same shape"),
        (lambda: pixel_auroc(np.zeros((1, 2, 2)), np.full((1, 2, 2), 0.5)), "masks must be binary"),
        (lambda: aupro(np.zeros((1, 2, 2)), np.eye(2)[None], fpr_limit=0.0), "fpr_limit"),
        (lambda: pixel_metrics(np.zeros((1, 2, 2)), np.eye(2)[None], fpr_limits=(0.3, 1.5)), "fpr_limit"),
        (lambda: pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5))), "same shape"),
        (lambda: forgetting_measure(np.zeros(3)), "matrix must be"),
    ],
)
def test_malformed_input_raises_a_clear_error(call: Callable[[], float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- forgetting

NAN = float("nan")
# Object 0 learned at step 0, object 1 at step 1, object 2 at the final step.
STEP_BY_OBJECT = np.array(
    [
        [0.80, NAN, NAN],
        [0.90, 0.70, NAN],
        [0.78, 0.75, 0.60],
    ]
)


def test_forgetting_measure_hand_computed() -> None:
    # Object 0: best earlier 0.90 (step 1, not the first) - 0.78 = 0.12.
    # Object 1: 0.70 - 0.75 = -0.05, an improvement, kept negative.
    # Object 2: learned at the last step, excluded.  FM = (0.12 - 0.05) / 2.
    assert forgetting_measure(STEP_BY_OBJECT) == pytest.approx(0.035)


def test_forgetting_measure_single_step_is_nan() -> None:
    assert math.isnan(forgetting_measure([[0.9, 0.8]]))


def test_forgetting_measure_needs_final_values_of_learned_objects() -> None:
    with pytest.raises(ValueError, match=r"objects \[1\]"):
        forgetting_measure([[0.9, 0.8], [0.7, NAN]])


def test_average_per_step_ignores_unseen_objects() -> None:
    np.testing.assert_allclose(average_per_step(STEP_BY_OBJECT), [0.80, 0.80, (0.78 + 0.75 + 0.60) / 3])
