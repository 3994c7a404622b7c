"""IB-IUMAD (Long et al.): reconstruction with Mamba decoders and information-bottleneck fusion.

The pieces and the equations they implement:

- MFEN: frozen EfficientNet features per modality, perturbed by feature jitter
  (inherited from the reconstruction learner).
- Mamba decoders (eq. 2): per modality, a chain of ``decoder_layers`` Mamba
  decoder blocks; block ``k``'s output is added to the reconstruction
  network's (MRN's) decoder state before decoder layer ``k``, and the final
  block feeds a label classifier (eq. 3, cross-entropy on the object id).
- IBFM (eq. 4-8): the MRN decoder states after layer 2 (``rec2``) and after the
  last layer (``rec4``; the paper's MRN has 4) of both modalities are
  concatenated per depth, fused by
  the chosen operator (Table 6; cross-attention by default), passed through the
  information-bottleneck projection, and read by one object classifier before
  and after the bottleneck (KL loss, eq. 8).
- Fusion loss (eq. 9) and the anomaly map: a linear head maps the bottlenecked
  fused feature F^g back to feature space.

Choices where the paper is silent, written down:

- Mamba decoders read the same jittered features as the MRN, not the clean
  ones: injecting clean test-time features into the decoder would hand the
  anomaly to the reconstruction (an identity shortcut).
- Eq. 9 compares F^g with the RGB features only. Then a defect that shows only
  in depth could never reach the anomaly map, which the paper says comes from
  the fused reconstruction; so F^g is mapped to the concatenated RGB and depth
  features, and the map is, per modality, the distance between that modality's
  part of the fused reconstruction and its features, each divided by its mean image
  maximum on clean training images and fused by the maximum (as the reconstruction learner).
- The MSE reconstruction loss of each modality's MRN is kept ("we first employ
  the classic MSE loss for reconstruction"), next to eq. 10's four terms.
- IBFM needs both modalities; with ``rgb`` or ``depth`` alone the learner runs
  with ``ibfm: false`` (Mamba decoders and classifiers only).
- Eq. 8 detaches P(Y|F_fu) (F^g is pulled towards it), so a cross-entropy on
  F_fu's prediction (``fused_classifier_weight``, not in eq. 10) keeps that
  target tied to the object labels; without it a constant prediction would
  satisfy the KL trivially.
- Ablations (Table 5): ``mamba: false`` removes the decoders, the injection and
  the classifier terms; ``ibfm: false`` removes the fusion module and its terms
  and scores each modality's own reconstruction.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import model_validator
from torch import Tensor, nn

from incad.data.sample import Batch
from incad.learners.ib_iumad.fusion import FusionName, InformationBottleneckFusion
from incad.learners.ib_iumad.loss import (
    depth_classifier_term,
    fused_classifier_term,
    fusion_term,
    information_bottleneck_term,
    rgb_classifier_term,
)
from incad.learners.reconstruction.torch_model import ReconstructionLearner, ReconstructionOptions
from incad.learners.registry import register_learner
from incad.learners.terms import LossTerm, declared
from incad.models.layers import LabelClassifier, MambaDecoder

# Eq. 4 fuses f^rec2 and f^rec4: the MRN states after decoder layer 2 and after the last (4th) layer.
FUSED_EARLY_LAYER = 2
CLASSIFIER_TERMS = {"rgb": rgb_classifier_term, "depth": depth_classifier_term}


class IBIUMADOptions(ReconstructionOptions):
    """YAML options of ``learner: ib_iumad``; the loss weights are eq. 10's lambdas (1 = paper)."""

    mamba: bool = True
    ibfm: bool = True
    fusion: FusionName = "cross_attention"
    mamba_state_dim: int = 16
    bottleneck_dim: int | None = None
    bottleneck_dropout: float = 0.1
    rgb_classifier_weight: float = 1.0  # lambda_1
    depth_classifier_weight: float = 1.0  # lambda_2
    fusion_weight: float = 1.0  # lambda_3
    information_bottleneck_weight: float = 1.0  # lambda_4
    fused_classifier_weight: float = 1.0  # not in eq. 10: keeps the IB target P(Y|F_fu) tied to the labels

    @model_validator(mode="after")
    def _ibfm_reads_two_depths(self) -> "IBIUMADOptions":
        # With 2 layers, "after layer 2" and "after the last layer" are one tensor and IBFM would fuse a state with itself.
        if self.ibfm and self.decoder_layers <= FUSED_EARLY_LAYER:
            raise ValueError(
                f"learner.decoder_layers: ibfm fuses the MRN states after decoder layer {FUSED_EARLY_LAYER} and after the last "
                f"layer (eq. 4), two different depths, so it needs at least {FUSED_EARLY_LAYER + 1} decoder layers "
                f"(got {self.decoder_layers}; the paper uses 4), or set learner.ibfm: false"
            )
        return self


