"""The built-in synthetic scenes: textured cubes and balls described as data (`SCENES`), one ray
caster that draws them, and `make_scene`, which writes one in the DeepVoxels layout with cameras
on a sphere around it (dataset.open_scene generates a missing --data folder named after one).

The ray caster is the tests' ground truth, so it shares no camera code with the model
(deepvoxels.py): a bug there would otherwise pass unseen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scenes.files import Intrinsics
from scenes.layouts import write_split, write_view
from scenes.views import look_at

# ─────────────────────────────────────────────────────────────────────────────────────────────
# The scenes, as data
# ─────────────────────────────────────────────────────────────────────────────────────────────

# Textured cubes and balls, lit by a fixed light. A cube's faces each have their own colour and a
# pattern of cells x cells (a checker on the faces facing -x, -y, -z, discs on the others); a ball
# has six coloured sectors of longitude, each a checker of longitude and latitude cells.
CUBE_COLORS = np.array([[0.85, 0.20, 0.20], [0.20, 0.65, 0.25], [0.20, 0.35, 0.85],
                        [0.90, 0.70, 0.15], [0.60, 0.25, 0.75], [0.15, 0.70, 0.75]])


CUBE_LIGHT = np.array([0.4, 0.3, 0.866])  # a fixed world-space light: faces differ in brightness


@dataclass(frozen=True)
class Box:
    """One textured cube: centre and side in world units, colour channel order, pattern cells per
    face side."""

    center: tuple[float, float, float]
    side: float
    colors: tuple[int, int, int] = (0, 1, 2)  # (2, 0, 1): red -> blue -> green, another palette
    cells: int = 4


@dataclass(frozen=True)
class Ball:
    """One textured sphere: centre and radius in world units, colour channel order, checker cells
    per sector."""

    center: tuple[float, float, float]
    radius: float
    colors: tuple[int, int, int] = (0, 1, 2)
    cells: int = 4


@dataclass(frozen=True)
class SyntheticScene:
    """Shapes, the distance of every camera from the origin, and the grid side written to
    intrinsics.txt."""

    shapes: tuple[Box | Ball, ...]
    radius: float
    grid_scale: float


SCENES = {
    # One cube of side 1 at the origin, 4 x 4 cells per face: 75 % of the frame's side.
    "cube": SyntheticScene((Box((0.0, 0.0, 0.0), 1.0),), radius=2.5, grid_scale=1.25),
    # The occlusion ablation's scene: two half-size cubes that hide each other from many directions.
    "two_cubes": SyntheticScene((Box((-0.3, -0.15, 0.0), 0.5),
                                 Box((0.3, 0.15, 0.0), 0.5, (2, 0, 1))),
                                radius=2.5, grid_scale=1.25),
    # The hard scene: three smaller blocks with 8 x 8 and 6 x 6 cells per face (finer than the
    # grid's voxels) hiding each other, seen from farther away: the grid fills under half the frame.
    "blocks": SyntheticScene((Box((-0.25, -0.2, -0.15), 0.5, cells=8),
                              Box((0.3, 0.25, 0.05), 0.4, (2, 0, 1), cells=8),
                              Box((0.15, -0.3, 0.3), 0.3, (1, 2, 0), cells=6)),
                             radius=4.0, grid_scale=1.25),
    # Not a box: a textured ball with a small cube in front of part of it; curved outlines, shading.
    "ball": SyntheticScene((Ball((0.0, 0.0, 0.05), 0.5, cells=3),
                            Box((0.4, -0.4, -0.3), 0.3, (1, 2, 0), cells=3)),
                           radius=2.5, grid_scale=1.25),
    # A small object: one cube of side 0.35, under a third of the frame's width, in a grid to fit.
    "small": SyntheticScene((Box((0.0, 0.0, 0.0), 0.35),), radius=2.5, grid_scale=0.45),
    # Three scenes made to check the defaults on objects none of them was tuned on
    # (docs/measurements.md). A model kit: a block of 10 x 10 cells a face under a small ball, among
    # four thin pillars of six cubes 0.07 wide.
    "kit": SyntheticScene((Box((0.0, 0.0, -0.25), 0.5, (2, 1, 0), cells=10),
                           *[Box((x, y, z), 0.07, (1, 0, 2), cells=1)
                             for x in (-0.35, 0.35) for y in (-0.35, 0.35)
                             for z in (-0.35, -0.2, -0.05, 0.1, 0.25, 0.4)],
                           Ball((0.0, 0.0, 0.25), 0.15, (0, 2, 1), cells=6)),
                          radius=2.6, grid_scale=1.0),
    # A ball and a box that hide each other, in a grid of side 1 that they leave (the grid check
    # refits it).
    "hidden": SyntheticScene((Ball((0.25, 0.3, 0.1), 0.42, (1, 2, 0), cells=4),
                              Box((-0.3, -0.35, -0.1), 0.55, (2, 0, 1), cells=3)),
                             radius=2.6, grid_scale=1.0),
    # A ball on a box, a small cube beside them.
    "stack": SyntheticScene((Box((0.0, 0.05, -0.2), 0.6, (1, 2, 0), cells=5),
                             Ball((0.05, 0.0, 0.32), 0.28, (2, 0, 1), cells=5),
                             Box((-0.42, 0.38, -0.38), 0.24, cells=2)),
                            radius=2.8, grid_scale=1.4),
}


# ─────────────────────────────────────────────────────────────────────────────────────────────
# Colours and the ray caster
# ─────────────────────────────────────────────────────────────────────────────────────────────

def cube_color(points: np.ndarray, normals_axis: np.ndarray, sign: np.ndarray,
               cells: int = 4) -> np.ndarray:
    """Colour (P, 3) of surface points (P, 3), in the unit cube's frame, on the faces given by axis
    (P,) and sign (P,)."""
    face = 2 * normals_axis + (sign > 0)                              # 0..5: -x, +x, -y, +y, -z, +z
    other = np.stack([(normals_axis + 1) % 3, (normals_axis + 2) % 3], axis=1)
    st = np.take_along_axis(points, other, axis=1) + 0.5         # (P, 2) face coordinates in [0, 1]
    cell = np.floor(st * cells)
    checker = (cell.sum(1) % 2) == 0
    dots = np.linalg.norm(st * cells - cell - 0.5, axis=1) < 0.32     # a disc in every cell
    on = np.where(face % 2 == 0, checker, dots)
    normal = np.zeros_like(points)
    normal[np.arange(len(points)), normals_axis] = sign
    return shaded(CUBE_COLORS[face], on, normal)


def ball_color(normals: np.ndarray, cells: int = 4) -> np.ndarray:
    """Colour (P, 3) of points on a ball given by their unit normals (P, 3): six sectors of
    longitude, each its own colour and a checker of cells x (2 cells) over longitude and
    latitude."""
    longitude = (np.arctan2(normals[:, 1], normals[:, 0]) / (2 * np.pi) + 0.5) * 6  # 0..6: sector
    latitude = (np.arcsin(np.clip(normals[:, 2], -1, 1)) / np.pi + 0.5) * 2 * cells  # 0..2 cells
    on = (np.floor(longitude * cells) + np.floor(latitude)) % 2 == 0
    return shaded(CUBE_COLORS[np.minimum(longitude.astype(int), 5)], on, normals)


def shaded(base: np.ndarray, on: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Base colours (P, 3), a lighter tint where `on` (P,) is False, lit by CUBE_LIGHT on unit
    normals (P, 3)."""
    color = np.where(on[:, None], base, (base + 1) / 2)
    light = np.clip(normals @ (CUBE_LIGHT / np.linalg.norm(CUBE_LIGHT)), 0, 1)
    return color * (0.75 + 0.25 * light)[:, None]


