"""Learners: pure ``nn.Module``s with their losses, registered by name in ``LEARNERS``."""

from incad.learners.base import Learner, LearnerOptions
from incad.learners.reconstruction import ReconstructionLearner
from incad.registry import LEARNERS

LEARNERS.register("reconstruction")(ReconstructionLearner)

__all__ = ["Learner", "LearnerOptions", "ReconstructionLearner"]
