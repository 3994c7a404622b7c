"""Avalanche plugin that turns eval-time anomaly maps into per-object metrics."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from avalanche.core import SupervisedPlugin

from incad.evaluation.postprocess import image_scores, upsample_and_smooth
from incad.evaluation.results import ResultMatrices, evaluate_object


class AnomalyEvaluationPlugin(SupervisedPlugin):
    """Collects maps, masks and labels per object during ``strategy.eval`` and
    records each object's metrics in the row of the last completed training step.

    Reads the named fields of the strategy's current batch; the learner's raw
    map is the strategy's ``mb_output`` in eval mode.
    """

    def __init__(self, matrices: ResultMatrices, smoothing_sigma: float) -> None:
        super().__init__()
        self.matrices = matrices
        self.smoothing_sigma = smoothing_sigma
        self._collected: dict[int, dict[str, list[np.ndarray]]] = {}

    def before_eval(self, strategy, **kwargs) -> None:
        self._collected = defaultdict(lambda: defaultdict(list))

    @torch.no_grad()
    def after_eval_iteration(self, strategy, **kwargs) -> None:
        batch = strategy.mbatch
        maps = upsample_and_smooth(strategy.mb_output, tuple(batch.mask.shape[-2:]), self.smoothing_sigma)
        scores = image_scores(maps)
        for object_id in batch.object_id.unique().tolist():
            rows = batch.object_id == object_id
            store = self._collected[object_id]
            store["maps"].append(maps[rows].cpu().numpy().astype(np.float32))
            store["masks"].append(batch.mask[rows].cpu().numpy() > 0.5)
            store["scores"].append(scores[rows].cpu().numpy())
            store["labels"].append(batch.label[rows].cpu().numpy())

    def after_eval(self, strategy, **kwargs) -> None:
        step = strategy.clock.train_exp_counter - 1
        if step < 0:
            raise RuntimeError("evaluation before any training step: the result matrices are indexed by step")
        for object_id, store in sorted(self._collected.items()):
            joined = {key: np.concatenate(parts) for key, parts in store.items()}
            self.matrices.record(step, object_id, evaluate_object(joined["maps"], joined["masks"], joined["scores"], joined["labels"]))
        self._collected = {}
