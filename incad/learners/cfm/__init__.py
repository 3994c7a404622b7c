"""``learner: cfm``: crossmodal feature mapping (CFM, Costanzino et al., CVPR 2024)."""

from incad.learners.cfm.torch_model import CFMLearner, CFMOptions

__all__ = ["CFMLearner", "CFMOptions"]
