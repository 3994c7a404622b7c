"""incad's learners and anomalib's PatchCore side by side on a real class, each model in its own process.

Data: by default the real MVTec 3D-AD class cable_gland of ../shared/data,
``mvtec3d_mini`` (20 train, 4 validation, 10 test) and ``mvtec3d_extra`` (60
more train, 19 more validation), linked file by file into one dataset folder
under .cache/bench_real (the sources are never written); ``--root`` names any
other dataset folder in the MVTec 3D-AD layout. Every row learns one class
("1-0 with 0 steps"), preprocessing on, at ``--image-size`` px.

Rows (``--model``, repeatable):

* ``incad:PATH [KEY=VALUE ...]``: a scenario YAML run by incad with the data
  and scenario above and the row's own overrides (``--set`` syntax, e.g.
  ``scenario.modality=rgb learner.hidden_dim=128``); a row that does not set
  ``scenario.modality`` runs once per modality of ``--modalities``.
* ``anomalib-patchcore [layers=[blocks.2,blocks.4]] [coreset_ratio=0.1] [num_neighbors=9]``:
  anomalib's ``PatchcoreModel`` (RGB), fed the same batches as incad (same
  reader, preprocessing, resize and normalisation) from a timm
  ``tf_efficientnet_lite0`` holding incad's Lite0 ImageNet weights, so both
  read identical features (the script prints the largest difference between
  incad's backbone taps and timm's). anomalib's own memory bank, KCenterGreedy
  coreset, anomaly map and image score are kept as they are.
  Needs the optional extra: ``pip install -e '.[peer]'``.
* ``LABEL=SPEC`` names a row. Default rows: Uni-RCM (RGB+3D), the
  quickstart's reconstruction learner (each modality) and anomalib's PatchCore.

Every metric is computed by incad.metrics on maps at the mask resolution
(``--image-size``): incad's maps upsampled and smoothed by incad's evaluation
(bilinear, Gaussian sigma 4), anomalib's as its model returns them (nearest,
Gaussian sigma 4) with its own reweighted image score. Columns: I-AUROC,
P-AUROC, AUPRO@0.3, AUPRO@0.01; fit s (incad: all training steps, epochs and
offline stages; anomalib: the training feature pass and the coreset); coreset s
(anomalib: its KCenterGreedy selection alone; incad: the learner's
gradient-free stages ``fit`` + ``calibrate``, where a memory-bank learner
selects its coreset, data reading and features included); images/s (batch of
16 new images, feature caches off; anomalib's includes the upsampling and blur
that incad's evaluation does apart); peak GiB (the row's process); MiB of the
learned state (memory bank, or the learner's state without its frozen
pretrained backbones).

    .venv/bin/python benchmarks/bench_real.py \\
        --model 'incad:experiments/learners/uni_rcm.yaml scenario.modality=rgb+depth' \\
        --model 'incad:experiments/quickstart.yaml training.epochs=5' --model anomalib-patchcore \\
        [--root DIR --class-name NAME] [--modalities rgb,depth,rgb+depth] [--image-size 224] \\
        [--epochs N] [--set KEY=VALUE] [--device auto] [--quick] [--output outputs/bench_real]

``--quick`` keeps 8 training and 2 validation samples (every test sample) and
1 epoch unless ``--epochs`` is given: a smoke check, not a measurement.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import importlib.util
import json
import os
import shlex
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO_ROOT, add_threads_option, images_per_second, in_own_process, markdown_table, measured_run, peak_gib, start_benchmark
from lite0_timm import incad_taps_of_timm_stages, lite0_state_for_timm

from incad.config import parse_overrides, read_yaml, set_dotted
from incad.errors import ConfigError, DataError

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
REAL_SOURCES = (SHARED_DATA / "mvtec3d_mini", SHARED_DATA / "mvtec3d_extra")
MERGED_CACHE = REPO_ROOT / ".cache" / "bench_real"
SPLITS = ("train", "validation", "test")
QUICK_LIMITS = {"train": 8, "validation": 2}
MODALITIES = ("rgb", "depth", "rgb+depth")
# Uni-RCM maps one modality onto the other, so it runs on RGB+3D only; the quickstart's reconstruction learner on each.
DEFAULT_MODELS = ("incad:experiments/learners/uni_rcm.yaml scenario.modality=rgb+depth", "incad:experiments/quickstart.yaml", "anomalib-patchcore")
INSTALL_PEER = "pip install -e '.[peer]'  (anomalib==2.7.0, pandas<3)"
# anomalib's PatchCore defaults, with the issue's Lite0 taps (timm stages 2 and 4: strides 8 and 16).
PATCHCORE_DEFAULTS = {"layers": ["blocks.2", "blocks.4"], "coreset_ratio": 0.1, "num_neighbors": 9}
COLUMNS = {
    "i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "aupro_30": "AUPRO@0.3", "aupro_1": "AUPRO@0.01",
    "fit_s": "fit s", "coreset_s": "coreset s", "images_per_s": "images/s", "peak_gib": "peak GiB", "state_mib": "state MiB",
}


# --- data -------------------------------------------------------------------------------------------------------


def link_merged_root(sources: Sequence[Path], destination: Path, limits: dict[str, int] | None = None) -> Path:
    """``destination``: every file of the dataset folders ``sources``, symlinked one by one; returns it.

    A file found at the same place in two sources must be identical (e.g. a
    licence), else the merge is refused. ``limits`` keeps the first N samples
    (by file name) of each class, split and defect folder. Links that are no
    longer planned are removed; nothing but links is ever created or removed,
    and nothing is written inside ``sources``.
    """
    planned: dict[Path, Path] = {}
    for source in sources:
        if not source.is_dir():
            raise DataError(source, "dataset folder not found.", "Pass --root with a dataset folder in the MVTec 3D-AD layout.")
        for file in sorted(path for path in source.rglob("*") if path.is_file()):
            relative = file.relative_to(source)
            earlier = planned.setdefault(relative, file)
            if earlier != file and not filecmp.cmp(earlier, file, shallow=False):
                raise DataError(file, f"differs from {earlier}, which lands at the same place in the merged dataset.", "Merge folders whose sample names do not overlap.")
    if limits:
        planned = _first_samples(planned, limits)
    for link in [path for path in destination.rglob("*") if path.is_symlink()] if destination.is_dir() else []:
        if link.relative_to(destination) not in planned:
            link.unlink()
    for relative, file in planned.items():
        link = destination / relative
        if link.is_symlink() and link.resolve() == file.resolve():
            continue
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise DataError(link, "exists and is not a link made by this benchmark.", f"Remove {destination} and run again.")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(file.resolve())
    return destination


def _first_samples(planned: dict[Path, Path], limits: dict[str, int]) -> dict[Path, Path]:
    """Keep the first ``limits[split]`` sample names of each ``class/split/defect`` folder (every file of a kept sample)."""
    names: dict[tuple[str, ...], set[str]] = {}
    for relative in planned:
        if len(relative.parts) == 5 and relative.parts[1] in limits:  # class/split/defect/{rgb,xyz,gt}/NNN.ext
            names.setdefault(relative.parts[:3], set()).add(relative.stem)
    kept = {folder: set(sorted(stems)[: limits[folder[1]]]) for folder, stems in names.items()}
    return {
        relative: file for relative, file in planned.items()
        if relative.parts[:3] not in kept or relative.stem in kept[relative.parts[:3]]
    }


def count_samples(root: Path, class_name: str) -> dict[str, int]:
    """Samples per split of one class (the RGB images of every defect folder)."""
    return {split: len(list((root / class_name / split).glob("*/rgb/*.png"))) for split in SPLITS}


def real_root(args: argparse.Namespace) -> Path:
    """The dataset folder the rows read: ``--root`` or the merged real subset, limited under ``--quick``."""
    if args.root is None:
        missing = [str(source) for source in REAL_SOURCES if not source.is_dir()]
        if missing:
            raise DataError(missing[0], "not found: the default real data is ../shared/data.", "Pass --root with a dataset folder in the MVTec 3D-AD layout.")
        name = "cable_gland-merged" + ("-quick" if args.quick else "")
        return link_merged_root(REAL_SOURCES, MERGED_CACHE / name, QUICK_LIMITS if args.quick else None)
    if args.quick:
        return link_merged_root([args.root], MERGED_CACHE / f"{args.root.resolve().name}-quick", QUICK_LIMITS)
    return args.root


def single_class(root: Path, wanted: str | None) -> str:
    """``wanted``, or the only class of ``root``."""
    from incad.data.readers.mvtec3d import MVTEC3D

    classes = MVTEC3D.list_classes(root)
    if wanted is not None:
        if wanted not in classes:
            raise ConfigError(f"--class-name {wanted}: no such class in {root}; available: {', '.join(classes)}")
        return wanted
    if len(classes) != 1:
        raise ConfigError(f"--class-name: {root} holds {len(classes)} classes ({', '.join(classes)}); name the one to benchmark")
    return classes[0]


def prepare_real_data(dataset: dict) -> str:
    """Preprocess the data once, in its own process, so no row's time or peak memory includes it."""
    from incad.config import DatasetConfig
    from incad.data.datasets import prepare_dataset

    return str(prepare_dataset(DatasetConfig.model_validate(dataset["config"]), [dataset["class_name"]], show_progress=False).root)


