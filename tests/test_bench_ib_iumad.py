"""benchmarks/bench_ib_iumad.py's --floor: the Mamba decoders' parts timed alone, on the learner's own shapes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_ib_iumad import TrainingStep, print_decoder_floor  # noqa: E402


def test_floor_times_the_three_parts_of_every_decoder_block(capsys: pytest.CaptureFixture[str]) -> None:
    learner = TrainingStep("ib_iumad", ["dataset.image_size=64"]).learner
    blocks = sum(len(decoder.blocks) for decoder in learner.mamba_decoders.values())
    print_decoder_floor("IB-IUMAD", learner, "plain", first_seconds=1.0, row_seconds=2.0, repeats=1)
    printed = capsys.readouterr().out
    assert f"its {blocks} Mamba decoder blocks" in printed and blocks == 8  # 4 layers x rgb and depth
    rows = re.findall(r"^\| (matrix products|self-attention|ES2D scan call)[^|]*\| ([\d.]+) \| (\d+) \|$", printed, re.MULTILINE)
    assert [name for name, _, _ in rows] == ["matrix products", "self-attention", "ES2D scan call"]
    per_step = [float(ms) for _, _, ms in rows]
    assert all(float(per_block) > 0 for _, per_block, _ in rows)
    total = float(re.search(r"^\| sum \| \| (\d+) \|$", printed, re.MULTILINE).group(1))
    assert abs(total - sum(per_step)) <= len(per_step)  # each row rounded to the millisecond
    ratio = float(re.search(r"plain's step plus these parts alone: ([\d.]+)x", printed).group(1))
    assert ratio == pytest.approx(1.0 + total / 1000.0, abs=0.01)
    assert "(2.00x)" in printed
