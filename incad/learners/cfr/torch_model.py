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
   below ``replace_below`` are replaced by the retrieved ones. The default
   bound was chosen on normal *training* images only (real cable_gland at
   224 px: mapping and memory from half of the training images, confidences on
   the other half): it sits near the lower quartile of those confidences in
   both directions, and there the retrieved feature was closer to the true one
   than the mapped one for most tokens, so the least reliable quarter of a
   normal image's mapped features is replaced. A bound calibrated per run
   instead (per direction, the lower quartile of the confidences of the
   experience's own training tokens, each retrieved without its own 3x3
   neighbourhood) was compared with this fixed one at 1 and 2 shots on the
   pseudo-defect validation set of real cable_gland
   (``benchmarks/validation_proxy.py``; test data never read): it ranked the
   images worse for about the same AUPRO, so the bound stays fixed. ``retrieval: false``
   switches replacement off: the map is then exactly CFM's on the same mapping
   nets (the memory is still built, so one trained model serves both sides of
   the ablation).
5. Map: as CFM, the product of the two directions' Euclidean errors between
   the (replaced) mapped and the true features, zero on invalid tokens. CFM
   fuses without per-modality scaling, and so does CFR.

Choices the paper page leaves open: features and MLPs are CFM's (EfficientNet-
Lite0 taps on both modalities, or FPFH for 3-D); retrieval by cosine
similarity (the mapping loss's geometry); the bound as a fixed cosine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from incad.data.sample import Batch
from incad.learners.cfm.loss import mapping_2d_to_3d_term, mapping_3d_to_2d_term
from incad.learners.cfm.torch_model import CFMLearner, CFMOptions
from incad.learners.cfr.loss import cycle_2d_term, cycle_3d_term
from incad.learners.cfr.memory import attend
from incad.learners.features import valid_tokens
from incad.learners.registry import register_learner
from incad.learners.terms import LossTerm, declared
from incad.models.layers.growing import register_growing_buffer

# Direction of each mapped modality: the modality it is mapped from.
SOURCE_OF = {"3d": "2d", "2d": "3d"}


class CFROptions(CFMOptions):
    """YAML options of ``learner: cfr``."""

    mapping_2d_to_3d_weight: float = Field(1.0, ge=0.0)
    mapping_3d_to_2d_weight: float = Field(1.0, ge=0.0)
    cycle_2d_weight: float = Field(1.0, ge=0.0, description="RGB -> 3-D -> RGB")
    cycle_3d_weight: float = Field(1.0, ge=0.0, description="3-D -> RGB -> 3-D")
    retrieval: bool = True
    top_k: int = Field(3, ge=1)
    temperature: float = Field(0.05, gt=0.0)
    replace_below: float = Field(0.7, ge=-1.0, le=1.0)
    max_memory_per_step: int = Field(20_000, ge=1)
    seed: int = 0


@register_learner("cfr")
class CFRLearner(CFMLearner):
    """CFM's mapping nets trained with cycle terms + a growing crossmodal memory that replaces low-confidence mapped features."""

    Options = CFROptions
    name = "cfr"

    def __init__(self, options: CFROptions, modality: str, class_names: Sequence[str], image_size: int) -> None:
        super().__init__(options, modality, class_names, image_size)
        register_growing_buffer(self, "memory_2d", torch.empty(0, self.channels_2d))
        register_growing_buffer(self, "memory_3d", torch.empty(0, self.channels_3d))
        self.register_buffer("memory_steps", torch.zeros((), dtype=torch.long))

    def memory(self, modality: str) -> Tensor:
        return self.memory_2d if modality == "2d" else self.memory_3d

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
        return declared(
            [
                LossTerm("mapping/2d_to_3d", options.mapping_2d_to_3d_weight, mapping_2d_to_3d_term),
                LossTerm("mapping/3d_to_2d", options.mapping_3d_to_2d_weight, mapping_3d_to_2d_term),
                LossTerm("cycle/2d", options.cycle_2d_weight, cycle_2d_term),
                LossTerm("cycle/3d", options.cycle_3d_weight, cycle_3d_term),
            ]
        )

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Batch]) -> None:
        """Append (at most ``max_memory_per_step``) paired valid tokens of this experience to the crossmodal memory."""
        tokens_2d, tokens_3d = self.paired_valid_tokens(batches, "fill the crossmodal memory with")
        generator = torch.Generator().manual_seed(self.options.seed + 1000 * int(self.memory_steps))
        chosen = torch.randperm(len(tokens_2d), generator=generator)[: self.options.max_memory_per_step].sort().values
        self.memory_2d = torch.cat([self.memory_2d, tokens_2d[chosen].to(self.memory_2d)])
        self.memory_3d = torch.cat([self.memory_3d, tokens_3d[chosen].to(self.memory_3d)])
        self.memory_steps += 1

    def retrieve(self, outputs: dict[str, Tensor], target: str) -> Tensor:
        """(N, C) normal ``target`` features retrieved for the N valid tokens, queried by their source features."""
        source = SOURCE_OF[target]
        queries = outputs[f"{source}/features"][outputs["valid"]]
        return attend(queries, self.memory(source), self.memory(target), self.options.top_k, self.options.temperature)

    def replace_low_confidence(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per direction, the mapped features with low-confidence valid tokens replaced, and the (B, L) confidences (1 where nothing was retrieved)."""
        replaced: dict[str, Tensor] = {}
        valid = outputs["valid"]
        for target in ("2d", "3d"):
            predicted = outputs[f"{target}/predicted"]
            confidence = torch.ones(valid.shape, dtype=predicted.dtype, device=predicted.device)
            if self.options.retrieval:
                retrieved = self.retrieve(outputs, target)
                mapped = predicted[valid]
                confidence[valid] = F.cosine_similarity(mapped, retrieved, dim=-1)
                low = confidence[valid] < self.options.replace_below
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
