"""The registered model: data only (weights, config, class order); the installed incad scores with it.

What the model holds (``data/anomaly_model/`` of the logged MLflow model):
``weights.pt`` (the learner's ``state_dict``), ``config.json`` (the run config
with the logging machine's paths removed), ``classes.json`` (the class order)
and ``manifest.json`` (the incad version and the sha256 of each of those
three files). The sha256 of ``manifest.json`` is recorded, when the model is
logged, as the tag ``incad.manifest_sha256`` of the logged model in the
tracking store, outside the artifacts.

Why no code travels with it: a "models from code" pyfunc stores a ``.py``
file in the artifacts and MLflow executes it on load, so whoever can write to
the artifact store could run code on every machine that predicts (and MLflow
3.17 records that file's ``model_code_path`` as an absolute path of the
logging machine). Instead :func:`load_registered_model` (what ``incad
predict`` uses) downloads only the data folder with MLflow's artifact API,
checks the manifest against the tag and each file against the manifest,
refuses a model of another incad version, rebuilds the learner with the
installed incad and reads the weights with ``torch.load(weights_only=True)``.
It never reads ``MLmodel``, imports nothing from the artifacts and unpickles
nothing but tensors.

The model stays a usable MLflow pyfunc (``mlflow.pyfunc.load_model``,
``mlflow models serve``) through MLflow's ``loader_module`` flavour rather
than models from code (whose file, even at a relative path, is executed from
the artifacts): the ``MLmodel`` names this module and the relative data
folder, MLflow imports the module from the installed environment and calls
:func:`_load_pyfunc` on the data folder, which applies the same version and
manifest checks. Nothing in the artifacts is imported or run, and no path of
the logging machine's files is recorded (MLflow's own ``artifact_path`` in
``MLmodel`` is the store's address of the model). What that route cannot
check: MLflow trusts the ``MLmodel`` file (an edited one can name another
loader, e.g. models from code, and MLflow will run it), and a local folder
has no tracking-store tag to check the manifest against; use
:func:`load_registered_model` where the artifact store is not trusted.

Input: a pandas DataFrame with a column ``image`` (paths of RGB images) and,
for learners that use depth, ``xyz`` (paths of organized point-cloud TIFFs).
Images are read and resized exactly as training data are. Output: a DataFrame
with ``image``, ``score`` (the image anomaly score, as in evaluation) and
``anomaly_map`` (an ``image_size`` x ``image_size`` float32 array per image).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.store.artifact.utils.models import get_model_name_and_version
from torch.utils.data import DataLoader

import incad
from incad.config import NamedSection, RunConfig
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.readers.base import Record
from incad.data.readers.mvtec3d import MVTEC3D
from incad.data.sample import collate
from incad.errors import DataError, IncadError
from incad.evaluation.postprocess import image_scores, upsample_and_smooth
from incad.learners import create_learner
from incad.resolve import ResolvedRun, resolve_raw

LOADER_MODULE = __name__
DATA_FOLDER = "anomaly_model"  # MLflow stores it as data/anomaly_model
WEIGHTS, CONFIG, CLASSES, MANIFEST = "weights.pt", "config.json", "classes.json", "manifest.json"
DATA_FILES = (WEIGHTS, CONFIG, CLASSES)
MANIFEST_TAG = "incad.manifest_sha256"
PRETRAINED_BACKBONES = ("imagenet", "random")
RETRAIN = "Do not use it: retrain and register the model again (or restore the artifacts from a backup)."


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def portable_config(config: RunConfig) -> dict:
    """The run config without the logging machine's paths (prediction reads none of them): each becomes its last component."""
    options = config.learner_options()
    if options.get("backbone_weights", "imagenet") not in PRETRAINED_BACKBONES:
        options["backbone_weights"] = Path(options["backbone_weights"]).name
    root = config.dataset.root
    portable = config.model_copy(
        update={
            "output_dir": Path(config.output_dir.name),
            "dataset": config.dataset.model_copy(update={"root": Path(root.name) if root else None, "cache_dir": None}),
            "learner": NamedSection(name=config.learner.name, **options),
            "tracking": config.tracking.model_copy(update={"tracking_uri": None}),
        }
    )
    return portable.model_dump(mode="json")


