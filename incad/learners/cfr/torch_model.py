"""CFR: cyclic crossmodal mapping, a key-value memory of paired normal features, and replacement of unreliable mapped features.

CFR ("Remove the Ambiguity: Few-shot Multimodal Anomaly Detection Using
Crossmodal Feature Replacer", ICML 2026 submission) starts from CFM
(:mod:`incad.learners.cfm`): frozen RGB and 3-D token features and two
mapping MLPs (RGB -> 3-D and 3-D -> RGB). One 3-D feature may fit several
normal RGB appearances, so a regression collapses them into an average that
matches none; CFR replaces such unreliable mapped features by normal features
retrieved from memory before scoring.

1. Cyclic mapping (training): four terms, each 1 - cos on valid tokens only
   (cells with 3-D points, :func:`incad.learners.features.valid_tokens`),
   each with its own weight (0 removes it): the direct terms
   ``mapping/2d_to_3d`` (``mapping_2d_to_3d_weight``) and ``mapping/3d_to_2d``
   (``mapping_3d_to_2d_weight``), and the cycle terms ``cycle/2d``, RGB -> 3-D
   -> RGB (``cycle_2d_weight``), and ``cycle/3d``, 3-D -> RGB -> 3-D
   (``cycle_3d_weight``), between the round-tripped and the true feature.
2. Crossmodal memory (``calibrate``, after the epochs of every experience,
   without gradients): the valid tokens of the experience's normal training
   images, RGB and 3-D feature of the same token side by side, at most
   ``max_memory_per_step`` of them (a random subset drawn with a generator
   seeded by ``seed`` and the number of earlier calibrations). They are
   *appended* to two growing buffers (``memory_2d``, ``memory_3d``,
   :func:`incad.models.layers.growing.register_growing_buffer`): old rows stay
   bit-identical and no earlier data is needed. The two direction banks share
   these rows: RGB -> 3-D reads RGB keys and 3-D values, 3-D -> RGB the
   reverse, so the pairs are stored once.
3. Retrieval (:func:`incad.learners.cfr.memory.attend`): for each valid token,
   the direction's query is the source feature (the mapping's own input); the
   ``top_k`` keys of highest cosine similarity are kept and their values
   averaged with softmax(similarity / ``temperature``) weights, in chunks of
   bounded memory. Training-free: the paper's module is "compact", and a
   learned one would need pairs the few shots do not give.
4. Replacement (inference): the confidence of a mapped feature is its cosine
   similarity to the normal feature retrieved for the same token: a collapsed
   average lies away from every stored normal appearance, while a mapped
   feature that agrees with memory is kept. Mapped features with confidence
   below the bound are replaced by the retrieved ones. The bound is either
   fixed, ``replace_below`` (default 0.7: chosen on normal *training* images
   only, real cable_gland at 224 px, mapping and memory from half of the
   training images and confidences on the other half, where it sat near the
   lower quartile of the confidences in both directions), or calibrated,
   ``replace_fraction: q``: after the memory is extended, each direction's
   bound is the q-quantile of the confidences of the experience's new memory
   tokens (normal training data; never validation or test data), each token's
   retrieval ignoring the memory rows of its own image within
   ``CALIBRATION_EXCLUDED_RADIUS`` cells, itself included (a stored token would
   otherwise retrieve itself and look perfectly confident; excluding its
   whole image would leave nothing to retrieve from at 1 shot). The bounds
   (``replace_bounds``, saved with the model) are those of the latest
   experience, as other learners' calibrated scales are. ``retrieval: false``
   switches replacement off: the map is then exactly CFM's on the same
   mapping nets (the memory is still built, so one trained model serves both
   sides of the ablation).
5. Map: as CFM, the product of the two directions' Euclidean errors between
   the (replaced) mapped and the true features, zero on invalid tokens. CFM
   fuses without per-modality scaling, and so does CFR.

Choices the paper page leaves open: features and MLPs are CFM's (EfficientNet-
Lite0 taps on both modalities, or FPFH for 3-D); retrieval by cosine
similarity (the mapping loss's geometry); the bound as a fixed cosine or a
fraction of normal training tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from incad.data.sample import Batch
from incad.learners.cfm.loss import mapping_2d_to_3d_term, mapping_3d_to_2d_term
from incad.learners.cfm.torch_model import CFMLearner, CFMOptions, PairedTokens
from incad.learners.cfr.loss import cycle_2d_term, cycle_3d_term
from incad.learners.cfr.memory import attend
from incad.learners.features import valid_tokens
from incad.learners.registry import register_learner
from incad.learners.terms import LossTerm
from incad.models.layers.growing import register_growing_buffer

# Direction of each mapped modality: the modality it is mapped from.
SOURCE_OF = {"3d": "2d", "2d": "3d"}
TARGETS = ("2d", "3d")
# replace_fraction: a training token's retrieval ignores its own image's memory rows within this many grid cells (3x3).
CALIBRATION_EXCLUDED_RADIUS = 1


class CFROptions(CFMOptions):
    """YAML options of ``learner: cfr``."""

    mapping_2d_to_3d_weight: float = Field(1.0, ge=0.0)
    mapping_3d_to_2d_weight: float = Field(1.0, ge=0.0)
    cycle_2d_weight: float = Field(1.0, ge=0.0, description="RGB -> 3-D -> RGB")
    cycle_3d_weight: float = Field(1.0, ge=0.0, description="3-D -> RGB -> 3-D")
    retrieval: bool = True
    top_k: int = Field(3, ge=1)
    temperature: float = Field(0.05, gt=0.0)
    replace_below: float | None = Field(0.7, ge=-1.0, le=1.0)
    replace_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    max_memory_per_step: int = Field(20_000, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def one_bound(self) -> "CFROptions":
        """Exactly one bound: a fixed ``replace_below`` (the default) or a calibrated ``replace_fraction``."""
        if self.replace_fraction is not None:
            if "replace_below" in self.model_fields_set and self.replace_below is not None:
                raise ValueError("set learner.replace_below (a fixed bound) or learner.replace_fraction (a bound calibrated on training data), not both; null the other")
            self.replace_below = None
        elif self.replace_below is None:
            raise ValueError("set learner.replace_below (a fixed bound) or learner.replace_fraction (a bound calibrated on training data)")
        return self


@register_learner("cfr")
class CFRLearner(CFMLearner):
    """CFM's mapping nets trained with cycle terms + a growing crossmodal memory that replaces low-confidence mapped features."""

    Options = CFROptions
    name = "cfr"

    def __init__(self, options: CFROptions, modality: str, num_objects: int, image_size: int) -> None:
        super().__init__(options, modality, num_objects, image_size)
        register_growing_buffer(self, "memory_2d", torch.empty(0, self.channels_2d))
        register_growing_buffer(self, "memory_3d", torch.empty(0, self.channels_3d))
        self.register_buffer("memory_steps", torch.zeros((), dtype=torch.long))
        # The calibrated bounds of the 2d and 3d directions (replace_fraction); inf until calibrated (a NaN would never equal itself).
        self.register_buffer("replace_bounds", torch.full((len(TARGETS),), float("inf")))

    def memory(self, modality: str) -> Tensor:
        return self.memory_2d if modality == "2d" else self.memory_3d

    def mapping(self, target: str) -> nn.Module:
        """The net that maps the other modality's features onto ``target``'s."""
        return self.map_3d_to_2d if target == "2d" else self.map_2d_to_3d

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """CFM's outputs, plus the round trips ``2d/cycled`` and ``3d/cycled`` of the cycle terms that are on."""
        outputs = super().forward(batch)
        if self.options.cycle_2d_weight > 0:
            outputs["2d/cycled"] = self.map_3d_to_2d(outputs["3d/predicted"])
        if self.options.cycle_3d_weight > 0:
            outputs["3d/cycled"] = self.map_2d_to_3d(outputs["2d/predicted"])
        return outputs

    def loss_terms(self) -> list[LossTerm]:
        """The two direct mapping terms and the two cycle terms, each with its own weight; a 0 weight leaves it out."""
        options = self.options
        terms = [
            LossTerm("mapping/2d_to_3d", options.mapping_2d_to_3d_weight, mapping_2d_to_3d_term),
            LossTerm("mapping/3d_to_2d", options.mapping_3d_to_2d_weight, mapping_3d_to_2d_term),
            LossTerm("cycle/2d", options.cycle_2d_weight, cycle_2d_term),
            LossTerm("cycle/3d", options.cycle_3d_weight, cycle_3d_term),
        ]
        return [term for term in terms if term.weight > 0]

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Batch]) -> None:
        """Append (at most ``max_memory_per_step``) paired valid tokens of this experience to the crossmodal memory; with ``replace_fraction``, set the bounds."""
        paired = self.paired_valid_tokens(batches, "fill the crossmodal memory with")
        generator = torch.Generator().manual_seed(self.options.seed + 1000 * int(self.memory_steps))
        chosen = torch.randperm(len(paired.places), generator=generator)[: self.options.max_memory_per_step].sort().values
        new = PairedTokens(*(field[chosen].to(self.memory_2d.device) for field in paired))
        old_size = len(self.memory_2d)
        self.memory_2d = torch.cat([self.memory_2d, new.features_2d.to(self.memory_2d)])
        self.memory_3d = torch.cat([self.memory_3d, new.features_3d.to(self.memory_3d)])
        self.memory_steps += 1
        if self.options.replace_fraction is not None:
            self.calibrate_bounds(new, old_size)

    def calibrate_bounds(self, new: PairedTokens, old_size: int) -> None:
        """Each direction's bound: the ``replace_fraction``-quantile of the new memory tokens' confidences, own neighbourhood excluded."""
        key_places = torch.cat([torch.full((old_size, 3), -1, dtype=new.places.dtype, device=new.places.device), new.places])
        features = {"2d": new.features_2d, "3d": new.features_3d}
        for index, target in enumerate(TARGETS):
            source = features[SOURCE_OF[target]]
            confidence, _ = self.confidence(target, source, self.mapping(target)(source), new.places, key_places)
            confidence = confidence[~confidence.isnan()]
            if len(confidence) == 0:
                raise ValueError(f"cfr: replace_fraction needs training images with more than {(2 * CALIBRATION_EXCLUDED_RADIUS + 1) ** 2} valid tokens; use replace_below")
            self.replace_bounds[index] = torch.quantile(confidence.float(), self.options.replace_fraction)

    def confidence(self, target: str, source: Tensor, mapped: Tensor, query_places: Tensor | None = None, key_places: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(N,) confidences of N mapped ``target`` features and the (N, C) normal features retrieved for them, queried by their ``source`` features."""
        retrieved = attend(
            source, self.memory(SOURCE_OF[target]), self.memory(target), self.options.top_k, self.options.temperature,
            query_places=query_places, key_places=key_places, exclude_radius=CALIBRATION_EXCLUDED_RADIUS,
        )
        return F.cosine_similarity(mapped, retrieved, dim=-1), retrieved

    def bound(self, target: str) -> float:
        """The confidence below which a mapped ``target`` feature is replaced."""
        if self.options.replace_fraction is None:
            return self.options.replace_below
        bound = float(self.replace_bounds[TARGETS.index(target)])
        if bound == float("inf"):
            raise ValueError("cfr: replace_fraction's bounds are not calibrated; calibrate the learner on normal data before it scores")
        return bound

    def replace_low_confidence(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per direction, the mapped features with low-confidence valid tokens replaced, and the (B, L) confidences (1 where nothing was retrieved)."""
        replaced: dict[str, Tensor] = {}
        valid = outputs["valid"]
        for target in TARGETS:
            predicted = outputs[f"{target}/predicted"]
            confidence = torch.ones(valid.shape, dtype=predicted.dtype, device=predicted.device)
            if self.options.retrieval:
                mapped = predicted[valid]
                confidence[valid], retrieved = self.confidence(target, outputs[f"{SOURCE_OF[target]}/features"][valid], mapped)
                low = confidence[valid] < self.bound(target)
                predicted = predicted.clone()
                predicted[valid] = torch.where(low[:, None], retrieved, mapped)
            replaced[f"{target}/predicted"] = predicted
            replaced[f"{target}/confidence"] = confidence
        return replaced

    def anomaly_map(self, batch: Batch) -> Tensor:
        """CFM's product of Euclidean mapping errors, after replacement, zero on invalid tokens."""
        features_2d, features_3d = self.features(batch)
        outputs = {
            "2d/features": features_2d,
            "3d/features": features_3d,
            "2d/predicted": self.map_3d_to_2d(features_3d),
            "3d/predicted": self.map_2d_to_3d(features_2d),
            "valid": valid_tokens(batch, self.grid),
        }
        replaced = self.replace_low_confidence(outputs)
        error_2d = (replaced["2d/predicted"] - features_2d).norm(dim=-1)
        error_3d = (replaced["3d/predicted"] - features_3d).norm(dim=-1)
        return (error_2d * error_3d * outputs["valid"]).reshape(len(batch), *self.grid)

    def step_report(self) -> dict[str, float]:
        """Paired entries in the crossmodal memory after the latest experience."""
        return {"memory_size": float(len(self.memory_2d))}
