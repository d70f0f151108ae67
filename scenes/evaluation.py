"""A trained model against the views: render them from the grid alone (`render_views`), score them
(`psnr`, `ssim`, `evaluate`), and the paper's nearest-view baseline on the same views.

SSIM as Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from deepvoxels import DeepVoxels, mixed_precision
from scenes.layouts import Scene
from scenes.views import view_neighbours


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, 3, H, W) images in [0, 1]:  -10 log10(MSE)."""
    mse = ((pred.clamp(0, 1) - target) ** 2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp(min=1e-10))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of (B, 3, H, W) images in [0, 1], averaged over channels and valid windows."""
    x, y = pred.clamp(0, 1).double(), target.double()
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)

    def blur(img: torch.Tensor) -> torch.Tensor:
        return F.conv2d(img, window, groups=3)                              # (B, 3, H-10, W-10)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    s = (((2 * mu_x * mu_y + c1) * (2 * cov + c2))
         / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return s.flatten(1).mean(1).float()


def nearest_view_baseline(train: Scene, poses: torch.Tensor) -> torch.Tensor:
    """The paper's nearest-neighbour baseline: for each pose (B, 4, 4) copy the training image
    (B, 3, H, W) whose viewing direction is closest."""
    closest = (poses[:, :3, 2] @ train.poses[:, :3, 2].T).argmax(dim=1)
    return train.images[closest]


def nearest_views(train: Scene, held_out: Scene | None) -> torch.Tensor:
    """The baseline's images (V, 3, H, W) for the views a run is scored on: for each held-out
    view the nearest training view; without held-out views, for each training view its nearest
    *other* view (itself would score ~100 dB)."""
    if held_out is None:
        return train.images[view_neighbours(train.poses)[:, 0]]
    return nearest_view_baseline(train, held_out.poses)


def baseline(train: Scene, held_out: Scene | None) -> tuple[Scene, str, str, float, str | None]:
    """The views a run is scored on (the held-out ones, else the training ones), their split, the
    nearest-view baseline's name and mean PSNR on them (nearest_views), and a line saying so when
    there are no held-out views (else None)."""
    scored = train if held_out is None else held_out
    score = psnr(nearest_views(train, held_out), scored.images).mean().item()
    if held_out is None:
        return (train, "train", "nearest-other-view baseline", score,
                "no test/ split: PSNR is measured on the training views; "
                "the baseline copies each one's nearest other view")
    return held_out, "test", "nearest-neighbour baseline", score, None


def render_views(model: DeepVoxels, poses: torch.Tensor, device: str, precision: str,
                 batch: int = 1) -> tuple[torch.Tensor, torch.Tensor | None, list[float]]:
    """Render poses (V, 4, 4) from the persistent grid alone, `batch` views at a time, in eval mode
    (the model's mode is restored after): rgb (V, 3, H, W), depth (V, 1, h, w) or None (the naive
    occlusion), and the seconds each view took (its batch's time over the batch's size)."""
    was_training = model.training
    model.eval()
    rgbs, depths, seconds = [], [], []
    with torch.no_grad(), mixed_precision(device, precision):
        inpainted = model.inpainting(model.grid)      # (1, C, N, N, N), once: it depends on no view
        for chunk in poses.split(batch):
            start = time.perf_counter()
            out = model.render_inpainted(inpainted, chunk.to(device))
            rgbs.append(out["rgb"].float().cpu())      # .cpu() waits for a GPU to finish
            seconds += [(time.perf_counter() - start) / len(chunk)] * len(chunk)
            depths.append(out["depth"])
    model.train(was_training)
    depth = None if depths[0] is None else torch.cat(depths).float().cpu()
    return torch.cat(rgbs), depth, seconds


def evaluate(model: DeepVoxels, scene: Scene, device: str,
             precision: str) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """Mean PSNR of a scene's views rendered from the grid alone (render_views, eight at a time),
    with the renders (V, 3, H, W) and depth maps (V, 1, h, w) or None."""
    rgb, depth, _ = render_views(model, scene.poses, device, precision, batch=8)
    return psnr(rgb, scene.images).mean().item(), rgb, depth
