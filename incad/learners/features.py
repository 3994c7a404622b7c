"""What several learners read from a batch: cached frozen features, valid tokens, per-modality map fusion."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from incad.data.sample import Batch
from incad.errors import ConfigError
from incad.learners.base import Learner
from incad.models.backbones.cache import FeatureCache


def frozen_features(extract: Callable[[Tensor], Tensor], cache: FeatureCache | None, inputs: Tensor, keys: Sequence[str]) -> Tensor:
    """``extract(inputs)`` without gradients, through ``cache`` when there is one (``keys`` name the rows)."""
    if cache is not None:
        return cache(inputs, keys)
    with torch.no_grad():
        return extract(inputs)


def cosine_distance(predicted: Tensor, target: Tensor) -> Tensor:
    """(B, L, C) pair -> (B, L): 1 - cosine similarity per token (scale-free, unlike L2)."""
    return 1.0 - F.cosine_similarity(predicted, target, dim=-1)


def valid_tokens(batch: Batch, grid: tuple[int, int]) -> Tensor:
    """(B, L) bool: tokens whose cell of the image has a 3-D point on at least half of its pixels.

    Cross-modal mapping is only defined where both modalities see the object;
    empty or mostly empty cells (background removed, holes) are left out of the
    loss, the codebooks and the anomaly map.
    """
    if batch.valid is None:
        raise ValueError(f"{batch.path[0]}: this learner needs the point cloud's valid-pixel mask, but the batch has none")
    fraction = F.adaptive_avg_pool2d(batch.valid[:, None].float(), grid)
    return (fraction >= 0.5).flatten(1)


def require_rgb_and_depth(learner_name: str, modality: str) -> None:
    """Cross-modal learners map one modality to the other: stop early, naming the key, if there is only one."""
    if modality != "rgb+depth":
        raise ConfigError(
            f"learner '{learner_name}' maps RGB features to 3-D features and back, so it needs "
            f"scenario.modality: rgb+depth (got '{modality}'); use learner 'rlr' or 'reconstruction' for one modality"
        )


class ScaledModalityMaps(Learner):
    """A learner that scores each modality on its own and fuses the maps by their pixel-wise maximum.

    Subclasses give ``modality_maps(batch)``, one (B, h, w) map per modality;
    the reconstruction learner's docstring says why max, not sum. Two rules
    keep the image score (the fused map's maximum) about the object, checked
    on the validation normals of real cable_gland
    (``benchmarks/diag_image_score.py``; figures in README, Benchmarks):

    - with depth, tokens without 3-D points (``valid_tokens``: the background
      preprocessing removed, holes, the ragged outline) are not scored (0), as
      CFM and Uni-RCM do: reconstruction errors there are of a black or empty
      input, and many of the validation normals' maxima lay on such pixels
      with ``reconstruction`` before;
    - each modality's map is divided by its normal *image score*, the mean over
      normal training images of the map's maximum over scored tokens
      (``calibrate``, after the epochs of every experience). The mean over all
      tokens, used before, matched the bulk of the two maps, not their tails,
      and the image score is a tail: one modality won the maximum on almost
      every validation normal (RGB for ``reconstruction``, depth for
      ``ib_iumad``), the two far more evenly after. RLR went the other way
      (RGB won more often after), presumably because its training maps fit
      tighter than its validation maps (not checked).
    """

    def __init__(self, modality: str, class_names: Sequence[str]) -> None:
        super().__init__(modality, class_names)
        self.register_buffer("map_scale", torch.ones(len(self.modalities)))

    def modality_maps(self, batch: Batch) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def scored_modality_maps(self, batch: Batch) -> dict[str, Tensor]:
        """``modality_maps`` with the tokens that have no 3-D point set to 0 when depth is used."""
        maps = self.modality_maps(batch)
        if "depth" not in self.modalities or batch.valid is None:
            return maps
        grid = next(iter(maps.values())).shape[-2:]
        scored = valid_tokens(batch, grid).reshape(len(batch), *grid)
        return {m: value * scored for m, value in maps.items()}

    def anomaly_map(self, batch: Batch) -> Tensor:
        maps = self.scored_modality_maps(batch)
        return torch.stack([maps[m] / self.map_scale[i] for i, m in enumerate(self.modalities)]).amax(dim=0)

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Batch]) -> None:
        """Set each modality's scale to its mean image maximum on this experience's normal training data."""
        totals = torch.zeros(len(self.modalities), device=self.map_scale.device)
        count = 0
        for batch in batches:
            maps = self.scored_modality_maps(batch)
            for index, modality in enumerate(self.modalities):
                totals[index] += maps[modality].flatten(1).amax(dim=1).sum()
            count += len(batch)
        if count:
            self.map_scale.copy_((totals / count).clamp_min(1e-8))