def ray_cast(pose: np.ndarray, focal: float, size: int, shapes: tuple[Box | Ball, ...],
             supersample: int = 3) -> np.ndarray:
    """Ray-cast textured cubes (axis-aligned) and balls, nearest hit wins: (size, size, 3) in
    [0, 1], white background.

    The camera has a principal point at the image centre; `supersample`^2 rays per pixel, averaged.
    """
    n = size * supersample
    ticks = (np.arange(n) + 0.5) / supersample
    u, v = np.meshgrid(ticks, ticks)
    dirs = (np.stack([(u - size / 2) / focal, (v - size / 2) / focal, np.ones_like(u)], -1)
            .reshape(-1, 3) @ pose[:3, :3].T)
    origin = pose[:3, 3]
    image, nearest = np.ones((len(dirs), 3)), np.full(len(dirs), np.inf)
    for shape in shapes:
        if isinstance(shape, Box):
            low = np.subtract(shape.center, shape.side / 2)
            high = np.add(shape.center, shape.side / 2)
            with np.errstate(divide="ignore", invalid="ignore"):  # slab test: inside all 3 slabs
                t0, t1 = (low - origin) / dirs, (high - origin) / dirs
            t_near, t_far = np.minimum(t0, t1).max(1), np.maximum(t0, t1).min(1)
            hit = (t_near < t_far) & (t_near > 0) & (t_near < nearest)  # in front of earlier hits
            local = (origin + t_near[hit, None] * dirs[hit] - shape.center) / shape.side  # (P, 3)
            axis = np.minimum(t0, t1)[hit].argmax(1)             # the slab entered last is the face
            color = cube_color(local, axis, np.sign(local[np.arange(len(local)), axis]),
                               shape.cells)
        else:                                                  # |origin + t dirs - centre| = radius
            to_origin = origin - np.asarray(shape.center)
            a, b = (dirs * dirs).sum(1), dirs @ to_origin
            c = to_origin @ to_origin - shape.radius ** 2
            root = np.sqrt(np.maximum(b * b - a * c, 0))
            t_near = np.where(b * b - a * c >= 0, (-b - root) / a, np.inf)  # the nearer crossing
            hit = (t_near > 0) & (t_near < nearest)
            normals = (origin + t_near[hit, None] * dirs[hit] - shape.center) / shape.radius
            color = ball_color(normals, shape.cells)
        image[hit] = color[:, list(shape.colors)]
        nearest[hit] = t_near[hit]
    return image.reshape(size, supersample, size, supersample, 3).mean((1, 3))


