"""Learners: pure ``nn.Module``s with their losses; importing this package registers the built-in ones.

``create_learner`` builds the learner a resolved run names (see :mod:`incad.learners.registry`).
"""

from incad.learners import cfm, cfr, ib_iumad, patchcore, reconstruction, rlr, text_guided, uni_rcm
from incad.learners.base import Learner, LearnerOptions
from incad.learners.registry import LEARNERS, create_learner, register_learner

__all__ = ["LEARNERS", "Learner", "LearnerOptions", "cfm", "cfr", "create_learner", "ib_iumad", "patchcore", "reconstruction", "register_learner", "rlr", "text_guided", "uni_rcm"]