# --- rows -------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One model to measure: ``kind`` "incad" (a scenario YAML + overrides) or "anomalib-patchcore"."""

    label: str
    kind: str
    modality: str
    scenario: Path | None = None
    overrides: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)


def parse_rows(specs: Iterable[str], modalities: Sequence[str]) -> list[Row]:
    """The rows of ``--model`` specs; an incad spec without ``scenario.modality`` gives one row per modality."""
    rows = []
    for spec in specs:
        head, *overrides = shlex.split(spec)
        label, _, kind = head.rpartition("=")
        if kind == "anomalib-patchcore":
            options = dict(PATCHCORE_DEFAULTS)
            for key, value in parse_overrides(overrides):
                if key not in PATCHCORE_DEFAULTS:
                    raise ConfigError(f"--model {spec!r}: unknown anomalib-patchcore option '{key}'; allowed: {', '.join(PATCHCORE_DEFAULTS)}")
                options[key] = value
            rows.append(Row(label or "anomalib-patchcore", kind, "rgb", options=options))
        elif kind.startswith("incad:"):
            scenario = Path(kind.removeprefix("incad:"))
            if not scenario.is_file() and (REPO_ROOT / scenario).is_file():
                scenario = REPO_ROOT / scenario
            if not scenario.is_file():
                raise ConfigError(f"--model {spec!r}: no scenario YAML at {scenario}")
            settings = dict(parse_overrides(overrides))
            fixed = settings.get("scenario.modality")
            learner = settings.get("learner.name") or _learner_name(read_yaml(scenario))
            name = label or " ".join([learner, *(item for item in overrides if not item.startswith(("scenario.modality=", "learner.name=")))])
            for modality in [fixed] if fixed else modalities:
                with_modality = overrides if fixed else [*overrides, f"scenario.modality={modality}"]
                rows.append(Row(f"{name} ({modality})", "incad", modality, scenario, with_modality))
        else:
            raise ConfigError(f"--model {spec!r}: expected 'incad:PATH [KEY=VALUE ...]' or 'anomalib-patchcore [KEY=VALUE ...]'")
    labels = [row.label for row in rows]
    for index, row in enumerate(rows):
        if labels.count(row.label) > 1:
            row.label = f"{row.label} #{labels[: index + 1].count(row.label)}"
    return rows


