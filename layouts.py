"""The other four layouts people bring, each read into the same `Scene` as the DeepVoxels layout
(scenes.py): NSVF, NeRF-synthetic / Blender and instant-ngp / nerfstudio (transforms*.json), and
COLMAP's text model. Which one a folder holds is decided in dataset.py (`load_scene`); the
conventions of each are in docs/your-data.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from checks import Intrinsics, check_intrinsics, check_number, check_pose, read_image, read_text
from deepvoxels import DataError, opengl_to_opencv
from scenes import Scene, load_split, square_scene


# ─────────────────────────────────────────────────────────────────────────────────────────────
# NSVF: the DeepVoxels files, plus bbox.txt
# ─────────────────────────────────────────────────────────────────────────────────────────────

def read_bbox(path: Path) -> tuple[tuple[float, float, float], float]:
    """NSVF's bbox.txt "x_min y_min z_min x_max y_max z_max [voxel_size]" -> the grid cube that
    encloses the box: its centre and, as side, the box's longest edge."""
    try:
        values = [float(v) for v in read_text(path).split()]
    except ValueError:
        raise DataError(f"{path}: bounding box is not a list of numbers") from None
    if len(values) not in (6, 7) or not all(lo < hi for lo, hi in zip(values[:3], values[3:6])):
        raise DataError(f"{path}: expected 'x_min y_min z_min x_max y_max z_max [voxel_size]' "
                        f"with each min < max")
    lo, hi = np.array(values[:3]), np.array(values[3:6])
    side = check_number(path, "the box's longest side (max - min)",
                        max(h - l for l, h in zip(values[:3], values[3:6])), (">", 0))
    return tuple(check_number(path, "the box's centre", c) for c in (lo + hi) / 2), side


def load_nsvf(root: Path, img_size: int) -> tuple[Scene, Scene | None]:
    """NSVF: the DeepVoxels files, either in train/ and test/ or all in one rgb/ and pose/ with the
    split as a file-name prefix (0_ train, 1_ validation, 2_ test), plus bbox.txt, which places the
    grid."""
    if (root / "train").is_dir():
        train = load_split(root, "train", img_size)
        test = load_split(root, "test", img_size) if (root / "test").is_dir() else None
    else:
        prefixes = {p.name[:2] for p in (root / "rgb").glob("?_*")}
        train = load_split(root, "", img_size, "0_" if "0_" in prefixes else "")
        held_out = "2_" if "2_" in prefixes else "1_" if "1_" in prefixes else None
        test = load_split(root, "", img_size, held_out) if held_out and "0_" in prefixes else None
    if (root / "bbox.txt").is_file():
        center, side = read_bbox(root / "bbox.txt")
        for scene in filter(None, (train, test)):
            scene.intrinsics = replace(scene.intrinsics, grid_center=center, grid_scale=side)
    return train, test


# ─────────────────────────────────────────────────────────────────────────────────────────────
# transforms*.json: NeRF-synthetic / Blender, instant-ngp, nerfstudio
# ─────────────────────────────────────────────────────────────────────────────────────────────

def load_transforms(path: Path, img_size: int) -> Scene:
    """One transforms*.json (NeRF-synthetic/Blender, instant-ngp, nerfstudio). Poses are
    camera-to-world in OpenGL axes, converted by opengl_to_opencv. Intrinsics: fl_x, fl_y, cx, cy
    (w, h: the size they refer to), per frame or for all; or camera_angle_x, the horizontal field of
    view: f = 0.5 W / tan(0.5 camera_angle_x), principal point at the image centre. RGBA images are
    composited on white."""
    try:
        meta = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    paths, poses, cameras, where = [], [], set(), ""
    try:
        for k, frame in enumerate(meta["frames"]):
            where = f"frame {k}: "
            image = path.parent / frame["file_path"]
            if not image.is_file() and not image.suffix:          # NeRF-synthetic leaves out ".png"
                image = image.with_name(image.name + ".png")
            if not image.is_file():
                raise DataError(f"{path}: {where}image {frame['file_path']} not found "
                                f"(looked for {image})")
            pose = check_pose(f"{path}: {where}transform_matrix",
                              np.array(frame["transform_matrix"], dtype=np.float64))
            camera = {**meta, **frame}                                     # per-frame values win
            if "fl_x" not in camera and "camera_angle_x" not in camera:
                raise DataError(f"{path}: {where}missing key 'camera_angle_x' "
                                f"(or 'fl_x', 'fl_y', 'cx', 'cy')")
            if any(camera.get(key, 0) for key in ("k1", "k2", "k3", "k4", "p1", "p2")):
                raise DataError(f"{path}: {where}lens distortion (k1, k2, p1, p2...) does not fit "
                                f"DeepVoxels' pinhole camera: undistort the images first (colmap "
                                f"image_undistorter), or set them to 0 if negligible")
            number = lambda key, *rules: check_number(  # noqa: E731
                f"{path}: {where[:-2]}", key, camera[key], *rules)
            if "fl_x" in camera:
                size = ((int(number("h", (">=", 1))), int(number("w", (">=", 1))))
                        if "w" in camera and "h" in camera else None)
                cameras.add((number("fl_x", (">", 0)),
                             number("fl_y" if "fl_y" in camera else "fl_x", (">", 0)),
                             number("cx"), number("cy"), size))
            else:
                cameras.add((number("camera_angle_x", (">", 0), ("<", math.pi)),))
            paths.append(image)
            poses.append(opengl_to_opencv(torch.from_numpy(pose)).numpy())
    except KeyError as e:
        raise DataError(f"{path}: {where}missing key {e}") from None
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {where}malformed entry ({e})") from None
    if not paths:
        raise DataError(f"{path}: no frames")
    if len(cameras) > 1:
        raise DataError(f"{path}: frames have {len(cameras)} different intrinsics; "
                        f"DeepVoxels uses one camera for all views")
    camera = cameras.pop()
    if len(camera) == 1:                                      # camera_angle_x: from the image width
        h, w = read_image(paths[0]).shape[:2]
        focal = 0.5 * w / math.tan(0.5 * camera[0])
        intr = Intrinsics(focal, w / 2, h / 2, size=(h, w))
    else:
        fx, fy, cx, cy, size = camera
        intr = Intrinsics(fx, cx, cy, size=size, focal_y=fy)
    return square_scene(paths, poses, intr, path, img_size)


