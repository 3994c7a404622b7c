"""A seeded synthetic RGB + 3-D anomaly dataset, written in MVTec 3D-AD's layout.

Why synthetic: incremental multimodal experiments need many classes, exact
masks and controllable difficulty, and must run on a laptop without the real
dataset. The generator is designed so the data is informative, not easy:

* Scene: an organized point cloud of a height field (the object) over a
  slightly tilted background plane, seen by a pinhole camera looking down
  (z = distance to the camera, object points are closer). Pixels at the left and
  right image border and in the object's cast shadow have no point (0, 0, 0),
  as with a structured-light sensor.
* Classes: each has its own geometry and its own appearance (albedo colour and
  procedural texture with class-specific frequency and orientation), but all
  share one palette range and one size range, so a new class overlaps the
  feature space of the old ones (what makes forgetting measurable).
* RGB is albedo x Lambertian shading of the *nominal* (defect-free) geometry,
  so geometry-only defects are invisible in RGB and RGB-only ones in 3-D.
* Defects: ``stain`` and ``scratch`` change RGB only, ``dent`` and ``bump``
  change z only, ``crack`` and ``hole`` change both (a dark groove; a dark pit
  whose core has no points). Supports are hard-edged (ellipse, irregular blob,
  polyline) with a smooth profile inside that never falls to zero, so the mask
  is exactly the set of pixels the generator changed. Size and contrast are
  drawn from the configured ranges, from obvious to subtle.

Each sample is rendered from its own random streams (one for the scene, one
for the defect), so a sample can be re-rendered with and without its defect
and the two differ only inside the mask.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile
from PIL import Image
from pydantic import BaseModel, Field, field_validator
from scipy import ndimage

from incad.errors import DataError

# Bump when the rendered output changes, so caches of older versions are not reused.
GENERATOR_VERSION = 1

DEFECT_TYPES = ("stain", "scratch", "dent", "bump", "crack", "hole")
GOOD = "good"
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
DEFECT_VALUE = 255  # gt value of a defective pixel, as MVTec's defect ids (non-zero = defect)

# Scene, in normalised image coordinates (x, y in [-1, 1], y pointing down) and metres.
PLANE_DISTANCE = 0.6  # camera to background plane at the image centre
HALF_FIELD = 0.08  # half-width of the field of view on the plane
FOCAL = PLANE_DISTANCE / HALF_FIELD  # pinhole focal length in normalised units
MAX_PLANE_TILT = 0.004  # plane depth change (m) from the image centre to its edge
OBJECT_RADIUS = 0.55  # object radius, fraction of the image half-width
NO_POINT_BORDER = 0.04  # fraction of the width at the left and right edges without points
LIGHT = np.array([-0.45, -0.35, 1.0]) / np.linalg.norm([-0.45, -0.35, 1.0])  # towards the light
SHADOW_LENGTH = 0.05  # cast-shadow length, fraction of the image half-width
SHADOW_DARKENING = 0.55
AMBIENT = 0.3
BACKGROUND_ALBEDO = np.array([0.30, 0.29, 0.27])


class PoseJitter(BaseModel, extra="forbid"):
    """How much normal samples of one class vary in pose."""

    rotation_deg: float = Field(15.0, ge=0.0, le=180.0, description="rotation drawn from +-rotation_deg")
    translation: float = Field(0.05, ge=0.0, le=0.25, description="shift, fraction of the image half-width")
    scale: float = Field(0.08, ge=0.0, le=0.3, description="relative size change drawn from +-scale")


class SyntheticConfig(BaseModel, extra="forbid"):
    """Every knob of the synthetic dataset; the whole config keys the on-disk cache."""

    num_classes: int = Field(5, ge=1, description="how many of the designed categories, in their fixed order")
    image_size: int = Field(128, ge=32, le=1024)
    train_per_class: int = Field(60, ge=1)
    validation_per_class: int = Field(10, ge=1)
    test_good_per_class: int = Field(20, ge=1)
    test_defect_per_class: int = Field(5, ge=1, description="per defect type")
    defect_size: tuple[float, float] = Field(
        (0.05, 0.25), description="largest defect extent, fraction of the object diameter"
    )
    defect_contrast: tuple[float, float] = Field((0.15, 1.0), description="scales the colour and the depth change")
    texture_noise: float = Field(
        0.03, ge=0.0, le=0.3, description="std of per-pixel RGB noise and of smooth albedo blotches"
    )
    depth_noise: float = Field(0.0002, ge=0.0, le=0.005, description="std of per-point z noise, metres")
    pose_jitter: PoseJitter = Field(default_factory=PoseJitter)
    seed: int = Field(0, ge=0)

    @field_validator("num_classes")
    @classmethod
    def _at_most_designed(cls, value: int) -> int:
        if value > len(CATEGORIES):
            raise ValueError(f"at most {len(CATEGORIES)} categories are designed, got {value}")
        return value

    @field_validator("defect_size", "defect_contrast")
    @classmethod
    def _ordered_fraction_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"expected a (min, max) range with 0 < min <= max <= 1, got {value}")
        return value


@dataclass(frozen=True)
class RenderedSample:
    """One rendered sample in file formats: the exact arrays written to disk."""

    rgb: np.ndarray  # H x W x 3 uint8
    xyz: np.ndarray  # H x W x 3 float32, (0, 0, 0) = no point
    mask: np.ndarray  # H x W bool, True where the defect changed rgb or xyz


# --- geometry: relative height in [0, 1] over object-local coordinates (radius ~1), 0 outside ---

HeightField = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _dome(qx: np.ndarray, qy: np.ndarray, shape_jitter: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1.0 - qx**2 - qy**2, 0.0, None))


def _ring(qx: np.ndarray, qy: np.ndarray, shape_jitter: np.ndarray) -> np.ndarray:
    tube = (np.hypot(qx, qy) - 0.68) / 0.32
    return np.sqrt(np.clip(1.0 - tube**2, 0.0, None))


def _brick(qx: np.ndarray, qy: np.ndarray, shape_jitter: np.ndarray) -> np.ndarray:
    """A rounded box: flat top, edges rounded over the outer part of a superellipse."""
    superellipse = np.abs(qx / 0.95) ** 6 + np.abs(qy / 0.62) ** 6
    return np.sqrt(np.clip((1.0 - superellipse) / 0.45, 0.0, 1.0))


def _wave(qx: np.ndarray, qy: np.ndarray, shape_jitter: np.ndarray) -> np.ndarray:
    plate = np.abs(qx / 0.85) ** 8 + np.abs(qy / 0.85) ** 8 < 1.0
    return np.where(plate, 0.6 + 0.3 * np.sin(2.0 * np.pi * 1.5 * qx), 0.0)


def _pebble(qx: np.ndarray, qy: np.ndarray, shape_jitter: np.ndarray) -> np.ndarray:
    """An irregular flattened blob whose outline also varies from sample to sample."""
    angle = np.arctan2(qy, qx)
    outline = (
        0.95
        + (0.12 + 0.04 * shape_jitter[0]) * np.cos(2.0 * angle + 0.6 + 0.3 * shape_jitter[1])
        + (0.07 + 0.03 * shape_jitter[2]) * np.cos(3.0 * angle + 2.0 + 0.5 * shape_jitter[3])
    )
    return 0.85 * np.sqrt(np.clip(1.0 - (np.hypot(qx, qy) / outline) ** 2, 0.0, None))


def _disc(qx: np.ndarray, qy: np.ndarray, shape_jitter: np.ndarray) -> np.ndarray:
    """A low coin with a bevelled edge and a raised rim."""
    radius = np.hypot(qx, qy)
    body = 0.5 * np.clip((1.0 - radius) / 0.1, 0.0, 1.0)
    rim = 0.2 * np.exp(-(((radius - 0.82) / 0.06) ** 2)) * (radius < 1.0)
    return body + rim


def _cone(qx: np.ndarray, qy: np.ndarray, shape_jitter: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.hypot(qx, qy), 0.0, None)


def _star(qx: np.ndarray, qy: np.ndarray, shape_jitter: np.ndarray) -> np.ndarray:
    outline = 0.6 + 0.4 * ((1.0 + np.cos(5.0 * np.arctan2(qy, qx))) / 2.0) ** 1.5
    return np.clip(1.0 - np.hypot(qx, qy) / outline, 0.0, None)


def _pyramid(qx: np.ndarray, qy: np.ndarray, shape_jitter: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.maximum(np.abs(qx), np.abs(qy)) / 0.85, 0.0, None)


def _capsule(qx: np.ndarray, qy: np.ndarray, shape_jitter: np.ndarray) -> np.ndarray:
    distance_to_axis = np.hypot(np.clip(np.abs(qx) - 0.55, 0.0, None), qy)
    return np.sqrt(np.clip(1.0 - (distance_to_axis / 0.42) ** 2, 0.0, None))


# --- appearance: texture value in [0, 1] over texture coordinates (u, v) ---


def _soft_square(wave: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(3.0 * wave)


def _texture(kind: str, u: np.ndarray, v: np.ndarray, frequency: float, rng: np.random.Generator) -> np.ndarray:
    """A procedural texture; ``frequency`` is in cycles per object radius, phases vary per sample."""
    phase = rng.uniform(0.0, 2.0 * np.pi, 2)
    directions = rng.uniform(0.0, np.pi, 6)
    wavenumbers = frequency * rng.uniform(0.7, 1.3, 6)
    noise_phases = rng.uniform(0.0, 2.0 * np.pi, 6)
    cycles_u, cycles_v = 2.0 * np.pi * frequency * u, 2.0 * np.pi * frequency * v
    if kind == "stripes":
        return _soft_square(np.sin(cycles_u + phase[0]))
    if kind == "checker":
        return _soft_square(2.0 * np.sin(cycles_u + phase[0]) * np.sin(cycles_v + phase[1]))
    if kind == "dots":
        du = frequency * u + phase[0] / (2 * np.pi)
        dv = frequency * v + phase[1] / (2 * np.pi)
        distance = np.hypot(du - np.round(du), dv - np.round(dv))
        return np.clip((0.3 - distance) / 0.08, 0.0, 1.0)
    if kind == "rings":
        return _soft_square(np.sin(2.0 * np.pi * frequency * np.hypot(u, v) + phase[0]))
    if kind == "hatch":
        return np.maximum(_soft_square(np.sin(cycles_u + phase[0]) - 0.6), _soft_square(np.sin(cycles_v + phase[1]) - 0.6))
    if kind == "noise":
        total = sum(
            np.cos(2.0 * np.pi * k * (np.cos(d) * u + np.sin(d) * v) + p)
            for k, d, p in zip(wavenumbers, directions, noise_phases)
        )
        return _soft_square(total / np.sqrt(3.0))
    raise ValueError(f"unknown texture {kind!r}")


@dataclass(frozen=True)
class Category:
    """One designed object class: its geometry and its appearance."""

    name: str
    height_field: HeightField
    height: float  # metres at relative height 1
    hue: float  # degrees
    texture: str
    frequency: float  # texture cycles per object radius
    orientation: float  # texture orientation, degrees


CATEGORIES = (
    Category("dome", _dome, 0.022, 25.0, "stripes", 3.0, 30.0),
    Category("ring", _ring, 0.016, 205.0, "checker", 2.5, 0.0),
    Category("brick", _brick, 0.018, 0.0, "dots", 3.5, 15.0),
    Category("wave", _wave, 0.016, 120.0, "stripes", 4.5, 90.0),
    Category("pebble", _pebble, 0.024, 48.0, "noise", 2.0, 0.0),
    Category("disc", _disc, 0.016, 280.0, "rings", 3.0, 0.0),
    Category("cone", _cone, 0.024, 165.0, "hatch", 3.0, 45.0),
    Category("star", _star, 0.02, 330.0, "stripes", 2.0, -30.0),
    Category("pyramid", _pyramid, 0.022, 90.0, "checker", 4.0, 45.0),
    Category("capsule", _capsule, 0.02, 240.0, "dots", 2.5, 60.0),
)
_CATEGORY_BY_NAME = {category.name: category for category in CATEGORIES}


def class_names(num_classes: int) -> list[str]:
    """The first ``num_classes`` designed categories, in their fixed order."""
    if not 1 <= num_classes <= len(CATEGORIES):
        raise ValueError(f"num_classes must be between 1 and {len(CATEGORIES)}, got {num_classes}")
    return [category.name for category in CATEGORIES[:num_classes]]


def _class_colours(hue: float) -> tuple[np.ndarray, np.ndarray]:
    """Base and texture colour: one shared saturation/brightness range, the hue tells classes apart."""
    base = np.array(colorsys.hsv_to_rgb((hue % 360.0) / 360.0, 0.45, 0.75))
    accent = np.array(colorsys.hsv_to_rgb(((hue + 25.0) % 360.0) / 360.0, 0.55, 0.48))
    return base, accent


# --- rendering ---


@dataclass
class _Scene:
    """The nominal scene of one sample; a defect edits ``albedo``, ``z`` and ``valid`` in place."""

    albedo: np.ndarray  # H x W x 3
    shading: np.ndarray  # H x W, includes the cast shadow
    rgb_noise: np.ndarray  # H x W x 3
    z: np.ndarray  # H x W, metres, noisy
    valid: np.ndarray  # H x W bool
    on_object: np.ndarray  # H x W bool
    base_colour: np.ndarray
    object_height: float
    object_diameter_px: float


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(centres, centres)  # x varies along columns, y along rows


def _shifted(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``mask`` moved by (rows, cols) pixels, filled with False (no wrap-around)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(rows, 0) : h + min(rows, 0), max(cols, 0) : w + min(cols, 0)] = mask[
        max(-rows, 0) : h + min(-rows, 0), max(-cols, 0) : w + min(-cols, 0)
    ]
    return out


def _smooth_field(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, frequency: float) -> np.ndarray:
    """Low-frequency random field of unit-ish amplitude (albedo blotches)."""
    directions = rng.uniform(0.0, 2.0 * np.pi, 3)
    phases = rng.uniform(0.0, 2.0 * np.pi, 3)
    total = sum(np.cos(2.0 * np.pi * frequency * (np.cos(d) * x + np.sin(d) * y) + p) for d, p in zip(directions, phases))
    return total / np.sqrt(1.5)


def _render_scene(config: SyntheticConfig, category: Category, rng: np.random.Generator) -> _Scene:
    size = config.image_size
    x, y = _pixel_grid(size)
    jitter = config.pose_jitter
    angle = np.deg2rad(rng.uniform(-jitter.rotation_deg, jitter.rotation_deg))
    shift = rng.uniform(-jitter.translation, jitter.translation, 2)
    scale = 1.0 + rng.uniform(-jitter.scale, jitter.scale)
    tilt = rng.uniform(-MAX_PLANE_TILT, MAX_PLANE_TILT, 2)
    shape_jitter = rng.uniform(-1.0, 1.0, 4)

    radius = OBJECT_RADIUS * scale
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    qx = (cos_a * (x - shift[0]) + sin_a * (y - shift[1])) / radius
    qy = (-sin_a * (x - shift[0]) + cos_a * (y - shift[1])) / radius
    height = category.height * scale * category.height_field(qx, qy, shape_jitter)
    on_object = height > 0.0
    plane = PLANE_DISTANCE + tilt[0] * x + tilt[1] * y
    z_nominal = plane - height

    # Lambertian shading of the nominal surface (plane tilt included), never of the defective one.
    pixel_metres = 2.0 * HALF_FIELD / size
    d_rows, d_cols = np.gradient(PLANE_DISTANCE - z_nominal, pixel_metres)
    normals = np.stack([-d_cols, -d_rows, np.ones_like(d_cols)], axis=-1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    shading = AMBIENT + (1.0 - AMBIENT) * np.clip(normals @ LIGHT, 0.0, 1.0)

    # Cast shadow away from the light: darker in RGB and without points (the
    # projector cannot reach it either), as in structured-light scans.
    away_from_light = -LIGHT[:2] / np.linalg.norm(LIGHT[:2]) * SHADOW_LENGTH * size / 2.0  # (x, y) in pixels
    shadow = _shifted(on_object, rows=round(away_from_light[1]), cols=round(away_from_light[0])) & ~on_object
    shading = np.where(shadow, shading * SHADOW_DARKENING, shading)
    border = int(round(NO_POINT_BORDER * size))
    valid = ~shadow
    valid[:, :border] = False
    valid[:, size - border :] = False

    base, accent = _class_colours(category.hue)
    orientation = np.deg2rad(category.orientation)
    u = np.cos(orientation) * qx + np.sin(orientation) * qy
    v = -np.sin(orientation) * qx + np.cos(orientation) * qy
    texture = _texture(category.texture, u, v, category.frequency, rng)[..., None]
    object_albedo = base * (1.0 - texture) + accent * texture
    albedo = np.where(on_object[..., None], object_albedo, BACKGROUND_ALBEDO)
    albedo = albedo * (1.0 + 2.0 * config.texture_noise * _smooth_field(x, y, rng, 1.5)[..., None])

    z = z_nominal + rng.normal(0.0, config.depth_noise, z_nominal.shape) if config.depth_noise > 0 else z_nominal
    rgb_noise = rng.normal(0.0, config.texture_noise, albedo.shape) if config.texture_noise > 0 else np.zeros_like(albedo)
    return _Scene(
        albedo=albedo,
        shading=shading,
        rgb_noise=rgb_noise,
        z=z,
        valid=valid,
        on_object=on_object,
        base_colour=base,
        object_height=category.height * scale,
        object_diameter_px=radius * size,
    )


def _defect_centre(on_object: np.ndarray, margin_px: float, rng: np.random.Generator) -> tuple[float, float]:
    """A random object pixel at least ``margin_px`` from the object's edge (or the most inner ones)."""
    inside = ndimage.distance_transform_edt(on_object)
    candidates = np.flatnonzero(inside >= min(margin_px, inside.max()))
    row, col = np.unravel_index(rng.choice(candidates), on_object.shape)
    return float(row), float(col)