def _learner_name(raw: dict) -> str:
    """The learner a scenario YAML names (``learner: name`` or ``learner: {name: ...}``)."""
    learner = raw.get("learner")
    return learner if isinstance(learner, str) else (learner or {}).get("name", "learner")


def incad_overrides(dataset: dict, settings: dict, row: Row, extra: Sequence[str]) -> list[str]:
    """The overrides of an incad row: data, one class "1-0 with 0 steps", no tracking; then ``--set``, then the row's own."""
    common = [f"dataset.{key}={json.dumps(value)}" for key, value in dataset["flat"].items()]
    common += [
        f"scenario.classes=[{dataset['class_name']}]", "scenario.base=1", "scenario.increment=0", "scenario.steps=0",
        f"output_dir={settings['output_dir']}", "tracking.enabled=false", f"device={settings['device']}",
    ]
    if settings["epochs"] is not None:
        common.append(f"training.epochs={settings['epochs']}")
    return [*common, *extra, *row.overrides]


def state_mib(module, frozen: type) -> float:
    """MiB of ``module``'s state without the submodules of type ``frozen`` (pretrained backbones both sides share)."""
    skipped = tuple(f"{name}." for name, sub in module.named_modules() if isinstance(sub, frozen) and name)
    tensors = {value.data_ptr(): value for key, value in module.state_dict().items() if not key.startswith(skipped)}
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values()) / 2**20


def incad_figures(scenario: str, overrides: list[str]) -> dict[str, float]:
    """One incad row (meant for :func:`in_own_process`): the run's metrics and costs."""
    from incad.models.backbones.efficientnet import MultiScaleFeatures
    from incad.resolve import load_run

    run = load_run(scenario, overrides=overrides)
    offline = time_offline_stages(run.learner.factory)
    result, figures = measured_run(run)
    return {
        **{key: figures[key] for key in ("i_auroc", "p_auroc", "aupro_30", "aupro_1", "images_per_s", "peak_gib")},
        "fit_s": figures["train_s"], "coreset_s": offline["seconds"], "state_mib": state_mib(result.learner, MultiScaleFeatures),
    }