def hold_out(scene: Scene, source: Path, every: int = 8) -> tuple[Scene, Scene]:
    """Split the views of one file (`source`) into training and held-out views: every `every`-th
    (0, 8, 16...) is held out."""
    if len(scene.names) < 2:
        raise DataError(f"{source}: only one view; at least 2 are needed, one to hold out")
    held = torch.arange(len(scene.names)) % every == 0

    def pick(keep: torch.Tensor) -> Scene:
        return Scene(scene.images[keep], scene.poses[keep], scene.intrinsics,
                     [n for n, k in zip(scene.names, keep) if k], scene.source_size)
    return pick(~held), pick(held)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# COLMAP's text model: cameras.txt, images.txt, the photos in images/
# ─────────────────────────────────────────────────────────────────────────────────────────────

def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a unit quaternion (w, x, y, z)."""
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def load_colmap(model: Path, images: Path, img_size: int) -> Scene:
    """COLMAP's text model: cameras.txt ("CAMERA_ID MODEL WIDTH HEIGHT PARAMS", pinhole models
    only) and images.txt (per image "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME", then a line of
    2D points), the photos in `images`. Quaternion and translation are world-to-camera in OpenCV
    axes, x_cam = R x_world + t, so the camera-to-world pose is [R^T | -R^T t]. Views in name
    order."""
    cameras = {}
    for n, line in enumerate(read_text(model / "cameras.txt").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        kind = fields[1] if len(fields) > 1 else ""
        if kind not in ("SIMPLE_PINHOLE", "PINHOLE"):
            raise DataError(f"{model / 'cameras.txt'}: line {n}: camera model {kind or '(none)'} "
                            f"is not a pinhole model (SIMPLE_PINHOLE, PINHOLE); run colmap "
                            f"image_undistorter, which writes PINHOLE cameras and undistorted "
                            f"images")
        try:
            w, h, *params = map(float, fields[2:])
            fx, fy, cx, cy = params if kind == "PINHOLE" else (params[0], *params)
        except (ValueError, IndexError):
            raise DataError(f"{model / 'cameras.txt'}: line {n}: expected CAMERA_ID {kind} WIDTH "
                            f"HEIGHT and its {4 if kind == 'PINHOLE' else 3} parameters") from None
        where = f"{model / 'cameras.txt'}: line {n}"
        size = (int(check_number(where, "HEIGHT", h, (">=", 1))),
                int(check_number(where, "WIDTH", w, (">=", 1))))
        cameras[fields[0]] = check_intrinsics(where, Intrinsics(fx, cx, cy, size=size, focal_y=fy))
    path = model / "images.txt"
    lines = iter([(n, line) for n, line in enumerate(read_text(path).splitlines(), 1)
                  if not line.startswith("#")])
    views = {}
    for n, line in lines:
        if not line.strip():
            continue
        next(lines, None)                                                  # the image's 2D points
        fields = line.split(maxsplit=9)
        try:
            q, t = np.array(fields[1:5], dtype=np.float64), np.array(fields[5:8], dtype=np.float64)
            camera, name = cameras[fields[8]], fields[9].strip()
        except (ValueError, IndexError):
            raise DataError(f"{path}: line {n}: expected "
                            f"IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME") from None
        except KeyError:
            raise DataError(f"{path}: line {n}: camera {fields[8]} is not in cameras.txt") from None
        if not (np.abs(q).max() <= 1.001                                 # "not <=": a NaN fails too
                and abs(np.linalg.norm(q) - 1) <= 1e-3):
            raise DataError(f"{path}: line {n}: quaternion QW QX QY QZ = {' '.join(fields[1:5])} "
                            f"is not of length 1")
        if not (images / name).is_file():
            raise DataError(f"{path}: line {n}: image {images / name} not found")
        R = quaternion_to_rotation(q / np.linalg.norm(q))                  # world-to-camera
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = R.T, -R.T @ t
        views[name] = (images / name, check_pose(f"{path}: line {n}", pose), camera)
    if not views:
        raise DataError(f"{path}: no images")
    names = sorted(views)
    if any(views[n][2] != views[names[0]][2] for n in names):
        raise DataError(f"{model / 'cameras.txt'}: the images use cameras with different "
                        f"intrinsics; DeepVoxels uses one "
                        f"(colmap feature_extractor --ImageReader.single_camera 1)")
    return square_scene([views[n][0] for n in names], [views[n][1] for n in names],
                        views[names[0]][2], model / "cameras.txt", img_size)
