"""Everything about a scene that is not the paper: the checks every input passes at the door (files,
numbers, flags, devices, output folders); the dataset layouts people bring, each read into the same
`Scene`; where the voxel grid goes and whether it encloses the object; the synthetic scenes; the
figures of a scene (cameras.png, depth colours). The model in deepvoxels.py never imports this file.

Sections:
  1. Checks at the door, and reading files              4. Views: nearest neighbours, the nearest-view baseline
  2. Five layouts, one Scene (`load_scene`)             5. Synthetic scenes: cameras, boxes, balls, a ray caster
  3. The grid: placement and check                      6. Figures: the set-up, depth maps

DeepVoxels layout: <scene>/<split>/rgb/000000.png, <scene>/<split>/pose/000000.txt, <scene>/<split>/intrinsics.txt
  pose: 16 numbers (4 rows or one row), an OpenCV camera-to-world matrix.
  intrinsics.txt, line by line: "f cx cy [ignored...]" / "x y z" grid barycenter / near plane (0: choose for me)
  / scale (world size of the grid; 0: estimate it, and the barycenter with it) / "H W" the intrinsics refer to
  / world2cam_poses (optional; 1: the pose files hold world-to-camera matrices, inverted on reading).
NSVF, NeRF (transforms*.json), instant-ngp/nerfstudio and COLMAP: see `load_scene`.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

from deepvoxels import (Config, DataError, camera_to_pixel, intrinsics_matrix, opengl_to_opencv, pixel_centers,
                        pixel_to_ray, psnr, world_to_camera)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 1. Checks at the door, one function per kind (numbers, cameras, poses, text, images, flags, devices,
#    output folders), each one DataError line naming the file or flag, before any work
# ─────────────────────────────────────────────────────────────────────────────────────────────

@dataclass
class Intrinsics:
    """A camera's intrinsics and the grid placement its files give; None where they say nothing."""

    focal: float                # fx in pixels
    cx: float
    cy: float
    grid_center: tuple[float, float, float] | None = None
    near: float = 0.0
    grid_scale: float | None = None
    size: tuple[int, int] | None = None  # (H, W) the focal lengths and principal point refer to
    focal_y: float = 0.0        # fy in pixels; 0 means fy = fx
    world2cam: bool = False     # intrinsics.txt's 6th line: the pose files hold world-to-camera matrices

    def matrix(self) -> torch.Tensor:
        """The 3x3 pinhole matrix K."""
        return intrinsics_matrix(self.focal, self.cx, self.cy, focal_y=self.focal_y)


COMPARE = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}
LARGEST = 1e15  # no scene needs more; larger numbers overflow float32 once squared (distances, depth ranges)


def check_number(where: str | Path, name: str, value, *rules: tuple[str, float]) -> float:
    """`value` as a float if it is a finite number below LARGEST in size that keeps every rule, e.g. (">", 0);
    else one DataError line."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not (abs(number) <= LARGEST and all(COMPARE[op](number, float(bound)) for op, bound in rules)):
        wanted = "".join(f" and {op} {bound:g}" for op, bound in rules)[4:]                # "> 0 and < 3.14159"
        size = f" of size at most {LARGEST:g}" if math.isfinite(number) and abs(number) > LARGEST else ""
        raise DataError(f"{where}: {name} must be a finite number{wanted}{size}, got {value}")
    return number


def check_intrinsics(where: str | Path, intr: Intrinsics) -> Intrinsics:
    """The numbers every layout's camera must have: focal lengths > 0, a finite principal point, sizes >= 1, and
    a finite grid placement and near plane where the files give them. Every reader's camera passes here."""
    check_number(where, "the focal length fx", intr.focal, (">", 0))
    check_number(where, "the focal length fy", intr.focal_y or intr.focal, (">", 0))
    check_number(where, "the principal point cx", intr.cx)
    check_number(where, "the principal point cy", intr.cy)
    check_number(where, "the near plane", intr.near, (">=", 0))
    for name, value in zip(("height", "width"), intr.size or ()):
        check_number(where, f"the image {name}", value, (">=", 1))
    for axis, value in zip("xyz", intr.grid_center or ()):
        check_number(where, f"the grid centre's {axis}", value)
    if intr.grid_scale is not None:
        check_number(where, "the grid scale", intr.grid_scale, (">", 0))
    return intr


def check_pose(where: str | Path, pose: np.ndarray) -> np.ndarray:
    """A 4x4 rigid transform: finite, last row 0 0 0 1, and a proper rotation (orthonormal within 1e-3, det +1)."""
    if pose.shape != (4, 4) or not (np.abs(pose) <= LARGEST).all():                     # "not <=": a NaN fails too
        raise DataError(f"{where}: pose must be a 4x4 matrix of finite numbers (of size at most {LARGEST:g})")
    if np.abs(pose[3] - [0, 0, 0, 1]).max() > 1e-6:
        raise DataError(f"{where}: the pose's last row must be 0 0 0 1, got {' '.join(f'{v:g}' for v in pose[3])}")
    R = pose[:3, :3]
    stretch = np.linalg.svd(R, compute_uv=False)                              # all 1 for a rotation
    if np.abs(R.T @ R - np.eye(3)).max() > 1e-3:
        uniform = stretch.max() - stretch.min() < 1e-3 * stretch.max()
        raise DataError(f"{where}: the pose's 3x3 part is " + (f"a rotation scaled by {stretch[0]:.4g}; divide it by that "
                        f"(camera poses have no scale)" if uniform else "not a rotation (its columns are not orthonormal)"))
    if np.linalg.det(R) < 0:
        raise DataError(f"{where}: the pose's 3x3 part is a reflection (determinant -1), not a rotation: "
                        f"is one axis flipped (OpenGL vs OpenCV)?")
    return pose


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the scripts, but a misspelt or mistyped flag is one DataError line, not a usage block."""

    def error(self, message: str):
        raise DataError(f"{self.prog}: {message} (see --help)")


def check_device(device: str) -> str:
    """`device` if torch can compute on it on this machine; else one DataError line."""
    try:
        kind = torch.device(device)
    except RuntimeError:
        raise DataError(f"--device {device}: not a device torch knows (cpu, cuda, cuda:1, mps)") from None
    present = {"cpu": 1, "cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}.get(kind.type, 0)
    if (kind.index or 0) >= present:
        raise DataError(f"--device {device}: this machine has no such device (torch sees {torch.cuda.device_count()} CUDA GPUs)")
    return device


def check_writable(folder: Path, *names: str) -> Path:
    """Make `folder` and check that it, and each file or folder (no suffix) `names` in it, can be written, before any slow work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise DataError(f"{folder}: cannot write the output folder ({e.strerror or e})") from None
    for name in names:                                                           # a name with no suffix is a folder
        if (folder / name).exists() and (folder / name).is_dir() == bool(Path(name).suffix):
            raise DataError(f"{folder / name}: is {'a folder' if Path(name).suffix else 'a file'}, so {name} cannot be written there")
    return folder


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents (a byte-order mark allowed); one DataError line if it cannot be read as such."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: is not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}): save it as UTF-8") from None


