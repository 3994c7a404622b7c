"""Uni-RCM: CFM's two mapping directions built from reference-guide blocks, plus an offline residual quantizer.

- Mapping nets (2-D -> 3-D and 3-D -> 2-D): :class:`ReferenceGuidedMapping`,
  Linear + LayerNorm + 2-D position embedding, ``num_blocks`` reference-guide
  blocks sharing one learnable reference, a Linear head. Loss: 1 - cos over
  valid tokens plus ``mse_weight`` (0.01) x MSE.
- Residual quantizer, one per modality (:class:`ResidualQuantizer`): cascaded
  k-means codebooks of the frozen normal features of valid tokens, level 1 on
  L2-normalised features, later levels on residuals; the error is the final
  residual norm, max-normalised per image. It is fitted by the learner's
  ``fit`` stage, which the strategy runs at the start of every experience on
  that experience's training data, before the epochs.
- Map: ``(cos2d + qe_weight_2d * qe2d) * (cos3d + qe_weight_3d * qe3d)`` with
  cos = 1 - cosine similarity of mapped and true features and qe the
  quantization errors (public code: 0.05 and 0.10), zero on the background.

Incremental steps: the first experience fits the codebooks; every later one
*extends* them: k-means on the new experience's features only gives
``codes_per_fit`` new centroids per level (level 1 on the normalised features,
level k on the residuals left by the already extended levels 1..k-1), appended
after the old ones, which stay bit-identical. No earlier data is needed, and
the old classes keep the codes that describe them.

Choices written down: the public code fits K = 4096 (RGB) / 1024 (3-D) codes
on the whole training set; with one fit per experience the defaults are 256 /
64 codes per level per experience, on at most ``fit_tokens`` valid tokens drawn
at random (seeded) from the experience, which keeps k-means to seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from incad.data.sample import Batch
from incad.learners.cfm.torch_model import CFMLearner, CFMOptions
from incad.learners.features import cosine_distance
from incad.learners.registry import register_learner
from incad.learners.terms import LossTerm, declared
from incad.learners.uni_rcm.loss import mapping_mse_term
from incad.models.layers.reference_attention import ReferenceGuidedMapping
from incad.models.layers.residual_quantizer import ResidualQuantizer


class UniRCMOptions(CFMOptions):
    """YAML options of ``learner: uni_rcm`` (defaults follow the public code where it gives them)."""

    num_blocks: int = 3
    mse_weight: float = 0.01
    quantizer_levels: int = 4
    codes_per_fit_2d: int = 256
    codes_per_fit_3d: int = 64
    fit_tokens: int = 20000
    qe_weight_2d: float = 0.05
    qe_weight_3d: float = 0.10
    seed: int = 0


def max_normalised(error: Tensor, valid: Tensor) -> Tensor:
    """(B, L) errors divided by each image's largest error on its valid tokens."""
    peak = error.masked_fill(~valid, 0.0).amax(dim=1, keepdim=True)
    return error / peak.clamp_min(1e-8)


@register_learner("uni_rcm")
class UniRCMLearner(CFMLearner):
    """CFM with reference-guided mapping nets and per-modality residual quantizers."""

    Options = UniRCMOptions
    name = "uni_rcm"

    def __init__(self, options: UniRCMOptions, modality: str, class_names: Sequence[str], image_size: int) -> None:
        super().__init__(options, modality, class_names, image_size)
        self.quantizer_2d = ResidualQuantizer(self.channels_2d, options.quantizer_levels, options.codes_per_fit_2d, options.seed)
        self.quantizer_3d = ResidualQuantizer(self.channels_3d, options.quantizer_levels, options.codes_per_fit_3d, options.seed + 1)

    def build_mapping(self, in_channels: int, out_channels: int) -> nn.Module:
        return ReferenceGuidedMapping(in_channels, out_channels, self.grid, self.options.hidden_dim, self.options.num_blocks)

    def loss_terms(self) -> list[LossTerm]:
        """CFM's 1 - cos terms, then the public code's 0.01 x MSE; ``mse_weight: 0`` switches the latter off."""
        return super().loss_terms() + declared([LossTerm("mapping/mse", self.options.mse_weight, mapping_mse_term)])

    @torch.no_grad()
    def fit(self, batches: Iterable[Batch]) -> None:
        """Fit (first experience) or extend (later ones) both codebooks on this experience's valid tokens."""
        tokens_2d, tokens_3d = self.paired_valid_tokens(batches, "fit the codebooks on")
        generator = torch.Generator().manual_seed(self.options.seed + int(self.quantizer_2d.fits))
        chosen = torch.randperm(len(tokens_2d), generator=generator)[: self.options.fit_tokens]
        device = self.quantizer_2d.codebook_0.device
        self.quantizer_2d.extend(tokens_2d[chosen].to(device))
        self.quantizer_3d.extend(tokens_3d[chosen].to(device))

    def anomaly_map(self, batch: Batch) -> Tensor:
        outputs = self.forward(batch)
        valid = outputs["valid"]
        options = self.options
        quantization_2d = max_normalised(self.quantizer_2d.error(outputs["2d/features"]), valid)
        quantization_3d = max_normalised(self.quantizer_3d.error(outputs["3d/features"]), valid)
        score_2d = cosine_distance(outputs["2d/predicted"], outputs["2d/features"]) + options.qe_weight_2d * quantization_2d
        score_3d = cosine_distance(outputs["3d/predicted"], outputs["3d/features"]) + options.qe_weight_3d * quantization_3d
        return (score_2d * score_3d * valid).reshape(len(batch), *self.grid)
