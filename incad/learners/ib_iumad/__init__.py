"""``learner: ib_iumad``: IB-IUMAD's Mamba decoders and information-bottleneck fusion."""

from incad.learners.ib_iumad.torch_model import IBIUMADLearner, IBIUMADOptions

__all__ = ["IBIUMADLearner", "IBIUMADOptions"]
