"""The MVTec 3D-AD reader on real files (the cable_gland subset of the ``real_subset_root`` fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from incad.data.dataset import AnomalyDetectionDataset
from incad.data.readers.base import depth_image, load_xyz
from incad.data.readers.mvtec3d import MVTEC3D

CLASS = "cable_gland"
SIZE = 64

@pytest.fixture(scope="module")
def test_samples(real_subset_root: Path) -> list:
    dataset = AnomalyDetectionDataset(real_subset_root, [CLASS], "test", SIZE, {CLASS: 3})
    return [dataset[i] for i in range(len(dataset))]


def test_lists_the_class(real_subset_root: Path) -> None:
    assert MVTEC3D.list_classes(real_subset_root) == [CLASS]


@pytest.mark.parametrize(("split", "count", "defective"), [("train", 20, 0), ("validation", 4, 0), ("test", 10, 8)])
def test_record_counts_per_split(real_subset_root: Path, split: str, count: int, defective: int) -> None:
    records = MVTEC3D.list_records(real_subset_root, CLASS, split)
    assert len(records) == count
    assert sum(record.label for record in records) == defective
    for record in records:
        assert record.points_file is not None and record.points_file.stem == record.rgb.stem
        assert (record.gt is not None) == (split == "test")
        assert record.label == (record.defect_type != "good")


def test_test_split_has_the_defect_types(real_subset_root: Path) -> None:
    types = {record.defect_type for record in MVTEC3D.list_records(real_subset_root, CLASS, "test")}
    assert types == {"good", "bent", "cut", "hole", "thread"}


def test_samples_are_resized_to_the_requested_size(test_samples: list) -> None:
    for sample in test_samples:
        assert sample.image.shape == (3, SIZE, SIZE) and sample.image.dtype == torch.float32
        assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0
        assert sample.mask.shape == (SIZE, SIZE)
        assert sample.depth.shape == (1, SIZE, SIZE)
        assert sample.xyz.shape == (3, SIZE, SIZE) and sample.xyz.dtype == torch.float32
        assert sample.valid.shape == (SIZE, SIZE) and sample.valid.dtype == torch.bool
        assert sample.object_id == 3


def test_masks_mark_defects_only(test_samples: list) -> None:
    for sample in test_samples:
        assert set(sample.mask.unique().tolist()) <= {0.0, 1.0}
        if sample.label == 1:
            assert sample.mask.sum() > 0, sample.path
        else:
            assert sample.mask.sum() == 0, sample.path


def test_raw_point_clouds_miss_about_40_percent_of_points(real_subset_root: Path) -> None:
    for record in MVTEC3D.list_records(real_subset_root, CLASS, "train") + MVTEC3D.list_records(real_subset_root, CLASS, "test"):
        points = load_xyz(record.points_file)
        assert points.shape == (400, 400, 3) and points.dtype == np.float32
        no_point = (points == 0).all(axis=-1).mean()
        assert 0.3 <= no_point <= 0.5, (record.points_file, no_point)


def test_depth_is_in_unit_range_and_zero_exactly_where_there_is_no_point(test_samples: list) -> None:
    for sample in test_samples:
        depth = sample.depth[0]
        assert 0.0 <= depth.min() and depth.max() <= 1.0
        assert torch.equal(depth == 0, ~sample.valid), sample.path
        assert torch.equal(sample.valid, (sample.xyz != 0).any(dim=0))


def test_depth_is_brighter_nearer_to_the_camera(real_subset_root: Path) -> None:
    points = load_xyz(MVTEC3D.list_records(real_subset_root, CLASS, "train")[0].points_file)
    valid = (points != 0).any(axis=-1)
    depth = depth_image(points, valid)
    assert depth.dtype == np.float32
    z = points[..., 2][valid]
    assert depth[valid][np.argmin(z)] == 1.0
    assert np.corrcoef(z, depth[valid])[0, 1] < -0.9


def test_rgb_only_loading_has_no_3d_fields(real_subset_root: Path) -> None:
    dataset = AnomalyDetectionDataset(real_subset_root, [CLASS], "validation", SIZE, {CLASS: 0}, load_xyz=False)
    sample = dataset[0]
    assert sample.depth is None and sample.xyz is None and sample.valid is None
    assert dataset.object_ids_per_sample == [0] * 4