def time_offline_stages(learner_class: type) -> dict[str, float]:
    """Make ``learner_class.fit`` and ``.calibrate`` add their seconds to the returned dict (this process only)."""
    spent = {"seconds": 0.0}
    for stage in ("fit", "calibrate"):
        original = getattr(learner_class, stage)

        def timed(self, batches, _original=original):
            started = time.perf_counter()
            try:
                return _original(self, batches)
            finally:
                spent["seconds"] += time.perf_counter() - started

        setattr(learner_class, stage, timed)
    return spent


def anomalib_patchcore_figures(dataset: dict, options: dict, seed: int, device_name: str) -> dict[str, float]:
    """anomalib's PatchCore on incad's batches (meant for :func:`in_own_process`): metrics, costs, feature check."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # anomalib's own imports of deprecated timm/dinov2 paths
        from anomalib.models.components import TimmFeatureExtractor
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    from incad.config import DatasetConfig
    from incad.data.datasets import PreparedDataset
    from incad.data.readers.mvtec3d import MVTEC3D
    from incad.data.sample import collate
    from incad.evaluation.results import evaluate_object
    from incad.models.backbones.efficientnet import LITE_MEAN, LITE_STD, packaged_lite_state
    from incad.models.backbones.registry import create_backbone
    from incad.runner import resolve_device, seed_everything

    seed_everything(seed)
    device = resolve_device(device_name)
    config = DatasetConfig.model_validate(dataset["config"])
    class_name = dataset["class_name"]

    prepared = PreparedDataset(Path(dataset["prepared"]), MVTEC3D)  # the preprocessed cache, in the MVTec 3D-AD layout

    def loader(split: str, batch_size: int) -> DataLoader:
        data = prepared.split([class_name], split, {class_name: 0}, False, config.image_size, config.on_bad_sample)
        return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)

    model = PatchcoreModel(layers=list(options["layers"]), backbone="tf_efficientnet_lite0", pre_trained=False, num_neighbors=options["num_neighbors"])
    timm_network = model.feature_extractor.feature_extractor
    loaded = timm_network.load_state_dict(lite0_state_for_timm(packaged_lite_state(0)), strict=False)
    if loaded.missing_keys or any(not key.startswith(("conv_head.", "bn2.", "classifier.")) for key in loaded.unexpected_keys):
        raise RuntimeError(f"Lite0 weights do not fit timm's tf_efficientnet_lite0: missing {loaded.missing_keys[:5]}, unexpected {loaded.unexpected_keys[:5]}")
    model.to(device)
    mean = torch.tensor(LITE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(LITE_STD, device=device).view(1, 3, 1, 1)

    def normalised(images: torch.Tensor) -> torch.Tensor:
        return (images.to(device) - mean) / std

    # Identical features: incad's backbone taps and timm's stage outputs on the first training batch.
    first = next(iter(loader("train", 16))).image.to(device)
    stages = [int(layer.rsplit(".", 1)[-1]) for layer in options["layers"]]
    with torch.no_grad():
        timm_features = model.feature_extractor(normalised(first))
        incad_taps = create_backbone("efficientnet-lite0", taps=incad_taps_of_timm_stages(stages)).to(device)(first)
    feature_difference = max((timm_features[layer] - tap).abs().max().item() for layer, tap in zip(options["layers"], incad_taps))
    del timm_features, incad_taps

    started = time.perf_counter()
    model.train()
    for batch in loader("train", 16):
        model(normalised(batch.image))
    coreset_started = time.perf_counter()
    model.subsample_embedding(options["coreset_ratio"])
    finished = time.perf_counter()

    model.eval()
    maps, scores, masks, labels = [], [], [], []
    with torch.no_grad():
        for batch in loader("test", 32):
            output = model(normalised(batch.image))
            maps.append(output.anomaly_map[:, 0].cpu().numpy().astype(np.float32))
            scores.append(output.pred_score.cpu().numpy())
            masks.append(batch.mask.numpy() > 0.5)
            labels.append(batch.label.numpy())
    metrics = evaluate_object(*(np.concatenate(parts) for parts in (maps, masks, scores, labels)))
    return {
        **metrics,
        "fit_s": finished - started,
        "coreset_s": finished - coreset_started,
        "images_per_s": images_per_second(lambda batch: model(normalised(batch.image)), config.image_size, device),
        "peak_gib": peak_gib(),
        "state_mib": state_mib(model, TimmFeatureExtractor),
        "bank_size": model.memory_bank.shape[0],
        "feature_max_abs_diff": feature_difference,
    }


# --- main -------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "--models", dest="models", action="append", metavar="SPEC", help=f"a row (repeatable); default: {' and '.join(DEFAULT_MODELS)}")
    parser.add_argument("--root", type=Path, help="dataset folder in the MVTec 3D-AD layout (default: the merged real cable_gland subset of ../shared/data)")
    parser.add_argument("--class-name", help="the class to learn (default: the only class of the root)")
    parser.add_argument("--modalities", default=",".join(MODALITIES), help="modalities of incad rows that do not set scenario.modality (comma-separated)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, help="training.epochs of every incad row (default: the YAML's; 1 with --quick)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for every incad row (dataset.* ones also for anomalib's data)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0, help="seed of anomalib's coreset start (incad rows use their YAML's seed)")
    parser.add_argument("--quick", action="store_true", help="8 train and 2 validation samples, 1 epoch: a smoke check")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "outputs" / "bench_real", help="folder of the CSV and JSON results")
    add_threads_option(parser)
    args = parser.parse_args()
    start_benchmark(args.threads)
    modalities = [name.strip() for name in args.modalities.split(",") if name.strip()]
    if set(modalities) - set(MODALITIES) or not modalities:
        parser.error(f"--modalities: choose from {', '.join(MODALITIES)}")
    try:
        rows = parse_rows(args.models or DEFAULT_MODELS, modalities)
        root = real_root(args)
        class_name = single_class(root, args.class_name)
    except (ConfigError, DataError) as error:
        parser.error(str(error))
    epochs = args.epochs if args.epochs is not None or not args.quick else 1
    flat = {"name": "mvtec3d", "root": str(root.resolve()), "image_size": args.image_size, "preprocessing.enabled": True}
    raw: dict = {}
    for key, value in parse_overrides([f"{key}={json.dumps(value)}" for key, value in flat.items()] + [item.removeprefix("dataset.") for item in args.set if item.startswith("dataset.")]):
        set_dotted(raw, key, value)
    dataset = {"flat": flat, "config": raw, "class_name": class_name}
    # Read by tqdm when it is imported: keeps anomalib's coreset progress bar out of the rows' processes' output.
    os.environ.setdefault("TQDM_DISABLE", "1")
    print(f"data: {root} class {class_name}: {count_samples(root, class_name)} samples; preprocessing ...", flush=True)
    dataset["prepared"] = in_own_process(prepare_real_data, dataset)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="incad-bench-real-") as scratch:
        settings = {"output_dir": f"{scratch}/out", "device": args.device, "epochs": epochs}
        for row in rows:
            if row.kind == "anomalib-patchcore" and importlib.util.find_spec("anomalib") is None:
                print(f"{row.label}: skipped, anomalib is not installed; install it with: {INSTALL_PEER}", flush=True)
                continue
            try:
                if row.kind == "incad":
                    figures = in_own_process(incad_figures, str(row.scenario), incad_overrides(dataset, settings, row, args.set))
                else:
                    figures = in_own_process(anomalib_patchcore_figures, dataset, row.options, args.seed, args.device)
                    print(f"{row.label}: identical features: max |incad tap - timm feature| = {figures['feature_max_abs_diff']:.3g}; bank {figures['bank_size']} patches", flush=True)
            except Exception as error:  # one failing row must not lose the others' figures
                print(f"{row.label}: failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}", flush=True)
                continue
            results[row.label] = {"kind": row.kind, "modality": row.modality, "scenario": str(row.scenario or ""), "overrides": " ".join(row.overrides), **figures}
            print(f"done: {row.label}", flush=True)

    counts = count_samples(root, class_name)
    epochs_text = "the YAML's" if epochs is None else epochs
    title = f"{class_name} ({counts['train']} train, {counts['test']} test), 1-0 with 0 steps, preprocessing on, {args.image_size} px, incad epochs: {epochs_text}"
    print(f"\n{title}{' (quick: a smoke check, not a measurement)' if args.quick else ''}\n")
    print(markdown_table(COLUMNS, results, "model"))
    write_results(args.output, "bench_real-quick" if args.quick else "bench_real", title, results)


def write_results(folder: Path, stem: str, title: str, results: dict[str, dict]) -> None:
    """``<stem>.json`` (title and rows) and ``<stem>.csv`` (one line per row) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps({"title": title, "rows": results}, indent=2))
    names = ["model", *dict.fromkeys(key for row in results.values() for key in row)]
    with open(folder / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for label, row in results.items():
            writer.writerow({"model": label, **row})
    print(f"\nresults: {folder / stem}.json, .csv")


if __name__ == "__main__":
    main()
