"""PatchCore as a continual learner: one memory bank per modality that every experience extends.

Features (PatchCore, Roth et al., CVPR 2022, as anomalib builds them): the
outputs of the backbone ``taps`` are each averaged over a ``neighbourhood`` x
``neighbourhood`` window ("locally aware" patches), the coarser ones are
resized bilinearly to the finest tap's grid, and all are concatenated. The
default taps, Lite0 blocks 4 and 10 (strides 8 and 16, 40 + 112 channels),
are the ends of timm's stages 2 and 4, i.e. anomalib's ``blocks.2`` and
``blocks.4``. Windows at the border average the cells inside the image
(anomalib's pooling counts the zero padding, darkening border patches).
3-D (``three_d``): the same backbone on the depth image rendered to 3
channels (``depth_backbone``), or FPFH point features (CFM's extractor)
pooled on the same grid, averaged over the neighbourhood's valid cells
(``fpfh``).

Fit (the strategy's ``fit`` stage, at the start of every experience, without
gradients): the experience's patch features go through the greedy k-center
coreset (:func:`incad.ops.coreset.greedy_coreset`, ``coreset_ratio`` of the
patches, at most ``max_bank`` per modality and experience) and the selection is
*appended* to the bank; old entries are never touched, so the bank is
incremental by construction and old classes keep exactly their entries. 3-D
banks hold valid tokens only (cells with 3-D points on at least half their
pixels): the background carries no geometry. There is nothing to train:
``training.epochs`` may be 0, and with more epochs the strategy skips them.

Map: per modality, the distance of each patch to its nearest bank entry over
the whole bank (no class or task id: task-agnostic), in chunks of bounded
memory (:func:`incad.ops.nearest.nearest_neighbours`; on CPUs with native
bfloat16, a bfloat16 product shortlists the candidates and float32 decides,
with the same result); 3-D maps are 0 on
invalid tokens (no geometry, no evidence of a defect; 0 is a normal patch's
floor, so the fused maximum is the RGB one there).

Fusion (``rgb+depth``): each modality's map is divided by its normal image
score and the maps are fused by their maximum, over the tokens with 3-D points
(:class:`ScaledModalityMaps`' rule). With a memory bank, a training patch's
distance to the bank is ~0 (it or a close neighbour was selected), which would
set the scales from coverage noise. So the scale is a *leave-one-image-out*
image score: for (up to ``CALIBRATION_IMAGES``, seeded) training images of the
experience, the maximum over their scored patches of the distance to the bank
without the entries the image itself contributed in this experience, averaged
over the images: the closest stand-in for an unseen normal image that costs one
search, not a coreset per image. It is set in ``fit`` (where the entries'
source images are known), as the mean of every experience's scale so far: one
scale divides every class's map, and old classes' bank entries never change, so
refitting it to the latest experience alone only moved old classes' fused
scores (``experiments/learners/patchcore.yaml``, 3-1 with 2 steps: final mean
I-AUROC 0.879 and FM 0.091 with the latest experience's scale, 0.941 and 0.009
with the mean).

Reweighting (``reweighting: true``, PatchCore's image score): for the patch
with the largest distance s* in a modality's map, with nearest entry m*, the
weight is ``1 - softmax(-)`` of its distances to the ``reweighting_neighbours``
bank entries nearest to m* (first term: m* itself); PatchCore scores the image
w * s*. incad computes image scores outside the learner as the maximum of the
smoothed map, so the learner multiplies that modality's *whole* map by w: the
map's maximum, and so the image score, become w times what they were (up to
smoothing, which is linear), and the ranking of pixels within an image is
unchanged; pixel metrics that pool images (P-AUROC, AUPRO) see the per-image
scaling. Off by default (anomalib's default is on, with 9 neighbours).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from incad.data.sample import Batch
from incad.errors import ConfigError
from incad.learners.base import LearnerOptions, modality_input
from incad.learners.cfm.torch_model import FPFH_SCALE
from incad.learners.features import ScaledModalityMaps, frozen_features, valid_tokens
from incad.learners.registry import register_learner
from incad.learners.terms import LossTerm
from incad.models.backbones.cache import FeatureCache
from incad.models.backbones.efficientnet import MultiScaleFeatures
from incad.models.backbones.fpfh import FPFH_DIM, fpfh_grid_features
from incad.models.backbones.registry import create_backbone
from incad.models.layers.growing import register_growing_buffer
from incad.ops.coreset import greedy_coreset
from incad.ops.nearest import nearest_neighbours

# Training images (per experience, drawn at random) whose leave-one-image-out image scores set the scales.
CALIBRATION_IMAGES = 16


class PatchCoreOptions(LearnerOptions):
    """YAML options of ``learner: patchcore``."""

    backbone: str = "efficientnet-lite0"
    backbone_weights: str = "imagenet"
    taps: list[int] = Field(default_factory=lambda: [4, 10])
    neighbourhood: int = Field(3, ge=1)
    three_d: Literal["depth_backbone", "fpfh"] = "depth_backbone"
    coreset_ratio: float = Field(0.1, gt=0.0, le=1.0)
    max_bank: int = Field(100_000, ge=1)
    projection_dim: int | None = Field(None, ge=1)
    reweighting: bool = False
    reweighting_neighbours: int = Field(9, ge=2)
    seed: int = 0
    cache_features: bool = True

    @field_validator("neighbourhood")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd so the window is centred on its patch, got {value}")
        return value


class PatchFeatures(nn.Module):
    """Locally aware patch features of images (backbone taps) and of organized point clouds (FPFH).

    A module of its own (frozen backbone only), so the feature caches it feeds
    are keyed by the backbone's weights, not by the learner's growing banks.
    """

    def __init__(self, backbone: MultiScaleFeatures, neighbourhood: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.neighbourhood = neighbourhood
        self.stride = backbone.tap_strides[0]

    def local_average(self, features: Tensor, weights: Tensor | None = None) -> Tensor:
        """Mean over each patch's neighbourhood window (over the cells with ``weights`` > 0 when given)."""
        size = self.neighbourhood
        if weights is None:
            return F.avg_pool2d(features, size, stride=1, padding=size // 2, count_include_pad=False)
        total = F.avg_pool2d(features * weights, size, stride=1, padding=size // 2)
        return total / F.avg_pool2d(weights, size, stride=1, padding=size // 2).clamp_min(1e-6)

    def image_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, h, w) on the finest tap's grid: averaged taps, resized, concatenated."""
        taps = [self.local_average(tap) for tap in self.backbone(images)]
        grid = taps[0].shape[-2:]
        resized = [tap if tap.shape[-2:] == grid else F.interpolate(tap, size=grid, mode="bilinear", align_corners=False) for tap in taps]
        return torch.cat(resized, dim=1)

    def point_features(self, xyz: Tensor) -> Tensor:
        """(B, 3, H, W) organized clouds -> (B, 33, h, w): FPFH per cell of the finest tap's grid, averaged over valid cells."""
        cells = fpfh_grid_features(xyz, stride=self.stride) / FPFH_SCALE
        occupied = (cells.abs().sum(dim=1, keepdim=True) > 0).to(cells.dtype)
        return self.local_average(cells, occupied)


@register_learner("patchcore")
class PatchCoreLearner(ScaledModalityMaps):
    """Frozen locally aware features + a growing memory bank per modality; nothing is trained."""

    Options = PatchCoreOptions
    name = "patchcore"

    def __init__(self, options: PatchCoreOptions, modality: str, class_names: Sequence[str], image_size: int) -> None:
        super().__init__(modality, class_names)
        self.options = options
        backbone = create_backbone(options.backbone, weights=options.backbone_weights, taps=options.taps)
        self.patch_features = PatchFeatures(backbone, options.neighbourhood)
        self.grid = (math.ceil(image_size / self.patch_features.stride),) * 2
        self.image_cache = FeatureCache(self.patch_features.image_features) if options.cache_features else None
        self.point_cache = FeatureCache(self.patch_features.point_features) if options.cache_features else None
        for modality_name in self.modalities:
            register_growing_buffer(self, f"bank_{modality_name}", torch.empty(0, self.channels(modality_name)))
        self.register_buffer("fits", torch.zeros((), dtype=torch.long))

    def channels(self, modality: str) -> int:
        if modality == "depth" and self.options.three_d == "fpfh":
            return FPFH_DIM
        return self.patch_features.backbone.out_channels

    def bank(self, modality: str) -> Tensor:
        return getattr(self, f"bank_{modality}")

    def features(self, batch: Batch) -> dict[str, tuple[Tensor, Tensor | None]]:
        """Per modality, the (B, L, C) patch tokens and for 3-D the (B, L) valid-token mask (None for RGB).

        The modalities the backbone reads (RGB, and depth with ``depth_backbone``)
        go through it together, as one batch: one pass instead of one per modality.
        """
        suffix = f"taps{self.options.taps}|n{self.options.neighbourhood}"
        maps = {}
        if "depth" in self.modalities and self.options.three_d == "fpfh":
            if batch.xyz is None:
                raise ValueError(f"{batch.path[0]}: three_d 'fpfh' needs the organized point cloud, but the batch has no xyz")
            keys = [f"{path}|fpfh|depth|{suffix}" for path in batch.path]
            maps["depth"] = frozen_features(self.patch_features.point_features, self.point_cache, batch.xyz, keys)
        imaged = [m for m in self.modalities if m not in maps]
        if imaged:
            inputs = torch.cat([modality_input(batch, m) for m in imaged])
            keys = [f"{path}|{m}|{suffix}" for m in imaged for path in batch.path]
            stacked = frozen_features(self.patch_features.image_features, self.image_cache, inputs, keys)
            maps.update(zip(imaged, stacked.split(len(batch))))
        return {
            m: (maps[m].flatten(2).transpose(1, 2), valid_tokens(batch, maps[m].shape[-2:]) if m == "depth" else None)
            for m in self.modalities
        }

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """The patch tokens of each modality (there is no training output: the bank is fitted, not trained)."""
        return {f"{m}/features": tokens for m, (tokens, _) in self.features(batch).items()}

    def loss_terms(self) -> list[LossTerm]:
        """No loss: PatchCore has no trainable parameter, so the strategy runs no epoch for it."""
        return []

    @torch.no_grad()
    def fit(self, batches: Iterable[Batch]) -> None:
        """Append this experience's coreset to every modality's bank and fold its leave-one-image-out scales into the mean."""
        tokens: dict[str, list[Tensor]] = {m: [] for m in self.modalities}
        images: dict[str, list[Tensor]] = {m: [] for m in self.modalities}
        scored: dict[str, list[Tensor]] = {m: [] for m in self.modalities}
        seen = 0
        for batch in batches:
            scored_tokens = self.scored_tokens(batch)
            for modality, (features, valid) in self.features(batch).items():
                owner = torch.arange(seen, seen + len(batch), device=features.device)[:, None].expand(features.shape[:2])
                keep = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device) if valid is None else valid
                tokens[modality].append(features[keep])
                images[modality].append(owner[keep])
                scored[modality].append(keep[keep] if scored_tokens is None else scored_tokens.to(keep.device)[keep])
            seen += len(batch)
        seed = self.options.seed + 1000 * int(self.fits)
        calibration_images = torch.randperm(seen, generator=torch.Generator().manual_seed(seed))[:CALIBRATION_IMAGES]
        for index, modality in enumerate(self.modalities):
            features, owner = torch.cat(tokens[modality]), torch.cat(images[modality])
            if len(features) == 0:
                raise ValueError(f"patchcore: the experience's training images have no valid {modality} patch to fill the bank with")
            size = min(math.ceil(self.options.coreset_ratio * len(features)), self.options.max_bank)
            chosen = greedy_coreset(features, size, self.options.projection_dim, seed + index)
            old = self.bank(modality)
            calibration = torch.cat(scored[modality]) & torch.isin(owner, calibration_images.to(owner.device))
            latest = self.leave_one_image_out_scale(features, owner, calibration, old, chosen)
            self.map_scale[index] = (self.map_scale[index] * self.fits + latest) / (self.fits + 1)
            setattr(self, f"bank_{modality}", torch.cat([old, features[chosen].to(old.dtype)]))
        self.fits += 1

    def scored_tokens(self, batch: Batch) -> Tensor | None:
        """(B, L) tokens that count in the image score (those with 3-D points when depth is used), None for all."""
        if "depth" not in self.modalities or batch.valid is None:
            return None
        return valid_tokens(batch, self.grid)

    def leave_one_image_out_scale(self, features: Tensor, owner: Tensor, calibration: Tensor, old_bank: Tensor, chosen: Tensor) -> Tensor:
        """Mean over the calibration images of their largest distance to the new bank without their own new entries."""
        bank = torch.cat([old_bank, features[chosen]])
        bank_owner = torch.cat([torch.full((len(old_bank),), -1, device=owner.device, dtype=owner.dtype), owner[chosen]])
        distances, _ = nearest_neighbours(features[calibration], bank, owner[calibration], bank_owner)
        finite = torch.isfinite(distances)
        if not finite.any():
            return torch.ones((), device=features.device)
        image_of = owner[calibration][finite]
        image_max = torch.zeros(int(owner.max()) + 1, device=features.device).scatter_reduce(0, image_of, distances[finite], "amax")
        return image_max[image_of.unique()].mean().clamp_min(1e-8)

    def calibrate(self, batches: Iterable[Batch]) -> None:
        """Nothing after the epochs: the scales are set in ``fit``, where each bank entry's source image is known."""

    def modality_maps(self, batch: Batch) -> dict[str, Tensor]:
        """Per modality, each patch's distance to its nearest bank entry, (B, h, w); 0 on tokens that are not scored.

        Only the scored tokens (:meth:`scored_tokens`; with depth, those with 3-D
        points) are searched: the others are 0 in the fused map whatever their
        distance, and the search is most of the cost.
        """
        scored = self.scored_tokens(batch)
        maps = {}
        for modality, (tokens, _) in self.features(batch).items():
            bank = self.bank(modality)
            if len(bank) == 0:
                raise ConfigError("patchcore: the memory bank is empty; the learner must be fitted on an experience before it scores")
            searched = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device) if scored is None else scored.to(tokens.device)
            distances = tokens.new_zeros(tokens.shape[:2])
            nearest = torch.zeros(tokens.shape[:2], dtype=torch.long, device=tokens.device)
            distances[searched], nearest[searched] = nearest_neighbours(tokens[searched], bank, shortlist=True)
            if self.options.reweighting:
                distances = distances * self.reweighting(tokens, distances, nearest, bank)[:, None]
            maps[modality] = distances.reshape(len(batch), *self.grid)
        return maps

    def reweighting(self, tokens: Tensor, distances: Tensor, nearest: Tensor, bank: Tensor) -> Tensor:
        """PatchCore's image weight (B,): 1 - softmax of the top patch's distances to its entry's bank neighbours, first term."""
        rows = torch.arange(len(tokens), device=tokens.device)
        top = distances.argmax(dim=1)
        top_features = tokens[rows, top]
        entries = bank[nearest[rows, top]]
        neighbours = min(self.options.reweighting_neighbours, len(bank))
        support = torch.cdist(entries, bank).topk(neighbours, largest=False).indices
        support_distances = (top_features[:, None] - bank[support]).norm(dim=-1)
        return 1.0 - torch.softmax(support_distances, dim=1)[:, 0]

    def step_report(self) -> dict[str, float]:
        """Bank entries per modality after the latest experience."""
        return {f"bank_size/{m}": float(len(self.bank(m))) for m in self.modalities}
