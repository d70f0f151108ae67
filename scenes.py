"""A scene as DeepVoxels sees it: what a `Scene` is, the DeepVoxels layout it is read from, where
the voxel grid goes, and the views (each one's neighbours, the paper's nearest-view baseline, an
orbit). This is the part of the data side to read; the model in deepvoxels.py never imports it.

  1. A Scene, and the DeepVoxels layout     3. Views: neighbours, the nearest-view baseline, orbits
  2. The grid: where it goes

DeepVoxels layout: <scene>/<split>/rgb/000000.png, <scene>/<split>/pose/000000.txt and
<scene>/<split>/intrinsics.txt, for the splits train and (optionally) test.
  pose: 16 numbers (4 rows or one row), an OpenCV camera-to-world matrix.
  intrinsics.txt, line by line: "f cx cy [ignored...]" / "x y z" grid barycenter / near plane
  (0: choose for me) / scale (world size of the grid; 0: estimate it, and the barycenter with it)
  / "H W" the intrinsics refer to / world2cam_poses (optional; 1: the pose files hold
  world-to-camera matrices, inverted on reading).

Apart, where a reader can skip them: checks.py (the checks at the door, and reading the files
above), layouts.py (the other four layouts: NSVF, NeRF's transforms*.json, COLMAP), grid_check.py
(whether the grid encloses the object, and the feature maps' size), synthetic.py (the built-in
scenes and their ray caster), figures.py (cameras.png, depth maps in colour), and dataset.py,
which opens a --data folder in any layout for the scripts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from checks import (Intrinsics, check_intrinsics, check_number, read_image, read_intrinsics,
                    read_pose)
from deepvoxels import Config, DataError, psnr


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 1. A Scene, and the DeepVoxels layout: every layout's reader returns the same Scene (images,
#    OpenCV poses, intrinsics), squared and resized here
# ─────────────────────────────────────────────────────────────────────────────────────────────

@dataclass
class Scene:
    """One split of a scene, resized to `img_size`. Intrinsics refer to the resized images."""

    images: torch.Tensor        # (V, 3, H, W) in [0, 1]
    poses: torch.Tensor         # (V, 4, 4) OpenCV camera-to-world
    intrinsics: Intrinsics
    names: list[str]
    source_size: tuple[int, int] | None = None  # (H, W) of the image files, before crop and resize


def square_scene(image_paths: list[Path], poses: list[np.ndarray], intr: Intrinsics,
                 intr_file: Path, img_size: int) -> Scene:
    """Read the images (all of one size), centre-crop them to a square and resize them to img_size.
    The intrinsics follow: scaled from intr.size to the files' size, cx and cy shifted by the crop,
    all scaled by the resize (exact with pixel centres at j + 0.5). `intr_file` is named when the
    sizes disagree."""
    check_intrinsics(intr_file, intr)
    squares = []
    for path in image_paths:
        image = read_image(path)                                             # (H0, W0, 3)
        if not squares:
            h0, w0 = image.shape[:2]
            side = min(h0, w0)
            top, left = (h0 - side) // 2, (w0 - side) // 2
        elif image.shape[:2] != (h0, w0):
            raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, "
                            f"but {image_paths[0].name} is {w0}x{h0}")
        square = torch.from_numpy(image[top:top + side, left:left + side])  # (side, side, 3)
        square = square.permute(2, 0, 1)[None]                              # (1, 3, side, side)
        if side != img_size:
            square = F.interpolate(square, size=(img_size, img_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        squares.append(square)
    ref_h, ref_w = intr.size or (h0, w0)
    if abs(ref_w * h0 / (ref_h * w0) - 1) > 0.01:
        raise DataError(f"{intr_file}: the intrinsics are for {ref_w}x{ref_h} images, "
                        f"a different shape from the {w0}x{h0} images")
    s = img_size / side
    fx, fy = intr.focal * w0 / ref_w * s, intr.fy * h0 / ref_h * s
    intr = replace(intr, focal=fx, focal_y=0.0 if fy == fx else fy,
                   cx=(intr.cx * w0 / ref_w - left) * s, cy=(intr.cy * h0 / ref_h - top) * s,
                   size=(img_size, img_size))
    names = [p.stem for p in image_paths]
    return Scene(torch.cat(squares).clamp(0, 1).contiguous(),
                 torch.from_numpy(np.stack(poses)).float(), intr, names, (h0, w0))


def load_split(root: str | Path, split: str, img_size: int, prefix: str = "") -> Scene:
    """Load `root/split` of a DeepVoxels-layout scene at img_size x img_size (only the views whose
    file names start with `prefix`; split "" reads rgb/, pose/ and intrinsics.txt in root
    itself)."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder "
                        f"(expected {split}/rgb, {split}/pose, {split}/intrinsics.txt)")
    rgb_files = {p.stem: p for p in sorted((folder / "rgb").glob(prefix + "*"))
                 if p.suffix.lower() in (".png", ".jpg", ".jpeg")}
    pose_files = {p.stem: p for p in sorted((folder / "pose").glob(prefix + "*.txt"))}
    if not rgb_files:
        raise DataError(f"{folder / 'rgb'}: no images found (PNG or JPEG)"
                        + (f" named {prefix}*" if prefix else ""))
    for stem in rgb_files.keys() - pose_files.keys():
        raise DataError(f"{rgb_files[stem]}: image has no pose file "
                        f"{folder / 'pose' / (stem + '.txt')}")
    for stem in pose_files.keys() - rgb_files.keys():
        raise DataError(f"{pose_files[stem]}: pose has no image in {folder / 'rgb'}")
    intr = read_intrinsics(folder / "intrinsics.txt")
    names = sorted(rgb_files)
    poses = [read_pose(pose_files[n]) for n in names]
    if intr.world2cam:                                  # the authors' 6th line: 1 = world-to-camera
        poses = [np.linalg.inv(pose) for pose in poses]
    return square_scene([rgb_files[n] for n in names], poses, intr, folder / "intrinsics.txt",
                        img_size)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 2. The grid: where it goes (flags, bbox.txt, intrinsics.txt, else the cameras); whether it
