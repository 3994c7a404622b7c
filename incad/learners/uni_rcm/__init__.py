"""``learner: uni_rcm``: reference-guided cross-modal mapping with an offline residual quantizer (Uni-RCM)."""

from incad.learners.uni_rcm.torch_model import UniRCMLearner, UniRCMOptions

__all__ = ["UniRCMLearner", "UniRCMOptions"]
