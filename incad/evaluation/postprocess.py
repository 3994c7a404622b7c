"""From a learner's raw anomaly map to the image-resolution map and image score.

One implementation for every learner, as the papers do it: bilinear upsampling
to the mask resolution, Gaussian smoothing (sigma 4 by default, PatchCore's
value: Roth et al., CVPR 2022) and the image score as the maximum of the
smoothed map.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import gaussian_blur


def upsample_and_smooth(maps: Tensor, size: tuple[int, int], sigma: float) -> Tensor:
    """(B, h, w) raw maps -> (B, H, W) maps at ``size``, smoothed with a Gaussian of ``sigma`` pixels."""
    maps = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)
    if sigma > 0:
        kernel = 2 * int(4 * sigma + 0.5) + 1
        maps = gaussian_blur(maps, kernel_size=[kernel, kernel], sigma=[sigma, sigma])
    return maps[:, 0]


def image_scores(maps: Tensor) -> Tensor:
    """Image anomaly score: the maximum of each (smoothed) map."""
    return maps.flatten(1).amax(dim=1)
