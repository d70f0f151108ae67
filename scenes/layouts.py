"""The five layouts people bring, each read into the same `Scene`: images, OpenCV camera-to-world
poses and one camera, squared and resized to the model's size. `load_layout` tells which layout a
folder holds and reads it; the conventions of each are in docs/your-data.md.

  1. A Scene, and the DeepVoxels layout (read, and written: the built-in scenes, the ablation)
  2. NSVF: the DeepVoxels files, plus bbox.txt
  3. transforms*.json: NeRF-synthetic / Blender, instant-ngp, nerfstudio
  4. COLMAP's text model
  5. Which layout a folder holds
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

from deepvoxels import DataError, opengl_to_opencv
from scenes.files import (Intrinsics, check_intrinsics, check_number, check_pose, read_image,
                          read_intrinsics, read_pose, read_text, to_uint8)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 1. A Scene, and the DeepVoxels layout: <scene>/<split>/rgb/000000.png, <scene>/<split>/pose/
#    000000.txt and <scene>/<split>/intrinsics.txt (files.py: their format), splits train, test
# ─────────────────────────────────────────────────────────────────────────────────────────────

@dataclass
class Scene:
    """One split of a scene, resized to `img_size`. Intrinsics refer to the resized images."""

    images: torch.Tensor        # (V, 3, H, W) in [0, 1]
    poses: torch.Tensor         # (V, 4, 4) OpenCV camera-to-world
    intrinsics: Intrinsics
    names: list[str]
    source_size: tuple[int, int] | None = None  # (H, W) of the image files, before crop and resize
    paths: list[Path] = field(default_factory=list)  # the image files, where the views came from
    notes: list[str] = field(default_factory=list)   # what the reader has to say (describe logs it)


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
                 torch.from_numpy(np.stack(poses)).float(), intr, names, (h0, w0),
                 list(image_paths))


def read_once(source: Path,
              views: list[tuple[str, Path, np.ndarray]]) -> tuple[list[int], list[str]]:
    """Which of `views` (where `source` names each, e.g. "line 4"; its image; its pose) to read,
    and the note to log: an image named twice (the same file: r_0 and r_0.png, a.png and ./a.png)
    with the same pose is read once; with another pose it is one DataError line naming both."""
    first: dict[Path, int] = {}
    keep, repeats = [], []
    for k, (where, image, pose) in enumerate(views):
        j = first.setdefault(image.resolve(), k)
        if j == k:
            keep.append(k)
        elif np.abs(pose - views[j][2]).max() > 1e-6:
            raise DataError(f"{source}: {views[j][0]} and {where} name the same image {image} "
                            f"with different poses; one image is one view: remove one of them")
        else:
            repeats.append(f"{views[j][0]} and {where}")
    said = "; ".join(repeats[:3]) + ("; ..." if len(repeats) > 3 else "")
    return keep, [f"{source}: {len(repeats)} image(s) named again with the same pose ({said}): "
                  f"each read once"] if repeats else []


def read_poses(files: list[Path], world2cam: bool = False) -> np.ndarray:
    """(V, 4, 4) camera-to-world poses from pose files; inverted where intrinsics.txt says they are
    world-to-camera (`world2cam`, its 6th line)."""
    poses = np.stack([read_pose(f) for f in files])
    return np.linalg.inv(poses) if world2cam else poses


def read_pose_folder(folder: Path) -> torch.Tensor:
    """(V, 4, 4) camera-to-world poses from the .txt files of a folder (render.py --poses), in name
    order; inverted when the intrinsics.txt beside it (a DeepVoxels split's) says so."""
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"{folder}: no pose .txt files found" if folder.is_dir()
                        else f"{folder}: no such poses folder")
    beside = folder.parent / "intrinsics.txt"
    world2cam = beside.is_file() and read_intrinsics(beside).world2cam
    return torch.from_numpy(read_poses(files, world2cam)).float()


