"""``learner: reconstruction``: the UniAD/IUF-style unified reconstruction network."""

from incad.learners.reconstruction.torch_model import (
    FeatureReconstructor,
    ReconstructionLearner,
    ReconstructionOptions,
)

__all__ = ["FeatureReconstructor", "ReconstructionLearner", "ReconstructionOptions"]
