"""Fusing per-modality maps (ScaledModalityMaps): what the image score of a normal image may and may not come from.

Constructed maps on a 4x4 token grid, scored the way evaluation scores every
learner (upsampled, smoothed, maximum), so each test states a ranking of a
normal and a defective image that the image AUROC depends on.
"""

from __future__ import annotations

import torch

from incad.data.sample import Batch
from incad.evaluation.postprocess import image_scores, upsample_and_smooth
from incad.learners.features import ScaledModalityMaps

GRID = 4
SIZE = 64  # pixels; 16 per token


class FixedMaps(ScaledModalityMaps):
    """Returns the per-modality maps stored for each image path: a learner whose maps are known exactly."""

    def __init__(self, maps_by_path: dict[str, dict[str, torch.Tensor]]) -> None:
        super().__init__("rgb+depth", class_names=("object",))
        self.maps_by_path = maps_by_path

    def modality_maps(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {m: torch.stack([self.maps_by_path[p][m] for p in batch.path]) for m in self.modalities}


def batch_of(paths: list[str], valid: torch.Tensor | None = None) -> Batch:
    count = len(paths)
    if valid is None:
        valid = torch.ones(count, SIZE, SIZE, dtype=torch.bool)
    return Batch(
        image=torch.zeros(count, 3, SIZE, SIZE), mask=torch.zeros(count, SIZE, SIZE), label=torch.zeros(count, dtype=torch.long),
        object_id=torch.zeros(count, dtype=torch.long), defect_type=["good"] * count, path=paths,
        depth=torch.zeros(count, 1, SIZE, SIZE), valid=valid,
    )


def image_score(learner: ScaledModalityMaps, batch: Batch) -> torch.Tensor:
    return image_scores(upsample_and_smooth(learner.anomaly_map(batch), (SIZE, SIZE), sigma=4))


def flat(value: float) -> torch.Tensor:
    return torch.full((GRID, GRID), value)


def with_token(base: torch.Tensor, row: int, column: int, value: float) -> torch.Tensor:
    changed = base.clone()
    changed[row, column] = value
    return changed


def test_a_normal_image_peaking_where_there_is_no_3d_point_scores_below_a_defect_on_the_object():
    # Both images: the object fills the grid except the top-left token, where preprocessing removed every point.
    valid = torch.ones(2, SIZE, SIZE, dtype=torch.bool)
    valid[:, :16, :16] = False
    maps = {
        "normal": {"rgb": with_token(flat(0.2), 0, 0, 3.0), "depth": flat(0.2)},  # high error on the black background
        "defect": {"rgb": with_token(flat(0.2), 2, 2, 1.0), "depth": flat(0.2)},  # a real defect on the object
    }
    learner = FixedMaps(maps)
    learner.calibrate([batch_of(["normal"], valid[:1])])
    normal, defect = image_score(learner, batch_of(["normal", "defect"], valid))
    assert defect > normal
    assert learner.anomaly_map(batch_of(["normal"], valid[:1]))[0, 0, 0] == 0


def test_a_depth_defect_outscores_the_usual_rgb_peak_of_normal_images():
    # Normal training images: RGB error low with one high token per image (a peaky map), depth error flat.
    # Both maps have similar means, but RGB's normal maximum is 5x depth's.
    train = {f"train{i}": {"rgb": with_token(flat(0.1), i % GRID, 1, 1.0), "depth": flat(0.2)} for i in range(4)}
    test = {
        "normal": {"rgb": with_token(flat(0.1), 1, 1, 1.0), "depth": flat(0.2)},
        "defect": {"rgb": with_token(flat(0.1), 1, 1, 1.0), "depth": with_token(flat(0.2), 2, 2, 0.6)},  # depth 3x its normal level
    }
    learner = FixedMaps({**train, **test})
    learner.calibrate([batch_of(list(train))])
    assert torch.allclose(learner.map_scale, torch.tensor([1.0, 0.2]))
    normal, defect = image_score(learner, batch_of(["normal", "defect"]))
    assert defect > 1.5 * normal
