"""Every file a layout names, read and checked: numbers, cameras, poses, text files and images.
Bad input is one DataError line naming the file and the problem, never a traceback.

The DeepVoxels layout's own files (read here; NSVF uses them too, every layout read_image):
  pose file: 16 numbers (4 rows or one row), an OpenCV camera-to-world matrix.
  intrinsics.txt, line by line: "f cx cy [ignored...]" / "x y z" grid barycenter / near plane
  (0: choose for me) / scale (world size of the grid; 0: estimate it, and the barycenter with it)
  / "H W" the intrinsics refer to / world2cam_poses (optional; 1: the pose files hold
  world-to-camera matrices, inverted on reading).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from deepvoxels import DataError, intrinsics_matrix


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
    world2cam: bool = False     # intrinsics.txt's 6th line: the pose files hold world-to-camera

    @property
    def fy(self) -> float:
        """fy in pixels."""
        return self.focal_y or self.focal

    def matrix(self) -> torch.Tensor:
        """The 3x3 pinhole matrix K."""
        return intrinsics_matrix(self.focal, self.fy, self.cx, self.cy)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# Numbers, cameras and poses
# ─────────────────────────────────────────────────────────────────────────────────────────────

COMPARE = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}


LARGEST = 1e15  # no scene needs more; more overflows float32 once squared (distances, depth ranges)


def check_number(where: str | Path, name: str, value, *rules: tuple[str, float]) -> float:
    """`value` as a float if it is a finite number below LARGEST in size that keeps every rule, e.g.
    (">", 0); else one DataError line."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not (abs(number) <= LARGEST
            and all(COMPARE[op](number, float(bound)) for op, bound in rules)):
        wanted = "".join(f" and {op} {bound:g}" for op, bound in rules)[4:]  # "> 0 and < 3.14159"
        size = (f" of size at most {LARGEST:g}" if math.isfinite(number) and abs(number) > LARGEST
                else "")
        raise DataError(f"{where}: {name} must be a finite number{wanted}{size}, got {value}")
    return number


def check_intrinsics(where: str | Path, intr: Intrinsics) -> Intrinsics:
    """The numbers every layout's camera must have: focal lengths > 0, a finite principal point,
    sizes >= 1, and a finite grid placement and near plane where the files give them. Every
    reader's camera passes here."""
    check_number(where, "the focal length fx", intr.focal, (">", 0))
    check_number(where, "the focal length fy", intr.fy, (">", 0))
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
    """A 4x4 rigid transform: finite, last row 0 0 0 1, and a proper rotation (orthonormal within
    1e-3, det +1)."""
    if pose.shape != (4, 4) or not (np.abs(pose) <= LARGEST).all():       # "not <=": NaN fails too
        raise DataError(f"{where}: pose must be a 4x4 matrix of finite numbers "
                        f"(of size at most {LARGEST:g})")
    if np.abs(pose[3] - [0, 0, 0, 1]).max() > 1e-6:
        raise DataError(f"{where}: the pose's last row must be 0 0 0 1, got "
                        f"{' '.join(f'{v:g}' for v in pose[3])}")
    R = pose[:3, :3]
    stretch = np.linalg.svd(R, compute_uv=False)                          # all 1 for a rotation
    if np.abs(R.T @ R - np.eye(3)).max() > 1e-3:
        uniform = stretch.max() - stretch.min() < 1e-3 * stretch.max()
        raise DataError(f"{where}: the pose's 3x3 part is "
                        + (f"a rotation scaled by {stretch[0]:.4g}; divide it by that "
                           f"(camera poses have no scale)" if uniform
                           else "not a rotation (its columns are not orthonormal)"))
    if np.linalg.det(R) < 0:
        raise DataError(f"{where}: the pose's 3x3 part is a reflection (determinant -1), "
                        f"not a rotation: is one axis flipped (OpenGL vs OpenCV)?")
    return pose


# ─────────────────────────────────────────────────────────────────────────────────────────────
# Text files, intrinsics.txt, pose files, images
# ─────────────────────────────────────────────────────────────────────────────────────────────

