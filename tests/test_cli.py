"""The command line: errors are one paragraph with exit code 2; data synth writes a readable set."""

from __future__ import annotations

from pathlib import Path

import yaml

from incad.cli import main
from incad.data.readers.mvtec3d import MVTEC3D


def test_yaml_typo_gives_a_one_paragraph_error(tmp_path, capsys, tiny_run_config):
    tiny_run_config["scenario"]["modalty"] = "rgb"
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(tiny_run_config))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "typo.yaml" in err and "scenario.modalty" in err
    assert "Traceback" not in err


def test_bad_override_is_reported(tmp_path, capsys, tiny_run_config):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(tiny_run_config))
    assert main(["run", str(path), "--set", "training.epochs=-1"]) == 2
    assert "training.epochs" in capsys.readouterr().err


def test_data_synth_writes_the_mvtec3d_layout(tmp_path: Path, capsys):
    out = tmp_path / "synth"
    code = main(["data", "synth", "--out", str(out), "--set", "num_classes=2", "--set", "image_size=32",
                 "--set", "train_per_class=2", "--set", "test_good_per_class=1", "--set", "test_defect_per_class=1",
                 "--set", "validation_per_class=1", "--set", "pose_jitter.rotation_deg=0"])
    assert code == 0
    assert MVTEC3D.list_classes(out) == ["dome", "ring"]
    assert len(MVTEC3D.list_records(out, "dome", "train")) == 2


def test_data_synth_rejects_unknown_setting(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--set", "num_clases=2"]) == 2
    assert "num_clases" in capsys.readouterr().err