def read_intrinsics(path: Path) -> Intrinsics:
    """Parse an intrinsics.txt (format above), or the 3x3 / 4x4 matrix K that NSVF also writes there."""
    lines = [line.split() for line in read_text(path).splitlines() if line.strip()]
    try:
        if not lines or len(lines[0]) < 3:
            raise ValueError("the first line must hold 'f cx cy'")
        if len(lines) in (3, 4) and {len(line) for line in lines} in ({3}, {4}):      # a matrix K
            K = np.array(lines, dtype=np.float64).tolist()
            fy = check_number(path, "the focal length fy", K[1][1], (">", 0))                 # 0 would mean "fy = fx"
            return Intrinsics(K[0][0], K[0][2], K[1][2], focal_y=fy)                       # checked by square_scene
        focal, cx, cy = map(float, lines[0][:3])
        center = tuple(map(float, lines[1][:3])) if len(lines) > 1 else None
        if center is not None and len(center) != 3:
            raise ValueError("line 2 (grid barycenter) must hold 'x y z'")
        near = float(lines[2][0]) if len(lines) > 2 else 0.0
        scale = check_number(path, "the scale (line 4; 0: estimate it)", lines[3][0], (">=", 0)) if len(lines) > 3 else 0.0
        size = tuple(int(check_number(path, "line 5, the image size 'H W',", v, (">=", 1))) for v in lines[4][:2]) if len(lines) > 4 else None
        if size is not None and len(size) != 2:
            raise ValueError("line 5 must hold the image size 'H W'")
        world2cam = check_number(path, "line 6, world2cam_poses (0 or 1),", lines[5][0]) if len(lines) > 5 else 0.0
        if world2cam not in (0, 1):
            raise ValueError(f"line 6, world2cam_poses, must be 0 or 1, got {lines[5][0]}")
    except ValueError as e:
        raise DataError(f"{path}: malformed intrinsics: {e}") from None
    # The barycenter counts only together with a scale: "0 0 0" and scale 0 ask for the estimate.
    return Intrinsics(focal, cx, cy, center if scale > 0 else None, near, scale or None, size,   # checked by square_scene
                      world2cam=world2cam == 1)


def read_pose(path: Path) -> np.ndarray:
    """A 4x4 rigid transform from 16 numbers (4 rows or one row), checked by check_pose."""
    try:
        values = np.array(read_text(path).split(), dtype=np.float64)
    except ValueError:
        raise DataError(f"{path}: pose is not a list of numbers") from None
    if values.size != 16:
        raise DataError(f"{path}: pose must be 16 numbers (a 4x4 matrix), found {values.size}")
    return check_pose(path, values.reshape(4, 4))


IMAGE_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "I;16", "I;16B", "I;16L", None)  # grey, palette, RGB


def read_image(path: Path) -> np.ndarray:
    """An image as float32 (H, W, 3) in [0, 1], alpha composited on white: one frame of 8 or 16 bits, in grey
    (with or without alpha), a palette or RGB(A). Anything else is one DataError line, never read channel by channel."""
    try:
        image, mode = iio.imread(path), iio.immeta(path).get("mode")
    except Exception as e:  # imageio raises many types for unreadable files, some with a message of several lines
        raise DataError(f"{path}: cannot be read as an image ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if mode not in IMAGE_MODES:
        raise DataError(f"{path}: colour model {mode} is not RGB, grey or a palette: convert the image to RGB")
    if image.ndim == 4 or (image.ndim == 3 and image.shape[-1] > 4):
        raise DataError(f"{path}: holds {image.shape[0]} frames; one image per view")
    if image.dtype not in (np.uint8, np.uint16, np.bool_):
        raise DataError(f"{path}: pixels are {image.dtype}; images must have 8 or 16 bits per channel")
    scale = np.iinfo(image.dtype).max if image.dtype != np.bool_ else 1.0
    image = image.astype(np.float32)
    image /= scale                                                     # in place: a 4000 px image is 183 MiB
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] in (2, 4):                                      # with alpha: composite on white
        color, alpha = image[..., :-1], image[..., -1:]
        image = color * alpha + (1 - alpha)
    return image if image.shape[-1] == 3 else np.broadcast_to(image, image.shape[:2] + (3,)).copy()


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 2. Five layouts, one Scene: each reader returns the same Scene (images, OpenCV poses, intrinsics)
# ─────────────────────────────────────────────────────────────────────────────────────────────

@dataclass
class Scene:
    """One split of a scene, resized to `img_size`. Intrinsics refer to the resized images."""

    images: torch.Tensor        # (V, 3, H, W) in [0, 1]
    poses: torch.Tensor         # (V, 4, 4) OpenCV camera-to-world
    intrinsics: Intrinsics
    names: list[str]
    source_size: tuple[int, int] | None = None  # (H, W) of the image files, before cropping and resizing


