"""The pieces of benchmarks/bench_real.py: the merged real root, the model specs, the Lite0 -> timm weight mapping."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from incad.data.fingerprint import folder_fingerprint
from incad.errors import ConfigError, DataError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_real import REAL_SOURCES, count_samples, link_merged_root, parse_rows  # noqa: E402
from lite0_timm import LITE0_STAGE_LAST_BLOCK, lite0_state_for_timm  # noqa: E402


def write_sample(root: Path, split: str, defect: str, stem: str, content: str) -> None:
    for kind, suffix in (("rgb", "png"), ("xyz", "tiff")) + ((("gt", "png"),) if split == "test" else ()):
        path = root / "part" / split / defect / kind / f"{stem}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{content} {kind}")


@pytest.fixture
def two_sources(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "first", tmp_path / "second"
    for stem in ("000", "001", "002"):
        write_sample(first, "train", "good", stem, f"first {stem}")
    write_sample(first, "test", "good", "000", "first test good")
    write_sample(first, "test", "cut", "000", "first test cut")
    for stem in ("003", "004"):
        write_sample(second, "train", "good", stem, f"second {stem}")
    write_sample(second, "validation", "good", "000", "second validation")
    for root in (first, second):
        (root / "part" / "license.txt").write_text("same licence")
    return first, second


def test_merge_links_every_file_and_writes_nothing_into_the_sources(two_sources, tmp_path):
    before = [folder_fingerprint(source) for source in two_sources]
    merged = link_merged_root(two_sources, tmp_path / "merged")
    assert count_samples(merged, "part") == {"train": 5, "validation": 1, "test": 2}
    files = [path for path in merged.rglob("*") if not path.is_dir()]
    assert len(files) == 5 * 2 + 2 + 2 * 3 + 1
    assert all(path.is_symlink() for path in files)
    assert all(any(path.resolve().is_relative_to(source) for source in two_sources) for path in files)
    assert (merged / "part/train/good/xyz/004.tiff").read_text() == "second 004 xyz"
    link_merged_root(two_sources, merged)  # a second build finds its links in place
    assert [folder_fingerprint(source) for source in two_sources] == before


def test_merge_refuses_two_different_files_at_one_place(two_sources):
    first, second = two_sources
    (second / "part" / "license.txt").write_text("another licence")
    with pytest.raises(DataError, match="license.txt: differs from"):
        link_merged_root(two_sources, first.parent / "merged")


def test_limits_keep_the_first_samples_of_each_folder_and_drop_stale_links(two_sources, tmp_path):
    merged = link_merged_root(two_sources, tmp_path / "merged")
    link_merged_root(two_sources, merged, {"train": 2})
    assert sorted(path.name for path in (merged / "part/train/good/rgb").iterdir()) == ["000.png", "001.png"]
    assert sorted(path.name for path in (merged / "part/train/good/xyz").iterdir()) == ["000.tiff", "001.tiff"]
    assert count_samples(merged, "part") == {"train": 2, "validation": 1, "test": 2}


def test_merged_real_subset_is_one_class_of_80_train_23_validation_10_test(real_subset_root, real_extra_root, tmp_path):
    sources = (real_subset_root, real_extra_root)
    assert REAL_SOURCES == sources  # the benchmark's default data is the tests' real subset
    before = [folder_fingerprint(source) for source in sources]
    merged = link_merged_root(sources, tmp_path / "merged")
    assert count_samples(merged, "cable_gland") == {"train": 80, "validation": 23, "test": 10}
    assert [folder_fingerprint(source) for source in sources] == before


def test_model_specs_expand_to_one_row_per_modality_unless_the_row_sets_one():
    rows = parse_rows(
        ["incad:experiments/quickstart.yaml training.epochs=2", "mine=incad:experiments/quickstart.yaml scenario.modality=depth", "anomalib-patchcore coreset_ratio=0.2"],
        ["rgb", "rgb+depth"],
    )
    assert [(row.label, row.modality) for row in rows] == [
        ("reconstruction training.epochs=2 (rgb)", "rgb"),
        ("reconstruction training.epochs=2 (rgb+depth)", "rgb+depth"),
        ("mine (depth)", "depth"),
        ("anomalib-patchcore", "rgb"),
    ]
    assert rows[1].overrides == ["training.epochs=2", "scenario.modality=rgb+depth"]
    assert rows[3].options == {"layers": ["blocks.2", "blocks.4"], "coreset_ratio": 0.2, "num_neighbors": 9}
    twice = parse_rows(["incad:experiments/quickstart.yaml", "incad:experiments/quickstart.yaml learner.name=rlr", "incad:experiments/quickstart.yaml"], ["rgb"])
    assert [row.label for row in twice] == ["reconstruction (rgb) #1", "rlr (rgb)", "reconstruction (rgb) #2"]
    with pytest.raises(ConfigError, match="unknown anomalib-patchcore option 'ratio'"):
        parse_rows(["anomalib-patchcore ratio=0.2"], ["rgb"])
    with pytest.raises(ConfigError, match="no scenario YAML"):
        parse_rows(["incad:no/such.yaml"], ["rgb"])


def test_lite0_weights_give_timms_tf_efficientnet_lite0_the_same_features():
    timm = pytest.importorskip("timm", reason="timm comes with the optional extra 'peer' (pip install -e '.[peer]')")
    from incad.models.backbones.efficientnet import LITE_MEAN, LITE_STD, packaged_lite_state
    from incad.models.backbones.registry import create_backbone

    state = lite0_state_for_timm(packaged_lite_state(0))
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    full.load_state_dict(state, strict=True)  # every tensor has its place, the classifier included
    features = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(0, 1, 2, 3, 4)).eval()
    features.load_state_dict(state, strict=False)
    stages = [int(name.rsplit(".", 1)[-1]) for name in features.feature_info.module_name()]
    backbone = create_backbone("efficientnet-lite0", taps=[LITE0_STAGE_LAST_BLOCK[stage] for stage in stages])
    mean, std = torch.tensor(LITE_MEAN).view(1, 3, 1, 1), torch.tensor(LITE_STD).view(1, 3, 1, 1)
    for size in (224, 200):
        images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            ours, theirs = backbone(images), features((images - mean) / std)
        assert [tuple(tap.shape) for tap in ours] == [tuple(tap.shape) for tap in theirs]
        assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) == 0.0
