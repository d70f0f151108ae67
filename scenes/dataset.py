"""The one door from a --data folder to what a command needs: `open_scene` turns the folder and the
model's sizes into the training views, the held-out views and the one Config, and says in a few
lines what it found. Train, render and the ablation all come in here (the viewer needs no data).

On the way: a missing folder named after a built-in scene is generated (synthetic.py), the layout
is read (layouts.py), the feature maps are sized by the object (grid.feature_size), the grid is
placed and checked against the images (grid.scene_config, grid.grid_warning). Two warnings: images
with fewer pixels across than the feature maps (too_small), held-out views that are also training
views (shared_views).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from deepvoxels import Config, DataError
from scenes.grid import feature_size, fit_grid, rounded, scene_config
from scenes.layouts import Scene, load_layout
from scenes.synthetic import SCENES, make_scene


def open_scene(data: str | Path, sizes: dict, grid_center=None, grid_scale=None,
               log: Callable[[str], None] = print,
               check_grid: bool = True) -> tuple[Scene, Scene | None, Config]:
    """A scene as a command needs it: its training views (at least 2: a source and another
    target), its held-out views or None, and the Config of the model's sizes ({name: value},
    feat_size 0: chosen by grid.feature_size) with this scene's camera and its grid placed
    (grid.scene_config: the flags, else the files, else the cameras; grid.fit_grid then refits a
    side that the images contradict, unless the flag gave it). Each line that says what was
    found goes to `log` as it is found: a scene generated, the layout and its views (and what the
    reader noted), the feature maps chosen, images too small for them, held-out views that are
    training views, the grid refitted or the grid check's warning (`check_grid`: a trained model's
    grid, as render.py gives it, is neither checked nor refitted)."""
    root = Path(data)
    if not root.exists() and root.name in SCENES:
        log(f"{root} does not exist: generating the synthetic scene '{root.name}' there "
            f"(a few seconds)")
        make_scene(root, root.name)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    train, held_out, layout = load_layout(root, sizes["img_size"])
    for line in describe(root, train, held_out, layout):
        log(line)
    if len(train.names) < 2:
        raise DataError(f"{root}: training needs at least 2 views (a source and another target), "
                        f"found {len(train.names)}")
    if not sizes["feat_size"]:
        feat_size, chosen = feature_size(train, sizes["img_size"])
        sizes = {**sizes, "feat_size": feat_size}
        log(chosen)
    for warning in (too_small(train, held_out, sizes["feat_size"]), shared_views(train, held_out)):
        if warning:
            log(warning)
    cfg = scene_config(train, sizes, grid_center, grid_scale)
    if check_grid:  # the images win over a side they contradict
        placed_by = ("the flag" if grid_scale else "the data" if train.intrinsics.grid_scale
                     else "cameras")
        cfg, said = fit_grid(train, cfg, placed_by)
        if said:
            log(said)
    log(f"grid {cfg.grid_size}^3 centred at {rounded(cfg.grid_center)}, side {cfg.grid_scale:.3g}")
    return train, held_out, cfg


def describe(root: str | Path, train: Scene, test: Scene | None, layout: str) -> list[str]:
    """What layouts.load_layout found in `root`, as lines to print: the layout, the views and the
    images' size, after a line saying that the poses were inverted where intrinsics.txt says they
    are world-to-camera."""
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
    return said + train.notes + (test.notes if test is not None else [])


def too_small(train: Scene, held_out: Scene | None, feat_size: int) -> str | None:
    """A warning where the image files have fewer pixels across than the model's feature maps:
    resized up, they hold less than the maps are asked to learn. (Fewer pixels than img_size is
    fine: downsampled images with full-size intrinsics.)"""
    for scene in filter(None, (train, held_out)):
        (h0, w0), img_size = scene.source_size, scene.images.shape[-1]
        if min(h0, w0) < feat_size:
            where = scene.paths[0] if scene.paths else "the images"
            return (f"warning: {where}: the images are {w0}x{h0} px, fewer pixels across than the "
                    f"{feat_size} x {feat_size} feature maps; resized to {img_size} px they cannot "
                    f"hold what the model is asked to learn (use images of at least {feat_size} px "
                    f"across)")
    return None


def shared_views(train: Scene, held_out: Scene | None) -> str | None:
    """A warning naming the held-out views that are also training views: the same file, or the
    same pixels (to 8 bits, at the model's size) at the same pose. Their PSNR is not that of
    novel views."""
    if held_out is None:
        return None
    files = {path.resolve(): name for path, name in zip(train.paths, train.names)}
    found = []
    for k, name in enumerate(held_out.names):
        path = held_out.paths[k] if held_out.paths else name
        if held_out.paths and path.resolve() in files:
            found.append(f"{path} (the file of training view {files[path.resolve()]})")
            continue
        same_pose = (train.poses - held_out.poses[k]).abs().flatten(1).amax(1) < 1e-4
        for j in same_pose.nonzero().flatten().tolist():
            if (train.images[j] - held_out.images[k]).abs().max() < 0.5 / 255:
                found.append(f"{path} (the pixels and pose of training view {train.names[j]})")
                break
    if not found:
        return None
    one = len(found) == 1
    return (f"warning: {len(found)} of {len(held_out.names)} held-out views "
            f"{'is also a training view' if one else 'are also training views'}: "
            f"{', '.join(found[:3])}{', ...' if len(found) > 3 else ''}; the held-out PSNR counts "
            f"{'it as a novel view' if one else 'them as novel views'}")