def square_scene(image_paths: list[Path], poses: list[np.ndarray], intr: Intrinsics, intr_file: Path, img_size: int) -> Scene:
    """Read the images (all of one size), centre-crop them to a square and resize them to img_size. The
    intrinsics follow: scaled from intr.size to the files' size, cx and cy shifted by the crop, all scaled
    by the resize (exact with pixel centres at j + 0.5). `intr_file` is named when the sizes disagree."""
    check_intrinsics(intr_file, intr)
    squares = []
    for path in image_paths:
        image = read_image(path)                                                 # (H0, W0, 3)
        if not squares:
            h0, w0 = image.shape[:2]
            side = min(h0, w0)
            top, left = (h0 - side) // 2, (w0 - side) // 2
        elif image.shape[:2] != (h0, w0):
            raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, but {image_paths[0].name} is {w0}x{h0}")
        square = torch.from_numpy(image[top:top + side, left:left + side]).permute(2, 0, 1)[None]  # (1, 3, side, side)
        if side != img_size:
            square = F.interpolate(square, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
        squares.append(square)
    ref_h, ref_w = intr.size or (h0, w0)
    if abs(ref_w * h0 / (ref_h * w0) - 1) > 0.01:
        raise DataError(f"{intr_file}: the intrinsics are for {ref_w}x{ref_h} images, a different shape from the {w0}x{h0} images")
    s = img_size / side
    fx, fy = intr.focal * w0 / ref_w * s, (intr.focal_y or intr.focal) * h0 / ref_h * s
    intr = replace(intr, focal=fx, focal_y=0.0 if fy == fx else fy, cx=(intr.cx * w0 / ref_w - left) * s,
                   cy=(intr.cy * h0 / ref_h - top) * s, size=(img_size, img_size))
    names = [p.stem for p in image_paths]
    return Scene(torch.cat(squares).clamp(0, 1).contiguous(), torch.from_numpy(np.stack(poses)).float(), intr, names, (h0, w0))


def load_split(root: str | Path, split: str, img_size: int, prefix: str = "") -> Scene:
    """Load `root/split` of a DeepVoxels-layout scene at img_size x img_size (only the views whose
    file names start with `prefix`; split "" reads rgb/, pose/ and intrinsics.txt in root itself)."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected {split}/rgb, {split}/pose, {split}/intrinsics.txt)")
    rgb_files = {p.stem: p for p in sorted((folder / "rgb").glob(prefix + "*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg")}
    pose_files = {p.stem: p for p in sorted((folder / "pose").glob(prefix + "*.txt"))}
    if not rgb_files:
        raise DataError(f"{folder / 'rgb'}: no images found (PNG or JPEG)" + (f" named {prefix}*" if prefix else ""))
    for stem in rgb_files.keys() - pose_files.keys():
        raise DataError(f"{rgb_files[stem]}: image has no pose file {folder / 'pose' / (stem + '.txt')}")
    for stem in pose_files.keys() - rgb_files.keys():
        raise DataError(f"{pose_files[stem]}: pose has no image in {folder / 'rgb'}")
    intr = read_intrinsics(folder / "intrinsics.txt")
    names = sorted(rgb_files)
    poses = [read_pose(pose_files[n]) for n in names]
    if intr.world2cam:                                                        # the authors' 6th line: 1 = world-to-camera
        poses = [np.linalg.inv(pose) for pose in poses]
    return square_scene([rgb_files[n] for n in names], poses, intr, folder / "intrinsics.txt", img_size)


def read_bbox(path: Path) -> tuple[tuple[float, float, float], float]:
    """NSVF's bbox.txt "x_min y_min z_min x_max y_max z_max [voxel_size]" -> the grid cube that encloses
    the box: its centre and, as side, the box's longest edge."""
    try:
        values = [float(v) for v in read_text(path).split()]
    except ValueError:
        raise DataError(f"{path}: bounding box is not a list of numbers") from None
    if len(values) not in (6, 7) or not all(lo < hi for lo, hi in zip(values[:3], values[3:6])):
        raise DataError(f"{path}: expected 'x_min y_min z_min x_max y_max z_max [voxel_size]' with each min < max")
    lo, hi = np.array(values[:3]), np.array(values[3:6])
    side = check_number(path, "the box's longest side (max - min)", max(h - l for l, h in zip(values[:3], values[3:6])), (">", 0))
    return tuple(check_number(path, "the box's centre", c) for c in (lo + hi) / 2), side


def load_nsvf(root: Path, img_size: int) -> tuple[Scene, Scene | None]:
    """NSVF: the DeepVoxels files, either in train/ and test/ or all in one rgb/ and pose/ with the split as a
    file-name prefix (0_ train, 1_ validation, 2_ test), plus bbox.txt, which places the grid."""
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


def load_transforms(path: Path, img_size: int) -> Scene:
    """One transforms*.json (NeRF-synthetic/Blender, instant-ngp, nerfstudio). Poses are camera-to-world in
    OpenGL axes, converted by opengl_to_opencv. Intrinsics: fl_x, fl_y, cx, cy (w, h: the size they refer
    to), per frame or for all; or camera_angle_x, the horizontal field of view: f = 0.5 W / tan(0.5
    camera_angle_x), principal point at the image centre. RGBA images are composited on white."""
    try:
        meta = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    paths, poses, cameras, where = [], [], set(), ""
    try:
        for k, frame in enumerate(meta["frames"]):
            where = f"frame {k}: "
            image = path.parent / frame["file_path"]
            if not image.is_file() and not image.suffix:                       # NeRF-synthetic leaves out ".png"
                image = image.with_name(image.name + ".png")
            if not image.is_file():
                raise DataError(f"{path}: {where}image {frame['file_path']} not found (looked for {image})")
            pose = check_pose(f"{path}: {where}transform_matrix", np.array(frame["transform_matrix"], dtype=np.float64))
            camera = {**meta, **frame}                                         # per-frame values win
            if "fl_x" not in camera and "camera_angle_x" not in camera:
                raise DataError(f"{path}: {where}missing key 'camera_angle_x' (or 'fl_x', 'fl_y', 'cx', 'cy')")
            if any(camera.get(key, 0) for key in ("k1", "k2", "k3", "k4", "p1", "p2")):
                raise DataError(f"{path}: {where}lens distortion (k1, k2, p1, p2...) does not fit DeepVoxels' pinhole "
                                f"camera: undistort the images first (colmap image_undistorter), or set them to 0 if negligible")
            number = lambda key, *rules: check_number(f"{path}: {where[:-2]}", key, camera[key], *rules)   # noqa: E731
            if "fl_x" in camera:
                size = (int(number("h", (">=", 1))), int(number("w", (">=", 1)))) if "w" in camera and "h" in camera else None
                cameras.add((number("fl_x", (">", 0)), number("fl_y" if "fl_y" in camera else "fl_x", (">", 0)),
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
        raise DataError(f"{path}: frames have {len(cameras)} different intrinsics; DeepVoxels uses one camera for all views")
    camera = cameras.pop()
    if len(camera) == 1:                                                       # camera_angle_x: from the image width
        h, w = read_image(paths[0]).shape[:2]
        focal = 0.5 * w / math.tan(0.5 * camera[0])
        intr = Intrinsics(focal, w / 2, h / 2, size=(h, w))
    else:
        fx, fy, cx, cy, size = camera
        intr = Intrinsics(fx, cx, cy, size=size, focal_y=fy)
    return square_scene(paths, poses, intr, path, img_size)


def hold_out(scene: Scene, source: Path, every: int = 8) -> tuple[Scene, Scene]:
    """Split the views of one file (`source`) into training and held-out views: every `every`-th (0, 8, 16...) is held out."""
    if len(scene.names) < 2:
        raise DataError(f"{source}: only one view; at least 2 are needed, one to hold out")
    held = torch.arange(len(scene.names)) % every == 0

    def pick(keep: torch.Tensor) -> Scene:
        return Scene(scene.images[keep], scene.poses[keep], scene.intrinsics,
                     [n for n, k in zip(scene.names, keep) if k], scene.source_size)
    return pick(~held), pick(held)


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a unit quaternion (w, x, y, z)."""
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def load_colmap(model: Path, images: Path, img_size: int) -> Scene:
    """COLMAP's text model: cameras.txt ("CAMERA_ID MODEL WIDTH HEIGHT PARAMS", pinhole models only) and
    images.txt (per image "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME", then a line of 2D points), the
    photos in `images`. Quaternion and translation are world-to-camera in OpenCV axes, x_cam = R x_world + t,
    so the camera-to-world pose is [R^T | -R^T t]. Views in name order."""
    cameras = {}
    for n, line in enumerate(read_text(model / "cameras.txt").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        kind = fields[1] if len(fields) > 1 else ""
        if kind not in ("SIMPLE_PINHOLE", "PINHOLE"):
            raise DataError(f"{model / 'cameras.txt'}: line {n}: camera model {kind or '(none)'} is not a pinhole model (SIMPLE_PINHOLE, "
                            f"PINHOLE); run colmap image_undistorter, which writes PINHOLE cameras and undistorted images")
        try:
            w, h, *params = map(float, fields[2:])
            fx, fy, cx, cy = params if kind == "PINHOLE" else (params[0], *params)
        except (ValueError, IndexError):
            raise DataError(f"{model / 'cameras.txt'}: line {n}: expected CAMERA_ID {kind} WIDTH HEIGHT and its "
                            f"{4 if kind == 'PINHOLE' else 3} parameters") from None
        where = f"{model / 'cameras.txt'}: line {n}"
        size = (int(check_number(where, "HEIGHT", h, (">=", 1))), int(check_number(where, "WIDTH", w, (">=", 1))))
        cameras[fields[0]] = check_intrinsics(where, Intrinsics(fx, cx, cy, size=size, focal_y=fy))
    path = model / "images.txt"
    lines = iter([(n, line) for n, line in enumerate(read_text(path).splitlines(), 1) if not line.startswith("#")])
    views = {}
    for n, line in lines:
        if not line.strip():
            continue
        next(lines, None)                                                      # the image's 2D points
        fields = line.split(maxsplit=9)
        try:
            q, t = np.array(fields[1:5], dtype=np.float64), np.array(fields[5:8], dtype=np.float64)
            camera, name = cameras[fields[8]], fields[9].strip()
        except (ValueError, IndexError):
            raise DataError(f"{path}: line {n}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME") from None
        except KeyError:
            raise DataError(f"{path}: line {n}: camera {fields[8]} is not in cameras.txt") from None
        if not (np.abs(q).max() <= 1.001 and abs(np.linalg.norm(q) - 1) <= 1e-3):   # "not <=": a NaN fails too
            raise DataError(f"{path}: line {n}: quaternion QW QX QY QZ = {' '.join(fields[1:5])} is not of length 1")
        if not (images / name).is_file():
            raise DataError(f"{path}: line {n}: image {images / name} not found")
        R = quaternion_to_rotation(q / np.linalg.norm(q))                      # world-to-camera
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = R.T, -R.T @ t
        views[name] = (images / name, check_pose(f"{path}: line {n}", pose), camera)
    if not views:
        raise DataError(f"{path}: no images")
    names = sorted(views)
    if any(views[n][2] != views[names[0]][2] for n in names):
        raise DataError(f"{model / 'cameras.txt'}: the images use cameras with different intrinsics; DeepVoxels uses one "
                        f"(colmap feature_extractor --ImageReader.single_camera 1)")
    return square_scene([views[n][0] for n in names], [views[n][1] for n in names], views[names[0]][2],
                        model / "cameras.txt", img_size)


def check_same_camera(train: Intrinsics, test: Intrinsics, where: Path) -> None:
    """Refuse held-out views whose camera (at img_size) differs from the training one: the model renders with one."""
    describe = lambda i: f"fx {i.focal:.4g}, fy {i.focal_y or i.focal:.4g}, cx {i.cx:.4g}, cy {i.cy:.4g}"   # noqa: E731
    if (train.matrix() - test.matrix()).abs().max() > 1e-3 * train.focal:
        raise DataError(f"{where}: the held-out camera ({describe(test)} at the model's size) differs from the training "
                        f"camera ({describe(train)}); DeepVoxels renders every view with the training camera")


def load_scene(root: str | Path, img_size: int) -> tuple[Scene, Scene | None, str]:
    """Detect a scene folder's layout, load it at img_size and say in one line what was found.

    Layouts, first match wins: transforms_train.json (NeRF-synthetic; held-out views from
    transforms_test.json, else transforms_val.json), transforms.json (instant-ngp / nerfstudio),
    bbox.txt or rgb/ + pose/ (NSVF), sparse/0/cameras.txt or sparse/cameras.txt (COLMAP text model,
    photos in images/), train/ (DeepVoxels). Where one file holds every view, every 8th is held out.
    Returns the training views, the held-out views (None: there are none) and the layout's name.
    """
    root = Path(root)
    test_camera = root / "test" / "intrinsics.txt"                          # where the held-out camera comes from
    colmap = next((d for d in (root / "sparse" / "0", root / "sparse") if (d / "cameras.txt").is_file()), None)
    if (root / "transforms_train.json").is_file():
        layout = "NeRF-synthetic"
        train = load_transforms(root / "transforms_train.json", img_size)
        held_out = [root / f"transforms_{split}.json" for split in ("test", "val") if (root / f"transforms_{split}.json").is_file()]
        test = load_transforms(held_out[0], img_size) if held_out else None
        test_camera = held_out[0] if held_out else None
    elif (root / "transforms.json").is_file():
        layout = "instant-ngp/nerfstudio transforms.json"
        train, test = hold_out(load_transforms(root / "transforms.json", img_size), root / "transforms.json")
    elif (root / "bbox.txt").is_file() or (root / "rgb").is_dir():
        layout = "NSVF"
        train, test = load_nsvf(root, img_size)
    elif colmap is not None:
        layout = "COLMAP text model"
        train, test = hold_out(load_colmap(colmap, root / "images", img_size), colmap / "images.txt")
    elif (root / "train").is_dir():
        layout = "DeepVoxels"
        train = load_split(root, "train", img_size)
        test = load_split(root, "test", img_size) if (root / "test").is_dir() else None
    else:
        raise DataError(f"{root / 'train'}: no such folder, and no other layout found (DeepVoxels: train/ and test/; NSVF: "
                        f"bbox.txt, rgb/, pose/; NeRF: transforms_train.json or transforms.json; COLMAP: sparse/0/cameras.txt)")
    if test is not None:
        check_same_camera(train.intrinsics, test.intrinsics, test_camera)
    h0, w0 = train.source_size
    if train.intrinsics.world2cam:
        print(f"{root}: intrinsics.txt line 6 says the poses are world-to-camera: inverted on reading")
    shape = f"{w0}x{h0} images" + (f" centre-cropped to {min(h0, w0)}x{min(h0, w0)} (principal point shifted)" if h0 != w0 else "")
    print(f"{root}: {layout} layout; {len(train.names)} training and "
          f"{f'{len(test.names)} held-out views' if test is not None else 'no held-out views'}; {shape}, resized to {img_size} px")
    return train, test, layout


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 3. The grid: where it goes (flags, bbox.txt, intrinsics.txt, else the cameras) and whether it fits
# ─────────────────────────────────────────────────────────────────────────────────────────────

def estimate_grid_placement(poses: torch.Tensor, intr: Intrinsics) -> tuple[tuple[float, float, float], float]:
    """Grid centre = the point nearest to every optical axis (least squares); side = the width of the
    narrowest camera frustum at that point, so the grid stays inside every view."""
    origins, axes = poses[:, :3, 3].double(), poses[:, :3, 2].double()
    projector = torch.eye(3, dtype=torch.float64) - axes[:, :, None] * axes[:, None, :]  # I - d d^T
    try:
        center = torch.linalg.solve(projector.sum(0), (projector @ origins[:, :, None]).sum(0))[:, 0]
    except torch.linalg.LinAlgError:  # one camera, or parallel axes: no point is nearest to all of them
        raise DataError("the training cameras' optical axes are parallel, so the grid cannot be estimated from them: "
                        "give --grid_center and --grid_scale") from None
    dist = ((center - origins) * axes).sum(-1)                                 # depth of the centre
    fy = intr.focal_y or intr.focal
    half_width = min(intr.cx / intr.focal, (intr.size[1] - intr.cx) / intr.focal, intr.cy / fy, (intr.size[0] - intr.cy) / fy)
    return tuple(center.tolist()), float((2 * dist * half_width).min())


def scene_config(train: Scene, sizes: Config, grid_center: tuple | str | None = None, grid_scale: float | None = None) -> Config:
    """Fill the scene part of a Config: intrinsics at img_size; the grid from the flags (a centre (x, y, z) or "x y z"),
    else the files (bbox.txt, then intrinsics.txt: the readers put them in train.intrinsics), else the cameras."""
    i = train.intrinsics
    if isinstance(grid_center, str):                                           # --grid_center 'x y z'
        if len(grid_center.split()) != 3:
            raise DataError(f"--grid_center: expected three numbers 'x y z', got {grid_center!r}")
        grid_center = tuple(check_number("--grid_center", f"the grid centre's {axis}", v) for axis, v in zip("xyz", grid_center.split()))
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
    return Config(**{**asdict(sizes), "grid_center": tuple(center), "grid_scale": float(scale),
                     "near": i.near, "focal": i.focal, "focal_y": i.focal_y, "cx": i.cx, "cy": i.cy})


def grid_box_mask(scene: Scene, center, side: float) -> torch.Tensor:
    """(V, H, W): True where a pixel's ray meets the axis-aligned cube (center, side), i.e. inside the
    cube's projection into each view (slab test: the ray is inside all three slabs at once)."""
    V, _, H, W = scene.images.shape
    origins, dirs = pixel_to_ray(pixel_centers(H, W).reshape(-1, 2), scene.intrinsics.matrix(), scene.poses)    # (V, 1, 3), (V, P, 3)
    dirs = torch.where(dirs == 0, torch.full_like(dirs, 1e-12), dirs)          # a ray parallel to a slab: no 0 / 0
    lo, hi = torch.tensor(center) - side / 2, torch.tensor(center) + side / 2
    t0, t1 = (lo - origins) / dirs, (hi - origins) / dirs                     # (V, P, 3) where the ray crosses each slab
    t_near, t_far = torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)
    return (t_far > t_near.clamp(min=0)).reshape(V, H, W)


def object_mask(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, H, W) the object's pixels, those that differ from the background, the colour of the image border; and
    (V,) the views whose border is one colour, the only ones looked at (most photographs are not)."""
    images = scene.images                                                        # (V, 3, H, W)
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 0], images[..., -1]], dim=-1)  # (V, 3, 4W)
    background = border.median(dim=-1).values                                  # (V, 3)
    plain = ((border - background[..., None]).abs().amax(1) < 0.1).float().mean(-1) > 0.9   # (V,)
    return ((images - background[..., None, None]).abs().amax(1) > 0.1) & plain[:, None, None], plain


FINE_BELOW = 0.7  # an object spanning under 70% of the frame's side gets feature maps at the image's resolution


def footprint(scene: Scene) -> float | None:
    """The object's size in the frame: the median, over the views object_mask can read, of the larger side of
    its pixels' bounding box as a share of the image's side; None when no view can be read."""
    mask, plain = object_mask(scene)
    mask = mask[plain & mask.flatten(1).any(1)]                                  # (V', H, W)
    if not len(mask):
        return None
    spans = torch.maximum(mask.any(2).sum(1), mask.any(1).sum(1))               # (V',) rows or columns it covers
    return spans.float().median().item() / mask.shape[-1]


def feature_size(train: Scene, sizes: Config) -> tuple[Config, str]:
    """The rule for --feat_size when it is not given, and a log line saying what it chose and why: feature maps at the
    image's resolution for an object that spans under FINE_BELOW of the frame (its outline, where most of the error
    is, gets twice the features per pixel), else the default of `sizes`."""
    share = footprint(train)
    fine = share is not None and share < FINE_BELOW
    chosen = sizes.img_size if fine else sizes.feat_size
    why = "no plain background to measure the object on" if share is None else \
        f"the object spans {share:.0%} of the frame, {'under' if fine else 'at least'} {FINE_BELOW:.0%}"
    return replace(sizes, feat_size=chosen), f"feature maps {chosen} x {chosen} ({why}; --feat_size sets them)"


def grid_warning(scene: Scene, cfg: Config) -> str | None:
    """Check the grid against the training images before training: one warning line, or None if it fits.

    The object's pixels are those of object_mask (views without a plain background are not checked); the
    grid box's projection is grown by a pixel for antialiasing. The grid cuts the object when more than 1% of
    the object's pixels, over all views, lie outside it: a few stray pixels in a few views (shadows, resampling, a box that touches the
    object) are not worth a coarser grid. The smallest box (from 1/8 to 4 times the side, in 2% steps) that
    holds 99.9% of the object's pixels is the suggestion; one of half the side or less warns too (most voxels empty).
    """
    object_pixels, uniform = object_mask(scene)                                  # (V, H, W), (V,)
    if not object_pixels.any():
        return None if uniform.any() else "note: grid not checked against the images: no training view has a plain background"

    def outside(factor: float) -> torch.Tensor:
        """(V,) object pixels of each view outside the box of `factor` times the grid's side."""
        box = grid_box_mask(scene, cfg.grid_center, cfg.grid_scale * factor).float()
        box = F.max_pool2d(box[:, None], 3, stride=1, padding=1)[:, 0] > 0         # one pixel of slack
        return (object_pixels & ~box).flatten(1).sum(1)

    total = object_pixels.sum().item()
    factors = [2 ** (k / 32) for k in range(-96, 65)]                             # 1/8 ... 4, each 2% larger
    low, high = 0, len(factors)                                                  # binary search: the share only falls
    while low < high:                                                            # as the box grows around its centre
        mid = (low + high) // 2
        low, high = (low, mid) if outside(factors[mid]).sum().item() <= 0.001 * total else (mid + 1, high)
    enclosing = factors[low] if low < len(factors) else None
    lost = outside(1.0)
    where = f"the grid (side {cfg.grid_scale:.3g}, centre {tuple(round(c, 3) + 0.0 for c in cfg.grid_center)})"
    views = f"{int((lost > 0.01 * object_pixels.flatten(1).sum(1)).sum())} of {int(uniform.sum())} training views"
    if lost.sum().item() > 0.01 * total:
        share = f"{100 * lost.sum().item() / total:.0f}% of its pixels, in {views}"
        if enclosing is None:
            return (f"warning: the object leaves {where}: {share}, even at 4x the side: check --grid_center and the "
                    f"camera convention (cameras.png)")
        return (f"warning: the object leaves {where}: {share}; --grid_scale {1.1 * cfg.grid_scale * enclosing:.3g} "
                f"would enclose it with a 10% margin (see cameras.png)")
    if enclosing is not None and enclosing <= 0.5:
        return (f"warning: {where} is {1 / enclosing:.1f}x larger than the object needs in the training views, so the "
                f"object gets few voxels; --grid_scale {1.1 * cfg.grid_scale * enclosing:.3g} would enclose it with a 10% margin")
    return None


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 4. Views: each view's nearest neighbours, and the paper's nearest-view baseline
# ─────────────────────────────────────────────────────────────────────────────────────────────