def without_pretrained_backbone(run: ResolvedRun) -> ResolvedRun:
    """The run to rebuild the learner with: random backbone weights.

    The state dict, loaded strictly, replaces every backbone tensor, so
    prediction reads no ImageNet weights (no download) and needs no weights
    file of the logging machine.
    """
    options = run.learner.options
    if "backbone_weights" not in type(options).model_fields:
        return run
    return replace(run, learner=replace(run.learner, options=options.model_copy(update={"backbone_weights": "random"})))


def write_model_data(config: RunConfig, learner: torch.nn.Module, class_order: list[str], folder: Path) -> str:
    """Write the model's data files and manifest into ``folder``; return the manifest's sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(learner.state_dict(), folder / WEIGHTS)
    (folder / CONFIG).write_text(json.dumps(portable_config(config), indent=2))
    (folder / CLASSES).write_text(json.dumps(class_order))
    manifest = {"incad_version": incad.__version__, "sha256": {name: sha256_of(folder / name) for name in DATA_FILES}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return sha256_of(folder / MANIFEST)


def load_registered_model(model_uri: str, tracking_uri: str | None = None) -> AnomalyDetector:
    """The model at ``models:/<name>@<alias>``, ``models:/<name>/<version|latest>`` or ``models:/<model id>``,
    verified against the digest recorded in the tracking store and rebuilt by the installed incad."""
    if not model_uri.startswith("models:/"):
        raise IncadError(f"{model_uri}: not a models:/ URI. Pass models:/<name>@<alias>, models:/<name>/<version> or models:/<model id>.")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = get_model_name_and_version(client, model_uri)
    if len(found) == 2:  # a registered version: its source is the logged model's models:/<model id>
        source = client.get_model_version(*found).source
        found = get_model_name_and_version(client, source) if source.startswith("models:/") else ()
    if len(found) != 1:
        raise IncadError(f"{model_uri}: is not a logged model of incad (its source is {source}). Register models with incad's tracking.registry.")
    logged = client.get_logged_model(found[0])
    expected = logged.tags.get(MANIFEST_TAG)
    if expected is None:
        raise IncadError(
            f"{model_uri}: has no '{MANIFEST_TAG}' tag, so its artifacts cannot be verified "
            "(it was not logged by this incad, or by an older one that shipped code with the model). "
            "Retrain and register it with this incad."
        )
    with tempfile.TemporaryDirectory() as download:
        folder = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{logged.artifact_location}/data/{DATA_FOLDER}", dst_path=download, tracking_uri=client.tracking_uri
            )
        )
        if not (folder / MANIFEST).is_file() or sha256_of(folder / MANIFEST) != expected:
            raise IncadError(f"{model_uri}: {MANIFEST} differs from the digest recorded in the tracking store when it was logged. {RETRAIN}")
        return AnomalyDetector.from_folder(folder, model_uri)


def _load_pyfunc(data_path: str) -> AnomalyDetector:
    """MLflow's ``loader_module`` entry point (``mlflow.pyfunc.load_model``): every check but the tag's."""
    return AnomalyDetector.from_folder(Path(data_path), str(data_path))


def check_manifest(folder: Path, source: str) -> None:
    """Refuse a model of another incad version, or whose data files do not match their sha256 in the manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        version, digests = manifest["incad_version"], dict(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise IncadError(f"{source}: unreadable {MANIFEST} ({error}). {RETRAIN}") from None
    if version != incad.__version__:
        raise IncadError(
            f"{source}: registered with incad {version}, but incad {incad.__version__} is installed. "
            f"Install incad {version} to use this model, or retrain and register it with incad {incad.__version__}."
        )
    for name in DATA_FILES:
        path = folder / name
        if not path.is_file() or digests.get(name) != sha256_of(path):
            raise IncadError(f"{source}: {name} is missing or differs from the sha256 in its {MANIFEST}. {RETRAIN}")


class PredictionDataset(AnomalyDetectionDataset):
    """Arbitrary RGB files (with optional point clouds), read by the training data's own ``__getitem__``.

    Only the record list differs from :class:`AnomalyDetectionDataset`: it is given
    instead of listed from a dataset folder, and there is no class or label.
    """

    def __init__(self, images: list[str], point_clouds: list[str | None], image_size: int, load_xyz: bool, object_ids: list[int]) -> None:  # noqa: D107
        if load_xyz:
            missing = next((image for image, xyz in zip(images, point_clouds) if xyz is None), None)
            if missing is not None:
                raise DataError(Path(missing), "has no point cloud, but this model uses depth.", "Pass the xyz TIFF of every image (column 'xyz').")
        records = [Record(Path(image), Path(xyz) if xyz else None, None, "", "unknown", 0) for image, xyz in zip(images, point_clouds)]
        # "predict" is no split of a dataset: the guard of incad.data.access concerns the test split only.
        super().__init__(Path("."), [], "predict", image_size, {"": 0}, load_xyz, MVTEC3D, records=records)
        self.object_ids_per_sample = object_ids


class AnomalyDetector:
    """A learner rebuilt from its config and state dict; ``predict`` is the pyfunc model's."""

    def __init__(self, config: RunConfig, class_order: list[str], learner: torch.nn.Module) -> None:  # noqa: D107
        self.config = config
        self.class_order = class_order
        self.learner = learner.eval()

    @classmethod
    def from_folder(cls, folder: Path, source: str) -> AnomalyDetector:
        """Check the data files in ``folder`` (see :func:`check_manifest`) and rebuild the learner from them."""
        check_manifest(folder, source)
        run = resolve_raw(json.loads((folder / CONFIG).read_text()), source=f"{source}: {CONFIG}")
        class_order = json.loads((folder / CLASSES).read_text())
        with warnings.catch_warnings():  # the random backbone is replaced by the trained one just below
            warnings.filterwarnings("ignore", message=".*has random weights")
            learner = create_learner(without_pretrained_backbone(run), class_order)
        try:
            state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError):
            raise IncadError(f"{source}: {WEIGHTS} is not a tensors-only state dict (other Python objects are never unpickled). {RETRAIN}") from None
        learner.load_state_dict(state)
        return cls(run.config, class_order, learner)

    def object_ids(self, model_input: pd.DataFrame) -> list[int]:
        """Each image's object id from the optional column ``object`` (a class name of the model); -1 (unknown) without it.

        Only a learner that conditions its map on the class (``text_guided``'s text map) reads it.
        """
        if "object" not in model_input.columns:
            return [-1] * len(model_input)
        unknown = sorted({str(name) for name in model_input["object"] if name not in self.class_order})
        if unknown:
            raise IncadError(f"object {', '.join(unknown)}: not a class of this model; its classes are {', '.join(self.class_order)}")
        return [self.class_order.index(name) for name in model_input["object"]]

    @torch.no_grad()
    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "image" not in model_input.columns:
            raise ValueError(f"the model input needs a column 'image' of RGB file paths; got columns {list(model_input.columns)}")
        images = [str(path) for path in model_input["image"]]
        given = model_input["xyz"] if "xyz" in model_input.columns else [None] * len(images)
        point_clouds = [path if isinstance(path, str) and path else None for path in given]
        size = self.config.dataset.image_size
        dataset = PredictionDataset(images, point_clouds, size, load_xyz=self.config.scenario.modality != "rgb", object_ids=self.object_ids(model_input))
        scores, maps = [], []
        for batch in DataLoader(dataset, batch_size=self.config.evaluation.batch_size, collate_fn=collate):
            smoothed = upsample_and_smooth(self.learner.anomaly_map(batch), (size, size), self.config.evaluation.smoothing_sigma)
            scores.append(image_scores(smoothed).numpy())
            maps.extend(smoothed.numpy().astype(np.float32))
        return pd.DataFrame({"image": images, "score": np.concatenate(scores) if scores else [], "anomaly_map": maps})
