"""The synthetic RGB + 3-D generator: determinism, layout, exact masks, knobs, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from incad.data import synthetic
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.readers.mvtec3d import MVTEC3D
from incad.data.synthetic import (
    DEFECT_TYPES,
    PoseJitter,
    SyntheticConfig,
    class_names,
    config_hash,
    ensure_synthetic,
    generate,
    render_sample,
)

TINY = SyntheticConfig(
    num_classes=2,
    image_size=48,
    train_per_class=2,
    validation_per_class=1,
    test_good_per_class=2,
    test_defect_per_class=1,
    seed=7,
)
# Small but not tiny, so that defects of the smallest size still cover pixels.
RENDER = SyntheticConfig(image_size=64, seed=11)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(TINY, tmp_path_factory.mktemp("synthetic") / "data")


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_gives_identical_bytes(tiny_root: Path, tmp_path: Path) -> None:
    assert _files(generate(TINY, tmp_path / "again")) == _files(tiny_root)


def test_different_seed_gives_different_samples(tmp_path: Path) -> None:
    config = TINY.model_copy(update={"num_classes": 1, "train_per_class": 1})
    first = generate(config, tmp_path / "a")
    second = generate(config.model_copy(update={"seed": 8}), tmp_path / "b")
    for relative in ("dome/train/good/rgb/000.png", "dome/train/good/xyz/000.tiff"):
        assert (first / relative).read_bytes() != (second / relative).read_bytes()


def test_layout_is_readable_by_the_mvtec3d_reader(tiny_root: Path) -> None:
    names = class_names(TINY.num_classes)
    assert MVTEC3D.list_classes(tiny_root) == sorted(names)
    object_ids = {name: i for i, name in enumerate(names)}
    for split, per_class in (("train", 2), ("validation", 1), ("test", 2 + len(DEFECT_TYPES))):
        dataset = AnomalyDetectionDataset(tiny_root, names, split, 32, object_ids)
        assert len(dataset) == per_class * len(names)
        assert dataset.object_ids_per_sample == [0] * per_class + [1] * per_class
    types = {record.defect_type for record in MVTEC3D.list_records(tiny_root, names[0], "test")}
    assert types == {"good", *DEFECT_TYPES}

    # At the generated size, so that no small defect is lost by nearest resizing.
    test_set = AnomalyDetectionDataset(tiny_root, names, "test", TINY.image_size, object_ids)
    for index in range(len(test_set)):
        sample = test_set[index]
        assert (sample.mask.sum() > 0) == (sample.label == 1), sample.path
        assert torch.equal(sample.depth[0] == 0, ~sample.valid)
        assert 0 < sample.valid.float().mean() < 1  # border and shadow pixels have no point


def test_point_cloud_is_a_pinhole_view_of_an_object_above_a_plane() -> None:
    sample = render_sample(RENDER, "dome", "train", 0)
    valid = (sample.xyz != 0).any(axis=-1)
    z = sample.xyz[..., 2][valid]
    assert 0.5 < z.min() and z.max() < 0.7  # metres, camera looking down
    assert np.percentile(z, 50) - z.min() > 0.015  # the object stands out of the plane
    rows, columns = np.nonzero(valid)
    size = RENDER.image_size
    # Pinhole back-projection: x / z and y / z depend only on the pixel.
    assert np.allclose(sample.xyz[..., 0][valid] / z, ((columns + 0.5) / size * 2 - 1) / synthetic.FOCAL, atol=1e-6)
    assert np.allclose(sample.xyz[..., 1][valid] / z, ((rows + 0.5) / size * 2 - 1) / synthetic.FOCAL, atol=1e-6)


def _pair(config: SyntheticConfig, class_name: str, scene: int, defect: str) -> tuple:
    return render_sample(config, class_name, "test", scene, defect), render_sample(config, class_name, "test", scene, "good")


CASES = [(name, scene) for name in class_names(len(synthetic.CATEGORIES)) for scene in range(2)]


@pytest.mark.parametrize("defect", ["stain", "scratch"])
def test_rgb_only_defects_change_rgb_inside_the_mask_and_never_xyz(defect: str) -> None:
    for name, scene in CASES:
        defective, good = _pair(RENDER, name, scene, defect)
        changed = (defective.rgb != good.rgb).any(axis=-1)
        assert defective.mask.any() and not good.mask.any()
        assert not (changed & ~defective.mask).any(), (name, scene)
        assert changed[defective.mask].mean() > 0.5, (name, scene)
        assert np.array_equal(defective.xyz, good.xyz)


@pytest.mark.parametrize("defect", ["dent", "bump"])
def test_geometry_only_defects_change_xyz_exactly_on_the_mask_and_never_rgb(defect: str) -> None:
    for name, scene in CASES:
        defective, good = _pair(RENDER, name, scene, defect)
        changed = (defective.xyz != good.xyz).any(axis=-1)
        assert np.array_equal(changed, defective.mask), (name, scene)
        assert np.array_equal(defective.rgb, good.rgb)
        closer = defective.xyz[..., 2][changed] < good.xyz[..., 2][changed]
        assert closer.all() if defect == "bump" else not closer.any()


@pytest.mark.parametrize("defect", ["crack", "hole"])
def test_combined_defects_change_both_modalities_inside_the_mask(defect: str) -> None:
    for name, scene in CASES:
        defective, good = _pair(RENDER, name, scene, defect)
        rgb_changed = (defective.rgb != good.rgb).any(axis=-1)
        xyz_changed = (defective.xyz != good.xyz).any(axis=-1)
        assert np.array_equal(xyz_changed, defective.mask), (name, scene)
        assert rgb_changed.any() and not (rgb_changed & ~defective.mask).any(), (name, scene)
        lost_points = (defective.xyz == 0).all(axis=-1) & (good.xyz != 0).any(axis=-1)
        assert lost_points.any() == (defect == "hole")


def _mean_mask_area(config: SyntheticConfig) -> float:
    masks = [
        render_sample(config, name, "test", scene, defect).mask
        for name in ("dome", "brick")
        for scene in range(3)
        for defect in DEFECT_TYPES
    ]
    return float(np.mean([mask.sum() for mask in masks]))


def test_bigger_defect_size_gives_bigger_masks() -> None:
    small = _mean_mask_area(RENDER.model_copy(update={"defect_size": (0.04, 0.06)}))
    large = _mean_mask_area(RENDER.model_copy(update={"defect_size": (0.3, 0.4)}))
    assert large > 3 * small


def test_higher_contrast_gives_stronger_changes() -> None:
    def change(contrast: float) -> tuple[float, float]:
        config = RENDER.model_copy(update={"defect_contrast": (contrast, contrast)})
        stain, good = _pair(config, "disc", 0, "stain")
        dent, _ = _pair(config, "disc", 0, "dent")
        rgb_change = np.abs(stain.rgb.astype(float) - good.rgb)[stain.mask].mean()
        depth_change = np.abs(dent.xyz[..., 2] - good.xyz[..., 2])[dent.mask].mean()
        return rgb_change, depth_change

    weak, strong = change(0.1), change(0.9)
    assert strong[0] > 4 * weak[0] and strong[1] > 4 * weak[1]


def test_pose_jitter_moves_the_object() -> None:
    def no_point_maps(config: SyntheticConfig) -> list[np.ndarray]:
        return [(render_sample(config, "dome", "train", i).xyz == 0).all(axis=-1) for i in range(3)]

    still = no_point_maps(RENDER.model_copy(update={"pose_jitter": PoseJitter(rotation_deg=0, translation=0, scale=0)}))
    moving = no_point_maps(RENDER)
    assert all(np.array_equal(still[0], other) for other in still[1:])
    assert not any(np.array_equal(moving[0], other) for other in moving[1:])


def test_texture_noise_adds_per_sample_variation() -> None:
    def rgb(noise: float) -> np.ndarray:
        return render_sample(RENDER.model_copy(update={"texture_noise": noise}), "ring", "train", 0).rgb.astype(float)

    assert np.abs(rgb(0.1) - rgb(0.0)).mean() > np.abs(rgb(0.01) - rgb(0.0)).mean() > 0


def test_config_rejects_bad_values() -> None:
    for bad in (
        {"defect_size": (0.3, 0.1)},
        {"defect_contrast": (0.0, 0.5)},
        {"num_classes": len(synthetic.CATEGORIES) + 1},
        {"train_per_class": 0},
        {"unknown_knob": 1},
    ):
        with pytest.raises(ValidationError):
            SyntheticConfig(**bad)


def test_class_names_are_the_designed_categories() -> None:
    names = class_names(len(synthetic.CATEGORIES))
    assert len(names) >= 8 and len(set(names)) == len(names)
    assert class_names(5) == names[:5]
    with pytest.raises(ValueError):
        class_names(len(names) + 1)


SMALL = SyntheticConfig(
    num_classes=1, image_size=32, train_per_class=1, validation_per_class=1, test_good_per_class=1, test_defect_per_class=1
)


def test_ensure_synthetic_reuses_a_complete_dataset(tmp_path: Path) -> None:
    first = ensure_synthetic(SMALL, tmp_path)
    assert first == tmp_path / f"synthetic-{config_hash(SMALL)}"
    mtimes = {path: path.stat().st_mtime_ns for path in first.rglob("*")}
    assert ensure_synthetic(SMALL, tmp_path) == first
    assert {path: path.stat().st_mtime_ns for path in first.rglob("*")} == mtimes
    assert ensure_synthetic(SMALL.model_copy(update={"seed": 1}), tmp_path) != first
    assert len(list(tmp_path.iterdir())) == 2  # no staging folders left behind


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_sample", fail)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(SMALL, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(synthetic.DataError, match="not empty"):
        generate(SMALL, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "user data"
