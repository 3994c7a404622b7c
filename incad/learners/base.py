"""What every learner is: a pure ``nn.Module`` with a small, uniform surface.

The strategy template only relies on this surface, so gradient-trained,
offline-fitted and mixed learners plug into the same continual loop:

- ``forward(batch)`` computes the training outputs (a dict of named tensors);
- ``loss_terms()`` declares the weighted terms of the whole training
  objective, core and method-specific alike (:mod:`incad.learners.terms`), so
  a YAML switches them on, off or reweights them through the learner's
  options; the strategy template computes, logs and sums them;
- ``anomaly_map(batch)`` returns a (B, h, w) map, higher = more anomalous, at
  any resolution; evaluation upsamples, smooths and scores it the same way for
  every learner;
- ``fit(batches)`` is the offline stage that must come *before* the epochs
  (Uni-RCM's residual quantizer is fitted on the frozen features it scores,
  before the mapping nets train); the template calls it in eval mode, without
  gradients, on the experience's training data at the start of each
  experience;
- ``calibrate(batches)`` fits whatever the learner estimates from normal data
  without gradients once its training is over (score scales, memory banks); the
  template calls it in eval mode on the experience's training data after the
  epochs;
- ``step_report()`` returns figures about the learner's state after a step
  (e.g. memory-bank sizes), which the runner logs with the step's metrics;
- ``decoder_output_projections()`` and ``decoder_middle_layers()`` name the
  transformer-decoder layers that IUF's update (:mod:`incad.plugins.iuf`)
  hooks into; a learner without transformer decoders declares none;
- ``Options`` is the pydantic schema of the learner's YAML options;
- ``class_names`` is the scenario's class order (object id i names class
  ``class_names[i]``), given to every learner when it is built, so a learner
  that conditions on the class (text prompts, label classifiers) knows every
  class, including those of later steps. The runner, ``--resume`` and
  ``incad predict`` build the learner from the same order (it is saved with
  the checkpoints and the registered model).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from incad.data.sample import Batch
from incad.learners.terms import LossTerm

MODALITIES_OF = {"rgb": ("rgb",), "depth": ("depth",), "rgb+depth": ("rgb", "depth")}


class LearnerOptions(BaseModel):
    """Base of learner option schemas: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Learner(nn.Module):
    """Interface of all learners; see the module docstring."""

    Options: ClassVar[type[LearnerOptions]] = LearnerOptions
    # True: the strategy template skips an update whose gradients are not all finite (the text-guided paper's III-C3).
    skip_non_finite_gradients: bool = False

    def __init__(self, modality: str, class_names: Sequence[str]) -> None:
        super().__init__()
        if modality not in MODALITIES_OF:
            raise ValueError(f"unknown modality '{modality}', expected one of {sorted(MODALITIES_OF)}")
        if not class_names:
            raise ValueError("a learner needs the scenario's class names (object id i is class_names[i]); got none")
        self.modality = modality
        self.modalities = MODALITIES_OF[modality]
        self.class_names = tuple(class_names)

    @property
    def num_objects(self) -> int:
        """How many classes the scenario has (over all its steps)."""
        return len(self.class_names)

    def forward(self, batch: Batch) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def loss_terms(self) -> list[LossTerm]:  # pragma: no cover - interface
        raise NotImplementedError

    def anomaly_map(self, batch: Batch) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def fit(self, batches: Iterable[Batch]) -> None:
        """Offline fit on an experience's normal training data before its epochs; nothing by default."""

    def calibrate(self, batches: Iterable[Batch]) -> None:
        """Fit gradient-free statistics on normal training data; nothing by default."""

    def step_report(self) -> dict[str, float]:
        """Figures about the learner's state after a step, logged by the runner (e.g. bank sizes); none by default."""
        return {}

    def decoder_output_projections(self) -> list[nn.Linear]:
        """Every transformer-decoder layer's feed-forward output layer, whose gradients IUF projects; none by default."""
        return []

    def decoder_middle_layers(self) -> list[nn.Module]:
        """Each transformer decoder's middle layer, whose features IUF's semantic compression reads; none by default."""
        return []


def modality_input(batch: Batch, modality: str) -> Tensor:
    """The 3-channel image a 2-D backbone sees for ``modality`` (depth is repeated to 3 channels)."""
    if modality == "rgb":
        return batch.image
    if batch.depth is None:
        raise ValueError(
            f"modality 'depth' needs depth images but the batch from {batch.path[0]} has none: "
            "use a dataset with xyz files or set scenario.modality: rgb"
        )
    return batch.depth.expand(-1, 3, -1, -1)