#    encloses the object is grid_check.py's
# ─────────────────────────────────────────────────────────────────────────────────────────────

def estimate_grid_placement(poses: torch.Tensor,
                            intr: Intrinsics) -> tuple[tuple[float, float, float], float]:
    """Grid centre = the point nearest to every optical axis (least squares); side = the width of
    the narrowest camera frustum at that point, so the grid stays inside every view."""
    origins, axes = poses[:, :3, 3].double(), poses[:, :3, 2].double()
    projector = torch.eye(3, dtype=torch.float64) - axes[:, :, None] * axes[:, None, :]  # I - d d^T
    try:
        center = torch.linalg.solve(projector.sum(0),
                                    (projector @ origins[:, :, None]).sum(0))[:, 0]
    except torch.linalg.LinAlgError:  # one camera, or parallel axes: no point is nearest to all
        raise DataError("the training cameras' optical axes are parallel, so the grid cannot be "
                        "estimated from them: give --grid_center and --grid_scale") from None
    dist = ((center - origins) * axes).sum(-1)                               # depth of the centre
    fy = intr.fy
    half_width = min(intr.cx / intr.focal, (intr.size[1] - intr.cx) / intr.focal,
                     intr.cy / fy, (intr.size[0] - intr.cy) / fy)
    return tuple(center.tolist()), float((2 * dist * half_width).min())


def scene_config(train: Scene, sizes: dict, grid_center: tuple | str | None = None,
                 grid_scale: float | None = None) -> Config:
    """The Config of the model's sizes ({name: value}) and this scene: intrinsics at img_size; the
    grid from the flags (a centre (x, y, z) or "x y z"), else the files (bbox.txt, then
    intrinsics.txt: the readers put them in train.intrinsics), else the cameras."""
    i = train.intrinsics
    if isinstance(grid_center, str):                                         # --grid_center 'x y z'
        if len(grid_center.split()) != 3:
            raise DataError(f"--grid_center: expected three numbers 'x y z', got {grid_center!r}")
        grid_center = tuple(check_number("--grid_center", f"the grid centre's {axis}", v)
                            for axis, v in zip("xyz", grid_center.split()))
    for axis, value in zip("xyz", grid_center or ()):
        check_number("--grid_center", f"the grid centre's {axis}", value)
    if grid_scale is not None:
        check_number("--grid_scale", "the grid's side", grid_scale, (">", 0))
    center, scale = grid_center or i.grid_center, grid_scale or i.grid_scale
    if center is None or scale is None:
        est_center, est_scale = estimate_grid_placement(train.poses, i)
        center, scale = center or est_center, scale or est_scale
        where = "the training cameras (give --grid_center and --grid_scale)"
        for value in center:
            check_number(where, "the grid centre estimated from them", value)
        check_number(where, "the grid side estimated from them", scale, (">", 0))
    return Config(**{**sizes, "grid_center": tuple(center), "grid_scale": float(scale),
                     "near": i.near, "focal": i.focal, "focal_y": i.focal_y,
                     "cx": i.cx, "cy": i.cy})


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 3. Views: each view's nearest neighbours, the paper's nearest-view baseline, an orbit of cameras
# ─────────────────────────────────────────────────────────────────────────────────────────────

