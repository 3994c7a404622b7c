"""``learner: cfr``: few-shot multimodal anomaly detection with a crossmodal feature replacer (CFR, ICML 2026 submission)."""

from incad.learners.cfr.torch_model import CFRLearner, CFROptions

__all__ = ["CFRLearner", "CFROptions"]
