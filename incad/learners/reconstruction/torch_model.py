"""The unified reconstruction learner IB-IUMAD builds on (UniAD/IUF style).

Frozen multi-scale EfficientNet features are aligned to one stride-16 grid;
during training they are perturbed by feature jitter and a transformer
encoder-decoder with learned queries reconstructs the clean features. At test
time the per-token distance between features and reconstruction is the
anomaly map: L2 as in UniAD/IUF by default, or ``map_distance: cosine``, which
ignores the feature-magnitude variation of normal textures and scored higher
image AUROC on the synthetic set after short CPU training (README, Benchmarks). One reconstruction branch per modality; for ``rgb+depth`` each
distance map is divided by its mean image maximum on the clean (unjittered)
normal training images of the last experience (``calibrate``; tokens without
3-D points are not scored, see :class:`ScaledModalityMaps`)
and the fused map is their pixel-wise maximum: a defect that shows in one
modality only (a stain in RGB, a dent in depth) is not diluted by the other
modality's normal noise, which a sum would add (max scored higher I-AUROC
than sum on every synthetic class tried; README, Benchmarks).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from incad.data.sample import Batch
from incad.learners.base import LearnerOptions, modality_input
from incad.learners.features import ScaledModalityMaps, cosine_distance, frozen_features
from incad.learners.reconstruction.loss import reconstruction_term
from incad.learners.registry import register_learner
from incad.learners.terms import LossTerm
from incad.models.backbones.cache import FeatureCache
from incad.models.backbones.registry import create_backbone
from incad.models.layers import feature_jitter, sine_position_embedding_2d, use_fast_dropout


class ReconstructionOptions(LearnerOptions):
    """YAML options of ``learner: reconstruction`` (defaults follow IUF/UniAD)."""

    backbone: str = "efficientnet-lite0"
    backbone_weights: str = "imagenet"
    hidden_dim: int = 256
    num_heads: int = 8
    encoder_layers: int = 4
    decoder_layers: int = 4
    feedforward_dim: int = 1024
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # Dropout on the attention weights; None: ``dropout`` (UniAD). Any value above 0 runs the unfused attention
    # (softmax matrix, then the mask); with the hashed CPU masks 0 saves only about 4 % of a step, and with
    # torch's masks the plain learner forgot more without it (README, Benchmarks).
    attention_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    jitter_scale: float = 20.0
    jitter_prob: float = 1.0
    cache_features: bool = True
    map_distance: Literal["l2", "cosine"] = "l2"


class FeatureReconstructor(nn.Module):
    """Transformer that maps (jittered) tokens (B, L, C) back to clean tokens (B, L, C)."""

    def __init__(self, in_channels: int, grid: tuple[int, int], options: ReconstructionOptions) -> None:
        super().__init__()
        self.grid = grid
        dim = options.hidden_dim
        self.input_projection = nn.Linear(in_channels, dim)
        self.register_buffer("position", sine_position_embedding_2d(*grid, dim), persistent=False)
        layer_args = dict(
            d_model=dim,
            nhead=options.num_heads,
            dim_feedforward=options.feedforward_dim,
            dropout=options.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_args), options.encoder_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_args), options.decoder_layers)
        if options.attention_dropout is not None:
            for attention in self.modules():
                if isinstance(attention, nn.MultiheadAttention):
                    attention.dropout = options.attention_dropout
        use_fast_dropout(self)  # torch's CPU Bernoulli masks were a third of a training step
        self.queries = nn.Parameter(torch.zeros(grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.output_projection = nn.Linear(dim, in_channels)

    def decode(self, tokens: Tensor, injections: Sequence[Tensor] = ()) -> list[Tensor]:
        """Hidden states (B, L, hidden_dim) after every decoder layer.

        ``injections[k]``, if given, is added to the decoder's running state
        before layer ``k``: the hook through which IB-IUMAD's Mamba decoder
        outputs assist the reconstruction.
        """
        memory = self.encoder(self.input_projection(tokens) + self.position)
        hidden = (self.queries + self.position).expand(tokens.shape[0], -1, -1)
        states = []
        for index, layer in enumerate(self.decoder.layers):
            if index < len(injections):
                hidden = hidden + injections[index]
            hidden = layer(hidden, memory)
            states.append(hidden)
        return states

    def forward(self, tokens: Tensor) -> Tensor:
        return self.output_projection(self.decode(tokens)[-1])


@register_learner("reconstruction")
class ReconstructionLearner(ScaledModalityMaps):
    """Backbone + one :class:`FeatureReconstructor` per modality."""

    Options = ReconstructionOptions

    def __init__(self, options: ReconstructionOptions, modality: str, class_names: Sequence[str], image_size: int) -> None:
        super().__init__(modality, class_names)
        self.options = options
        self.backbone = create_backbone(options.backbone, weights=options.backbone_weights)
        self.grid = self.backbone.aligned_grid(image_size, image_size)
        self.reconstructors = nn.ModuleDict(
            {m: FeatureReconstructor(self.backbone.out_channels, self.grid, options) for m in self.modalities}
        )
        self.feature_cache = FeatureCache(self.backbone.forward_aligned) if options.cache_features else None

    def features(self, batch: Batch, modality: str) -> Tensor:
        """Frozen aligned backbone features as tokens (B, L, C)."""
        keys = [f"{path}|{modality}" for path in batch.path]
        maps = frozen_features(self.backbone.forward_aligned, self.feature_cache, modality_input(batch, modality), keys)
        return maps.flatten(2).transpose(1, 2)

    def clean_and_jittered(self, batch: Batch, modality: str) -> tuple[Tensor, Tensor]:
        """The reconstruction target and the network input: jittered while training, clean otherwise."""
        clean = self.features(batch, modality)
        if not self.training:
            return clean, clean
        return clean, feature_jitter(clean, self.options.jitter_scale, self.options.jitter_prob)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        outputs: dict[str, Tensor] = {}
        for modality in self.modalities:
            clean, noisy = self.clean_and_jittered(batch, modality)
            outputs[f"{modality}/features"] = clean
            outputs[f"{modality}/reconstruction"] = self.reconstructors[modality](noisy)
        return outputs

    def loss_terms(self) -> list[LossTerm]:
        """One reconstruction MSE per modality, weight 1."""
        return [LossTerm(f"reconstruction/{m}", 1.0, partial(reconstruction_term, modality=m)) for m in self.modalities]

    def decoder_output_projections(self) -> list[nn.Linear]:
        """Each decoder layer's feed-forward output layer (``linear2``), modality by modality, layer by layer."""
        return [layer.linear2 for m in self.modalities for layer in self.reconstructors[m].decoder.layers]

    def decoder_middle_layers(self) -> list[nn.Module]:
        """Each modality's middle decoder layer (the lower middle for an even layer count), as IUF reads it."""
        decoders = [self.reconstructors[m].decoder for m in self.modalities]
        return [decoder.layers[(len(decoder.layers) - 1) // 2] for decoder in decoders]

    def compared_features(self, outputs: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """Per modality, the (features, reconstruction) pair whose distance is the anomaly map."""
        return {m: (outputs[f"{m}/features"], outputs[f"{m}/reconstruction"]) for m in self.modalities}

    def modality_maps(self, batch: Batch) -> dict[str, Tensor]:
        """Per modality, the distance between features and their reconstruction, (B, h, w)."""
        pairs = self.compared_features(self.forward(batch))
        return {m: self.token_distance(*pairs[m]).reshape(len(batch), *self.grid) for m in self.modalities}

    def token_distance(self, features: Tensor, reconstruction: Tensor) -> Tensor:
        """Per-token distance (B, L): L2 (UniAD) or 1 - cosine, as the options say."""
        if self.options.map_distance == "cosine":
            return cosine_distance(features, reconstruction)
        return (features - reconstruction).norm(dim=-1)
