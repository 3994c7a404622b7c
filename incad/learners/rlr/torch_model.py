"""RLR: reconstruct frozen features from a learnable reference, never from the input itself.

Per modality and per feature level, a :class:`ReferenceReconstructor` (LCA +
MLKA blocks, alpha * LCA + MLKA, no residual from the input, LN/FFN) rebuilds
the (jittered, while training) features from its own learnable reference; loss
and score are MSE + (1 - cos) (``loss.py``). Works for ``rgb``, ``depth`` and
``rgb+depth``.

Choices the paper and its public code leave open, written down:

- Levels: EfficientNet-Lite0 (the offline backbone; RLR uses B6) at strides 8
  and 16, like the public code's two stages at 256 px. Each level holds all
  three taps (strides 4, 8, 16) on its grid, as the other learners' aligned
  features do: the stride-8 map is computed and cached once, and the stride-16
  level is its 2x2 average, so one backbone pass feeds both levels.
- Local aggregation (eq. 1-2): 3x3 average pooling with stride 1, borders
  averaged over the pixels inside the map only.
- Windows 7 (stride 8) and 5 (stride 16), the public values for 32x32 and
  16x16 grids; a window is clipped below the grid size so MLKA always has keys
  (see :func:`incad.models.layers.reference_attention.effective_window`).
- Feature perturbation: UniAD's jitter (``randn * ||token||/C * scale``) with
  scale 4, the public code's value.
- Map: per modality, the level scores upsampled (bilinear) to the stride-8 grid
  and averaged (eq. 16); ``rgb+depth`` fuses the two modality maps by the
  maximum after dividing each by its mean image maximum on normal training
  data (tokens without 3-D points unscored, see ``ScaledModalityMaps``).
- ``map_score``: ``mse+cos`` is the paper's score; ``cos`` drops the MSE from
  the map (the loss keeps both). Lite0's unnormalised features make the MSE
  the larger part and it tracks feature energy more than defects: on the
  synthetic set ``cos`` alone scored clearly higher per-modality image AUROC
  (README, Benchmarks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor, nn

from incad.data.sample import Batch
from incad.learners.base import LearnerOptions, modality_input
from incad.learners.features import ScaledModalityMaps, frozen_features
from incad.learners.registry import register_learner
from incad.learners.rlr.loss import level_reconstruction_term, token_error
from incad.learners.terms import LossTerm
from incad.models.backbones.cache import FeatureCache
from incad.models.backbones.efficientnet import align_to_grid
from incad.models.backbones.registry import create_backbone
from incad.models.layers import feature_jitter
from incad.models.layers.reference_attention import ReferenceReconstructor

FINEST_STRIDE = 8


class RLROptions(LearnerOptions):
    """YAML options of ``learner: rlr`` (defaults follow RLR's paper and public code)."""

    backbone: str = "efficientnet-lite0"
    backbone_weights: str = "imagenet"
    cache_features: bool = True
    levels: list[int] = [8, 16]
    hidden_dims: list[int] = [128, 256]
    windows: list[int] = [7, 5]
    num_blocks: int = 4
    num_heads: int = 4
    feedforward_ratio: int = 4
    alpha: float = 2.0
    dropout: float = 0.0
    jitter_scale: float = 4.0
    jitter_prob: float = 1.0
    map_score: Literal["mse+cos", "cos"] = "mse+cos"

    @model_validator(mode="after")
    def _one_setting_per_level(self) -> "RLROptions":
        if not (len(self.levels) == len(self.hidden_dims) == len(self.windows)) or not self.levels:
            raise ValueError("levels, hidden_dims and windows need one entry per level")
        if any(level not in (8, 16) for level in self.levels) or len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels are distinct strides among 8 and 16, got {self.levels}")
        return self


@register_learner("rlr")
class RLRLearner(ScaledModalityMaps):
    """Frozen backbone + one reference reconstructor per (modality, level)."""

    Options = RLROptions

    def __init__(self, options: RLROptions, modality: str, class_names: Sequence[str], image_size: int) -> None:
        super().__init__(modality, class_names)
        self.options = options
        self.backbone = create_backbone(options.backbone, weights=options.backbone_weights)
        self.grids = {level: (math.ceil(image_size / level),) * 2 for level in options.levels}
        self.map_grid = self.grids[min(options.levels)]
        self.reconstructors = nn.ModuleDict(
            {
                self._key(m, level): ReferenceReconstructor(
                    channels=self.backbone.out_channels,
                    grid=self.grids[level],
                    hidden_dim=hidden,
                    num_heads=options.num_heads,
                    num_blocks=options.num_blocks,
                    window=window,
                    alpha=options.alpha,
                    feedforward_ratio=options.feedforward_ratio,
                    dropout=options.dropout,
                )
                for m in self.modalities
                for level, hidden, window in zip(options.levels, options.hidden_dims, options.windows)
            }
        )
        self.feature_cache = FeatureCache(self.finest_features) if options.cache_features else None

    @staticmethod
    def _key(modality: str, level: int) -> str:
        return f"{modality}_s{level}"

    def finest_features(self, images: Tensor) -> Tensor:
        """All backbone taps on the stride-8 grid: (B, C, ceil(H/8), ceil(W/8))."""
        grid = (math.ceil(images.shape[-2] / FINEST_STRIDE), math.ceil(images.shape[-1] / FINEST_STRIDE))
        return align_to_grid(self.backbone(images), grid)

    def level_features(self, batch: Batch, modality: str) -> dict[int, Tensor]:
        """Locally aggregated features of every level as tokens (B, L, C)."""
        images = modality_input(batch, modality)
        finest = frozen_features(self.finest_features, self.feature_cache, images, [f"{p}|{modality}|s8" for p in batch.path])
        levels = {}
        for level in self.options.levels:
            maps = finest if level == FINEST_STRIDE else F.avg_pool2d(finest, level // FINEST_STRIDE, ceil_mode=True)
            maps = F.avg_pool2d(maps, 3, stride=1, padding=1, count_include_pad=False)
            levels[level] = maps.flatten(2).transpose(1, 2)
        return levels

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        outputs: dict[str, Tensor] = {}
        for modality in self.modalities:
            for level, clean in self.level_features(batch, modality).items():
                noisy = feature_jitter(clean, self.options.jitter_scale, self.options.jitter_prob) if self.training else clean
                key = self._key(modality, level)
                outputs[f"{key}/features"] = clean
                outputs[f"{key}/reconstruction"] = self.reconstructors[key](noisy)
        return outputs

    def loss_terms(self) -> list[LossTerm]:
        """Eq. 14 per modality and level, weight 1."""
        keys = [self._key(m, level) for m in self.modalities for level in self.options.levels]
        return [LossTerm(f"rlr/{key}", 1.0, partial(level_reconstruction_term, key=key)) for key in keys]

    def modality_maps(self, batch: Batch) -> dict[str, Tensor]:
        """Per modality, the level scores on the stride-8 grid averaged over levels (eq. 16): (B, h, w)."""
        outputs = self.forward(batch)
        with_mse = self.options.map_score == "mse+cos"
        maps = {}
        for modality in self.modalities:
            per_level = []
            for level in self.options.levels:
                key = self._key(modality, level)
                score = token_error(outputs[f"{key}/reconstruction"], outputs[f"{key}/features"], with_mse=with_mse)
                score = score.reshape(len(batch), 1, *self.grids[level])
                per_level.append(F.interpolate(score, size=self.map_grid, mode="bilinear", align_corners=False))
            maps[modality] = torch.cat(per_level, dim=1).mean(dim=1)
        return maps