@register_learner("ib_iumad")
class IBIUMADLearner(ReconstructionLearner):
    """The reconstruction learner plus Mamba decoders, classifiers and the IB fusion module."""

    Options = IBIUMADOptions

    def __init__(self, options: IBIUMADOptions, modality: str, class_names: Sequence[str], image_size: int) -> None:
        super().__init__(options, modality, class_names, image_size)
        self.use_ibfm = options.ibfm and len(self.modalities) == 2
        hidden, channels = options.hidden_dim, self.backbone.out_channels
        if options.mamba:
            self.mamba_inputs = nn.ModuleDict({m: nn.Linear(channels, hidden) for m in self.modalities})
            self.mamba_decoders = nn.ModuleDict(
                {
                    m: MambaDecoder(hidden, self.grid, num_blocks=options.decoder_layers, num_heads=options.num_heads, d_state=options.mamba_state_dim)
                    for m in self.modalities
                }
            )
            self.label_classifiers = nn.ModuleDict({m: LabelClassifier(hidden, self.num_objects) for m in self.modalities})
        if self.use_ibfm:
            self.ibfm = InformationBottleneckFusion(
                hidden,
                self.num_objects,
                fusion=options.fusion,
                num_heads=options.num_heads,
                bottleneck_dim=options.bottleneck_dim,
                dropout=options.bottleneck_dropout,
            )
            self.fusion_head = nn.Linear(hidden, channels * len(self.modalities))

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        outputs: dict[str, Tensor] = {}
        states: dict[str, list[Tensor]] = {}
        for modality in self.modalities:
            clean, noisy = self.clean_and_jittered(batch, modality)
            injections: list[Tensor] = []
            if self.options.mamba:
                injections = self.mamba_decoders[modality](self.mamba_inputs[modality](noisy))
                outputs[f"{modality}/logits"] = self.label_classifiers[modality](injections[-1])
            reconstructor = self.reconstructors[modality]
            states[modality] = reconstructor.decode(noisy, injections)
            outputs[f"{modality}/features"] = clean
            outputs[f"{modality}/reconstruction"] = reconstructor.output_projection(states[modality][-1])
        if self.use_ibfm:
            fused = self.ibfm(
                rgb_rec2=states["rgb"][FUSED_EARLY_LAYER - 1],
                depth_rec2=states["depth"][FUSED_EARLY_LAYER - 1],
                rgb_rec4=states["rgb"][-1],
                depth_rec4=states["depth"][-1],
            )
            outputs["fusion/fused_logits"] = fused["fused_logits"]
            outputs["fusion/bottlenecked_logits"] = fused["bottlenecked_logits"]
            outputs["fusion/reconstruction"] = self.fusion_head(fused["bottlenecked"])
        return outputs

    def compared_features(self, outputs: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        if not self.use_ibfm:
            return super().compared_features(outputs)
        parts = outputs["fusion/reconstruction"].chunk(len(self.modalities), dim=-1)
        return {m: (outputs[f"{m}/features"], part) for m, part in zip(self.modalities, parts)}

    def loss_terms(self) -> list[LossTerm]:
        """The MRN reconstruction MSEs, then eq. 10's terms in the order fusion (lambda_3), classifiers
        (lambda_1, lambda_2), IB (lambda_4), and the fused classifier; each only when switched on."""
        options = self.options
        extra = []
        if self.use_ibfm:
            extra.append(LossTerm("fusion", options.fusion_weight, fusion_term))
        if options.mamba:
            weights = {"rgb": options.rgb_classifier_weight, "depth": options.depth_classifier_weight}
            extra += [LossTerm(f"classifier/{m}", weights[m], CLASSIFIER_TERMS[m]) for m in self.modalities]
        if self.use_ibfm:
            extra.append(LossTerm("information_bottleneck", options.information_bottleneck_weight, information_bottleneck_term))
            extra.append(LossTerm("classifier/fused", options.fused_classifier_weight, fused_classifier_term))
        return super().loss_terms() + declared(extra)