def view_neighbours(poses: torch.Tensor, k: int = 4) -> torch.Tensor:
    """(V, min(k, V - 1)) indices of each view's nearest views by viewing direction, nearest first, never
    the view itself: with 4 views or fewer, every other view."""
    dirs = poses[:, :3, 2]
    similarity = dirs @ dirs.T - 3 * torch.eye(len(poses))                    # push self to the end
    return similarity.topk(min(k, len(poses) - 1), dim=1).indices


def nearest_view_baseline(train: Scene, poses: torch.Tensor) -> torch.Tensor:
    """The paper's nearest-neighbour baseline: for each pose (B, 4, 4) copy the training image
    (B, 3, H, W) whose viewing direction is closest."""
    closest = (poses[:, :3, 2] @ train.poses[:, :3, 2].T).argmax(dim=1)
    return train.images[closest]


def baseline(train: Scene, held_out: Scene | None) -> tuple[Scene, str, str, float]:
    """The views a run is scored on (the held-out ones, else the training ones), their split, and the nearest-view
    baseline's name and mean PSNR on them. Without held-out views each training view is compared with its nearest
    *other* view: itself would score ~100 dB."""
    if held_out is None:
        print("no test/ split: PSNR is measured on the training views; the baseline copies each one's nearest other view")
        nearest_other = train.images[view_neighbours(train.poses)[:, 0]]
        return train, "train", "nearest-other-view baseline", psnr(nearest_other, train.images).mean().item()
    return held_out, "test", "nearest-neighbour baseline", psnr(nearest_view_baseline(train, held_out.poses), held_out.images).mean().item()


