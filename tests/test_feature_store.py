"""The disk feature store behind FeatureCache: computed once, reused by later runs, keyed by backbone weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from incad.config import validate_config
from incad.models.backbones.cache import FeatureCache, attach_disk_store
from incad.models.backbones.feature_store import DiskFeatureStore, module_fingerprint, store_folder
from incad.runner import run_experiment


class CountingBackbone(nn.Module):
    """A frozen 1x1 convolution that counts the images it has seen."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 1).requires_grad_(False)  # frozen, as real backbones are
        self.seen = 0

    def features(self, images: Tensor) -> Tensor:
        self.seen += images.shape[0]
        return self.conv(images)


def test_memory_cache_keeps_its_call_signature() -> None:
    backbone = CountingBackbone(0)
    cache = FeatureCache(backbone.features)
    images = torch.rand(3, 3, 8, 8)
    first = cache(images, ["a", "b", "c"])
    again = cache(images[[2, 0]], ["c", "a"])
    assert backbone.seen == 3 and len(cache) == 3
    assert torch.equal(again, first[[2, 0]])
    assert torch.allclose(first, backbone.conv(images))


def test_disk_store_is_reused_by_a_new_cache(tmp_path: Path) -> None:
    images = torch.rand(4, 3, 8, 8)
    keys = [f"sample{i}.png|rgb" for i in range(4)]
    first_backbone = CountingBackbone(0)
    first = FeatureCache(first_backbone.features, DiskFeatureStore(tmp_path))
    expected = first(images, keys)
    assert first_backbone.seen == 4 and len(list(tmp_path.glob("*.npy"))) == 4

    second_backbone = CountingBackbone(0)  # a later run: same weights, empty memory
    second = FeatureCache(second_backbone.features, DiskFeatureStore(tmp_path))
    assert torch.equal(second(images, keys), expected)
    assert second_backbone.seen == 0
    assert not list(tmp_path.glob(".*"))  # no partial file left


def test_stored_arrays_are_memory_mapped(tmp_path: Path) -> None:
    store = DiskFeatureStore(tmp_path)
    store.put("k", np.arange(6, dtype=np.float32).reshape(2, 3))
    stored = store.get("k")
    assert isinstance(stored, np.memmap) and stored.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert store.get("other") is None


def test_input_shape_is_part_of_the_key(tmp_path: Path) -> None:
    backbone = CountingBackbone(0)
    cache = FeatureCache(backbone.features, DiskFeatureStore(tmp_path))
    cache(torch.rand(1, 3, 8, 8), ["a"])
    assert cache(torch.rand(1, 3, 16, 16), ["a"]).shape == (1, 4, 16, 16)
    assert backbone.seen == 2


def test_attached_store_is_keyed_by_the_backbone_weights(tmp_path: Path) -> None:
    class Learner(nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.backbone = CountingBackbone(seed)
            self.cache = FeatureCache(self.backbone.features)

    same, other = Learner(0), Learner(1)
    [cache] = attach_disk_store(same, tmp_path)
    [other_cache] = attach_disk_store(other, tmp_path)
    assert cache.store.folder.parent == tmp_path
    assert cache.store.folder != other_cache.store.folder
    assert cache.store.folder == attach_disk_store(Learner(0), tmp_path)[0].store.folder
    assert module_fingerprint(same.backbone) in cache.store.folder.name


def test_store_folder_changes_when_a_data_file_changes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"1")
    before = store_folder(tmp_path / "cache", data)
    assert store_folder(tmp_path / "cache", data) == before
    (data / "a.png").write_bytes(b"22")
    assert store_folder(tmp_path / "cache", data) != before


def test_runs_with_the_disk_cache_reuse_features_and_give_the_same_results(tiny_run_config: dict, tmp_path: Path) -> None:
    raw = dict(tiny_run_config, training={"epochs": 1, "batch_size": 8, "feature_cache": "disk"})
    raw["dataset"] = dict(raw["dataset"], cache_dir=str(tmp_path / "cache"))
    raw["scenario"] = dict(raw["scenario"], classes=["dome", "ring"], base=1, increment=1, steps=1)
    first = run_experiment(validate_config(raw), show_progress=False)
    [cache] = [v for m in first.learner.modules() for v in vars(m).values() if isinstance(v, FeatureCache)]
    stored = len(cache.store)
    root = Path(raw["dataset"]["root"])
    samples = sum(len(list(root.glob(f"{name}/{split}/*/rgb/*.png"))) for name in ("dome", "ring") for split in ("train", "test"))
    assert stored == 2 * samples  # one entry per sample and modality (rgb, depth)
    second = run_experiment(validate_config(raw), show_progress=False)
    [second_cache] = [v for m in second.learner.modules() for v in vars(m).values() if isinstance(v, FeatureCache)]
    assert len(second_cache.store) == stored  # nothing new computed
    memory = run_experiment(validate_config(dict(raw, training={"epochs": 1, "batch_size": 8})), show_progress=False)
    for metric in first.summary:
        assert second.summary[metric] == pytest.approx(first.summary[metric], abs=1e-6)
        assert memory.summary[metric] == pytest.approx(first.summary[metric], abs=1e-4)


def test_trainable_weights_and_plain_functions_do_not_split_the_store(tmp_path: Path) -> None:
    def grid_statistics(images: Tensor) -> Tensor:
        return images.mean(dim=1, keepdim=True)

    class Learner(nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.backbone = CountingBackbone(0)
            torch.manual_seed(seed)
            self.head = nn.Linear(4, 4)  # trainable: differs per seed, not part of the cached features
            self.cache = FeatureCache(self.features)
            self.statistics = FeatureCache(grid_statistics)

        def features(self, images: Tensor) -> Tensor:
            return self.backbone.features(images)

    first, second = (attach_disk_store(Learner(seed), tmp_path) for seed in (1, 2))
    assert [cache.store.folder for cache in first] == [cache.store.folder for cache in second]
    assert first[1].store.folder.name.endswith("grid_statistics")
