"""Text-guided multimodal unified AD: CFM's cross-modal mapping with a geometry-aware mapper and text anchors of normality.

Li et al., "Text-Guided Multimodal Unified Industrial Anomaly Detection"
(arXiv 2604.22899). The learner is CFM (:mod:`incad.learners.cfm`: the same
frozen features, valid-token mask and 3-D -> RGB mapping) with:

1. GACM (eq. 1-4, :mod:`incad.learners.text_guided.gacm`) as the RGB -> 3-D
   mapping; 3-D -> RGB and the projections of each modality into the text
   space (``F_rgb->text``, ``F_3d->text``) are dual-layer MLPs
   (Linear-GELU-Linear, ``hidden_dim`` units), as III-A says.
2. Text anchors: every class of the scenario (``Learner.class_names``) gets
   its normal-state prompts (:func:`incad.models.text.normal_state_prompts`),
   embedded once by the frozen encoder ``text_encoder`` and kept as the buffer
   ``prompt_embeddings`` (C, T, D), saved with the model. OCTA (eq. 5-8,
   :mod:`incad.learners.text_guided.octa`: top-``top_k`` of ``num_experts``
   experts, ``num_prototypes`` learnable prototypes) turns a class's prompts
   into its anchor ``F_text->rgb = F_text->3d``.
3. Loss (eq. 9-11): L_vis = CFM's two 1 - cos mapping terms
   (``mapping/2d_to_3d`` weight ``lambda_v2g``, ``mapping/3d_to_2d``
   ``lambda_g2v``), L_text = 1 - cos between each modality's text projection
   and the anchor of the image's class (``text/rgb`` ``lambda_v2t``,
   ``text/3d`` ``lambda_g2t``); all four over valid tokens only (M_xyz; the
   paper names the mask for L_vis, and background tokens carry no object to
   align with text either); a weight of 0 removes its term. With
   ``skip_non_finite_gradients`` an update whose gradients are not all finite
   is skipped (the strategy template does it, III-C3).
4. Map (eq. 12-16): ``alpha * Psi_rgb * Psi_3d + beta * Psi_text``, zero on
   invalid tokens. Psi_rgb and Psi_3d are CFM's Euclidean mapping errors;
   Psi_text is the product over the two modalities of the Euclidean distance
   between the L2-normalised projection and anchor (eq. 15 on unit vectors,
   :func:`incad.learners.text_guided.loss.anchor_distance`). The two parts
   live on unrelated scales, so with ``scale_maps`` (default) each is divided
   by its mean image maximum on the normal training images of the latest
   experience (``calibrate``) before eq. 16 weighs them, which is what makes
   alpha = beta = 0.5 a balance; ``scale_maps: false`` adds them raw as the
   paper writes it.

Psi_text needs the image's class, read from ``batch.object_id``: the text
map is *task-aware* (the paper's setting: the class of the test sample is
known), while the visual part is not. An image with an unknown class
(``object_id`` -1, e.g. ``incad predict`` without ``--object``) is scored
against the anchor of the seen class whose Psi_text is lowest on average
over its valid tokens.

Incremental learning: a class's prompt embeddings exist from the start (all
class names come with the scenario) but enter the loss only once its images
are trained on. The experts, prototypes and projections are shared by all
classes and trained under whatever strategy the run names. An old class's
text anchor is not stored: it is recomputed from its frozen prompt
embeddings through the *current* OCTA, so when later steps change OCTA the
old anchors move with it, and with them the old classes' Psi_text. That
drift is part of what the strategy has to hold back (a regulariser or replay
covers OCTA like any other parameter); the frozen prompt embeddings
themselves never change.

Choices the paper leaves open: MoE gate = one linear layer, softmax over the
top-k logits, experts Linear-GELU-Linear (``expert_hidden_dim``), no
balancing loss; one attention head; eq. 7's MLP of width D and eq. 8's FFN of
width 4D; prototypes initialised N(0, 0.02^2); with several prototypes the
nearest one counts, in the loss and in the map.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from incad.data.sample import Batch
from incad.learners.cfm.loss import mapping_2d_to_3d_term, mapping_3d_to_2d_term
from incad.learners.cfm.torch_model import CFMLearner, CFMOptions
from incad.learners.registry import register_learner
from incad.learners.terms import LossTerm, declared
from incad.learners.text_guided.gacm import GeometryAwareMapper
from incad.learners.text_guided.loss import anchor_distance, text_3d_term, text_rgb_term
from incad.learners.text_guided.octa import ObjectConditionedTextAdaptor
from incad.models.text import prompt_embeddings


class TextGuidedOptions(CFMOptions):
    """YAML options of ``learner: text_guided``."""

    text_encoder: Literal["minilm", "open_clip"] = "minilm"
    clip_model: str = "ViT-B-32"
    clip_weights: str | None = None
    num_experts: int = Field(4, ge=1)
    top_k: int = Field(2, ge=1)
    expert_hidden_dim: int = Field(512, ge=1)
    num_prototypes: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lambda_v2g: float = Field(1.0, ge=0.0)
    lambda_g2v: float = Field(1.0, ge=0.0)
    lambda_v2t: float = Field(1.0, ge=0.0)
    lambda_g2t: float = Field(1.0, ge=0.0)
    alpha: float = Field(0.5, ge=0.0)
    beta: float = Field(0.5, ge=0.0)
    scale_maps: bool = True
    skip_non_finite_gradients: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> TextGuidedOptions:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed num_experts ({self.num_experts})")
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta are both 0, so the anomaly map would be 0 everywhere; set one of them above 0")
        return self


def dual_layer_mlp(in_channels: int, out_channels: int, hidden_dim: int) -> nn.Module:
    """III-A's dual-layer MLP on (B, L, C) tokens."""
    return nn.Sequential(nn.Linear(in_channels, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_channels))