def spread_views(scene: Scene, n: int) -> Scene:
    """n of the scene's views (all if it has fewer), evenly spaced in name order."""
    pick = torch.linspace(0, len(scene.names) - 1, min(n, len(scene.names))).round().long()
    return Scene(scene.images[pick], scene.poses[pick], scene.intrinsics, [scene.names[i] for i in pick])


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 5. Synthetic scenes: cameras on a sphere around textured boxes, ray-cast in the DeepVoxels layout
# ─────────────────────────────────────────────────────────────────────────────────────────────

def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
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
    """The cameras' (V, 4, 4) mean distance from the grid centre: where render.py's orbit and the viewer fly."""
    return (poses[:, :3, 3] - torch.tensor(center)).norm(dim=-1).mean().item()


def orbit_poses(center: tuple[float, float, float], radius: float, n: int, elevation: float = 20.0, azimuth0: float = 0.0) -> torch.Tensor:
    """(n, 4, 4) cameras evenly spaced on a circle at `elevation` degrees around `center`, world z up,
    the first at azimuth `azimuth0` degrees (from +x towards +y), all looking at the centre."""
    azimuth = np.radians(azimuth0) + np.linspace(0, 2 * np.pi, n, endpoint=False)
    el = np.radians(elevation)
    eyes = np.stack([np.cos(el) * np.cos(azimuth), np.cos(el) * np.sin(azimuth), np.full(n, np.sin(el))], 1)
    return torch.from_numpy(np.stack([look_at(np.asarray(center) + radius * e, np.asarray(center)) for e in eyes])).float()


