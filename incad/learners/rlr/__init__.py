"""``learner: rlr``: reconstruction from a learnable reference (RLR, He et al., ECCV 2024)."""

from incad.learners.rlr.torch_model import RLRLearner, RLROptions

__all__ = ["RLRLearner", "RLROptions"]