def _ellipse(
    shape: tuple[int, int], extent_px: float, on_object: np.ndarray, rng: np.random.Generator, irregular: bool
) -> np.ndarray:
    """Normalised radius (< 1 inside) of a random rotated ellipse on the object; hard edge at 1."""
    semi_major = max(1.0, extent_px / 2.0)
    semi_minor = max(1.0, semi_major * rng.uniform(0.5, 1.0))
    angle = rng.uniform(0.0, np.pi)
    wobble_phase = rng.uniform(0.0, 2.0 * np.pi)
    row0, col0 = _defect_centre(on_object, 0.6 * semi_major, rng)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    along = (cols - col0) * np.cos(angle) + (rows - row0) * np.sin(angle)
    across = -(cols - col0) * np.sin(angle) + (rows - row0) * np.cos(angle)
    radius = np.hypot(along / semi_major, across / semi_minor)
    if irregular:  # a blob outline instead of a perfect ellipse
        radius = radius * (1.0 + 0.2 * np.cos(3.0 * np.arctan2(across, along) + wobble_phase))
    return np.where(on_object, radius, np.inf)


def _polyline(shape: tuple[int, int], extent_px: float, on_object: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Distance (in half-widths, < 1 inside) to a random bent line through an object pixel."""
    length = max(3.0, 2.5 * extent_px)
    half_width = max(0.9, 0.05 * length)
    start = np.array(_defect_centre(on_object, half_width + 1.0, rng))
    initial_heading = rng.uniform(0.0, 2.0 * np.pi)
    turns = rng.uniform(-0.6, 0.6, 3)
    step = length / 3.0

    def ahead(heading: float) -> np.ndarray:
        return step * np.array([np.sin(heading), np.cos(heading)])

    # Two segments forwards and one backwards from the centre, so the centre lies on the line.
    middle = start + ahead(initial_heading + turns[0])
    end = middle + ahead(initial_heading + turns[0] + turns[1])
    vertices = [start + ahead(initial_heading + np.pi + turns[2]), start, middle, end]
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    points = np.stack([rows, cols], axis=-1)
    distance = np.full(shape, np.inf)
    for a, b in zip(vertices[:-1], vertices[1:]):
        segment = b - a
        t = np.clip(((points - a) @ segment) / max(segment @ segment, 1e-12), 0.0, 1.0)
        distance = np.minimum(distance, np.linalg.norm(points - a - t[..., None] * segment, axis=-1))
    return np.where(on_object, distance / half_width, np.inf)


def _profile(radius: np.ndarray, floor: float) -> np.ndarray:
    """Smooth inside the support, ``floor`` at its edge, so every pixel of the support changes."""
    return floor + (1.0 - floor) * np.clip(1.0 - radius**2, 0.0, 1.0)


def _apply_defect(kind: str, scene: _Scene, config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Edit ``scene.albedo``/``z``/``valid`` in place; return the exact support of the edit."""
    shape = scene.on_object.shape
    extent_px = rng.uniform(*config.defect_size) * scene.object_diameter_px
    contrast = rng.uniform(*config.defect_contrast)
    depth_scale = contrast * scene.object_height

    if kind in ("scratch", "crack"):
        radius = _polyline(shape, extent_px, scene.on_object, rng)
    else:
        radius = _ellipse(shape, extent_px, scene.on_object, rng, irregular=kind == "stain")
    support = radius < 1.0
    profile = _profile(radius[support], floor=0.4)

    if kind == "stain":  # a colour blob towards a random colour far from the object's
        direction = rng.normal(size=3)
        stain_colour = np.clip(scene.base_colour + 0.6 * direction / np.linalg.norm(direction), 0.0, 1.0)
        alpha = (0.85 * contrast * profile)[:, None]
        scene.albedo[support] = (1.0 - alpha) * scene.albedo[support] + alpha * stain_colour
    elif kind == "scratch":  # a thin brighter (or darker) line
        sign = 1.0 if rng.uniform() < 0.6 else -1.0
        scene.albedo[support] += sign * 0.45 * contrast * profile[:, None]
    elif kind == "dent":
        scene.z[support] += 0.35 * depth_scale * profile
    elif kind == "bump":
        scene.z[support] -= 0.35 * depth_scale * profile
    elif kind == "crack":  # a dark groove
        scene.z[support] += 0.3 * depth_scale * profile
        scene.albedo[support] *= (1.0 - 0.75 * contrast * profile)[:, None]
    elif kind == "hole":  # a dark pit whose steep core returns no points
        scene.z[support] += 0.4 * depth_scale * profile
        scene.albedo[support] *= (1.0 - (0.3 + 0.6 * contrast) * profile)[:, None]
        core = radius < 0.5
        core[np.unravel_index(np.argmin(radius), shape)] = True  # at least one pixel, even for tiny holes
        scene.valid &= ~core
    else:
        raise ValueError(f"unknown defect type {kind!r}; expected one of {DEFECT_TYPES}")
    return support


def render_sample(
    config: SyntheticConfig, class_name: str, split: str, scene_index: int, defect_type: str = GOOD
) -> RenderedSample:
    """Render scene ``scene_index`` of ``class_name``/``split``, optionally with a defect.

    The scene depends only on (seed, class, split, scene_index) and the defect
    has its own random stream, so the same scene rendered as ``good`` differs
    from its defective version only inside the returned mask.
    """
    if class_name not in _CATEGORY_BY_NAME:
        raise ValueError(f"unknown synthetic class {class_name!r}; designed: {list(_CATEGORY_BY_NAME)}")
    category = _CATEGORY_BY_NAME[class_name]
    key = [config.seed, CATEGORIES.index(category), SPLIT_CODES[split], scene_index]
    scene = _render_scene(config, category, np.random.default_rng(key + [0]))
    mask = np.zeros(scene.on_object.shape, dtype=bool)
    if defect_type != GOOD:
        mask = _apply_defect(defect_type, scene, config, np.random.default_rng(key + [1]))

    rgb = np.clip(scene.albedo * scene.shading[..., None] + scene.rgb_noise, 0.0, 1.0)
    x, y = _pixel_grid(config.image_size)
    xyz = np.stack([x * scene.z / FOCAL, y * scene.z / FOCAL, scene.z], axis=-1)  # pinhole back-projection
    xyz[~scene.valid] = 0.0
    return RenderedSample(rgb=np.round(rgb * 255.0).astype(np.uint8), xyz=xyz.astype(np.float32), mask=mask)


def _write_sample(sample: RenderedSample, folder: Path, stem: str, write_gt: bool) -> None:
    for sub in ("rgb", "xyz") + (("gt",) if write_gt else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample.rgb, mode="RGB").save(folder / "rgb" / f"{stem}.png")
    tifffile.imwrite(folder / "xyz" / f"{stem}.tiff", sample.xyz, photometric="rgb", metadata=None)
    if write_gt:
        gt = (sample.mask * DEFECT_VALUE).astype(np.uint8)
        Image.fromarray(gt, mode="L").save(folder / "gt" / f"{stem}.png")


def generate(config: SyntheticConfig, root: str | Path) -> Path:
    """Write the dataset into ``root`` (new or empty) in MVTec 3D-AD's layout; return ``root``."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise DataError(
            root,
            "already exists and is not empty; the synthetic generator only writes new folders.",
            "Choose an empty folder, or use ensure_synthetic() to reuse a cached dataset.",
        )
    root.mkdir(parents=True, exist_ok=True)
    for name in class_names(config.num_classes):
        class_dir = root / name
        for split, count in (("train", config.train_per_class), ("validation", config.validation_per_class)):
            for index in range(count):
                sample = render_sample(config, name, split, index)
                _write_sample(sample, class_dir / split / GOOD, f"{index:03d}", write_gt=False)
        # Test scenes are numbered across good and defect folders, so each scene is unique.
        scene_index = 0
        counts = [(GOOD, config.test_good_per_class)] + [(d, config.test_defect_per_class) for d in DEFECT_TYPES]
        for defect_type, count in counts:
            for index in range(count):
                sample = render_sample(config, name, "test", scene_index, defect_type)
                _write_sample(sample, class_dir / "test" / defect_type, f"{index:03d}", write_gt=True)
                scene_index += 1
    (root / "synthetic_config.json").write_text(json.dumps(_fingerprint(config), indent=2, sort_keys=True))
    return root


def _fingerprint(config: SyntheticConfig) -> dict:
    return {"generator_version": GENERATOR_VERSION, "config": config.model_dump(mode="json")}


def config_hash(config: SyntheticConfig) -> str:
    """Short hash of the config and generator version: the cache folder's name."""
    text = json.dumps(_fingerprint(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_synthetic(config: SyntheticConfig, cache_root: str | Path) -> Path:
    """The dataset for ``config`` under ``cache_root``, generated only if not already there.

    It is written to a temporary sibling folder and renamed when complete, so
    an interrupted run never leaves a half dataset that would be taken for a
    finished one.
    """
    cache_root = Path(cache_root)
    target = cache_root / f"synthetic-{config_hash(config)}"
    if target.is_dir():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = cache_root / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate(config, staging)
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():  # not a concurrent run that finished first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
