"""A --data folder, opened for the scripts: which of the five layouts it holds, read into Scenes
(`load_scene`), the lines that say what was found (`describe`), and the scene a training run
trains on, generated if it is a missing built-in one, with its grid placed and checked
(`open_scene`). Nothing here prints: the scripts print the lines these return.
"""

from __future__ import annotations

from pathlib import Path

from checks import check_same_camera
from deepvoxels import Config, DataError
from grid_check import feature_size, grid_warning
from layouts import hold_out, load_colmap, load_nsvf, load_transforms
from scenes import Scene, load_split, scene_config
from synthetic import find_scene


def load_scene(root: str | Path, img_size: int) -> tuple[Scene, Scene | None, str]:
    """Detect a scene folder's layout and load it at img_size (`describe` says in one line what was
    found).

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


def describe(root: str | Path, train: Scene, test: Scene | None, layout: str) -> list[str]:
    """What load_scene found in `root`, as lines to print: the layout, the views and the images'
    size, after a line saying that the poses were inverted where intrinsics.txt says they are
    world-to-camera."""
    root = Path(root)
    (h0, w0), img_size = train.source_size, train.images.shape[-1]
    cropped = f" centre-cropped to {min(h0, w0)}x{min(h0, w0)} (principal point shifted)"
    shape = f"{w0}x{h0} images" + (cropped if h0 != w0 else "")
    views = f"{len(test.names)} held-out views" if test is not None else "no held-out views"
    said = [f"{root}: {layout} layout; {len(train.names)} training and {views}; {shape}, "
            f"resized to {img_size} px"]
    if train.intrinsics.world2cam:
        said.insert(0, f"{root}: intrinsics.txt line 6 says the poses are world-to-camera: "
                       f"inverted on reading")
    return said


def open_scene(data: str | Path, sizes: dict, grid_center=None,
               grid_scale=None) -> tuple[Scene, Scene | None, Config, list[str]]:
    """A training run's scene: its training views (at least 2: a source and another target), its
    held-out views or None, the Config built from the model's sizes ({name: value}, feat_size 0:
    chosen by feature_size) with the grid placed (scene_config: the flags, else the files, else
    the cameras), and the lines to print: what was found (describe), the feature maps chosen, the
    grid check's warning."""
    root = find_scene(data)
    train, held_out, layout = load_scene(root, sizes["img_size"])
    said = describe(root, train, held_out, layout)
    if len(train.names) < 2:
        raise DataError(f"{data}: training needs at least 2 views (a source and another target), "
                        f"found {len(train.names)}")
    if not sizes["feat_size"]:
        feat_size, chosen = feature_size(train, sizes["img_size"])
        sizes = {**sizes, "feat_size": feat_size}
        said.append(chosen)
    cfg = scene_config(train, sizes, grid_center, grid_scale)
    if warning := grid_warning(train, cfg):
        said.append(warning)
    return train, held_out, cfg, said
