"""Reusable building blocks shared by learners."""

from incad.models.layers.fast_dropout import FastDropout, FastDropoutAttention, use_fast_dropout
from incad.models.layers.jitter import feature_jitter
from incad.models.layers.mamba import ESSM, LabelClassifier, MambaDecoder, MambaDecoderBlock, es2d_scan
from incad.models.layers.position import sine_position_embedding_2d

__all__ = [
    "ESSM",
    "FastDropout",
    "FastDropoutAttention",
    "LabelClassifier",
    "MambaDecoder",
    "MambaDecoderBlock",
    "es2d_scan",
    "feature_jitter",
    "sine_position_embedding_2d",
    "use_fast_dropout",
]
