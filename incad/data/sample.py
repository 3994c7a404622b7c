"""Typed samples and batches: every field has a name, nothing is positional.

A dataset returns :class:`Sample`; :func:`collate` stacks them into a
:class:`Batch`, which is what learners, strategies and evaluation read.
Images are kept in physical units ([0, 1] RGB, [0, 1] depth); the backbone owns
the normalisation its weights expect.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Sample:
    """One image of one object, with its optional 3-D channels and ground truth."""

    image: Tensor  # (3, H, W) float32 RGB in [0, 1]
    mask: Tensor  # (H, W) float32, 1 = defective pixel
    label: int  # 0 = good, 1 = defective
    object_id: int  # index of the object in the scenario's class order
    defect_type: str  # "good" or the defect folder name
    path: str  # the RGB file, for reports
    depth: Tensor | None = None  # (1, H, W) float32 in [0, 1], 0 where no point
    xyz: Tensor | None = None  # (3, H, W) float32 organized point cloud, 0 = no point
    valid: Tensor | None = None  # (H, W) bool, True where the point cloud has a point


@dataclass
class Batch:
    """A stack of samples; tensor fields gain a leading batch dimension."""

    image: Tensor  # (B, 3, H, W)
    mask: Tensor  # (B, H, W)
    label: Tensor  # (B,) long
    object_id: Tensor  # (B,) long
    defect_type: list[str]
    path: list[str]
    depth: Tensor | None = None  # (B, 1, H, W)
    xyz: Tensor | None = None  # (B, 3, H, W)
    valid: Tensor | None = None  # (B, H, W)

    def __len__(self) -> int:
        return self.image.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        """The same batch with every tensor field on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)


def _stack_optional(samples: list[Sample], name: str) -> Tensor | None:
    values = [getattr(s, name) for s in samples]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        missing = next(s.path for s, v in zip(samples, values) if v is None)
        raise ValueError(f"{missing}: field '{name}' is missing while other samples of the batch have it")
    return torch.stack(values)


def collate(samples: list[Sample]) -> Batch:
    """Stack samples into a :class:`Batch` (the ``collate_fn`` of every loader)."""
    return Batch(
        image=torch.stack([s.image for s in samples]),
        mask=torch.stack([s.mask for s in samples]),
        label=torch.tensor([s.label for s in samples], dtype=torch.long),
        object_id=torch.tensor([s.object_id for s in samples], dtype=torch.long),
        defect_type=[s.defect_type for s in samples],
        path=[s.path for s in samples],
        depth=_stack_optional(samples, "depth"),
        xyz=_stack_optional(samples, "xyz"),
        valid=_stack_optional(samples, "valid"),
    )