@register_learner("text_guided")
class TextGuidedLearner(CFMLearner):
    """CFM with GACM as the RGB -> 3-D mapping, OCTA text anchors per class, and eq. 16's map."""

    Options = TextGuidedOptions
    name = "text_guided"

    def __init__(self, options: TextGuidedOptions, modality: str, class_names: Sequence[str], image_size: int) -> None:
        super().__init__(options, modality, class_names, image_size)
        self.register_buffer("prompt_embeddings", prompt_embeddings(self.class_names, options.text_encoder, options.clip_model, options.clip_weights))
        text_dim = self.prompt_embeddings.shape[-1]
        self.octa = ObjectConditionedTextAdaptor(text_dim, options.num_experts, options.top_k, options.expert_hidden_dim, options.num_prototypes, options.dropout)
        self.rgb_to_text = self.build_mapping(self.channels_2d, text_dim)
        self.depth_to_text = self.build_mapping(self.channels_3d, text_dim)
        # Eq. 16's two parts (visual, text) are each divided by their scale (1 unless scale_maps).
        self.register_buffer("map_scale", torch.ones(2))
        self.register_buffer("seen_objects", torch.zeros(self.num_objects, dtype=torch.bool))
        self.skip_non_finite_gradients = options.skip_non_finite_gradients

    def build_mapping(self, in_channels: int, out_channels: int) -> nn.Module:
        return dual_layer_mlp(in_channels, out_channels, self.options.hidden_dim)

    def build_mapping_2d_to_3d(self) -> nn.Module:
        return GeometryAwareMapper(self.channels_2d, self.channels_3d)

    def text_anchors(self) -> Tensor:
        """(C, num_prototypes, D): every class's anchor through the current OCTA."""
        return self.octa(self.prompt_embeddings)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """CFM's outputs plus ``2d/text``, ``3d/text`` (B, L, D) and the anchors of each image's class ``text/anchors`` (B, P, D)."""
        outputs = super().forward(batch)
        outputs["2d/text"] = self.rgb_to_text(outputs["2d/features"])
        outputs["3d/text"] = self.depth_to_text(outputs["3d/features"])
        if self.training and bool(((batch.object_id < 0) | (batch.object_id >= self.num_objects)).any()):
            raise ValueError(f"{batch.path[0]}: training needs every image's object id in 0..{self.num_objects - 1}, got {batch.object_id.tolist()}")
        outputs["text/anchors"] = self.text_anchors()[batch.object_id.clamp_min(0)]
        return outputs

    def loss_terms(self) -> list[LossTerm]:
        """L_vis (eq. 9) and L_text (eq. 10) term by term, each weighted by its lambda; a 0 lambda leaves its term out."""
        options = self.options
        return declared(
            [
                LossTerm("mapping/2d_to_3d", options.lambda_v2g, mapping_2d_to_3d_term),
                LossTerm("mapping/3d_to_2d", options.lambda_g2v, mapping_3d_to_2d_term),
                LossTerm("text/rgb", options.lambda_v2t, text_rgb_term),
                LossTerm("text/3d", options.lambda_g2t, text_3d_term),
            ]
        )

    @staticmethod
    def text_map(outputs: dict[str, Tensor], anchors: Tensor) -> Tensor:
        """Eq. 14: (B, L) product of both modalities' distances to (B, P, D) anchors."""
        return anchor_distance(outputs["2d/text"], anchors) * anchor_distance(outputs["3d/text"], anchors)

    def part_maps(self, batch: Batch) -> dict[str, Tensor]:
        """Unscaled (B, L) maps ``visual`` (Psi_rgb * Psi_3d) and ``text`` (Psi_text), and the ``valid`` tokens."""
        outputs = self.forward(batch)
        visual = (outputs["2d/predicted"] - outputs["2d/features"]).norm(dim=-1) * (outputs["3d/predicted"] - outputs["3d/features"]).norm(dim=-1)
        text = self.text_map(outputs, outputs["text/anchors"])
        unknown = batch.object_id < 0
        if unknown.any():
            text[unknown] = self.nearest_anchor_map({k: outputs[k][unknown] for k in ("2d/text", "3d/text", "valid")})
        return {"visual": visual, "text": text, "valid": outputs["valid"]}

    def nearest_anchor_map(self, outputs: dict[str, Tensor]) -> Tensor:
        """Psi_text of images of unknown class: against the seen class (all, before any is seen) with the lowest mean over valid tokens."""
        anchors = self.text_anchors()
        candidates = self.seen_objects.nonzero().flatten().tolist() or list(range(self.num_objects))
        valid = outputs["valid"].to(anchors.dtype)
        maps = torch.stack([self.text_map(outputs, anchors[c].expand(len(valid), -1, -1)) for c in candidates])
        mean = (maps * valid).sum(dim=-1) / valid.sum(dim=-1).clamp_min(1.0)
        return maps.gather(0, mean.argmin(dim=0)[None, :, None].expand(1, *valid.shape))[0]

    def anomaly_map(self, batch: Batch) -> Tensor:
        """Eq. 16 on valid tokens: ``alpha * visual / scale_visual + beta * text / scale_text``."""
        maps = self.part_maps(batch)
        options = self.options
        fused = options.alpha * maps["visual"] / self.map_scale[0] + options.beta * maps["text"] / self.map_scale[1]
        return (fused * maps["valid"]).reshape(len(batch), *self.grid)

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Batch]) -> None:
        """Mark this experience's classes seen; with ``scale_maps``, set each part's scale to its mean image maximum on its normal training images."""
        totals, count = torch.zeros(2, device=self.map_scale.device), 0
        for batch in batches:
            self.seen_objects[batch.object_id.unique()] = True
            if self.options.scale_maps:
                maps = self.part_maps(batch)
                for index, part in enumerate(("visual", "text")):
                    totals[index] += (maps[part] * maps["valid"]).amax(dim=1).sum()
                count += len(batch)
        if count:
            self.map_scale.copy_((totals / count).clamp_min(1e-8))
