"""CFM: anomalies are where RGB and 3-D features stop predicting each other.

Two small networks map RGB tokens to 3-D tokens and back, trained with
1 - cos on valid tokens only (tokens whose cell has 3-D points). At test time
the anomaly map is the product of the two mapping errors (Euclidean distance
between mapped and true features, as in CFM's public code), zero on the
background: a defect that breaks the correspondence in either direction
raises both factors where it is, while normal textures that one modality alone
finds unusual are damped by the other.

Choices written down:

- 2-D features: EfficientNet-Lite0's taps aligned on the stride-16 grid (the
  paper uses DINO ViT-B/8). 3-D features (``features_3d``): the same frozen
  backbone on the depth image (``depth_backbone``), or FPFH point features of
  the organized cloud pooled per token (``fpfh``); Point-MAE, the paper's
  choice, has no offline weights.
- The mapping MLPs are Linear-GELU-Linear-GELU-Linear with ``hidden_dim``
  units (the public code's three-layer shape).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from incad.data.sample import Batch
from incad.learners.base import Learner, LearnerOptions, modality_input
from incad.learners.cfm.loss import mapping_2d_to_3d_term, mapping_3d_to_2d_term
from incad.learners.features import frozen_features, require_rgb_and_depth, valid_tokens
from incad.learners.registry import register_learner
from incad.learners.terms import LossTerm
from incad.models.backbones.cache import FeatureCache
from incad.models.backbones.fpfh import FPFH_DIM, fpfh_grid_features
from incad.models.backbones.registry import create_backbone

# open3d's FPFH is three 11-bin histograms that each sum to 200 (the point's own 100 plus its
# neighbours' weighted 100): scaled to fractions.
FPFH_SCALE = 200.0


class CFMOptions(LearnerOptions):
    """YAML options of ``learner: cfm``."""

    backbone: str = "efficientnet-lite0"
    backbone_weights: str = "imagenet"
    cache_features: bool = True
    features_3d: Literal["depth_backbone", "fpfh"] = "depth_backbone"
    hidden_dim: int = 512


def mapping_mlp(in_channels: int, out_channels: int, hidden_dim: int) -> nn.Module:
    """CFM's feature-projection MLP on (B, L, C) tokens."""
    return nn.Sequential(
        nn.Linear(in_channels, hidden_dim),
        nn.GELU(),
        nn.Linear(hidden_dim, hidden_dim),
        nn.GELU(),
        nn.Linear(hidden_dim, out_channels),
    )


@register_learner("cfm")
class CFMLearner(Learner):
    """Frozen 2-D and 3-D features + two cross-modal mapping networks."""

    Options = CFMOptions
    name = "cfm"

    def __init__(self, options: CFMOptions, modality: str, class_names: Sequence[str], image_size: int) -> None:
        require_rgb_and_depth(self.name, modality)
        super().__init__(modality, class_names)
        self.options = options
        self.backbone = create_backbone(options.backbone, weights=options.backbone_weights)
        self.grid = self.backbone.aligned_grid(image_size, image_size)
        self.channels_2d = self.backbone.out_channels
        self.channels_3d = FPFH_DIM if options.features_3d == "fpfh" else self.backbone.out_channels
        self.map_2d_to_3d = self.build_mapping_2d_to_3d()
        self.map_3d_to_2d = self.build_mapping(self.channels_3d, self.channels_2d)
        self.feature_cache = FeatureCache(self.backbone.forward_aligned) if options.cache_features else None
        self.fpfh_cache = FeatureCache(fpfh_grid_features) if options.cache_features else None

    def build_mapping(self, in_channels: int, out_channels: int) -> nn.Module:
        return mapping_mlp(in_channels, out_channels, self.options.hidden_dim)

    def build_mapping_2d_to_3d(self) -> nn.Module:
        """The RGB -> 3-D net: ``build_mapping``'s, unless a learner maps this direction its own way (text_guided's GACM)."""
        return self.build_mapping(self.channels_2d, self.channels_3d)

    def _tokens(self, batch: Batch, modality: str) -> Tensor:
        images = modality_input(batch, modality)
        maps = frozen_features(self.backbone.forward_aligned, self.feature_cache, images, [f"{p}|{modality}" for p in batch.path])
        return maps.flatten(2).transpose(1, 2)

    def features(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(2-D tokens (B, L, C2), 3-D tokens (B, L, C3)) of a batch."""
        features_2d = self._tokens(batch, "rgb")
        if self.options.features_3d == "depth_backbone":
            return features_2d, self._tokens(batch, "depth")
        if batch.xyz is None:
            raise ValueError(f"{batch.path[0]}: features_3d 'fpfh' needs the organized point cloud, but the batch has no xyz")
        keys = [f"{p}|fpfh" for p in batch.path]
        maps = frozen_features(fpfh_grid_features, self.fpfh_cache, batch.xyz, keys) / FPFH_SCALE
        return features_2d, maps.flatten(2).transpose(1, 2)

    def paired_valid_tokens(self, batches: Iterable[Batch], purpose: str) -> tuple[Tensor, Tensor]:
        """(N, C2d) and (N, C3d) frozen features of every valid token of ``batches``, row i of both from the same cell, on the CPU."""
        collected_2d, collected_3d = [], []
        for batch in batches:
            features_2d, features_3d = self.features(batch)
            valid = valid_tokens(batch, self.grid)
            collected_2d.append(features_2d[valid].cpu())
            collected_3d.append(features_3d[valid].cpu())
        tokens_2d, tokens_3d = torch.cat(collected_2d), torch.cat(collected_3d)
        if len(tokens_2d) == 0:
            raise ValueError(f"{type(self).__name__}: the experience's training images have no valid token to {purpose}")
        return tokens_2d, tokens_3d

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        features_2d, features_3d = self.features(batch)
        return {
            "2d/features": features_2d,
            "3d/features": features_3d,
            "2d/predicted": self.map_3d_to_2d(features_3d),
            "3d/predicted": self.map_2d_to_3d(features_2d),
            "valid": valid_tokens(batch, self.grid),
        }

    def loss_terms(self) -> list[LossTerm]:
        """1 - cos of both mapping directions, weight 1."""
        return [LossTerm("mapping/2d_to_3d", 1.0, mapping_2d_to_3d_term), LossTerm("mapping/3d_to_2d", 1.0, mapping_3d_to_2d_term)]

    def anomaly_map(self, batch: Batch) -> Tensor:
        outputs = self.forward(batch)
        error_2d = (outputs["2d/predicted"] - outputs["2d/features"]).norm(dim=-1)
        error_3d = (outputs["3d/predicted"] - outputs["3d/features"]).norm(dim=-1)
        return (error_2d * error_3d * outputs["valid"]).reshape(len(batch), *self.grid)
