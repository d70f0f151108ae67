"""DeepVoxels (Sitzmann et al., CVPR 2019) in one readable file.

A scene is stored as a persistent 3D grid of learned feature vectors. Training sees posed 2D
images only: a source image is encoded to 2D features, lifted into the grid along camera rays
and fused in by a GRU whose hidden state *is* the grid; the grid is inpainted by a 3D U-Net,
resampled into a target camera's frustum (the canonical view volume), flattened by a learned
occlusion softmax over depth and turned into an image by a 2D rendering network.

The file follows the paper's order (the folder scenes/ holds the data side and the runs):
  1. Cameras                 5. 3D inpainting                          9. The whole model
  2. Feature extraction      6. Projection to the canonical view volume
  3. Lifting                 7. Occlusion (visibility softmax, depth map)
  4. GRU integration         8. Rendering network
  with the model's sizes (Config) and a building block, the U-Net, between 1 and 2. Two pieces are
  not the paper, only speed on a CPU: FastConv3d (beside the U-Net that uses it) and, at the end,
  mixed precision.

Camera convention (stated once, used everywhere)
  * Poses are 4x4 camera-to-world matrices in the OpenCV convention: camera x points right,
    y down, z forward (into the scene). `opengl_to_opencv` converts NeRF/Blender poses.
  * Intrinsics are focal lengths fx, fy (pixels; `focal` and `focal_y`, where focal_y 0 means
    fy = fx) and a principal point (cx, cy). Images are square (other shapes are centre-cropped).
  * Pixel (row i, column j) has its centre at u = j + 0.5, v = i + 0.5; the image covers
    [0, W] x [0, H]. A camera-space point (x, y, z) lands at u = fx x / z + cx, v = fy y / z + cy.
    With this convention, resizing an image by s scales fx, fy, cx and cy by exactly s.
  * The voxel grid is an axis-aligned cube of side `grid_scale` world units centred at
    `grid_center`, with N voxels per side. It is stored as (C, D, H, W) = (C, z, y, x), the
    layout `torch.nn.functional.grid_sample` expects; sampling coordinates are (x, y, z).
    Where it goes is the scene's business: `scenes/grid.py`.

Shape letters: B batch, C feature channels, N voxels per grid side, D depth planes of the view
volume, h x w the 2D feature maps, H x W the images.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class DataError(Exception):
    """Bad input, with a message that names the file and the problem."""


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 1. Cameras (paper Sec. 3, "projection" and "lifting" both use the pinhole model)
#    x_cam = R^T (x_world - t) for a camera-to-world pose [R | t]; u = fx x/z + cx, v = fy y/z + cy
# ─────────────────────────────────────────────────────────────────────────────────────────────

def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float,
                      scale: float = 1.0) -> torch.Tensor:
    """3x3 pinhole matrix K, optionally for an image resized by `scale`."""
    return torch.tensor([[fx * scale, 0.0, cx * scale],
                         [0.0, fy * scale, cy * scale],
                         [0.0, 0.0, 1.0]])


def world_to_camera(points: torch.Tensor, cam2world: torch.Tensor) -> torch.Tensor:
    """World points (B, ..., 3) into camera coordinates of poses (B, 4, 4)."""
    R, t = cam2world[:, :3, :3], cam2world[:, :3, 3]
    flat = points.reshape(points.shape[0], -1, 3)                       # (B, P, 3)
    cam = (flat - t[:, None, :]) @ R                                    # R^T (x - t), row vectors
    return cam.reshape(points.shape)


def camera_to_pixel(points_cam: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera points (..., 3) to pixel coordinates (..., 2) = (u, v) and depth z (...)."""
    z = points_cam[..., 2]
    xy = points_cam[..., :2] / z.clamp(min=1e-8)[..., None]
    return xy * K.diagonal()[:2] + K[:2, 2], z                  # u = fx x/z + cx, v = fy y/z + cy