# The synthetic scenes: textured cubes and balls, lit by a fixed light. A cube's faces each have their own
# colour and a pattern of cells x cells (a checker on the faces facing -x, -y, -z, discs on the others); a
# ball has six coloured sectors of longitude, each a checker of longitude and latitude cells.
CUBE_COLORS = np.array([[0.85, 0.20, 0.20], [0.20, 0.65, 0.25], [0.20, 0.35, 0.85],
                        [0.90, 0.70, 0.15], [0.60, 0.25, 0.75], [0.15, 0.70, 0.75]])
CUBE_LIGHT = np.array([0.4, 0.3, 0.866])  # a fixed world-space light: faces differ in brightness


@dataclass(frozen=True)
class Box:
    """One textured cube: centre and side in world units, colour channel order, pattern cells per face side."""

    center: tuple[float, float, float]
    side: float
    colors: tuple[int, int, int] = (0, 1, 2)   # (2, 0, 1) turns red -> blue -> green: another cube's palette
    cells: int = 4


@dataclass(frozen=True)
class Ball:
    """One textured sphere: centre and radius in world units, colour channel order, checker cells per sector."""

    center: tuple[float, float, float]
    radius: float
    colors: tuple[int, int, int] = (0, 1, 2)
    cells: int = 4


@dataclass(frozen=True)
class SyntheticScene:
    """Shapes, the distance of every camera from the origin, and the grid side written to intrinsics.txt."""

    shapes: tuple[Box | Ball, ...]
    radius: float
    grid_scale: float


