"""What the tests in this folder share: the paper tests' sizes and cube scene (from
test_deepvoxels.py), each layout written from the cube, and the scripts run as commands."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

import deepvoxels as dv
from scenes import files, runs, synthetic

from test_deepvoxels import (SMALL, SMALL_FLAGS, TINY, TINY_FLAGS,  # noqa: F401 (shared)
                             camera, cube)

ROOT = Path(__file__).parents[1]  # the project's top folder


def write_scene(root: Path, n: int = 2) -> Path:
    """A minimal valid scene to break in the tests below."""
    synthetic.make_scene(root, n_train=n, n_test=1, size=16)
    return root


def nearest_directions(poses: torch.Tensor, k: int) -> list[set[int]]:
    """Each view's k nearest other views by the angle between viewing directions, in numpy."""
    dirs = poses[:, :3, 2].double().numpy()
    angles = np.degrees(np.arccos(np.clip(dirs @ dirs.T, -1, 1)))
    return [set(sorted((j for j in range(len(dirs)) if j != i), key=lambda j: angles[i, j])[:k])
            for i in range(len(dirs))]


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a rotation matrix: the top eigenvector of Bar-Itzhack's symmetric 4x4
    matrix."""
    (xx, xy, xz), (yx, yy, yz), (zx, zy, zz) = R
    K = np.array([[xx - yy - zz, yx + xy, zx + xz, zy - yz],
                  [yx + xy, yy - xx - zz, zy + yz, xz - zx],
                  [zx + xz, zy + yz, zz - xx - yy, yx - xy],
                  [zy - yz, xz - zx, yx - xy, xx + yy + zz]]) / 3
    x, y, z, w = np.linalg.eigh(K)[1][:, -1]
    return np.array([w, x, y, z])


def cube_views(cube: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Every view of the cube scene as (split, OpenCV camera-to-world pose, RGB uint8 image), train
    first."""
    return [(split, files.read_pose(p), iio.imread(cube / split / "rgb" / (p.stem + ".png")))
            for split in ("train", "test") for p in sorted((cube / split / "pose").glob("*.txt"))]


def write_rgba(path: Path, rgb: np.ndarray) -> None:
    """PNG with alpha 0 (and black colour) on the white background: composited on white it reads
    back as rgb."""
    background = (rgb == 255).all(-1, keepdims=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.concatenate([np.where(background, 0, rgb),
                                      np.where(background, 0, 255)], -1).astype(np.uint8))


def export_nerf_synthetic(cube: Path, root: Path) -> Path:
    """The cube as a NeRF-synthetic scene: transforms_train/test.json, OpenGL poses, file paths
    without .png."""
    views = cube_views(cube)
    # the cube at 32 px: f = 1.25 * 32
    angle = 2 * np.arctan(0.5 * 32 / 40.0)
    for split in ("train", "test"):
        frames = []
        for k, (_, pose, rgb) in enumerate(v for v in views if v[0] == split):
            write_rgba(root / split / f"r_{k}.png", rgb)
            frames.append({"file_path": f"./{split}/r_{k}",
                           "transform_matrix": (pose @ np.diag([1, -1, -1, 1])).tolist()})
        (root / f"transforms_{split}.json").write_text(
            json.dumps({"camera_angle_x": angle, "frames": frames}))
    return root


def export_transforms_json(cube: Path, root: Path) -> Path:
    """Every view of the cube in one instant-ngp/nerfstudio transforms.json with fl_x, fl_y, cx, cy,
    w, h."""
    frames = []
    for k, (_, pose, rgb) in enumerate(cube_views(cube)):
        iio.imwrite((root / "images").mkdir(parents=True, exist_ok=True)
                    or root / "images" / f"{k:03d}.png", rgb)
        frames.append({"file_path": f"images/{k:03d}.png",
                       "transform_matrix": (pose @ np.diag([1, -1, -1, 1])).tolist()})
    meta = {"fl_x": 40.0, "fl_y": 40.0, "cx": 16.0, "cy": 16.0, "w": 32, "h": 32, "k1": 0.0,
            "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def export_colmap(cube: Path, root: Path) -> Path:
    """Every view of the cube as a COLMAP text model: world-to-camera quaternions, photos in
    images/."""
    (root / "sparse" / "0").mkdir(parents=True)
    (root / "sparse" / "0" / "cameras.txt").write_text(
        "# Camera list\n1 PINHOLE 32 32 40 40 16 16\n")
    lines = ["# Image list with two lines of data per image:"]
    for k, (_, pose, rgb) in enumerate(cube_views(cube)):
        iio.imwrite((root / "images").mkdir(exist_ok=True) or root / "images" / f"{k:03d}.png", rgb)
        R, t = pose[:3, :3].T, -pose[:3, :3].T @ pose[:3, 3]                  # world-to-camera
        q = rotation_to_quaternion(R)
        lines += [f"{k + 1} {' '.join(f'{v:.17g}' for v in [*q, *t])} 1 {k:03d}.png",
                  "10.5 3.25 -1" if k == 2 else ""]
    (root / "sparse" / "0" / "images.txt").write_text("\n".join(lines) + "\n")
    return root


def export_nsvf(cube: Path, root: Path) -> Path:
    """The cube as NSVF: one rgb/ and pose/ with split prefixes (0_ train, 1_ validation, 2_ test),
    K as a 4x4 matrix in intrinsics.txt and the grid in bbox.txt."""
    (root / "rgb").mkdir(parents=True)
    (root / "pose").mkdir()
    views = cube_views(cube)
    for k, (split, pose, rgb) in enumerate(views + views[:1]):
        # one validation view, to be ignored
        prefix = "1_" if k == len(views) else "0_" if split == "train" else "2_"
        iio.imwrite(root / "rgb" / f"{prefix}{k:04d}.png", rgb)
        np.savetxt(root / "pose" / f"{prefix}{k:04d}.txt", pose)
    (root / "intrinsics.txt").write_text("40 0 16 0\n0 40 16 0\n0 0 1 0\n0 0 0 1\n")
    (root / "bbox.txt").write_text("-0.625 -0.625 -0.625 0.625 0.625 0.625 0.05\n")
    return root


def write_layout(root: Path, layout: str) -> Path:
    """A small valid scene in `layout` to break in the tests below."""
    synthetic.make_scene(root / "cube", n_train=2, n_test=1, size=16)
    export = {"nerf": export_nerf_synthetic, "colmap": export_colmap, "nsvf": export_nsvf}[layout]
    return export(root / "cube", root / layout)


def edit(path: Path, old: str, new: str) -> None:
    """Replace text in a file (once, and it must be there)."""
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def run_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True,
                          text=True, timeout=120)


def run_render(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "render.py"), *args], capture_output=True,
                          text=True, timeout=120)


def tiny_checkpoints(folder: Path) -> dict[str, dv.DeepVoxels]:
    """An ablation-like folder: untrained tiny softmax and naive models (a fused random view each)
    in <kind>/ckpt.pt."""
    models = {}
    for kind in ("softmax", "naive"):
        torch.manual_seed(0)
        model = dv.DeepVoxels(replace(TINY, occlusion=kind, grid_scale=1.25,
                                      focal=20.0, cx=8.0, cy=8.0))
        model.fuse(torch.rand(1, 3, 16, 16), camera([0.0, -2.5, 0.5]))
        (folder / kind).mkdir(parents=True)
        runs.save_checkpoint(folder / kind / "ckpt.pt",
                           {"model": model.state_dict(), "config": asdict(model.cfg), "step": 0,
                            "scene": {"orbit_radius": 2.5}})
        models[kind] = model.eval()
    return models