def pixel_to_ray(uv: torch.Tensor, K: torch.Tensor,
                 cam2world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels (P, 2) to world rays of poses (B, 4, 4): origins (B, 1, 3), directions (B, P, 3).

    Directions are scaled so that z_cam = 1: the point at depth z is origin + z * direction.
    """
    xy = (uv - K[:2, 2]) / K.diagonal()[:2]                             # (P, 2): x/z, y/z
    dirs_cam = torch.cat([xy, torch.ones_like(xy[:, :1])], dim=1)      # (P, 3)
    return cam2world[:, None, :3, 3], dirs_cam @ cam2world[:, :3, :3].transpose(1, 2)


def pixel_centers(h: int, w: int) -> torch.Tensor:
    """(h, w, 2) pixel-centre coordinates (u, v) = (j + 0.5, i + 0.5)."""
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return torch.stack([u, v], dim=-1)


def opengl_to_opencv(cam2world: torch.Tensor) -> torch.Tensor:
    """NeRF/Blender (x right, y up, z backward) camera-to-world poses to OpenCV ones."""
    return cam2world @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=cam2world.dtype))


def voxel_centers(cfg: Config) -> torch.Tensor:
    """World positions (N, N, N, 3) of the voxel centres, indexed [z, y, x], stored as (x, y, z).

    Voxel i sits at -L/2 + (i + 0.5) L / N from the centre: exactly where grid_sample with
    align_corners=False reads it.
    """
    n, L = cfg.grid_size, cfg.grid_scale
    ticks = -L / 2 + (torch.arange(n) + 0.5) * L / n
    z, y, x = torch.meshgrid(ticks, ticks, ticks, indexing="ij")
    return torch.stack([x, y, z], dim=-1) + torch.tensor(cfg.grid_center)


def world_to_grid_coords(points: torch.Tensor, cfg: Config) -> torch.Tensor:
    """World points (..., 3) to grid_sample's normalised coordinates: the grid spans [-1, 1]."""
    return (points - torch.tensor(cfg.grid_center, device=points.device)) * (2.0 / cfg.grid_scale)


def view_depth_range(cam2world: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Near and far depth (B,) per camera so that the depth planes cover the grid's bounding sphere.

    The planes lie at constant camera z, so the range is the camera z of the centre,
    (c - o) · axis, minus and plus the sphere's radius (not the distance to the centre: off-axis,
    that cuts the grid).
    A camera that faces away from the grid gets a short range in front of its near plane.
    """
    radius = cfg.grid_scale * math.sqrt(3) / 2
    center = torch.tensor(cfg.grid_center, device=cam2world.device)
    z_center = ((center - cam2world[:, :3, 3]) * cam2world[:, :3, 2]).sum(-1)    # (B,)
    near = ((z_center - radius).clamp(min=0.05 * radius) if cfg.near <= 0
            else torch.full_like(z_center, cfg.near))
    return near, torch.maximum(z_center + radius, near + 0.1 * radius)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# The model's sizes, and the scene's camera and grid: one Config, saved in every checkpoint
# ─────────────────────────────────────────────────────────────────────────────────────────────

@dataclass
class Config:
    """Model sizes and the scene's camera and grid; saved in every checkpoint (what each is for:
    the help texts of train.py's flags, settings.py)."""

    img_size: int = 64          # H = W of the images the model renders
    feat_size: int = 32         # h = w of the 2D feature maps used for lifting and projection
    grid_size: int = 16         # N voxels per grid side (the authors: 32)
    channels: int = 16          # C features per voxel (the authors: 64)
    depth_planes: int = 32      # D depth planes of the canonical view volume (the authors: 2N)
    unet_width: int = 32        # base width of the 2D U-Nets (feature extraction, rendering)
    occlusion_width: int = 4    # base width of the occlusion network's 3D U-Net
    occlusion_size: int = 32    # h = w at most of the volume the occlusion U-Net sees (below)
    occlusion: str = "softmax"  # the paper's visibility softmax, or "naive": its Fig. 5 ablation
    gru_dropout: float = 0.2    # channel dropout on the GRU proposal's two terms (the authors: 0.2)
    # The scene: where the grid sits and the camera at img_size (filled from the data).
    grid_center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    grid_scale: float = 1.0
    near: float = 0.0     # near plane of the view volume; 0 means "from the grid's bounding sphere"
    focal: float = 64.0   # fx in pixels
    focal_y: float = 0.0  # fy in pixels; 0 means fy = fx
    cx: float = 32.0
    cy: float = 32.0

    def __post_init__(self):
        # A U-Net of L levels halves its input L times and doubles it back, so each size must
        # divide by 2^L; at batch 1 (the fused grid, one source view) batch norm needs more than
        # one value per channel at the bottom. Levels: 3 on feat_size (the encoder's and the
        # renderer's 2D U-Nets), 2 on grid_size (inpainting), 2 on D and occlusion_size (occlusion).
        ratio = self.img_size // self.feat_size if self.feat_size > 0 else 0
        problems = [
            (ratio < 1 or ratio * self.feat_size != self.img_size or ratio & (ratio - 1),
             f"img_size / feat_size ({self.img_size} / {self.feat_size}) must be 1, 2, 4, 8...: "
             "the encoder halves the image down to feat_size"),
            (self.feat_size % 8 or self.feat_size < 16,
             f"feat_size ({self.feat_size}) must be a multiple of 8 and at least 16: "
             "the 2D U-Nets halve it 3 times down to at least 2x2"),
            (self.grid_size % 4 or self.grid_size < 8,
             f"grid_size ({self.grid_size}) must be a multiple of 4 and at least 8: "
             "the inpainting U-Net halves it twice down to at least 2^3"),
            (self.depth_planes % 4 or self.depth_planes < 4,
             f"depth_planes ({self.depth_planes}) must be a multiple of 4: "
             "the occlusion U-Net halves it twice"),
            (self.occlusion_size % 4 or self.occlusion_size < 8,
             f"occlusion_size ({self.occlusion_size}) must be a multiple of 4 and at least 8: "
             "the occlusion U-Net halves it twice down to at least 2x2"),
            (min(self.channels, self.unet_width, self.occlusion_width) < 1,
             f"channels, unet_width and occlusion_width ({self.channels}, {self.unet_width}, "
             f"{self.occlusion_width}) must be at least 1"),
            (not 0 <= self.gru_dropout < 1,
             f"gru_dropout ({self.gru_dropout}) must be at least 0 and below 1"),
        ]
        if any(bad for bad, _ in problems):
            raise DataError("sizes: " + "; ".join(message for bad, message in problems if bad))

    def intrinsics(self, size: int) -> torch.Tensor:
        """K of the camera for images (or feature maps) of side `size`: resizing by s scales fx,
        fy, cx and cy by exactly s (the pixel convention above)."""
        fy = self.focal_y or self.focal
        return intrinsics_matrix(self.focal, fy, self.cx, self.cy, size / self.img_size)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# Building block: a U-Net in 2D or 3D (the authors use U-Nets for all four networks), and the
# faster batch-1 3D convolution it uses on a CPU (not the paper)
# ─────────────────────────────────────────────────────────────────────────────────────────────

class FastConv3d(nn.Conv3d):
    """nn.Conv3d that runs a batch of one as a batch of two depth halves on a CPU in fp32: same
    result, faster. PyTorch's CPU convolution hands fp32 work to oneDNN only when the batch is > 1
    (or the kernel is larger than 3, or N·C·D·H > 20480); a 3x3x3 convolution of one grid takes its
    slow im2col path (aten::slow_conv3d) instead. Split along depth, with the one plane of overlap
    each half needs for its 3x3x3 window, it is a batch of two and goes to oneDNN.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        D = x.shape[2]
        if (x.shape[0] > 1 or x.device.type != "cpu" or x.dtype != torch.float32
                or torch.is_autocast_enabled("cpu") or self.kernel_size != (3, 3, 3)
                or self.stride != (1, 1, 1) or self.padding != (1, 1, 1) or D % 2):
            return super().forward(x)
        padded = F.pad(x, (0, 0, 0, 0, 1, 1))       # (1, C, D+2, H, W): depth padded by hand
        # (2, C, D/2+2, H, W), overlapping by 2 planes
        halves = torch.cat([padded[:, :, :D // 2 + 2], padded[:, :, D // 2:]])
        out = F.conv3d(halves, self.weight, self.bias, padding=(0, 1, 1))       # (2, C', D/2, H, W)
        return torch.cat([out[:1], out[1:]], dim=2)                               # (1, C', D, H, W)


def conv_block(dims: int, c_in: int, c_out: int, stride: int = 1,
               transpose: bool = False) -> nn.Sequential:
    """Conv (3x3, or 4x4 when it changes the resolution) -> BatchNorm -> LeakyReLU(0.2)."""
    # FastConv3d is nn.Conv3d, only faster on a CPU (just above)
    Conv = {(2, False): nn.Conv2d, (3, False): FastConv3d,
            (2, True): nn.ConvTranspose2d, (3, True): nn.ConvTranspose3d}[dims, transpose]
    Norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    kernel = 4 if stride == 2 else 3
    return nn.Sequential(Conv(c_in, c_out, kernel, stride=stride, padding=1, bias=False),
                         Norm(c_out), nn.LeakyReLU(0.2))


class UNet(nn.Module):
    """U-Net with `levels` stride-2 down/up steps and skip connections; output has the input's
    size."""

    def __init__(self, dims: int, c_in: int, c_out: int, width: int, levels: int):
        super().__init__()
        widths = [width * 2 ** i for i in range(levels + 1)]
        self.inc = conv_block(dims, c_in, width)
        self.down = nn.ModuleList(conv_block(dims, a, b, stride=2)
                                  for a, b in zip(widths, widths[1:]))
        self.up = nn.ModuleList(conv_block(dims, b, a, stride=2, transpose=True)
                                for a, b in zip(widths, widths[1:]))
        self.merge = nn.ModuleList(conv_block(dims, 2 * a, a) for a in widths[:-1])
        self.out = (nn.Conv2d if dims == 2 else nn.Conv3d)(width, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge)):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.out(x)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 2. Feature extraction (paper Sec. 3.1): strided convs down to h x w, then a 2D U-Net
# ─────────────────────────────────────────────────────────────────────────────────────────────

class FeatureExtractor(nn.Module):
    """Source image (B, 3, H, W) -> feature map (B, C, h, w)."""

    def __init__(self, cfg: Config):
        super().__init__()
        steps = int(math.log2(cfg.img_size // cfg.feat_size))
        widths = [3] + [cfg.unet_width] * steps
        self.downsample = nn.Sequential(*(conv_block(2, a, b, stride=2)
                                          for a, b in zip(widths, widths[1:])))
        self.unet = UNet(2, widths[-1], cfg.channels, cfg.unet_width, levels=3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.unet(self.downsample(image))                       # (B, C, h, w)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 3. Lifting 2D features to 3D (paper Sec. 3.1): every voxel centre is projected into the source
#    feature map and sampled bilinearly, so every voxel along a ray receives the same feature.
# ─────────────────────────────────────────────────────────────────────────────────────────────

def lift(features: torch.Tensor, cam2world: torch.Tensor,
         cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Lift feature maps (B, C, h, w) seen from poses (B, 4, 4) into the grid.

    Returns the lifted volume (B, C, N, N, N) and the validity mask (B, 1, N, N, N): 1 where the
    voxel centre lies in front of the camera and inside the image, 0 (and a zero feature) elsewhere.
    "Inside" is u in [0, w], v in [0, h]; between the outermost pixel centres and the image edge
    (the outer half-pixel ring) border padding repeats the edge pixel, so every valid voxel gets a
    full-strength feature (zero padding would fade it to 25-50% there).
    """
    B, _, h, w = features.shape
    centers = voxel_centers(cfg).to(features.device).expand(B, -1, -1, -1, -1)   # (B, N, N, N, 3)
    K_feat = cfg.intrinsics(w).to(features.device)                # the camera at the maps' size
    # (B, N, N, N, 2), (B, N, N, N)
    uv, z = camera_to_pixel(world_to_camera(centers, cam2world), K_feat)
    inside = ((z > 1e-6) & (uv[..., 0] >= 0) & (uv[..., 0] <= w)
              & (uv[..., 1] >= 0) & (uv[..., 1] <= h))
    sample_at = uv / torch.tensor([w, h], device=uv.device) * 2 - 1               # pixel -> [-1, 1]
    n = cfg.grid_size
    lifted = F.grid_sample(features, sample_at.reshape(B, n, n * n, 2), mode="bilinear",
                           padding_mode="border", align_corners=False)             # (B, C, N, N*N)
    mask = inside[:, None].to(features.dtype)                                     # (B, 1, N, N, N)
    return lifted.reshape(B, -1, n, n, n) * mask, mask


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 4. Integration into the persistent grid (paper Sec. 3.1, Eq. 1-4): a 3D convolutional GRU
#    whose hidden state H is the DeepVoxels grid and whose input X is the lifted volume.
# ─────────────────────────────────────────────────────────────────────────────────────────────

def normalized_coordinates(n: int) -> torch.Tensor:
    """(1, 3, N, N, N) voxel-centre coordinates in (-1, 1) as (x, y, z): the authors' extra input"""
    ticks = (torch.arange(n) + 0.5) * 2 / n - 1
    z, y, x = torch.meshgrid(ticks, ticks, ticks, indexing="ij")
    return torch.stack([x, y, z])[None]


class IntegrationGRU(nn.Module):
    """3D convolutional GRU with per-voxel (single-channel) update and reset gates."""

    def __init__(self, cfg: Config):
        super().__init__()
        C = cfg.channels

        def conv(c_out: int, bias: bool) -> FastConv3d:
            return FastConv3d(C + 3, c_out, 3, padding=1, bias=bias)

        # Convolutions that read the same input are merged (one larger convolution is faster than
        # several small ones) and split back into the paper's terms in forward.
        self.W_zrs = conv(1 + 1 + C, True)    # W_z, W_r, W_s (and b_z, b_r, b_s): they all read X
        self.U_zr = conv(1 + 1, False)        # U_z, U_r: both read H
        self.U_s = conv(C, False)             # reads R∘H, and the coordinates (not gated)
        # dropout, as the authors: whole channels of each of S's two terms (training only)
        self.dropout = nn.Dropout3d(cfg.gru_dropout)
        self.register_buffer("coords", normalized_coordinates(cfg.grid_size), persistent=False)

    def forward(self, X: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lifted volume X and old grid H, both (1, C, N, N, N) -> new grid H' and update gate Z
        (1, 1, N, N, N)."""
        C = H.shape[1]
        xc = torch.cat([X, self.coords], dim=1)                 # (1, C+3, N, N, N)
        hc = torch.cat([H, self.coords], dim=1)
        # W_z X + b_z, W_r X + b_r, W_s X + b_s
        Wz_x, Wr_x, Ws_x = self.W_zrs(xc).split([1, 1, C], dim=1)
        Uz_h, Ur_h = self.U_zr(hc).split([1, 1], dim=1)         # U_z H, U_r H
        Z = torch.sigmoid(Wz_x + Uz_h)                          # Z = σ(W_z X + U_z H + b_z)
        R = torch.sigmoid(Wr_x + Ur_h)                          # R = σ(W_r X + U_r H + b_r)
        # U_s (R∘H)
        Us_rh = self.U_s(torch.cat([R * H, self.coords], dim=1))
        S = F.relu(self.dropout(Ws_x) + self.dropout(Us_rh))    # S = ReLU(W_s X + U_s (R∘H) + b_s)
        return (1 - Z) * H + Z * S, Z                           # H' = (1 − Z)∘H + Z∘S


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 5. 3D inpainting (paper Sec. 3.1): a 3D U-Net over the fused grid completes unseen parts.
#    Its output is used for rendering only; the persistent grid keeps the GRU's state.
# ─────────────────────────────────────────────────────────────────────────────────────────────

def make_inpainting_net(cfg: Config) -> UNet:
    """Grid (B, C, N, N, N) -> inpainted grid of the same shape."""
    return UNet(3, cfg.channels, cfg.channels, cfg.channels, levels=2)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 6. Projection to the canonical view volume (paper Sec. 3.2): the target camera's frustum,
#    one sample per feature pixel and depth plane, read trilinearly from the grid (grid_sample's
#    "bilinear" on a 5D input).
#    Point of pixel (u, v) at depth z:  x_world = R (z (u - cx)/fx, z (v - cy)/fy, z) + t
# ─────────────────────────────────────────────────────────────────────────────────────────────

def view_volume_points(cam2world: torch.Tensor,
                       cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """World points (B, D, h, w, 3) of the view volume and the plane depths (B, D)."""
    B, D, h = cam2world.shape[0], cfg.depth_planes, cfg.feat_size
    near, far = view_depth_range(cam2world, cfg)
    depths = (near[:, None]                                               # (B, D)
              + (far - near)[:, None] * torch.linspace(0, 1, D, device=cam2world.device))
    pixels = pixel_centers(h, h).to(cam2world.device).reshape(-1, 2)      # (h*w, 2)
    K_feat = cfg.intrinsics(h).to(cam2world.device)
    origins, dirs = pixel_to_ray(pixels, K_feat, cam2world)               # (B, 1, 3), (B, h*w, 3)
    points = origins[:, None] + depths[:, :, None, None] * dirs[:, None]  # (B, D, h*w, 3)
    return points.reshape(B, D, h, h, 3), depths


def project(grid: torch.Tensor, cam2world: torch.Tensor,
            cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample the grid (B, C, N, N, N) into view volumes (B, C, D, h, w); samples outside
    get 0."""
    points, depths = view_volume_points(cam2world, cfg)
    coords = world_to_grid_coords(points, cfg)                # (B, D, h, w, 3) as (x, y, z)
    volume = F.grid_sample(grid, coords, mode="bilinear", padding_mode="zeros", align_corners=False)
    return volume, depths                                     # (B, C, D, h, w), (B, D)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 7. Occlusion (paper Sec. 3.3): a 3D network scores every depth sample of every pixel; a softmax
#    over depth turns the scores into visibility weights w_d, and
#       features(u, v) = Σ_d w_d(u, v) · volume_d(u, v),    depth(u, v) = Σ_d w_d(u, v) · z_d
# ─────────────────────────────────────────────────────────────────────────────────────────────

class OcclusionNet(nn.Module):
    """View volume (B, C, D, h, w) -> flat features (B, C, h, w), weights (B, D, h, w), depth
    (B, 1, h, w)."""

    def __init__(self, cfg: Config):
        super().__init__()
        # Weights and input channels-last (channels innermost in memory): oneDNN's convolutions
        # over the view volume, the largest of the model, run faster so on a CPU (measured
        # forward+backward).
        self.unet = (UNet(3, cfg.channels + 1, 1, cfg.occlusion_width, levels=2)
                     .to(memory_format=torch.channels_last_3d))
        self.size = cfg.occlusion_size

    def forward(self, volume: torch.Tensor,
                depths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, _, D, h, w = volume.shape
        depth_channel = (torch.linspace(-1, 1, D, device=volume.device)
                         .view(1, 1, D, 1, 1).expand(B, 1, D, h, w))
        with_depth = torch.cat([volume, depth_channel.to(volume.dtype)], dim=1)  # (B, C+1, D, h, w)
        # A volume wider than occlusion_size (a small object's feature maps, scenes/grid.py) is
        # averaged down to it in x, y (adaptive average pooling) for the U-Net, and the scores are
        # interpolated back (trilinear, align_corners=False): the U-Net's cost would grow with
        # h x w, and the weighted sums below still read every feature pixel.
        seen_h, seen_w = min(h, self.size), min(w, self.size)
        shrink = (seen_h, seen_w) != (h, w)
        seen = (F.adaptive_avg_pool3d(with_depth, (D, seen_h, seen_w)) if shrink
                else with_depth)                                  # (B, C+1, D, seen_h, seen_w)
        logits = self.unet(seen.contiguous(memory_format=torch.channels_last_3d))
        if shrink:                                  # (B, 1, D, seen_h, seen_w) -> (B, 1, D, h, w)
            logits = F.interpolate(logits, size=(D, h, w), mode="trilinear", align_corners=False)
        # visibility weights w_d, Σ_d w_d = 1
        weights = torch.softmax(logits[:, 0].float(), dim=1)                     # (B, D, h, w)
        features = (weights[:, None] * volume).sum(dim=2)                        # (B, C, h, w)
        depth = (weights * depths[:, :, None, None]).sum(dim=1, keepdim=True)    # (B, 1, h, w)
        return features, weights, depth


# The paper's ablation (Fig. 5): no visibility at all. The depth axis is flattened into channels
# and 2D convolutions learn to reduce it, so nothing stops them from mixing in what lies behind the
# first surface ("shine-through"), there are many more parameters, and no depth map falls out.

class NaiveOcclusion(nn.Module):
    """View volume (B, C, D, h, w) -> flat features (B, C, h, w), weights None, depth None."""

    def __init__(self, cfg: Config):
        super().__init__()
        C, D = cfg.channels, cfg.depth_planes
        # each layer halves: C*D ... C; the last is linear, like Σ_d w_d · volume_d
        widths = [C * D >> k for k in range(int(math.log2(D)))] + [C]
        self.reduce = nn.Sequential(*(conv_block(2, a, b)
                                      for a, b in zip(widths[:-2], widths[1:-1])),
                                    nn.Conv2d(widths[-2], C, 3, padding=1))

    def forward(self, volume: torch.Tensor,
                depths: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        B, C, D, h, w = volume.shape
        return self.reduce(volume.reshape(B, C * D, h, w)), None, None             # (B, C, h, w)


OCCLUSION_NETS = {"softmax": OcclusionNet, "naive": NaiveOcclusion}


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 8. Rendering (paper Sec. 3.4): a 2D U-Net at h x w, then transposed convs up to H x W.
#    The output is linear (clamped only for display): a saturating output stalls the L1 loss.
# ─────────────────────────────────────────────────────────────────────────────────────────────

class RenderingNet(nn.Module):
    """Flat features (B, C, h, w) -> image (B, 3, H, W), values near [0, 1]."""

    def __init__(self, cfg: Config):
        super().__init__()
        steps = int(math.log2(cfg.img_size // cfg.feat_size))
        width = cfg.unet_width
        self.unet = UNet(2, cfg.channels, width, width, levels=3)
        self.upsample = nn.Sequential(*(conv_block(2, width, width, stride=2, transpose=True)
                                        for _ in range(steps)))
        self.to_rgb = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # (B, 3, H, W); 0.5 centres the start
        return self.to_rgb(self.upsample(self.unet(features))) + 0.5


# The adversarial term of the loss (paper Sec. 3.4: 200 · L1 + adversarial): a PatchGAN
# discriminator (Isola et al. 2017, 3 layers of 4x4 convs) scores every overlapping image patch as
# real or rendered. Non-saturating GAN losses, with σ the logistic function:
#    discriminator:  -log σ(D(real)) - log(1 - σ(D(fake)))      generator:  -log σ(D(fake))

class PatchDiscriminator(nn.Module):
    """Images (B, 3, H, W) -> realism logits (B, 1, H/8 - 2, W/8 - 2), one per 70x70-pixel patch."""

    def __init__(self, width: int, layers: int = 3):
        super().__init__()
        widths = [width * 2 ** i for i in range(layers + 1)]                  # w, 2w, 4w, 8w
        self.net = nn.Sequential(
            # no batch norm on the image
            nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            *(conv_block(2, a, b, stride=2) for a, b in zip(widths[:-2], widths[1:-1])),
            nn.Conv2d(widths[-2], widths[-1], 4, padding=1, bias=False),
            nn.BatchNorm2d(widths[-1]), nn.LeakyReLU(0.2),
            nn.Conv2d(widths[-1], 1, 4, padding=1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image - 0.5)                                # (B, 1, H/8 - 2, W/8 - 2)


def discriminator_loss(disc: PatchDiscriminator, real: torch.Tensor,
                       fake: torch.Tensor) -> torch.Tensor:
    """-log σ(D(real)) - log(1 - σ(D(fake))) for images (B, 3, H, W); fakes detached: the
    generator gets no gradient."""
    return F.softplus(-disc(real)).mean() + F.softplus(disc(fake.detach())).mean()


def generator_adversarial_loss(disc: PatchDiscriminator, fake: torch.Tensor) -> torch.Tensor:
    """-log σ(D(fake)) for rendered images (B, 3, H, W); the discriminator is frozen: it gets no
    gradient.

    Its batch norm is not frozen: in train mode it normalises with the fakes' own statistics, as in
    the discriminator's own step, and updates its running statistics, as pix2pix's generator step
    does. Those are read only in eval mode, which training never uses.
    """
    disc.requires_grad_(False)
    loss = F.softplus(-disc(fake)).mean()
    disc.requires_grad_(True)
    return loss


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 9. The whole model (paper Fig. 2). Training: lift the source view, fuse it into the grid, then
#    render the target views. Test time: grid -> inpainting -> projection -> occlusion -> rendering.
# ─────────────────────────────────────────────────────────────────────────────────────────────

class DeepVoxels(nn.Module):
    """The DeepVoxels generator with its persistent grid (a buffer: saved and moved with the
    model)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.encoder = FeatureExtractor(cfg)
        self.gru = IntegrationGRU(cfg)
        self.inpainting = make_inpainting_net(cfg)
        self.occlusion = OCCLUSION_NETS[cfg.occlusion](cfg)
        self.renderer = RenderingNet(cfg)
        n = cfg.grid_size
        self.register_buffer("grid", torch.zeros(1, cfg.channels, n, n, n))   # the DeepVoxels, H

    def fuse(self, source_image: torch.Tensor,
             source_pose: torch.Tensor) -> dict[str, torch.Tensor]:
        """Lift one source view (1, 3, H, W) with pose (1, 4, 4) and fuse it into the grid.

        The old grid enters detached, so gradients cover one step (as the authors did). The new
        grid, detached too, replaces the buffer by rebinding the name: copy_ into the old buffer
        would change a tensor the GRU saved for its backward pass (autograd would refuse it).
        """
        features = self.encoder(source_image)                              # (1, C, h, w)
        # (1, C, N, N, N), (1, 1, N, N, N)
        lifted, mask = lift(features, source_pose, self.cfg)
        new_grid, update_gate = self.gru(lifted, self.grid.detach())
        self.grid = new_grid.detach()
        return {"features": features, "lifted": lifted, "lift_mask": mask,
                "update_gate": update_gate, "grid": new_grid}

    def render_grid(self, grid: torch.Tensor, poses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Render poses (B, 4, 4) from a grid (1, C, N, N, N): inpainting, then render_inpainted."""
        return self.render_inpainted(self.inpainting(grid), poses)  # inpainted: (1, C, N, N, N)

    def render_inpainted(self, inpainted: torch.Tensor,
                         poses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Render poses (B, 4, 4) from an inpainted grid (1, C, N, N, N) (at test time it depends
        on no view: scenes/evaluation.render_views inpaints once). Returns every intermediate:
        rgb (B, 3, H, W), depth (B, 1, h, w), weights (B, D, h, w), view_volume (B, C, D, h, w),
        depths (B, D), flat_features (B, C, h, w), inpainted; depth and weights None for the naive
        occlusion."""
        # (B, C, D, h, w), (B, D)
        volume, depths = project(inpainted.expand(len(poses), -1, -1, -1, -1), poses, self.cfg)
        # (B, C, h, w), (B, D, h, w), (B, 1, h, w)
        flat, weights, depth = self.occlusion(volume, depths)
        rgb = self.renderer(flat)                                               # (B, 3, H, W)
        return {"rgb": rgb, "depth": depth, "weights": weights, "view_volume": volume,
                "depths": depths, "flat_features": flat, "inpainted": inpainted}

    def forward(self, source_image: torch.Tensor, source_pose: torch.Tensor,
                target_poses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training step's forward: fuse the source view, render the target poses (B, 4, 4)."""
        fused = self.fuse(source_image, source_pose)
        return {**fused, **self.render_grid(fused["grid"], target_poses)}

    def render(self, poses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Test time: render poses (B, 4, 4) from the persistent grid alone (no encoder, no GRU).
        Call model.eval() first (scenes/evaluation.render_views does): in train mode batch norm
        would use and update these poses' own statistics."""
        return self.render_grid(self.grid, poses)


def parameter_count(module: nn.Module) -> int:
    """The trainable numbers of a network (the grid is a buffer, not one of them)."""
    return sum(p.numel() for p in module.parameters())


# ─────────────────────────────────────────────────────────────────────────────────────────────
# Running fast on a CPU (not the paper): mixed precision, denormals (FastConv3d: by the U-Net)
# ─────────────────────────────────────────────────────────────────────────────────────────────

def resolve_precision(device: str, precision: str = "auto") -> str:
    """"bf16" or "fp32": auto means bf16 where it pays off (a GPU, or a CPU with bf16 units), fp32
    otherwise."""
    kind = torch.device(device).type
    if precision == "auto":
        return ("bf16" if kind == "cuda" or (kind == "cpu"
                                             and torch.ops.mkldnn._is_mkldnn_bf16_supported())
                else "fp32")
    return precision


def mixed_precision(device: str, precision: str = "auto") -> torch.autocast:
    """bf16 autocast where resolve_precision says so (`precision`: "auto", "bf16" or "fp32")."""
    enabled = resolve_precision(device, precision) == "bf16"
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                          enabled=enabled)


@contextlib.contextmanager
def flushed_denormals():
    """Inside, denormal floats are flushed to zero: a grid drifting into them would slow a CPU's
    steps down. The setting before is restored after (torch has no getter: when flushing, a
    denormal times 1 reads 0)."""
    before = (torch.tensor([1e-40]) * 1.0).item() == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