def load_split(root: str | Path, split: str, img_size: int, prefix: str = "") -> Scene:
    """Load `root/split` of a DeepVoxels-layout scene at img_size x img_size (only the views whose
    file names start with `prefix`; split "" reads rgb/, pose/ and intrinsics.txt in root
    itself)."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder "
                        f"(expected {split}/rgb, {split}/pose, {split}/intrinsics.txt)")
    rgb_files: dict[str, Path] = {}
    for image in sorted((folder / "rgb").glob(prefix + "*")):
        if image.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        if (other := rgb_files.setdefault(image.stem, image)) != image:   # a.jpg and a.png
            raise DataError(f"{other}: this image and {image.name} would both pair with the "
                            f"pose file {folder / 'pose' / (image.stem + '.txt')} (a view is "
                            f"named by its file name without the extension): keep one image")
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
    poses = read_poses([pose_files[n] for n in names], intr.world2cam)
    return square_scene([rgb_files[n] for n in names], list(poses), intr,
                        folder / "intrinsics.txt", img_size)


def write_split(folder: Path, intr: Intrinsics) -> None:
    """Start a split of the DeepVoxels layout in `folder`: rgb/, pose/ and its intrinsics.txt (one
    focal length; the grid's centre and side, the near plane, the images' size)."""
    (folder / "rgb").mkdir(parents=True, exist_ok=True)
    (folder / "pose").mkdir(exist_ok=True)
    center = " ".join(map(str, intr.grid_center or (0.0, 0.0, 0.0)))
    (folder / "intrinsics.txt").write_text(
        f"{intr.focal} {intr.cx} {intr.cy} 0.\n{center}\n{intr.near}\n{intr.grid_scale or 0.}\n"
        f"{intr.size[0]} {intr.size[1]}\n")


def write_view(folder: Path, name: str, image: torch.Tensor, pose: np.ndarray) -> None:
    """One view of a split written by write_split: rgb/<name>.png from an image (3, H, W) in [0, 1],
    pose/<name>.txt from its camera-to-world pose (4, 4)."""
    iio.imwrite(folder / "rgb" / f"{name}.png", to_uint8(image[None])[0])
    np.savetxt(folder / "pose" / f"{name}.txt", pose, fmt="%.8f")


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 2. NSVF: the DeepVoxels files, plus bbox.txt
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
# 3. transforms*.json: NeRF-synthetic / Blender, instant-ngp, nerfstudio
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
    keep, notes = read_once(path, [(f"frame {k}", image, pose)
                                   for k, (image, pose) in enumerate(zip(paths, poses))])
    paths, poses = [paths[k] for k in keep], [poses[k] for k in keep]
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
    return replace(square_scene(paths, poses, intr, path, img_size), notes=notes)


def hold_out(scene: Scene, source: Path, every: int = 8) -> tuple[Scene, Scene]:
    """Split the views of one file (`source`) into training and held-out views: every `every`-th
    (0, 8, 16...) is held out."""
    if len(scene.names) < 2:
        raise DataError(f"{source}: only one view; at least 2 are needed, one to hold out")
    held = torch.arange(len(scene.names)) % every == 0

    def pick(keep: torch.Tensor) -> Scene:
        return Scene(scene.images[keep], scene.poses[keep], scene.intrinsics,
                     [n for n, k in zip(scene.names, keep) if k], scene.source_size,
                     [p for p, k in zip(scene.paths, keep) if k])
    return replace(pick(~held), notes=scene.notes), pick(held)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 4. COLMAP's text model: cameras.txt, images.txt, the photos in images/
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
    2D points, as COLMAP writes it, or not: next_line_kind tells which), the photos in `images`.
    Quaternion and translation are world-to-camera in OpenCV axes, x_cam = R x_world + t, so the
    camera-to-world pose is [R^T | -R^T t]. Views in name order; an image named twice, read_once."""
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
    rows = [(n, line) for n, line in enumerate(read_text(path).splitlines(), 1)
            if not line.startswith("#")]
    views, alone, k = [], 0, 0
    while k < len(rows):
        n, line = rows[k]
        k += 1
        if not line.strip():
            continue
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
        views.append((f"line {n}", images / name, check_pose(f"{path}: line {n}", pose), camera))
        after = next_line_kind(path, rows[k], n, cameras) if k < len(rows) else "end"
        k += after == "points"                 # its 2D points, unless the next image follows
        alone += after == "image"
    if not views:
        raise DataError(f"{path}: no images")
    if any(camera != views[0][3] for *_, camera in views):
        raise DataError(f"{model / 'cameras.txt'}: the images use cameras with different "
                        f"intrinsics; DeepVoxels uses one "
                        f"(colmap feature_extractor --ImageReader.single_camera 1)")
    keep, notes = read_once(path, [view[:3] for view in views])
    if alone:                                  # the last image too, where no line follows it
        alone += after == "end"
        notes.insert(0, f"{path}: {alone} of {len(views)} images have no 2D-points line after "
                        f"them (one line per image): read all {len(views)}")
    views = sorted((views[k] for k in keep), key=lambda view: str(view[1]))   # in name order
    return replace(square_scene([view[1] for view in views], [view[2] for view in views],
                                views[0][3], model / "cameras.txt", img_size), notes=notes)


