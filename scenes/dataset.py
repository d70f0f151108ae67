"""The one door from a --data folder to what a command needs: `open_scene` turns the folder and the
model's sizes into the training views, the held-out views and the one Config, and says in a few
lines what it found. Train, render, the viewer and the ablation all come in here.

On the way: a missing folder named after a built-in scene is generated (synthetic.py), the layout
is read (layouts.py), the feature maps are sized by the object (grid.feature_size), the grid is
placed and checked against the images (grid.scene_config, grid.grid_warning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from deepvoxels import Config, DataError
from scenes.grid import feature_size, grid_warning, rounded, scene_config
from scenes.layouts import Scene, load_layout
from scenes.synthetic import SCENES, make_scene


def open_scene(data: str | Path, sizes: dict, grid_center=None, grid_scale=None,
               log: Callable[[str], None] = print) -> tuple[Scene, Scene | None, Config]:
    """A scene as a command needs it: its training views (at least 2: a source and another
    target), its held-out views or None, and the Config of the model's sizes ({name: value},
    feat_size 0: chosen by grid.feature_size) with this scene's camera and its grid placed
    (grid.scene_config: the flags, else the files, else the cameras). Each line that says what was
    found goes to `log` as it is found: a scene generated, the layout and its views, the feature
    maps chosen, the grid check's warning."""
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
    cfg = scene_config(train, sizes, grid_center, grid_scale)
    log(f"grid {cfg.grid_size}^3 centred at {rounded(cfg.grid_center)}, side {cfg.grid_scale:.3g}")
    if warning := grid_warning(train, cfg):
        log(warning)
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
    return said
