"""Learners: pure ``nn.Module``s with their losses, registered by name in ``LEARNERS``."""

from incad.learners.base import Learner, LearnerOptions
from incad.learners.cfm import CFMLearner
from incad.learners.ib_iumad import IBIUMADLearner
from incad.learners.patchcore import PatchCoreLearner
from incad.learners.reconstruction import ReconstructionLearner
from incad.learners.rlr import RLRLearner
from incad.learners.uni_rcm import UniRCMLearner
from incad.registry import LEARNERS

LEARNERS.register("reconstruction")(ReconstructionLearner)
LEARNERS.register("ib_iumad")(IBIUMADLearner)
LEARNERS.register("rlr")(RLRLearner)
LEARNERS.register("cfm")(CFMLearner)
LEARNERS.register("uni_rcm")(UniRCMLearner)
LEARNERS.register("patchcore")(PatchCoreLearner)

__all__ = ["CFMLearner", "IBIUMADLearner", "Learner", "LearnerOptions", "PatchCoreLearner", "RLRLearner", "ReconstructionLearner", "UniRCMLearner"]
