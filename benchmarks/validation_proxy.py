"""A labelled validation set made from normal validation samples only, for choosing settings without test data.

Validation folders of MVTec 3D-AD hold normal samples only, so they cannot
rank settings by AUROC or AUPRO. This module copies each (preprocessed)
validation sample twice into the test split of a new dataset folder: once as
it is (``test/good``) and once with a pseudo-defect (``test/pseudo`` with its
``gt`` mask). Training samples are linked unchanged. Settings are then ranked
on this folder with the ordinary runner; the real test samples are never read.

Pseudo-defects lie on the object (pixels with a 3-D point) inside a random
ellipse of 8-28 px radius (on a 400 px image), one of three kinds in turn:

- ``shape``: the surface dented or raised by 0.8-3 mm with a smooth profile
  (the real defects of such classes are bent, cut or holed geometry),
  RGB unchanged;
- ``colour``: a patch of another normal sample's object pasted in, its
  brightness scaled by 0.6-1.4 (contamination, foreign texture), xyz unchanged;
- ``both``: a dent and a darkening that follows its profile.

This is a proxy, and a stated one: it rewards settings that separate local
geometric and appearance changes from normal variation, which is what the
real defects are, but its figures are not test figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

KINDS = ("shape", "colour", "both")


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.symlink(source.resolve(), target)


def _ellipse(shape: tuple[int, int], centre: tuple[int, int], radii: tuple[float, float], angle: float) -> np.ndarray:
    """Smooth profile in [0, 1]: 1 at the centre, 0 outside the ellipse."""
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    dy, dx = rows - centre[0], cols - centre[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radii[0]
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radii[1]
    radius = np.sqrt(u**2 + v**2)
    return np.clip(1.0 - radius**2, 0.0, None)


def add_pseudo_defect(rgb: np.ndarray, xyz: np.ndarray, donor_rgb: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copies of ``rgb`` (H, W, 3 uint8) and ``xyz`` (H, W, 3 float32) with one defect of ``kind``, and its mask."""
    on_object = xyz[..., 2] > 0
    scale = rgb.shape[0] / 400
    inner = ndimage.binary_erosion(on_object, iterations=max(1, int(12 * scale)))
    candidates = np.argwhere(inner if inner.any() else on_object)
    centre = tuple(candidates[rng.integers(len(candidates))])
    radii = tuple(rng.uniform(8, 28, size=2) * scale)
    profile = _ellipse(on_object.shape, centre, radii, rng.uniform(0, np.pi)) * on_object
    mask = profile > 0.05
    rgb_out, xyz_out = rgb.astype(np.float32), xyz.copy()
    if kind in ("shape", "both"):
        depth_change = rng.choice([-1.0, 1.0]) * rng.uniform(0.0008, 0.003)
        xyz_out[..., 2] = np.where(on_object, xyz[..., 2] + depth_change * profile, xyz[..., 2])
    if kind == "colour":
        dy, dx = np.argwhere(donor_rgb.max(axis=-1) > 0).mean(axis=0).astype(int) - np.array(centre)
        shifted = np.roll(donor_rgb, (-dy, -dx), axis=(0, 1)).astype(np.float32) * rng.uniform(0.6, 1.4)
        blend = profile[..., None] > 0.05
        rgb_out = np.where(blend, shifted, rgb_out)
    if kind == "both":
        rgb_out = rgb_out * (1.0 - rng.uniform(0.2, 0.5) * profile[..., None])
    return np.clip(rgb_out, 0, 255).astype(np.uint8), xyz_out, mask


def build_validation_proxy(prepared_class: Path, out_root: Path, seed: int = 0) -> Path:
    """``out_root/<class>``: train linked, validation as test/good, pseudo-defective copies as test/pseudo.

    ``prepared_class`` is one class folder in the MVTec 3D-AD layout (a
    preprocessed cache, so the pseudo-defects sit on the object as the model
    sees it). Returns ``out_root``; an existing folder is reused as it is.
    """
    target = out_root / prepared_class.name
    done = target / ".complete"
    if done.is_file():
        return out_root
    rng = np.random.default_rng(seed)
    for rgb in sorted((prepared_class / "train" / "good" / "rgb").glob("*.png")):
        _link(rgb, target / "train" / "good" / "rgb" / rgb.name)
        _link(rgb.parent.parent / "xyz" / f"{rgb.stem}.tiff", target / "train" / "good" / "xyz" / f"{rgb.stem}.tiff")
    validation = sorted((prepared_class / "validation" / "good" / "rgb").glob("*.png"))
    if not validation:
        raise FileNotFoundError(f"{prepared_class}/validation/good/rgb holds no sample: the proxy needs normal validation samples")
    pseudo = target / "test" / "pseudo"
    for folder in ("rgb", "xyz", "gt"):
        (pseudo / folder).mkdir(parents=True, exist_ok=True)
    for index, rgb_path in enumerate(validation):
        xyz_path = rgb_path.parent.parent / "xyz" / f"{rgb_path.stem}.tiff"
        _link(rgb_path, target / "test" / "good" / "rgb" / rgb_path.name)
        _link(xyz_path, target / "test" / "good" / "xyz" / xyz_path.name)
        donor = validation[(index + 1) % len(validation)]
        rgb, donor_rgb = np.asarray(Image.open(rgb_path).convert("RGB")), np.asarray(Image.open(donor).convert("RGB"))
        xyz = tifffile.imread(xyz_path).astype(np.float32)
        defect_rgb, defect_xyz, mask = add_pseudo_defect(rgb, xyz, donor_rgb, KINDS[index % len(KINDS)], rng)
        Image.fromarray(defect_rgb).save(pseudo / "rgb" / rgb_path.name)
        tifffile.imwrite(pseudo / "xyz" / xyz_path.name, defect_xyz)
        Image.fromarray(mask.astype(np.uint8) * 255).save(pseudo / "gt" / rgb_path.name)
    done.write_text("ok\n")
    return out_root