def next_line_kind(path: Path, row: tuple[int, str], image_line: int, cameras: dict) -> str:
    """What the line after an image line of images.txt is: "points", the image's 2D points (X Y
    POINT3D_ID, repeated; empty for none), as COLMAP writes them, or "image", the next image's
    line, where a file holds one line per image. A line that is neither, or could be both, is
    one DataError line."""
    n, line = row
    fields, parts = line.split(), line.split(maxsplit=9)

    def numbers(values: list[str], kind: type) -> bool:
        try:
            return all(kind(v) is not None for v in values)
        except ValueError:
            return False
    points = len(fields) % 3 == 0 and numbers(fields, float) and numbers(fields[2::3], int)
    shaped = (len(parts) == 10 and numbers(parts[:1], int) and numbers(parts[1:8], float)
              and numbers(parts[8:9], int))
    # a camera missing from cameras.txt is the image line's own error (the reader says which)
    image = shaped and (parts[8] in cameras or not points)
    if points and image:
        raise DataError(f"{path}: line {n}: reads as the 2D points of the image on line "
                        f"{image_line} and as an image line: give that image its 2D-points line "
                        f"(empty if it has none)")
    if not (points or image):
        raise DataError(f"{path}: line {n}: after the image on line {image_line}, expected its 2D "
                        f"points (X Y POINT3D_ID ...) or the next image (IMAGE_ID QW QX QY QZ TX "
                        f"TY TZ CAMERA_ID NAME)")
    return "points" if points else "image"


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 5. Which layout a folder holds
# ─────────────────────────────────────────────────────────────────────────────────────────────

def check_same_camera(train: Intrinsics, test: Intrinsics, where: Path) -> None:
    """Refuse held-out views whose camera (at img_size) differs from the training one: the model
    renders with one."""

    def numbers(i: Intrinsics) -> str:
        return f"fx {i.focal:.4g}, fy {i.fy:.4g}, cx {i.cx:.4g}, cy {i.cy:.4g}"

    if (train.matrix() - test.matrix()).abs().max() > 1e-3 * train.focal:
        raise DataError(f"{where}: the held-out camera ({numbers(test)} at the model's size) "
                        f"differs from the training camera ({numbers(train)}); DeepVoxels renders "
                        f"every view with the training camera")


def load_layout(root: str | Path, img_size: int) -> tuple[Scene, Scene | None, str]:
    """Detect a scene folder's layout and load it at img_size (dataset.describe says in one line
    what was found).

    Layouts, first match wins: transforms_train.json (NeRF-synthetic; held-out views from
    transforms_test.json, else transforms_val.json), transforms.json (instant-ngp / nerfstudio),
    bbox.txt or rgb/ + pose/ (NSVF), sparse/0/cameras.txt or sparse/cameras.txt (COLMAP text model,
    photos in images/), train/ (DeepVoxels). Where one file holds every view, every 8th is held out.
    Returns the training views, the held-out views (None: there are none) and the layout's name.
    """
    root = Path(root)
    test_camera = root / "test" / "intrinsics.txt"            # where the held-out camera comes from
    colmap = next((d for d in (root / "sparse" / "0", root / "sparse")
                   if (d / "cameras.txt").is_file()), None)
    if (root / "transforms_train.json").is_file():
        layout = "NeRF-synthetic"
        train = load_transforms(root / "transforms_train.json", img_size)
        held_out = [root / f"transforms_{split}.json" for split in ("test", "val")
                    if (root / f"transforms_{split}.json").is_file()]
        test = load_transforms(held_out[0], img_size) if held_out else None
        test_camera = held_out[0] if held_out else None
    elif (root / "transforms.json").is_file():
        layout = "instant-ngp/nerfstudio transforms.json"
        train, test = hold_out(load_transforms(root / "transforms.json", img_size),
                               root / "transforms.json")
    elif (root / "bbox.txt").is_file() or (root / "rgb").is_dir():
        layout = "NSVF"
        train, test = load_nsvf(root, img_size)
    elif colmap is not None:
        layout = "COLMAP text model"
        train, test = hold_out(load_colmap(colmap, root / "images", img_size),
                               colmap / "images.txt")
    elif (root / "train").is_dir():
        layout = "DeepVoxels"
        train = load_split(root, "train", img_size)
        test = load_split(root, "test", img_size) if (root / "test").is_dir() else None
    else:
        raise DataError(f"{root / 'train'}: no such folder, and no other layout found "
                        f"(DeepVoxels: train/ and test/; NSVF: bbox.txt, rgb/, pose/; "
                        f"NeRF: transforms_train.json or transforms.json; "
                        f"COLMAP: sparse/0/cameras.txt)")
    if test is not None:
        check_same_camera(train.intrinsics, test.intrinsics, test_camera)
    return train, test, layout
