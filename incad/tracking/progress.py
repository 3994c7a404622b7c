"""A progress bar per training step, as an Avalanche plugin."""

from __future__ import annotations

from avalanche.core import SupervisedPlugin
from tqdm.auto import tqdm


class ProgressBarPlugin(SupervisedPlugin):
    """One tqdm bar per experience over all its iterations, showing the running loss."""

    def __init__(self, step_names: list[str]) -> None:
        super().__init__()
        self.step_names = step_names
        self._bar: tqdm | None = None

    def before_training_exp(self, strategy, **kwargs) -> None:
        step = strategy.experience.current_experience
        total = strategy.train_epochs * len(strategy.dataloader)
        self._bar = tqdm(total=total, desc=f"step {step} [{self.step_names[step]}]", unit="it", leave=True)

    def after_training_iteration(self, strategy, **kwargs) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{strategy.loss.item():.4f}", epoch=strategy.clock.train_exp_epochs + 1)

    def after_training_exp(self, strategy, **kwargs) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