# ─────────────────────────────────────────────────────────────────────────────────────────────
# A scene written in the DeepVoxels layout
# ─────────────────────────────────────────────────────────────────────────────────────────────

def make_scene(root: str | Path, scene: str = "cube", n_train: int = 100, n_test: int = 24,
               size: int = 128) -> None:
    """Write one of SCENES in the DeepVoxels layout (deterministic; a few seconds).

    Training cameras lie on a Fibonacci sphere around the origin (below the equator too); test
    cameras on a spiral between them (elevation rising from -50 to 50 degrees over two turns).
    All look at the origin.
    """
    spec = SCENES[scene]
    focal = 1.25 * size  # a 44-degree field of view
    i = np.arange(n_train) + 0.5
    z = 1 - 2 * i / n_train
    phi = np.pi * (1 + 5 ** 0.5) * i
    train_eyes = np.stack([np.sqrt(1 - z ** 2) * np.cos(phi), np.sqrt(1 - z ** 2) * np.sin(phi), z],
                          1)
    s = np.linspace(0, 1, n_test)
    elev, azim = np.radians(-50 + 100 * s), 4 * np.pi * s + 0.3
    test_eyes = np.stack([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)],
                         1)
    camera = Intrinsics(focal, size / 2, size / 2, grid_center=(0.0, 0.0, 0.0),
                        grid_scale=spec.grid_scale, size=(size, size))
    for split, eyes in (("train", train_eyes), ("test", test_eyes)):
        write_split(Path(root) / split, camera)
        for k, eye in enumerate(eyes):
            pose = look_at(spec.radius * eye, np.zeros(3))
            image = torch.from_numpy(ray_cast(pose, focal, size, spec.shapes)).permute(2, 0, 1)
            write_view(Path(root) / split, f"{k:06d}", image, pose)  # image: (3, size, size)