def view_neighbours(poses: torch.Tensor, k: int = 4) -> torch.Tensor:
    """(V, min(k, V - 1)) indices of each view's nearest views by viewing direction, nearest first,
    never the view itself: with 4 views or fewer, every other view."""
    dirs = poses[:, :3, 2]
    similarity = dirs @ dirs.T - 3 * torch.eye(len(poses))                  # push self to the end
    return similarity.topk(min(k, len(poses) - 1), dim=1).indices


def nearest_view_baseline(train: Scene, poses: torch.Tensor) -> torch.Tensor:
    """The paper's nearest-neighbour baseline: for each pose (B, 4, 4) copy the training image
    (B, 3, H, W) whose viewing direction is closest."""
    closest = (poses[:, :3, 2] @ train.poses[:, :3, 2].T).argmax(dim=1)
    return train.images[closest]


def baseline(train: Scene, held_out: Scene | None) -> tuple[Scene, str, str, float, str | None]:
    """The views a run is scored on (the held-out ones, else the training ones), their split, the
    nearest-view baseline's name and mean PSNR on them, and a line saying so when there are no
    held-out views (else None). Without held-out views each training view is compared with its
    nearest *other* view: itself would score ~100 dB."""
    if held_out is None:
        nearest_other = train.images[view_neighbours(train.poses)[:, 0]]
        return (train, "train", "nearest-other-view baseline",
                psnr(nearest_other, train.images).mean().item(),
                "no test/ split: PSNR is measured on the training views; "
                "the baseline copies each one's nearest other view")
    return (held_out, "test", "nearest-neighbour baseline",
            psnr(nearest_view_baseline(train, held_out.poses), held_out.images).mean().item(), None)


def spread_views(scene: Scene, n: int) -> Scene:
    """n of the scene's views (all if it has fewer), evenly spaced in name order."""
    pick = torch.linspace(0, len(scene.names) - 1, min(n, len(scene.names))).round().long()
    return Scene(scene.images[pick], scene.poses[pick], scene.intrinsics,
                 [scene.names[i] for i in pick])


def look_at(eye: np.ndarray, target: np.ndarray,
            up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """OpenCV camera-to-world pose (4, 4) at `eye` looking at `target`, world z up."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6:  # looking straight up or down: any right vector will do
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return pose


def orbit_radius(poses: torch.Tensor, center: tuple[float, float, float]) -> float:
    """The cameras' (V, 4, 4) mean distance from the grid centre: where render.py's orbit and the
    viewer fly."""
    return (poses[:, :3, 3] - torch.tensor(center)).norm(dim=-1).mean().item()


def orbit_poses(center: tuple[float, float, float], radius: float, n: int,
                elevation: float = 20.0, azimuth0: float = 0.0) -> torch.Tensor:
    """(n, 4, 4) cameras evenly spaced on a circle at `elevation` degrees around `center`, world z
    up, the first at azimuth `azimuth0` degrees (from +x towards +y), all looking at the centre."""
    azimuth = np.radians(azimuth0) + np.linspace(0, 2 * np.pi, n, endpoint=False)
    el = np.radians(elevation)
    eyes = np.stack([np.cos(el) * np.cos(azimuth), np.cos(el) * np.sin(azimuth),
                     np.full(n, np.sin(el))], 1)
    return torch.from_numpy(np.stack([look_at(np.asarray(center) + radius * e, np.asarray(center))
                                      for e in eyes])).float()