SCENES = {
    # One cube of side 1 at the origin, 4 x 4 cells per face; it fills about two thirds of the frame.
    "cube": SyntheticScene((Box((0.0, 0.0, 0.0), 1.0),), radius=2.5, grid_scale=1.25),
    # The occlusion ablation's scene: two half-size cubes that hide each other from many directions.
    "two_cubes": SyntheticScene((Box((-0.3, -0.15, 0.0), 0.5), Box((0.3, 0.15, 0.0), 0.5, (2, 0, 1))), radius=2.5, grid_scale=1.25),
    # The hard scene: three smaller blocks with 8 x 8 and 6 x 6 cells per face (finer than the grid's voxels),
    # hiding each other, seen from farther away: the grid fills under half of the frame.
    "blocks": SyntheticScene((Box((-0.25, -0.2, -0.15), 0.5, cells=8), Box((0.3, 0.25, 0.05), 0.4, (2, 0, 1), cells=8),
                              Box((0.15, -0.3, 0.3), 0.3, (1, 2, 0), cells=6)), radius=4.0, grid_scale=1.25),
    # Not a box: a textured ball with a small cube in front of part of it; curved outlines and shading.
    "ball": SyntheticScene((Ball((0.0, 0.0, 0.05), 0.5, cells=3), Box((0.4, -0.4, -0.3), 0.3, (1, 2, 0), cells=3)),
                           radius=2.5, grid_scale=1.25),
    # A small object: one cube of side 0.35, under a third of the frame's width, in a grid that fits it.
    "small": SyntheticScene((Box((0.0, 0.0, 0.0), 0.35),), radius=2.5, grid_scale=0.45),
}


def cube_color(points: np.ndarray, normals_axis: np.ndarray, sign: np.ndarray, cells: int = 4) -> np.ndarray:
    """Colour (P, 3) of surface points (P, 3), in the unit cube's frame, on the faces given by axis (P,) and sign (P,)."""
    face = 2 * normals_axis + (sign > 0)                                   # 0..5: -x, +x, -y, +y, -z, +z
    other = np.stack([(normals_axis + 1) % 3, (normals_axis + 2) % 3], axis=1)
    st = np.take_along_axis(points, other, axis=1) + 0.5                   # (P, 2) face coordinates in [0, 1]
    cell = np.floor(st * cells)
    checker = (cell.sum(1) % 2) == 0
    dots = np.linalg.norm(st * cells - cell - 0.5, axis=1) < 0.32          # a lattice of discs, one per cell
    on = np.where(face % 2 == 0, checker, dots)
    normal = np.zeros_like(points)
    normal[np.arange(len(points)), normals_axis] = sign
    return shaded(CUBE_COLORS[face], on, normal)


def ball_color(normals: np.ndarray, cells: int = 4) -> np.ndarray:
    """Colour (P, 3) of points on a ball given by their unit normals (P, 3): six sectors of longitude, each its
    own colour and a checker of cells x (2 cells) over longitude and latitude."""
    longitude = (np.arctan2(normals[:, 1], normals[:, 0]) / (2 * np.pi) + 0.5) * 6        # 0..6: the sector
    latitude = (np.arcsin(np.clip(normals[:, 2], -1, 1)) / np.pi + 0.5) * 2 * cells       # 0..2 cells
    on = (np.floor(longitude * cells) + np.floor(latitude)) % 2 == 0
    return shaded(CUBE_COLORS[np.minimum(longitude.astype(int), 5)], on, normals)


