"""Learners: pure ``nn.Module``s with their losses, registered by name in ``LEARNERS``."""

from incad.learners.base import Learner, LearnerOptions
from incad.learners.ib_iumad import IBIUMADLearner
from incad.learners.reconstruction import ReconstructionLearner
from incad.registry import LEARNERS

LEARNERS.register("reconstruction")(ReconstructionLearner)
LEARNERS.register("ib_iumad")(IBIUMADLearner)

__all__ = ["IBIUMADLearner", "Learner", "LearnerOptions", "ReconstructionLearner"]
