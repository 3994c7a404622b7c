"""The dataset of one split: samples of several classes, read through their layout's reader and resized.

Every layout (:mod:`incad.data.readers`) gives the same :class:`Sample`s, so
every learner and strategy runs on every dataset.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from incad.data.access import check_read
from incad.data.readers.base import LayoutReader, OnBadSample, Record, depth_image
from incad.data.readers.mvtec3d import MVTEC3D
from incad.data.sample import Sample
from incad.data.shots import draw_shots
from incad.errors import ConfigError, DataError


def _resize(channels_first: Tensor, size: int, mode: str) -> Tensor:
    """(C, H, W) -> (C, size, size); nearest modes use pixel centres so masks, xyz and RGB stay aligned."""
    if channels_first.shape[-2:] == (size, size):
        return channels_first
    antialias = mode == "bicubic"
    return F.interpolate(channels_first[None], size=(size, size), mode=mode, antialias=antialias)[0]


class AnomalyDetectionDataset(Dataset):
    """Samples of several classes of one split, resized to ``image_size`` squares.

    RGB is resized bicubic with antialiasing (and clamped back to [0, 1]);
    xyz and gt nearest (``nearest-exact``, i.e. pixel centres, so a point never
    moves off the RGB pixel it belongs to); depth is computed after resizing.
    ``reader`` picks the folder layout. With ``on_bad_sample="skip"`` every
    sample is read once up front and the bad ones are left out and listed in
    ``skipped``; with ``"error"`` the first bad file raises its DataError.
    ``shots`` keeps that many samples per class, drawn with ``shot_seed``
    among the readable ones (:mod:`incad.data.shots`). ``records`` (from a
    published split file, :mod:`incad.data.split_files`) replaces the reader's
    listing of ``class_names`` in ``split``.
    """

    def __init__(
        self,
        root: str | Path,
        class_names: list[str],
        split: str,
        image_size: int,
        object_ids: dict[str, int],
        load_xyz: bool = True,
        reader: LayoutReader = MVTEC3D,
        on_bad_sample: OnBadSample = "error",
        shots: int | None = None,
        shot_seed: int = 0,
        records: list[Record] | None = None,
    ) -> None:
        unknown = [name for name in class_names if name not in object_ids]
        if unknown:
            raise ConfigError(f"classes {unknown} have no entry in object_ids {object_ids}")
        if image_size < 1:
            raise ConfigError(f"image_size must be positive, got {image_size}")
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.load_xyz = load_xyz
        self.reader = reader
        self.skipped: list[DataError] | None = [] if on_bad_sample == "skip" else None
        if records is None:
            records = [record for name in class_names for record in reader.list_records(self.root, name, split, self.skipped)]
        if load_xyz:
            without_points = next((record for record in records if record.points_file is None), None)
            if without_points is not None:
                raise DataError(
                    without_points.rgb.parent.parent / "xyz",
                    "is missing: this sample folder has RGB images but no point clouds.",
                    "Add the xyz/NNN.tiff files or load the dataset with load_xyz=False.",
                )
        if self.skipped is not None:
            records = [record for record in records if self._readable(record)]
        if shots is not None:
            records = draw_shots(records, shots, shot_seed, self.root)
        self.records = records
        self.object_ids_per_sample = [object_ids[record.class_name] for record in self.records]

    def _readable(self, record: Record) -> bool:
        try:
            self.reader.read_sample(record, self.load_xyz)
        except DataError as problem:
            self.skipped.append(problem)
            return False
        return True

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        check_read(self.split, str(record.rgb))  # the test split is readable only during evaluation (incad.data.access)
        raw = self.reader.read_sample(record, self.load_xyz)
        image = torch.from_numpy(raw.rgb).permute(2, 0, 1).float().div(255.0)
        image = _resize(image, self.image_size, "bicubic").clamp(0.0, 1.0)

        mask = torch.zeros(self.image_size, self.image_size)
        if raw.mask is not None:
            mask = (_resize(torch.from_numpy(raw.mask)[None].float(), self.image_size, "nearest-exact")[0] > 0.5).float()

        depth = xyz = valid = None
        if raw.points is not None:
            xyz = _resize(torch.from_numpy(raw.points).permute(2, 0, 1), self.image_size, "nearest-exact").contiguous()
            valid = (xyz != 0).any(dim=0)
            depth = torch.from_numpy(depth_image(xyz.permute(1, 2, 0).numpy(), valid.numpy()))[None]

        return Sample(
            image=image,
            mask=mask,
            label=record.label,
            object_id=self.object_ids_per_sample[index],
            defect_type=record.defect_type,
            path=str(record.rgb),
            depth=depth,
            xyz=xyz,
            valid=valid,
        )
