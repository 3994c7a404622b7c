"""Typed, validated run configuration loaded from YAML.

Every section is a pydantic model with ``extra="forbid"``: an unknown key, a
wrong type or an unknown name fails at load time with a message that names the
key (``strategy.epochs``) and, where there is a closed set, the allowed values.
This module is the schema only and imports no registry: the learner- and
strategy-specific options are validated by the options model that the
registered learner or strategy declares, when :mod:`incad.resolve` resolves
the run, so a new learner brings its own schema and needs no change here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from incad.data.names import DATASET_NAMES
from incad.data.preprocess import PreprocessingConfig
from incad.data.split_files import SplitFormat
from incad.data.synthetic import SyntheticConfig, class_names
from incad.errors import ConfigError, format_validation_error
from incad.paths import safe_name

# A name that becomes a folder (outputs/<name>, <dataset root>/<class>): one path component, checked at load.
FolderName = Annotated[str, AfterValidator(safe_name)]

Modality = Literal["rgb", "depth", "rgb+depth"]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class DatasetConfig(StrictModel):
    """Where the images come from.

    ``synthetic`` generates the embedded default data set into ``root`` (a cache
    folder keyed by the generator settings); ``mvtec3d`` and ``folder`` (a
    user's own data) read a folder in the MVTec 3D-AD layout at ``root``,
    ``eyecandies``, ``mvtec_ad`` and ``visa`` (both RGB only) their own layouts (see
    :mod:`incad.data.readers`). ``preprocessing`` (off by default) writes the
    background-removed copy into ``cache_dir``; ``on_bad_sample: skip`` leaves
    unreadable or inconsistent samples out and reports them instead of stopping.
    """

    name: Literal[DATASET_NAMES] = "synthetic"  # the tuple unpacks into the Literal's allowed values
    root: Path | None = None
    image_size: int = Field(224, ge=32, le=1024)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    on_bad_sample: Literal["error", "skip"] = "error"
    shots: int | None = Field(None, ge=1, description="few-shot: normal training samples per class, drawn with the run's seed; absent = all")
    light: int = Field(4, ge=0, le=5, description="Eyecandies: which of image_0..5 is the RGB image")
    cache_dir: Path | None = None  # generated/preprocessed data and disk features; default $INCAD_DATA_DIR or .cache/incad/data

    @model_validator(mode="after")
    def _root_for_real_data(self) -> "DatasetConfig":
        if self.name != "synthetic" and self.root is None:
            raise ValueError(f"dataset.root is required for dataset '{self.name}': the folder that holds one sub-folder per class")
        return self


class SplitFilesConfig(StrictModel):
    """``scenario.split_files``: a published protocol's per-step split files (see :mod:`incad.data.split_files`).

    ``folder`` is relative to ``dataset.root`` unless absolute; ``format``
    ``auto`` tells the formats apart by file type and fields; ``steps`` lists the
    step keys (the file names' ``<key>``) in order when natural order is wrong.
    """

    folder: Path
    format: SplitFormat = "auto"
    steps: list[str] | None = None


class ScenarioConfig(StrictModel):
    """A class-incremental split written as in the papers: "B-I with S steps", or a published protocol's split files.

    ``base`` classes are learned first, then ``increment`` new classes at each of
    ``steps`` incremental steps (10-0 with 0 steps, 9-1 with 1, 6-4 with 1,
    6-1 with 4 ...). ``classes`` fixes the order; empty means every class of the
    dataset in sorted order. With ``split_files`` the classes, steps and
    samples come from the files instead, so none of the four is given.
    """

    classes: list[FolderName] = Field(default_factory=list)
    base: int | None = Field(None, ge=1)
    increment: int = Field(0, ge=0)
    steps: int = Field(0, ge=0)
    modality: Modality = "rgb+depth"
    split_files: SplitFilesConfig | None = None

    @model_validator(mode="after")
    def _steps_need_increment(self) -> "ScenarioConfig":
        if self.split_files is not None:
            given = [key for key in ("classes", "base", "increment", "steps") if key in self.model_fields_set]
            if given:
                raise ValueError(
                    f"scenario.split_files gives the classes and steps; remove scenario.{', scenario.'.join(given)}"
                )
            return self
        if self.base is None:
            raise ValueError("scenario.base is required (the classes of the first step), unless scenario.split_files gives the steps")
        if (self.steps > 0) != (self.increment > 0):
            raise ValueError(
                "scenario.increment and scenario.steps go together: both 0 (joint training) or both positive"
            )
        repeated = sorted({name for name in self.classes if self.classes.count(name) > 1})
        if repeated:
            raise ValueError(f"scenario.classes lists {', '.join(repeated)} more than once; list each class once")
        if self.classes:
            self.check_class_count(len(self.classes), f"scenario.classes lists {len(self.classes)}", "scenario.classes")
        return self

    def check_class_count(self, available: int, source: str, fix: str) -> None:
        """ValueError unless the split "B-I with S steps" uses exactly ``available`` classes."""
        if available != self.num_classes:
            raise ValueError(
                f"scenario: the split '{self.base}-{self.increment} with {self.steps} steps' needs exactly {self.num_classes} classes "
                f"but {source}; change {fix} or scenario.base/increment/steps"
            )

    @property
    def num_classes(self) -> int:
        return self.base + self.increment * self.steps

    def step_classes(self, class_order: list[str]) -> list[list[str]]:
        """The classes learned at each step (step 0 is the base step)."""
        groups = [class_order[: self.base]]
        for step in range(self.steps):
            start = self.base + step * self.increment
            groups.append(class_order[start : start + self.increment])
        return groups


class NamedSection(StrictModel):
    """A section chosen by registry name with free options checked later by the registered schema."""

    model_config = ConfigDict(extra="allow")
    name: str


class TrainingConfig(StrictModel):
    """Optimisation settings shared by every gradient-trained learner."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    num_workers: int = Field(0, ge=0)
    # false: the training data in dataset order every epoch (e.g. a torchrun run and a one-process run then see the same global batches)
    shuffle: bool = True
    # Where a learner's frozen-backbone feature cache lives: in memory for the run, or on disk
    # (memory-mapped, reused across runs; <dataset cache_dir>/features). Learners switch caching off themselves.
    feature_cache: Literal["memory", "disk"] = "memory"


class EvaluationConfig(StrictModel):
    """How anomaly maps become scores: upsampled, Gaussian-smoothed, maximum (see ``incad/evaluation/postprocess.py``)."""

    batch_size: int = Field(16, ge=1)
    smoothing_sigma: float = Field(4.0, ge=0)


class RegistryConfig(StrictModel):
    """MLflow model registry: register each step's model and move ``champion``.

    Without ``champion_margin``, ``champion`` follows every new version (the model
    that has learned every class so far) and no test result is read. With it,
    ``champion`` moves only if the new mean I-AUROC on the classes seen is not below
    the champion's by more than the margin: a deployment gate that reads the test
    split's results (opt-in; no reported figure depends on it).
    """

    enabled: bool = False
    model_name: FolderName | None = None  # default: the run's name
    champion_margin: float | None = Field(None, ge=0)


class TrackingConfig(StrictModel):
    """MLflow settings; ``tracking_uri`` empty means $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "incad"
    run_name: str | None = None
    registry: RegistryConfig = Field(default_factory=RegistryConfig)


class RunConfig(StrictModel):
    """A whole run: data -> scenario -> learner + strategy -> evaluation -> tracking."""

    name: FolderName = "incad-run"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: Path = Path("outputs")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    scenario: ScenarioConfig
    learner: NamedSection
    strategy: NamedSection = Field(default_factory=lambda: NamedSection(name="naive"))
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _synthetic_classes_exist(self) -> "RunConfig":
        """The synthetic data set's classes are known from its config: check the split before generating it."""
        if self.dataset.name != "synthetic" or self.scenario.split_files is not None:
            return self
        available = class_names(self.dataset.synthetic.num_classes)
        unknown = [name for name in self.scenario.classes if name not in available]
        if unknown:
            raise ValueError(
                f"scenario.classes: {', '.join(unknown)} not in the synthetic data set "
                f"(dataset.synthetic.num_classes: {len(available)}); allowed: {', '.join(available)}"
            )
        if not self.scenario.classes:
            self.scenario.check_class_count(
                len(available), f"the synthetic data set has {len(available)} (dataset.synthetic.num_classes)", "dataset.synthetic.num_classes"
            )
        return self

    def learner_options(self) -> dict[str, Any]:
        return dict(self.learner.model_extra or {})

    def strategy_options(self) -> dict[str, Any]:
        return dict(self.strategy.model_extra or {})


def _normalise_named_sections(raw: dict[str, Any]) -> dict[str, Any]:
    """``learner: reconstruction`` is shorthand for ``learner: {name: reconstruction}``."""
    for section in ("learner", "strategy"):
        if isinstance(raw.get(section), str):
            raw[section] = {"name": raw[section]}
    return raw


def set_dotted(raw: dict[str, Any], dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str) and part in ("learner", "strategy"):
            child = {"name": child}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted_key}: '{part}' is not a section, it holds the value {child!r}.")
        node[part] = child
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key.sub=value`` strings; values are read as YAML scalars (``3``, ``true``, ``[a, b]``)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected KEY=VALUE, e.g. --set training.epochs=5")
        key, value = item.split("=", 1)
        parsed.append((key.strip(), yaml.safe_load(value)))
    return parsed


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's problem and position on one line (its own message spans several, with a snippet)."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(error).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file and the line."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file. Pass the path of a scenario YAML, e.g. experiments/quickstart.yaml.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8). Pass a scenario YAML, e.g. experiments/quickstart.yaml.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)}). Fix the syntax there.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (dataset, scenario, learner, ...), got {type(data).__name__}.")
    return data


def load_config(
    path: str | Path,
    overrides: list[str] | None = None,
    strategy_file: str | Path | None = None,
) -> RunConfig:
    """Load, override and validate a scenario YAML.

    ``strategy_file`` (a YAML of ``strategies/``) replaces the scenario's
    strategy section, so one scenario runs with any strategy preset.
    """
    path = Path(path)
    raw = _normalise_named_sections(copy.deepcopy(read_yaml(path)))
    if strategy_file is not None:
        raw["strategy"] = read_yaml(Path(strategy_file))
    for key, value in parse_overrides(overrides or []):
        set_dotted(raw, key, value)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Validate a raw mapping against the schema; the learner's and strategy's own options are checked by :func:`incad.resolve.resolve`."""
    raw = _normalise_named_sections(copy.deepcopy(raw))
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, RunConfig)) from None
