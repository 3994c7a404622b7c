"""The registered model: an ``mlflow.pyfunc`` model that turns image files into scores and anomaly maps.

The logged model holds no pickled module: its artifacts are the learner's
``state_dict`` (loaded with ``torch.load(weights_only=True)``), the resolved
run config (JSON) and the class order; ``anomaly_model_code.py`` is the
"models from code" file MLflow runs to get the Python model. Loading rebuilds
the learner from the config and loads the weights.

Input: a pandas DataFrame with a column ``image`` (paths of RGB images) and,
for learners that use depth, ``xyz`` (paths of organized point-cloud TIFFs).
Images are read and resized exactly as training data are. Output: a DataFrame
with ``image``, ``score`` (the image anomaly score, as in evaluation) and
``anomaly_map`` (an ``image_size`` x ``image_size`` float32 array per image).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel
from torch.utils.data import DataLoader

from incad.data.mvtec3d import MVTEC3D, MVTec3DDataset, Record
from incad.data.sample import collate
from incad.errors import DataError
from incad.evaluation.postprocess import image_scores, upsample_and_smooth

CODE_PATH = Path(__file__).with_name("anomaly_model_code.py")
WEIGHTS, CONFIG, CLASSES = "weights", "config", "classes"


class PredictionDataset(MVTec3DDataset):
    """Arbitrary RGB files (with optional point clouds), read by the training data's own ``__getitem__``.

    Only the record list differs from :class:`MVTec3DDataset`: it is given
    instead of listed from a dataset folder, and there is no class or label.
    """

    def __init__(self, images: list[str], point_clouds: list[str | None], image_size: int, load_xyz: bool) -> None:  # noqa: D107
        if load_xyz:
            missing = next((image for image, xyz in zip(images, point_clouds) if xyz is None), None)
            if missing is not None:
                raise DataError(Path(missing), "has no point cloud, but this model uses depth.", "Pass the xyz TIFF of every image (column 'xyz').")
        self.records = [Record(Path(image), Path(xyz) if xyz else None, None, "", "unknown", 0) for image, xyz in zip(images, point_clouds)]
        self.image_size = image_size
        self.load_xyz = load_xyz
        self.reader = MVTEC3D
        self.skipped = None
        self.object_ids_per_sample = [0] * len(self.records)


class AnomalyDetectionModel(PythonModel):
    """pyfunc wrapper around a learner rebuilt from its config and state dict."""

    def load_context(self, context) -> None:
        from incad.config import validate_config
        from incad.runner import build_learner

        raw_config = json.loads(Path(context.artifacts[CONFIG]).read_text())
        self.config = validate_config(raw_config, source="the registered model's config")
        self.class_order = json.loads(Path(context.artifacts[CLASSES]).read_text())
        self.learner = build_learner(self.config, num_objects=len(self.class_order))
        self.learner.load_state_dict(torch.load(context.artifacts[WEIGHTS], weights_only=True, map_location="cpu"))
        self.learner.eval()

    @torch.no_grad()
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "image" not in model_input.columns:
            raise ValueError(f"the model input needs a column 'image' of RGB file paths; got columns {list(model_input.columns)}")
        images = [str(path) for path in model_input["image"]]
        given = model_input["xyz"] if "xyz" in model_input.columns else [None] * len(images)
        point_clouds = [path if isinstance(path, str) and path else None for path in given]
        size = self.config.dataset.image_size
        dataset = PredictionDataset(images, point_clouds, size, load_xyz=self.config.scenario.modality != "rgb")
        scores, maps = [], []
        for batch in DataLoader(dataset, batch_size=self.config.evaluation.batch_size, collate_fn=collate):
            smoothed = upsample_and_smooth(self.learner.anomaly_map(batch), (size, size), self.config.evaluation.smoothing_sigma)
            scores.append(image_scores(smoothed).numpy())
            maps.extend(smoothed.numpy().astype(np.float32))
        return pd.DataFrame({"image": images, "score": np.concatenate(scores) if scores else [], "anomaly_map": maps})
