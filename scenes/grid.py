"""Where the voxel grid goes, and the object against the frame and the grid, measured on the
training images before training: the grid's placement (flags, files, else the cameras), whether it
encloses the object (`measure_grid`; `fit_grid` refits a side the images contradict, `grid_warning`
says what it cannot fix), and the feature maps' size the object's footprint asks for
(`feature_size`). The object's pixels are those that differ from a plain background; views without
one (most photographs) are not measured.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from deepvoxels import Config, DataError, pixel_centers, pixel_to_ray
from scenes.files import Intrinsics, check_number
from scenes.layouts import Scene


# ─────────────────────────────────────────────────────────────────────────────────────────────
# Where the grid goes: the flags, else the files (bbox.txt, intrinsics.txt), else the cameras
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
# The object: its pixels, and its size in the frame (the feature maps)
# ─────────────────────────────────────────────────────────────────────────────────────────────

def object_mask(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, H, W) the object's pixels, those that differ from the background, the colour of the image
    border; and (V,) the views whose border is one colour, the only ones looked at (most photographs
    are not)."""
    images = scene.images                                                    # (V, 3, H, W)
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 0], images[..., -1]],
                       dim=-1)                                               # (V, 3, 4W)
    background = border.median(dim=-1).values                                # (V, 3)
    plain = ((border - background[..., None]).abs().amax(1) < 0.1).float().mean(-1) > 0.9  # (V,)
    return (((images - background[..., None, None]).abs().amax(1) > 0.1) & plain[:, None, None],
            plain)


FINE_BELOW = 0.7  # an object under 70% of the frame's side gets feature maps at the image's size


def footprint(scene: Scene) -> float | None:
    """The object's size in the frame: the median, over the views object_mask can read, of the
    larger side of its pixels' bounding box as a share of the image's side; None when no view can
    be read."""
    mask, plain = object_mask(scene)
    mask = mask[plain & mask.flatten(1).any(1)]                              # (V', H, W)
    if not len(mask):
        return None
    spans = torch.maximum(mask.any(2).sum(1), mask.any(1).sum(1))  # (V',) rows or columns it covers
    return spans.float().median().item() / mask.shape[-1]


def feature_size(train: Scene, img_size: int) -> tuple[int, str]:
    """The feature maps' side when --feat_size is not given, and a log line saying what it chose
    and why: the image's side for an object that spans under FINE_BELOW of the frame (its outline,
    where most of the error is, gets twice the features per pixel), else Config's default."""
    share = footprint(train)
    fine = share is not None and share < FINE_BELOW
    chosen = img_size if fine else Config.feat_size
    why = "no plain background to measure the object on" if share is None else \
        (f"the object spans {share:.0%} of the frame, "
         f"{'under' if fine else 'at least'} {FINE_BELOW:.0%}")
    return chosen, f"feature maps {chosen} x {chosen} ({why}; --feat_size sets them)"


# ─────────────────────────────────────────────────────────────────────────────────────────────
# Whether the grid encloses the object
# ─────────────────────────────────────────────────────────────────────────────────────────────

def rounded(center: tuple[float, float, float]) -> tuple[float, ...]:
    """A grid centre for printing: 3 decimals, and no "-0.0"."""
    return tuple(round(c, 3) + 0.0 for c in center)


def grid_box_mask(scene: Scene, center, side: float) -> torch.Tensor:
    """(V, H, W): True where a pixel's ray meets the axis-aligned cube (center, side), i.e. inside
    the cube's projection into each view (slab test: the ray is inside all three slabs at once)."""
    V, _, H, W = scene.images.shape
    origins, dirs = pixel_to_ray(pixel_centers(H, W).reshape(-1, 2), scene.intrinsics.matrix(),
                                 scene.poses)                               # (V, 1, 3), (V, P, 3)
    dirs = torch.where(dirs == 0, torch.full_like(dirs, 1e-12), dirs)  # parallel to a slab: no 0/0
    lo, hi = torch.tensor(center) - side / 2, torch.tensor(center) + side / 2
    t0, t1 = (lo - origins) / dirs, (hi - origins) / dirs     # (V, P, 3) where it crosses each slab
    t_near, t_far = torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)
    return (t_far > t_near.clamp(min=0)).reshape(V, H, W)


@dataclass
class GridFit:
    """How the grid holds the object in the training views (measure_grid)."""

    lost: float               # share of the object's pixels outside the grid's box
    views: str                # "k of V training views": those that lose more than 1 % of theirs
    enclosing: float | None   # smallest factor of the side whose box holds 99.9 % (None: not 4x)

    def suggested_side(self, side: float) -> float:
        """The side that encloses the object with a 10 % margin, to 3 digits (as printed)."""
        return float(f"{1.1 * side * self.enclosing:.3g}")


