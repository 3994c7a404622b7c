"""One list of dataset names: the config, the CLI and the reader registry agree on it."""

from __future__ import annotations

import pytest

from incad.config import DatasetConfig
from incad.data.names import DATASET_NAMES
from incad.data.readers.registry import DATASET_READERS, create_reader
from incad.errors import ConfigError


def test_every_dataset_name_has_a_reader_and_every_reader_a_name() -> None:
    assert DATASET_READERS.names() == sorted(DATASET_NAMES)


def test_the_config_accepts_exactly_the_dataset_names() -> None:
    for name in DATASET_NAMES:
        assert DatasetConfig(name=name, root=".").name == name
    with pytest.raises(ValueError, match="mvtec_ad"):
        DatasetConfig(name="mvtec", root=".")


def test_an_unknown_reader_lists_the_allowed_names() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'mvtec'; allowed: eyecandies, folder"):
        create_reader("mvtec")
    assert create_reader("eyecandies", light=2).light == 2
