"""Writes small datasets in Eyecandies' true file format, for the reader's tests (no binaries shipped).

Per sample, as in the real dataset: ``NNN_image_0..5.png`` (one view under six
lights), a 16-bit ``NNN_depth.png`` with ``NNN_info_depth.yaml``
(``normalization: {min, max}`` in metres), ``NNN_mask.png``,
``NNN_normals.png`` and ``NNN_pose.txt`` (a 4x4 camera pose). The scene is a
flat table at ``TABLE_DISTANCE`` metres with a dome-shaped candy of height
``CANDY_HEIGHT`` in the middle; a defect is a dent in the dome, marked in the mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

TABLE_DISTANCE = 0.9
CANDY_HEIGHT = 0.06
CANDY_RADIUS = 0.3  # fraction of the image width
DEPTH_RANGE = (0.8, 1.0)  # the info_depth normalization of every sample
SPLIT_COUNTS = {"train": 3, "val": 1}


def scene(size: int, index: int, defective: bool) -> tuple[np.ndarray, np.ndarray]:
    """(depth in metres, defect mask) of one sample; ``index`` shifts the candy a little."""
    rows, columns = np.mgrid[0:size, 0:size] / size - 0.5
    columns = columns - 0.02 * (index % 3)
    radius = np.hypot(rows, columns) / CANDY_RADIUS
    height = CANDY_HEIGHT * np.sqrt(np.clip(1 - radius**2, 0, None))
    mask = np.zeros((size, size), dtype=bool)
    if defective:
        mask = np.hypot(rows - 0.05, columns - 0.05) < 0.06
        height = np.where(mask, height * 0.5, height)
    return TABLE_DISTANCE - height, mask


def write_sample(folder: Path, prefix: str, size: int, index: int, defective: bool) -> None:
    depth, mask = scene(size, index, defective)
    low, high = DEPTH_RANGE
    levels = np.round((depth - low) / (high - low) * 65535).astype(np.uint16)
    Image.fromarray(levels).save(folder / f"{prefix}_depth.png")
    (folder / f"{prefix}_info_depth.yaml").write_text(yaml.safe_dump({"normalization": {"min": low, "max": high}}))
    shade = ((TABLE_DISTANCE - depth) / CANDY_HEIGHT * 200 + 30).astype(np.uint8)
    for light in range(6):
        rgb = np.stack([shade, np.full_like(shade, 20 * light), 255 - shade], axis=-1)
        Image.fromarray(rgb, mode="RGB").save(folder / f"{prefix}_image_{light}.png")
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(folder / f"{prefix}_mask.png")
    Image.fromarray(np.full((size, size, 3), 128, dtype=np.uint8), mode="RGB").save(folder / f"{prefix}_normals.png")
    np.savetxt(folder / f"{prefix}_pose.txt", np.eye(4))


def write_eyecandies(root: Path, classes: list[str], size: int = 48, test_good: int = 2, test_bad: int = 2) -> Path:
    """A dataset with ``classes`` in Eyecandies' layout: train/val/test_public, each under data/."""
    for name in classes:
        for split, count in SPLIT_COUNTS.items():
            folder = root / name / split / "data"
            folder.mkdir(parents=True)
            for index in range(count):
                write_sample(folder, f"{index:03d}", size, index, defective=False)
        folder = root / name / "test_public" / "data"
        folder.mkdir(parents=True)
        for index in range(test_good + test_bad):  # test_public numbers samples with two digits
            write_sample(folder, f"{index:02d}", size, index, defective=index >= test_good)
    return root