def measure_grid(scene: Scene, cfg: Config) -> GridFit | None:
    """Measure the grid against the training images: None where no view shows an object on a
    plain background.

    The object's pixels are those of object_mask; the grid box's projection is grown by a pixel
    for antialiasing. The smallest box (from 1/8 to 4 times the side, in 2% steps, around the same
    centre) that holds 99.9% of the object's pixels is `enclosing`.
    """
    object_pixels, uniform = object_mask(scene)                              # (V, H, W), (V,)
    if not object_pixels.any():
        return None

    def outside(factor: float) -> torch.Tensor:
        """(V,) object pixels of each view outside the box of `factor` times the grid's side."""
        box = grid_box_mask(scene, cfg.grid_center, cfg.grid_scale * factor).float()
        box = F.max_pool2d(box[:, None], 3, stride=1, padding=1)[:, 0] > 0     # one pixel of slack
        return (object_pixels & ~box).flatten(1).sum(1)

    total = object_pixels.sum().item()
    factors = [2 ** (k / 32) for k in range(-96, 65)]                    # 1/8 ... 4, each 2% larger
    low, high = 0, len(factors)                                   # binary search: the share outside
    while low < high:                                             # only falls as the box grows
        mid = (low + high) // 2                                   # around its centre
        low, high = ((low, mid) if outside(factors[mid]).sum().item() <= 0.001 * total
                     else (mid + 1, high))
    lost = outside(1.0)
    views = (f"{int((lost > 0.01 * object_pixels.flatten(1).sum(1)).sum())} "
             f"of {int(uniform.sum())} training views")
    return GridFit(lost.sum().item() / total, views,
                   factors[low] if low < len(factors) else None)


def grid_warning(scene: Scene, cfg: Config, fit: GridFit | None = None) -> str | None:
    """Check the grid against the training images before training: one warning line, or None if it
    fits. The grid cuts the object when more than 1% of the object's pixels, over all views, lie
    outside it: a few stray pixels in a few views (shadows, resampling, a box that touches the
    object) are not worth a coarser grid. A box of half the side or less that holds the object
    warns too (most voxels empty). `fit`: measure_grid's, where the caller has it already."""
    fit = fit or measure_grid(scene, cfg)
    if fit is None:
        return None if object_mask(scene)[1].any() else \
            "note: grid not checked against the images: no training view has a plain background"
    where = f"the grid (side {cfg.grid_scale:.3g}, centre {rounded(cfg.grid_center)})"
    if fit.lost > 0.01:
        share = f"{100 * fit.lost:.0f}% of its pixels, in {fit.views}"
        if fit.enclosing is None:
            return (f"warning: the object leaves {where}: {share}, even at 4x the side: "
                    f"check --grid_center and the camera convention (cameras.png)")
        return (f"warning: the object leaves {where}: {share}; "
                f"--grid_scale {fit.suggested_side(cfg.grid_scale):.3g} "
                f"would enclose it with a 10% margin (see cameras.png)")
    if fit.enclosing is not None and fit.enclosing <= 0.5:
        return (f"warning: {where} is {1 / fit.enclosing:.1f}x larger than the object needs in "
                f"the training views, so the object gets few voxels; "
                f"--grid_scale {fit.suggested_side(cfg.grid_scale):.3g} "
                f"would enclose it with a 10% margin")
    return None


def fit_grid(scene: Scene, cfg: Config, placed_by: str) -> tuple[Config, str | None]:
    """The grid to train with, and the line that says what was done to it, or None.

    Where the images contradict the grid's side, they win over a side that was only estimated
    from the cameras (`placed_by` "cameras") or read from the data's files ("the data"): a grid
    the object leaves is grown to enclose it, and an estimated grid twice or more too large
    shrinks. A side given by --grid_scale ("the flag") is the user's word: only grid_warning's
    line. So is any grid the check cannot measure, or cannot fit by growing it around its own
    centre."""
    fit = measure_grid(scene, cfg) if placed_by != "the flag" else None
    grows = fit is not None and fit.enclosing is not None and fit.lost > 0.01
    shrinks = (fit is not None and fit.enclosing is not None and fit.enclosing <= 0.5
               and placed_by == "cameras")
    if not (grows or shrinks):
        return cfg, grid_warning(scene, cfg, fit)
    side = fit.suggested_side(cfg.grid_scale)
    why = (f"the object leaves it ({100 * fit.lost:.0f}% of its pixels, in {fit.views})" if grows
           else f"it is {1 / fit.enclosing:.1f}x larger than the object")
    return replace(cfg, grid_scale=side), (
        f"grid fitted to the object: side {side:.3g} (10% margin) instead of the "
        f"{cfg.grid_scale:.3g} {placed_by} gave, as {why}; --grid_scale {cfg.grid_scale:.3g} "
        f"keeps that side")
