"""``learner: text_guided``: text-guided multimodal unified anomaly detection (GACM + OCTA, Li et al., arXiv 2604.22899)."""

from incad.learners.text_guided.torch_model import TextGuidedLearner, TextGuidedOptions

__all__ = ["TextGuidedLearner", "TextGuidedOptions"]