def read_text(path: Path) -> str:
    """A UTF-8 text file's contents (a byte-order mark allowed); one DataError line if it cannot be
    read as such."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: is not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}): "
                        f"save it as UTF-8") from None


def read_intrinsics(path: Path) -> Intrinsics:
    """Parse an intrinsics.txt (format in this module's docstring), or the 3x3 / 4x4 matrix K that
    NSVF also writes there."""
    lines = [line.split() for line in read_text(path).splitlines() if line.strip()]
    try:
        if not lines or len(lines[0]) < 3:
            raise ValueError("the first line must hold 'f cx cy'")
        if len(lines) in (3, 4) and {len(line) for line in lines} in ({3}, {4}):  # a matrix K
            K = np.array(lines, dtype=np.float64).tolist()
            fy = check_number(path, "the focal length fy", K[1][1], (">", 0))  # 0 means "fy = fx"
            return Intrinsics(K[0][0], K[0][2], K[1][2], focal_y=fy)       # checked by square_scene
        focal, cx, cy = map(float, lines[0][:3])
        center = tuple(map(float, lines[1][:3])) if len(lines) > 1 else None
        if center is not None and len(center) != 3:
            raise ValueError("line 2 (grid barycenter) must hold 'x y z'")
        near = float(lines[2][0]) if len(lines) > 2 else 0.0
        scale = (check_number(path, "the scale (line 4; 0: estimate it)", lines[3][0], (">=", 0))
                 if len(lines) > 3 else 0.0)
        size = (tuple(int(check_number(path, "line 5, the image size 'H W',", v, (">=", 1)))
                      for v in lines[4][:2]) if len(lines) > 4 else None)
        if size is not None and len(size) != 2:
            raise ValueError("line 5 must hold the image size 'H W'")
        world2cam = (check_number(path, "line 6, world2cam_poses (0 or 1),", lines[5][0])
                     if len(lines) > 5 else 0.0)
        if world2cam not in (0, 1):
            raise ValueError(f"line 6, world2cam_poses, must be 0 or 1, got {lines[5][0]}")
    except ValueError as e:
        raise DataError(f"{path}: malformed intrinsics: {e}") from None
    # The barycenter counts only together with a scale: "0 0 0" and scale 0 ask for the estimate.
    return Intrinsics(focal, cx, cy, center if scale > 0 else None, near, scale or None, size,
                      world2cam=world2cam == 1)                            # checked by square_scene


def read_pose(path: Path) -> np.ndarray:
    """A 4x4 rigid transform from 16 numbers (4 rows or one row), checked by check_pose."""
    try:
        values = np.array(read_text(path).split(), dtype=np.float64)
    except ValueError:
        raise DataError(f"{path}: pose is not a list of numbers") from None
    if values.size != 16:
        raise DataError(f"{path}: pose must be 16 numbers (a 4x4 matrix), found {values.size}")
    return check_pose(path, values.reshape(4, 4))


IMAGE_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa",  # grey, palette, RGB
               "I;16", "I;16B", "I;16L", None)


def read_image(path: Path) -> np.ndarray:
    """An image as float32 (H, W, 3) in [0, 1], alpha composited on white: one frame of 8 or 16
    bits, in grey (with or without alpha), a palette or RGB(A). Anything else is one DataError line,
    never read channel by channel."""
    try:
        image, mode = iio.imread(path), iio.immeta(path).get("mode")
    except Exception as e:  # imageio raises many types, some with a message of several lines
        raise DataError(f"{path}: cannot be read as an image "
                        f"({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if mode not in IMAGE_MODES:
        raise DataError(f"{path}: colour model {mode} is not RGB, grey or a palette: "
                        f"convert the image to RGB")
    if image.ndim == 4 or (image.ndim == 3 and image.shape[-1] > 4):
        raise DataError(f"{path}: holds {image.shape[0]} frames; one image per view")
    if image.dtype not in (np.uint8, np.uint16, np.bool_):
        raise DataError(f"{path}: pixels are {image.dtype}; "
                        f"images must have 8 or 16 bits per channel")
    scale = np.iinfo(image.dtype).max if image.dtype != np.bool_ else 1.0
    image = image.astype(np.float32)
    image /= scale                                        # in place: a 4000 px image is 183 MiB
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] in (2, 4):                         # with alpha: composite on white
        color, alpha = image[..., :-1], image[..., -1:]
        image = color * alpha + (1 - alpha)
    return image if image.shape[-1] == 3 else np.broadcast_to(image, image.shape[:2] + (3,)).copy()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images (B, 3, H, W) in [0, 1] to (B, H, W, 3) uint8, as image files hold them."""
    return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
