"""``learner: patchcore``: PatchCore's locally aware patch features and greedy coreset memory banks, grown per experience."""

from incad.learners.patchcore.torch_model import PatchCoreLearner, PatchCoreOptions, PatchFeatures

__all__ = ["PatchCoreLearner", "PatchCoreOptions", "PatchFeatures"]
