"""``strategy: iuf``: IUF's incremental update, so IB-IUMAD's main baseline runs in the same framework."""

from __future__ import annotations

from pydantic import Field

from incad.errors import ConfigError
from incad.learners.base import Learner
from incad.plugins.iuf import IUFPlugin
from incad.strategies.base import Strategy, StrategyOptions
from incad.strategies.registry import register_strategy


class IUFOptions(StrategyOptions):
    """IUF's values (Tang et al., ECCV 2024, as its public code sets them) as defaults; ``incremental_lr`` is ours (IUF's is not documented)."""

    compression_weight: float = Field(10.0, ge=0)
    compression_threshold: float = Field(0.1, gt=0, description="normalised singular values below threshold / channels are penalised")
    buffer_samples: int = Field(768, ge=2, description="rows of the rolling buffer of the compression loss")
    feature_rows: int = Field(768, ge=1, description="feature rows stored per step and layer for the projection")
    incremental_lr: float = Field(0.01, gt=0, description="SGD learning rate of the incremental steps")
    ema_alpha: float = Field(0.05, ge=0, le=1, description="pull towards the previous model after every update")


@register_strategy("iuf")
class IUF(Strategy):
    """Needs a learner with transformer decoders (``reconstruction``, ``ib_iumad``)."""

    Options = IUFOptions

    @classmethod
    def plugins(cls, options: IUFOptions, learner: Learner) -> list[IUFPlugin]:
        output_layers = learner.decoder_output_projections()
        if not output_layers:
            raise ConfigError(
                f"strategy 'iuf' projects the gradients of transformer decoder layers' feed-forward output, "
                f"but learner {type(learner).__name__} declares none (no nn.TransformerDecoder); use learner reconstruction "
                "or ib_iumad, or another strategy"
            )
        return [IUFPlugin(output_layers, learner.decoder_middle_layers(), **options.model_dump())]