def shaded(base: np.ndarray, on: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Base colours (P, 3), a lighter tint where `on` (P,) is False, lit by CUBE_LIGHT on unit normals (P, 3)."""
    color = np.where(on[:, None], base, (base + 1) / 2)
    return color * (0.75 + 0.25 * np.clip(normals @ (CUBE_LIGHT / np.linalg.norm(CUBE_LIGHT)), 0, 1))[:, None]


def ray_cast(pose: np.ndarray, focal: float, size: int, shapes: tuple[Box | Ball, ...], supersample: int = 3) -> np.ndarray:
    """Ray-cast textured cubes (axis-aligned) and balls, nearest hit wins: (size, size, 3) in [0, 1], white background.

    The camera has a principal point at the image centre; `supersample`^2 rays per pixel, averaged.
    """
    n = size * supersample
    ticks = (np.arange(n) + 0.5) / supersample
    u, v = np.meshgrid(ticks, ticks)
    dirs = np.stack([(u - size / 2) / focal, (v - size / 2) / focal, np.ones_like(u)], -1).reshape(-1, 3) @ pose[:3, :3].T
    origin = pose[:3, 3]
    image, nearest = np.ones((len(dirs), 3)), np.full(len(dirs), np.inf)
    for shape in shapes:
        if isinstance(shape, Box):
            low, high = np.subtract(shape.center, shape.side / 2), np.add(shape.center, shape.side / 2)
            with np.errstate(divide="ignore", invalid="ignore"):           # slab test: the ray inside all 3 slabs
                t0, t1 = (low - origin) / dirs, (high - origin) / dirs
            t_near, t_far = np.minimum(t0, t1).max(1), np.maximum(t0, t1).min(1)
            hit = (t_near < t_far) & (t_near > 0) & (t_near < nearest)     # in front of what was hit so far
            local = (origin + t_near[hit, None] * dirs[hit] - shape.center) / shape.side   # (P, 3) in the unit cube's frame
            axis = np.minimum(t0, t1)[hit].argmax(1)                      # the slab entered last is the face
            color = cube_color(local, axis, np.sign(local[np.arange(len(local)), axis]), shape.cells)
        else:                                                              # |origin + t dirs - centre| = radius
            to_origin = origin - np.asarray(shape.center)
            a, b, c = (dirs * dirs).sum(1), dirs @ to_origin, to_origin @ to_origin - shape.radius ** 2
            root = np.sqrt(np.maximum(b * b - a * c, 0))
            t_near = np.where(b * b - a * c >= 0, (-b - root) / a, np.inf)   # the nearer of the two crossings
            hit = (t_near > 0) & (t_near < nearest)
            color = ball_color((origin + t_near[hit, None] * dirs[hit] - shape.center) / shape.radius, shape.cells)
        image[hit] = color[:, list(shape.colors)]
        nearest[hit] = t_near[hit]
    return image.reshape(size, supersample, size, supersample, 3).mean((1, 3))


def find_scene(data: str | Path) -> Path:
    """The scene folder `data`; a missing one named after one of SCENES is generated there first."""
    data = Path(data)
    if not data.exists() and data.name in SCENES:
        print(f"{data} does not exist: generating the synthetic scene '{data.name}' there (a few seconds)")
        make_scene(data, data.name)
    if not data.is_dir():
        raise DataError(f"{data}: no such data folder")
    return data


def open_scene(data: str | Path, sizes: Config, grid_center=None, grid_scale=None, feat_from_scene: bool = False) -> tuple[Scene, Scene | None, Config]:
    """A training run's scene: its training views (at least 2: a source and another target), its held-out views or None,
    and the Config with the grid placed (scene_config: the flags, else the files, else the cameras) and checked, and with
    feature maps sized by feature_size when `feat_from_scene` (--feat_size not given)."""
    train, held_out, _ = load_scene(find_scene(data), sizes.img_size)
    if len(train.names) < 2:
        raise DataError(f"{data}: training needs at least 2 views (a source and another target), found {len(train.names)}")
    if feat_from_scene:
        sizes, chosen = feature_size(train, sizes)
        print(chosen)
    cfg = scene_config(train, sizes, grid_center, grid_scale)
    if warning := grid_warning(train, cfg):
        print(warning)
    return train, held_out, cfg


def make_scene(root: str | Path, scene: str = "cube", n_train: int = 100, n_test: int = 24, size: int = 128) -> None:
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
    train_eyes = np.stack([np.sqrt(1 - z ** 2) * np.cos(phi), np.sqrt(1 - z ** 2) * np.sin(phi), z], 1)
    s = np.linspace(0, 1, n_test)
    elev, azim = np.radians(-50 + 100 * s), 4 * np.pi * s + 0.3
    test_eyes = np.stack([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)], 1)
    for split, eyes in (("train", train_eyes), ("test", test_eyes)):
        folder = Path(root) / split
        (folder / "rgb").mkdir(parents=True, exist_ok=True)
        (folder / "pose").mkdir(exist_ok=True)
        (folder / "intrinsics.txt").write_text(
            f"{focal} {size / 2} {size / 2} 0.\n0. 0. 0.\n0.\n{spec.grid_scale}\n{size} {size}\n")
        for k, eye in enumerate(eyes):
            pose = look_at(spec.radius * eye, np.zeros(3))
            image = ray_cast(pose, focal, size, spec.shapes)
            iio.imwrite(folder / "rgb" / f"{k:06d}.png", (image * 255).round().astype(np.uint8))
            np.savetxt(folder / "pose" / f"{k:06d}.txt", pose, fmt="%.8f")


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 6. Figures: the set-up (cameras.png) and depth maps in colour
# ─────────────────────────────────────────────────────────────────────────────────────────────

def plot_setup(path: str | Path, train: Scene, test: Scene | None, cfg: Config, view: int = 0) -> None:
    """Write the set-up as a PNG: the cameras (positions and viewing directions, training and held-out
    views in two colours) around the grid box in 3D, and one training view with the grid box drawn over it."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, safe in a notebook

    center, side = torch.tensor(cfg.grid_center), cfg.grid_scale
    corners = torch.tensor(list(np.ndindex(2, 2, 2)), dtype=torch.float32) * side - side / 2 + center   # (8, 3)
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]           # the 12 edges
    fig = Figure(figsize=(11, 5))
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    for a, b in edges:
        ax.plot(*corners[[a, b]].T.numpy(), color="black", lw=1)
    reach = (train.poses[:, :3, 3] - center).norm(dim=-1).max().item()
    for scene, color, label in ((train, "tab:blue", "training views"), (test, "tab:orange", "held-out views")):
        if scene is not None:
            eyes, axes = scene.poses[:, :3, 3].numpy(), scene.poses[:, :3, 2].numpy() * 0.2 * reach
            ax.scatter(*eyes.T, color=color, s=8, label=f"{label} ({len(scene.names)})")
            ax.quiver(*eyes.T, *axes.T, color=color, lw=0.8)
    gx, gy, gz = cfg.grid_center
    ax.set(xlim=(gx - reach, gx + reach), ylim=(gy - reach, gy + reach), zlim=(gz - reach, gz + reach),
           xlabel="x", ylabel="y", zlabel="z", box_aspect=(1, 1, 1),
           title=f"cameras and the grid (side {side:.3g})")
    ax.legend(loc="upper left", fontsize=8)
    image = fig.add_subplot(1, 2, 2)
    H, W = train.images.shape[-2:]
    image.imshow(train.images[view].permute(1, 2, 0).numpy(), extent=(0, W, H, 0))   # pixel centres at j + 0.5
    uv, z = camera_to_pixel(world_to_camera(corners[None], train.poses[view:view + 1]), train.intrinsics.matrix())           # (1, 8, 2), (1, 8)
    for a, b in edges:
        if z[0, a] > 0 and z[0, b] > 0:
            image.plot(*uv[0, [a, b]].T.numpy(), color="red", lw=1)
    image.set(xlim=(0, W), ylim=(H, 0), title=f"training view {train.names[view]} and the grid box (red)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def colorize_depth(depth: torch.Tensor, size: int | None = None, depth_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Depth maps (B, 1, h, w) to viridis images (B, 3, size, size), near = bright; each map spans
    its own range unless `depth_range` = (near, far) fixes one for all (steady colours in a video)."""
    import matplotlib  # only for its colormap

    if depth_range is None:
        lo, hi = depth.amin(dim=(1, 2, 3), keepdim=True), depth.amax(dim=(1, 2, 3), keepdim=True)
    else:
        lo, hi = torch.tensor(depth_range[0]), torch.tensor(depth_range[1])
    normalized = (1 - (depth - lo) / (hi - lo).clamp(min=1e-8)).clamp(0, 1)
    colors = torch.from_numpy(matplotlib.colormaps["viridis"](normalized[:, 0].cpu().numpy())[..., :3]).float()
    colors = colors.permute(0, 3, 1, 2)                                     # (B, 3, h, w)
    return colors if size is None else F.interpolate(colors, size=(size, size), mode="nearest")
