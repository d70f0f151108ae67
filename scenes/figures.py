"""What the scripts draw: the set-up (cameras.png: the cameras around the grid, and the grid box
over a training view), depth maps in colour, the preview. matplotlib is imported only when a
figure is drawn, and without pyplot: no global backend, safe in a notebook.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

from deepvoxels import Config, camera_to_pixel, world_to_camera
from scenes.files import to_uint8
from scenes.layouts import Scene


def plot_setup(path: str | Path, train: Scene, test: Scene | None, cfg: Config,
               view: int = 0) -> None:
    """Write the set-up as a PNG: the cameras (positions and viewing directions, training and
    held-out views in two colours) around the grid box in 3D, and one training view with the grid
    box drawn over it."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, safe in a notebook

    center, side = torch.tensor(cfg.grid_center), cfg.grid_scale
    corners = (torch.tensor(list(np.ndindex(2, 2, 2)), dtype=torch.float32) * side - side / 2
               + center)                                                     # (8, 3)
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8)
             if bin(a ^ b).count("1") == 1]                                  # the 12 edges
    fig = Figure(figsize=(11, 5))
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    for a, b in edges:
        ax.plot(*corners[[a, b]].T.numpy(), color="black", lw=1)
    reach = (train.poses[:, :3, 3] - center).norm(dim=-1).max().item()
    for scene, color, label in ((train, "tab:blue", "training views"),
                                (test, "tab:orange", "held-out views")):
        if scene is not None:
            eyes, axes = scene.poses[:, :3, 3].numpy(), scene.poses[:, :3, 2].numpy() * 0.2 * reach
            ax.scatter(*eyes.T, color=color, s=8, label=f"{label} ({len(scene.names)})")
            ax.quiver(*eyes.T, *axes.T, color=color, lw=0.8)
    gx, gy, gz = cfg.grid_center
    ax.set(xlim=(gx - reach, gx + reach), ylim=(gy - reach, gy + reach),
           zlim=(gz - reach, gz + reach), xlabel="x", ylabel="y", zlabel="z", box_aspect=(1, 1, 1),
           title=f"cameras and the grid (side {side:.3g})")
    ax.legend(loc="upper left", fontsize=8)
    image = fig.add_subplot(1, 2, 2)
    H, W = train.images.shape[-2:]
    image.imshow(train.images[view].permute(1, 2, 0).numpy(),
                 extent=(0, W, H, 0))                                     # pixel centres at j + 0.5
    uv, z = camera_to_pixel(world_to_camera(corners[None], train.poses[view:view + 1]),
                            train.intrinsics.matrix())                       # (1, 8, 2), (1, 8)
    for a, b in edges:
        if z[0, a] > 0 and z[0, b] > 0:
            image.plot(*uv[0, [a, b]].T.numpy(), color="red", lw=1)
    image.set(xlim=(0, W), ylim=(H, 0),
              title=f"training view {train.names[view]} and the grid box (red)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def colorize_depth(depth: torch.Tensor, size: int | None = None,
                   depth_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Depth maps (B, 1, h, w) to viridis images (B, 3, size, size), near = bright; each map spans
    its own range unless `depth_range` = (near, far) fixes one for all (steady colours in a
    video)."""
    import matplotlib  # only for its colormap

    if depth_range is None:
        lo, hi = depth.amin(dim=(1, 2, 3), keepdim=True), depth.amax(dim=(1, 2, 3), keepdim=True)
    else:
        lo, hi = torch.tensor(depth_range[0]), torch.tensor(depth_range[1])
    normalized = (1 - (depth - lo) / (hi - lo).clamp(min=1e-8)).clamp(0, 1)
    colors = torch.from_numpy(
        matplotlib.colormaps["viridis"](normalized[:, 0].cpu().numpy())[..., :3]).float()
    colors = colors.permute(0, 3, 1, 2)                                     # (B, 3, h, w)
    return colors if size is None else F.interpolate(colors, size=(size, size), mode="nearest")


def depth_images(depth: torch.Tensor | None, n: int, size: int,
                 depth_range=None) -> torch.Tensor:
    """Depth maps (n, 1, h, w) as viridis images (n, 3, size, size); plain grey for a model without
    depth."""
    return (torch.full((n, 3, size, size), 0.5) if depth is None
            else colorize_depth(depth, size, depth_range))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, 3, H, W) to (B, 3, size, size), clamped to [0, 1] for display."""
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)
    return images.clamp(0, 1)


def save_preview(path: Path, test: Scene, rgb: torch.Tensor, depth: torch.Tensor | None,
                 views: int = 4) -> None:
    """PNG with one row per held-out view: target | prediction | depth (if the model has one)."""
    size = test.images.shape[-1]
    depth_column = [] if depth is None else [colorize_depth(depth[:views], size)]
    # (views, 3, H, 2W or 3W)
    rows = torch.cat([test.images[:views], rgb[:views].clamp(0, 1), *depth_column], dim=3)
    iio.imwrite(path, np.concatenate(to_uint8(rows)))                # rows stacked vertically
