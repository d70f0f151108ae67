"""DeepVoxels (Sitzmann et al., CVPR 2019) in one readable file.

A scene is stored as a persistent 3D grid of learned feature vectors. Training sees posed 2D
images only: a source image is encoded to 2D features, lifted into the grid along camera rays
and fused in by a GRU whose hidden state *is* the grid; the grid is inpainted by a 3D U-Net,
resampled into a target camera's frustum (the canonical view volume), flattened by a learned
occlusion softmax over depth and turned into an image by a 2D rendering network.

The file follows the paper's order:
  1. Cameras                 6. Projection to the canonical view volume
  2. Feature extraction      7. Occlusion (visibility softmax, depth map)
  3. Lifting                 8. Rendering network
  4. GRU integration         9. The whole model
  5. 3D inpainting          10. Data: loader and synthetic cube, 11. Metrics

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
    Where it goes, first source that says wins: the flags (--grid_center, --grid_scale), then
    the dataset's bbox.txt (NSVF: the grid encloses the box), then intrinsics.txt (its barycenter
    and scale lines, taken together and only when scale > 0: a barycenter `0 0 0` with a scale is
    the world origin), then an estimate from the cameras (`estimate_grid_placement`).

Shape letters: B batch, C feature channels, N voxels per grid side, D depth planes of the view
volume, h x w the 2D feature maps, H x W the images.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class DataError(Exception):
    """Bad input, with a message that names the file and the problem."""


@dataclass
class Config:
    """Model sizes and the scene's geometry; saved in every checkpoint."""

    img_size: int = field(default=64, metadata={"help": "H = W of the images the model renders"})
    feat_size: int = field(default=32, metadata={"help": "h = w of the 2D feature maps used for lifting and projection"})
    grid_size: int = field(default=16, metadata={"help": "N voxels per grid side (the authors: 32); the largest cost, lower it first"})
    channels: int = field(default=16, metadata={"help": "C features per voxel (the authors: 64)"})
    depth_planes: int = field(default=32, metadata={"help": "D depth planes of the canonical view volume (the authors: 2N)"})
    unet_width: int = field(default=32, metadata={"help": "base width of the 2D feature-extraction and rendering U-Nets"})
    occlusion_width: int = field(default=8, metadata={"help": "base width of the occlusion network's 3D U-Net"})
    occlusion: str = field(default="softmax", metadata={"help": "softmax: the paper's visibility softmax over depth; naive: its Fig. 5 ablation "
                                                        "(depth flattened into channels, reduced by 2D convs)", "choices": ("softmax", "naive")})
    gru_dropout: float = field(default=0.2, metadata={"help": "channel dropout on the two terms of the GRU proposal S, W_s X and U_s (R∘H) (the authors: 0.2)"})
    # The scene: where the grid sits and the camera intrinsics at img_size (filled from the data).
    grid_center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    grid_scale: float = 1.0
    near: float = 0.0  # near plane of the view volume; 0 means "from the grid's bounding sphere"
    focal: float = 64.0   # fx in pixels
    focal_y: float = 0.0  # fy in pixels; 0 means fy = fx
    cx: float = 32.0
    cy: float = 32.0

    def __post_init__(self):
        # A U-Net of L levels halves its input L times and doubles it back, so each size must divide by 2^L; at batch 1
        # (the fused grid, one source view) batch norm needs more than one value per channel at the bottom.
        # Levels: 3 on feat_size (the encoder's and the renderer's 2D U-Nets), 2 on grid_size (inpainting), 2 on D (occlusion).
        ratio = self.img_size // self.feat_size if self.feat_size > 0 else 0
        problems = [
            (ratio * self.feat_size != self.img_size or ratio & (ratio - 1),
             f"img_size / feat_size ({self.img_size} / {self.feat_size}) must be 1, 2, 4, 8...: the encoder halves the image down to feat_size"),
            (self.feat_size % 8 or self.feat_size < 16,
             f"feat_size ({self.feat_size}) must be a multiple of 8 and at least 16: the 2D U-Nets halve it 3 times down to at least 2x2"),
            (self.grid_size % 4 or self.grid_size < 8,
             f"grid_size ({self.grid_size}) must be a multiple of 4 and at least 8: the inpainting U-Net halves it twice down to at least 2^3"),
            (self.depth_planes % 4 or self.depth_planes < 4,
             f"depth_planes ({self.depth_planes}) must be a multiple of 4: the occlusion U-Net halves it twice"),
        ]
        if any(bad for bad, _ in problems):
            raise DataError("sizes: " + "; ".join(message for bad, message in problems if bad))


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 1. Cameras (paper Sec. 3, "projection" and "lifting" both use the pinhole model)
#    x_cam = R^T (x_world - t) for a camera-to-world pose [R | t];  u = fx x/z + cx,  v = fy y/z + cy
# ─────────────────────────────────────────────────────────────────────────────────────────────

def intrinsics_matrix(focal: float, cx: float, cy: float, scale: float = 1.0, focal_y: float = 0.0) -> torch.Tensor:
    """3x3 pinhole matrix K (fx = focal, fy = focal_y or focal), optionally for an image resized by `scale`."""
    return torch.tensor([[focal * scale, 0.0, cx * scale],
                         [0.0, (focal_y or focal) * scale, cy * scale],
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
    return xy * K.diagonal()[:2] + K[:2, 2], z                          # u = fx x/z + cx, v = fy y/z + cy


def pixel_to_ray(uv: torch.Tensor, K: torch.Tensor, cam2world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def orbit_poses(center: tuple[float, float, float], radius: float, n: int, elevation: float = 20.0, azimuth0: float = 0.0) -> torch.Tensor:
    """(n, 4, 4) cameras evenly spaced on a circle at `elevation` degrees around `center`, world z up,
    the first at azimuth `azimuth0` degrees (from +x towards +y), all looking at the centre."""
    azimuth = np.radians(azimuth0) + np.linspace(0, 2 * np.pi, n, endpoint=False)
    el = np.radians(elevation)
    eyes = np.stack([np.cos(el) * np.cos(azimuth), np.cos(el) * np.sin(azimuth), np.full(n, np.sin(el))], 1)
    return torch.from_numpy(np.stack([look_at(np.asarray(center) + radius * e, np.asarray(center)) for e in eyes])).float()


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

    The planes lie at constant camera z, so the range is the camera z of the centre, (c - o) · axis,
    minus and plus the sphere's radius (not the distance to the centre: off-axis, that cuts the grid).
    A camera that faces away from the grid gets a short range in front of its near plane.
    """
    radius = cfg.grid_scale * math.sqrt(3) / 2
    center = torch.tensor(cfg.grid_center, device=cam2world.device)
    z_center = ((center - cam2world[:, :3, 3]) * cam2world[:, :3, 2]).sum(-1)    # (B,)
    near = (z_center - radius).clamp(min=0.05 * radius) if cfg.near <= 0 else torch.full_like(z_center, cfg.near)
    return near, torch.maximum(z_center + radius, near + 0.1 * radius)


def resolve_precision(device: str, precision: str = "auto") -> str:
    """"bf16" or "fp32": auto means bf16 where it pays off (a GPU, or a CPU with bf16 units), fp32 otherwise."""
    kind = torch.device(device).type
    if precision == "auto":
        return "bf16" if kind == "cuda" or (kind == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()) else "fp32"
    return precision


def mixed_precision(device: str, precision: str = "auto") -> torch.autocast:
    """bf16 autocast where it pays off (a GPU, or a CPU with bf16 units: 2x faster steps here),
    plain fp32 otherwise. `precision` is "auto", "bf16" or "fp32"."""
    enabled = resolve_precision(device, precision) == "bf16"
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# Building block: a U-Net in 2D or 3D (the authors use U-Nets for all four networks)
# ─────────────────────────────────────────────────────────────────────────────────────────────

class FastConv3d(nn.Conv3d):
    """nn.Conv3d that runs a batch of one as a batch of two depth halves on a CPU in fp32: same result, 3-8x faster.

    PyTorch's CPU convolution hands fp32 work to oneDNN only when the batch is > 1 (or the kernel is
    larger than 3, or N·C·D·H > 20480); a 3x3x3 convolution of one grid takes its slow im2col path
    (aten::slow_conv3d) instead. Split along depth, with the one plane of overlap each half needs for
    its 3x3x3 window, the same convolution is a batch of two and goes to oneDNN.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        D = x.shape[2]
        if (x.shape[0] > 1 or x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
                or self.kernel_size != (3, 3, 3) or self.stride != (1, 1, 1) or self.padding != (1, 1, 1) or D % 2):
            return super().forward(x)
        padded = F.pad(x, (0, 0, 0, 0, 1, 1))                                    # (1, C, D+2, H, W): depth padded by hand
        halves = torch.cat([padded[:, :, :D // 2 + 2], padded[:, :, D // 2:]])   # (2, C, D/2+2, H, W), overlapping by 2 planes
        out = F.conv3d(halves, self.weight, self.bias, padding=(0, 1, 1))       # (2, C', D/2, H, W)
        return torch.cat([out[:1], out[1:]], dim=2)                               # (1, C', D, H, W)


def conv_block(dims: int, c_in: int, c_out: int, stride: int = 1, transpose: bool = False) -> nn.Sequential:
    """Conv (3x3, or 4x4 when it changes the resolution) -> BatchNorm -> LeakyReLU(0.2)."""
    Conv = {(2, False): nn.Conv2d, (3, False): FastConv3d, (2, True): nn.ConvTranspose2d, (3, True): nn.ConvTranspose3d}[dims, transpose]
    Norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    kernel = 4 if stride == 2 else 3
    return nn.Sequential(Conv(c_in, c_out, kernel, stride=stride, padding=1, bias=False), Norm(c_out), nn.LeakyReLU(0.2))


class UNet(nn.Module):
    """U-Net with `levels` stride-2 down/up steps and skip connections; output has the input's size."""

    def __init__(self, dims: int, c_in: int, c_out: int, width: int, levels: int):
        super().__init__()
        widths = [width * 2 ** i for i in range(levels + 1)]
        self.inc = conv_block(dims, c_in, width)
        self.down = nn.ModuleList(conv_block(dims, a, b, stride=2) for a, b in zip(widths, widths[1:]))
        self.up = nn.ModuleList(conv_block(dims, b, a, stride=2, transpose=True) for a, b in zip(widths, widths[1:]))
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
        self.downsample = nn.Sequential(*(conv_block(2, a, b, stride=2) for a, b in zip(widths, widths[1:])))
        self.unet = UNet(2, widths[-1], cfg.channels, cfg.unet_width, levels=3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.unet(self.downsample(image))                       # (B, C, h, w)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 3. Lifting 2D features to 3D (paper Sec. 3.1): every voxel centre is projected into the source
#    feature map and sampled bilinearly, so every voxel along a ray receives the same feature.
# ─────────────────────────────────────────────────────────────────────────────────────────────

def lift(features: torch.Tensor, cam2world: torch.Tensor, K_feat: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Lift feature maps (B, C, h, w) seen from poses (B, 4, 4) into the grid.

    Returns the lifted volume (B, C, N, N, N) and the validity mask (B, 1, N, N, N): 1 where the
    voxel centre lies in front of the camera and inside the image, 0 (and a zero feature) elsewhere.
    "Inside" is u in [0, w], v in [0, h]; between the outermost pixel centres and the image edge
    (the outer half-pixel ring) border padding repeats the edge pixel, so every valid voxel gets a
    full-strength feature (zero padding would fade it to 25-50% there).
    """
    B, _, h, w = features.shape
    centers = voxel_centers(cfg).to(features.device).expand(B, -1, -1, -1, -1)   # (B, N, N, N, 3)
    uv, z = camera_to_pixel(world_to_camera(centers, cam2world), K_feat)          # (B, N, N, N, 2), (B, N, N, N)
    inside = (z > 1e-6) & (uv[..., 0] >= 0) & (uv[..., 0] <= w) & (uv[..., 1] >= 0) & (uv[..., 1] <= h)
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
    """(1, 3, N, N, N) voxel-centre coordinates in (-1, 1), channels (x, y, z), as the authors concatenate."""
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
        self.W_zrs = conv(1 + 1 + C, True)                                # W_z, W_r, W_s (and b_z, b_r, b_s): they all read X
        self.U_zr = conv(1 + 1, False)                                    # U_z, U_r: both read H
        self.U_s = conv(C, False)                                         # reads R∘H
        self.dropout = nn.Dropout3d(cfg.gru_dropout)                     # as the authors: whole channels of a term
        self.register_buffer("coords", normalized_coordinates(cfg.grid_size), persistent=False)

    def forward(self, X: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lifted volume X and old grid H, both (1, C, N, N, N) -> new grid H' and update gate Z (1, 1, N, N, N)."""
        C = H.shape[1]
        xc = torch.cat([X, self.coords], dim=1)                           # (1, C+3, N, N, N)
        hc = torch.cat([H, self.coords], dim=1)
        Wz_x, Wr_x, Ws_x = self.W_zrs(xc).split([1, 1, C], dim=1)         # W_z X + b_z, W_r X + b_r, W_s X + b_s
        Uz_h, Ur_h = self.U_zr(hc).split([1, 1], dim=1)                   # U_z H, U_r H
        Z = torch.sigmoid(Wz_x + Uz_h)                                    # Z = σ(W_z X + U_z H + b_z)
        R = torch.sigmoid(Wr_x + Ur_h)                                    # R = σ(W_r X + U_r H + b_r)
        Us_rh = self.U_s(torch.cat([R * H, self.coords], dim=1))          # U_s (R∘H)
        S = F.relu(self.dropout(Ws_x) + self.dropout(Us_rh))              # S = ReLU(W_s X + U_s (R∘H) + b_s)
        return (1 - Z) * H + Z * S, Z                                     # H' = (1 − Z)∘H + Z∘S


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 5. 3D inpainting (paper Sec. 3.1): a 3D U-Net over the fused grid completes unseen parts.
#    Its output is used for rendering only; the persistent grid keeps the GRU's state.
# ─────────────────────────────────────────────────────────────────────────────────────────────

def make_inpainting_net(cfg: Config) -> UNet:
    """Grid (B, C, N, N, N) -> inpainted grid of the same shape."""
    return UNet(3, cfg.channels, cfg.channels, cfg.channels, levels=2)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 6. Projection to the canonical view volume (paper Sec. 3.2): the target camera's frustum,
#    one sample per feature pixel and depth plane, read trilinearly from the grid.
#    Point of pixel (u, v) at depth z:  x_world = R (z (u - cx)/fx, z (v - cy)/fy, z) + t
# ─────────────────────────────────────────────────────────────────────────────────────────────

def view_volume_points(cam2world: torch.Tensor, K_feat: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """World points (B, D, h, w, 3) of the view volume and the plane depths (B, D)."""
    B, D, h = cam2world.shape[0], cfg.depth_planes, cfg.feat_size
    near, far = view_depth_range(cam2world, cfg)
    depths = near[:, None] + (far - near)[:, None] * torch.linspace(0, 1, D, device=cam2world.device)  # (B, D)
    pixels = pixel_centers(h, h).to(cam2world.device).reshape(-1, 2)                # (h*w, 2)
    origins, dirs = pixel_to_ray(pixels, K_feat, cam2world)                         # (B, 1, 3), (B, h*w, 3)
    points = origins[:, None] + depths[:, :, None, None] * dirs[:, None]            # (B, D, h*w, 3)
    return points.reshape(B, D, h, h, 3), depths


def project(grid: torch.Tensor, cam2world: torch.Tensor, K_feat: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample the grid (B, C, N, N, N) into view volumes (B, C, D, h, w); samples outside get 0."""
    points, depths = view_volume_points(cam2world, K_feat, cfg)
    coords = world_to_grid_coords(points, cfg)                                     # (B, D, h, w, 3) as (x, y, z)
    volume = F.grid_sample(grid, coords, mode="bilinear", padding_mode="zeros", align_corners=False)
    return volume, depths                                                          # (B, C, D, h, w), (B, D)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 7. Occlusion (paper Sec. 3.3): a 3D network scores every depth sample of every pixel; a softmax
#    over depth turns the scores into visibility weights w_d, and
#       features(u, v) = Σ_d w_d(u, v) · volume_d(u, v),    depth(u, v) = Σ_d w_d(u, v) · z_d
# ─────────────────────────────────────────────────────────────────────────────────────────────

class OcclusionNet(nn.Module):
    """View volume (B, C, D, h, w) -> flat features (B, C, h, w), weights (B, D, h, w), depth (B, 1, h, w)."""

    def __init__(self, cfg: Config):
        super().__init__()
        # Weights and input channels-last (channels innermost in memory): oneDNN's convolutions over the
        # view volume, the largest of the model, run 1.3x faster so on a CPU (measured forward+backward).
        self.unet = UNet(3, cfg.channels + 1, 1, cfg.occlusion_width, levels=2).to(memory_format=torch.channels_last_3d)

    def forward(self, volume: torch.Tensor, depths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, _, D, h, w = volume.shape
        depth_channel = torch.linspace(-1, 1, D, device=volume.device).view(1, 1, D, 1, 1).expand(B, 1, D, h, w)
        with_depth = torch.cat([volume, depth_channel.to(volume.dtype)], dim=1)      # (B, C+1, D, h, w)
        logits = self.unet(with_depth.contiguous(memory_format=torch.channels_last_3d))  # (B, 1, D, h, w)
        weights = torch.softmax(logits[:, 0].float(), dim=1)                      # (B, D, h, w), Σ_d w_d = 1
        features = (weights[:, None] * volume).sum(dim=2)                          # (B, C, h, w)
        depth = (weights * depths[:, :, None, None]).sum(dim=1, keepdim=True)      # (B, 1, h, w)
        return features, weights, depth


# The paper's ablation (Fig. 5): no visibility at all. The depth axis is flattened into channels
# and 2D convolutions learn to reduce it, so nothing stops them from mixing in what lies behind the
# first surface ("shine-through"), there are many more parameters, and no depth map falls out.

class NaiveOcclusion(nn.Module):
    """View volume (B, C, D, h, w) -> flat features (B, C, h, w), weights None, depth None."""

    def __init__(self, cfg: Config):
        super().__init__()
        C, D = cfg.channels, cfg.depth_planes
        widths = [C * D >> k for k in range(int(math.log2(D)))] + [C]             # each layer halves: C*D ... C
        self.reduce = nn.Sequential(*(conv_block(2, a, b) for a, b in zip(widths[:-2], widths[1:-1])),
                                    nn.Conv2d(widths[-2], C, 3, padding=1))        # linear out, like Σ_d w_d · volume_d

    def forward(self, volume: torch.Tensor, depths: torch.Tensor) -> tuple[torch.Tensor, None, None]:
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
        self.upsample = nn.Sequential(*(conv_block(2, width, width, stride=2, transpose=True) for _ in range(steps)))
        self.to_rgb = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.to_rgb(self.upsample(self.unet(features))) + 0.5   # (B, 3, H, W); 0.5 centres the start


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
            nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),   # no batch norm on the image
            *(conv_block(2, a, b, stride=2) for a, b in zip(widths[:-2], widths[1:-1])),
            nn.Conv2d(widths[-2], widths[-1], 4, padding=1, bias=False), nn.BatchNorm2d(widths[-1]), nn.LeakyReLU(0.2),
            nn.Conv2d(widths[-1], 1, 4, padding=1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image - 0.5)                                          # (B, 1, H/8 - 2, W/8 - 2)


def discriminator_loss(disc: PatchDiscriminator, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-log σ(D(real)) - log(1 - σ(D(fake))) for images (B, 3, H, W); fakes detached: the generator gets no gradient."""
    return F.softplus(-disc(real)).mean() + F.softplus(disc(fake.detach())).mean()


def generator_adversarial_loss(disc: PatchDiscriminator, fake: torch.Tensor) -> torch.Tensor:
    """-log σ(D(fake)) for rendered images (B, 3, H, W); the discriminator is frozen: it gets no gradient.

    Its batch norm is not frozen: in train mode it normalises with the fakes' own statistics, as in the
    discriminator's own step, and updates its running statistics, as pix2pix's generator step does.
    Those are read only in eval mode, which training never uses.
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
    """The DeepVoxels generator with its persistent grid (a buffer: saved and moved with the model)."""

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
        self.register_buffer("K", intrinsics_matrix(cfg.focal, cfg.cx, cfg.cy, focal_y=cfg.focal_y))
        self.register_buffer("K_feat", intrinsics_matrix(cfg.focal, cfg.cx, cfg.cy, cfg.feat_size / cfg.img_size, cfg.focal_y))

    def fuse(self, source_image: torch.Tensor, source_pose: torch.Tensor) -> dict[str, torch.Tensor]:
        """Lift one source view (1, 3, H, W) with pose (1, 4, 4) and fuse it into the grid.

        The old grid enters detached, so gradients cover one step (as the authors did); the new
        grid replaces the buffer (rebinding, not copy_, keeps the autograd graph intact).
        """
        features = self.encoder(source_image)                              # (1, C, h, w)
        lifted, mask = lift(features, source_pose, self.K_feat, self.cfg)  # (1, C, N, N, N), (1, 1, N, N, N)
        new_grid, update_gate = self.gru(lifted, self.grid.detach())
        self.grid = new_grid.detach()
        return {"features": features, "lifted": lifted, "lift_mask": mask,
                "update_gate": update_gate, "grid": new_grid}

    def render_grid(self, grid: torch.Tensor, poses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Render poses (B, 4, 4) from a grid (1, C, N, N, N): 3D inpainting, then `render_inpainted`."""
        return self.render_inpainted(self.inpainting(grid), poses)              # inpainted: (1, C, N, N, N)

    def render_inpainted(self, inpainted: torch.Tensor, poses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Render poses (B, 4, 4) from an inpainted grid (1, C, N, N, N); returns every intermediate.

        Keys: rgb (B, 3, H, W), depth (B, 1, h, w), weights (B, D, h, w), view_volume
        (B, C, D, h, w), depths (B, D), flat_features (B, C, h, w), inpainted (1, C, N, N, N).
        With cfg.occlusion == "naive" there is no visibility: depth and weights are None.
        At test time the inpainted grid depends on no view: render.py computes it once for all views.
        """
        volume, depths = project(inpainted.expand(len(poses), -1, -1, -1, -1), poses, self.K_feat, self.cfg)
        flat, weights, depth = self.occlusion(volume, depths)                   # (B, C, h, w), (B, D, h, w), (B, 1, h, w)
        rgb = self.renderer(flat)                                               # (B, 3, H, W)
        return {"rgb": rgb, "depth": depth, "weights": weights, "view_volume": volume,
                "depths": depths, "flat_features": flat, "inpainted": inpainted}

    def forward(self, source_image: torch.Tensor, source_pose: torch.Tensor, target_poses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training step's forward: fuse the source view, render the target poses (B, 4, 4)."""
        fused = self.fuse(source_image, source_pose)
        return {**fused, **self.render_grid(fused["grid"], target_poses)}

    def render(self, poses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Test time: render poses (B, 4, 4) from the persistent grid alone (no encoder, no GRU).

        Call model.eval() first, as train.evaluate and render.py do: in train mode batch norm
        normalises with these poses' own statistics and updates its running statistics from them.
        """
        return self.render_grid(self.grid, poses)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 10. Data: the dataset layouts people have, each read into the same Scene; the grid checked
#     against the images and the set-up plotted; a synthetic textured cube in the DeepVoxels layout.
#     Note: this part is longer than the paper's (sections 1-9), almost all of it file formats.
#     Nothing in it is needed to follow the paper; on a first read, skip to `load_scene`.
#     DeepVoxels: <scene>/<split>/rgb/000000.png, <scene>/<split>/pose/000000.txt, <scene>/<split>/intrinsics.txt
#     pose: 16 numbers (4 rows or one row), an OpenCV camera-to-world matrix.
#     intrinsics.txt, line by line: "f cx cy [ignored...]" / "x y z" grid barycenter / near plane
#     (0: choose for me) / scale (world size of the grid; 0: estimate it, and the barycenter with it)
#     / "H W" the intrinsics refer to / [flag].  NSVF, NeRF (transforms*.json) and COLMAP: see load_scene.
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

    def matrix(self) -> torch.Tensor:
        """The 3x3 pinhole matrix K."""
        return intrinsics_matrix(self.focal, self.cx, self.cy, focal_y=self.focal_y)


def read_text(path: Path) -> str:
    """A text file's contents; a DataError naming the file if it cannot be read."""
    try:
        return path.read_text()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None


def read_intrinsics(path: Path) -> Intrinsics:
    """Parse an intrinsics.txt (format above), or the 3x3 / 4x4 matrix K that NSVF also writes there."""
    lines = [line.split() for line in read_text(path).splitlines() if line.strip()]
    try:
        if not lines or len(lines[0]) < 3:
            raise ValueError("the first line must hold 'f cx cy'")
        if len(lines) in (3, 4) and {len(line) for line in lines} in ({3}, {4}):      # a matrix K
            K = np.array(lines, dtype=np.float64).tolist()
            if not min(K[0][0], K[1][1]) > 0:
                raise ValueError(f"the matrix K needs fx and fy > 0 on its diagonal, got {K[0][0]} and {K[1][1]}")
            intr = Intrinsics(K[0][0], K[0][2], K[1][2], focal_y=K[1][1])
        else:
            focal, cx, cy = map(float, lines[0][:3])
            center = tuple(map(float, lines[1][:3])) if len(lines) > 1 else None
            if center is not None and len(center) != 3:
                raise ValueError("line 2 (grid barycenter) must hold 'x y z'")
            near = float(lines[2][0]) if len(lines) > 2 else 0.0
            scale = float(lines[3][0]) if len(lines) > 3 else 0.0
            size = tuple(int(float(v)) for v in lines[4][:2]) if len(lines) > 4 else None
            if size is not None and (len(size) != 2 or min(size) <= 0):
                raise ValueError("line 5 must hold the image size 'H W'")
            # The barycenter counts only together with a scale: "0 0 0" and scale 0 ask for the estimate.
            intr = Intrinsics(focal, cx, cy, center if scale > 0 else None, near, scale if scale > 0 else None, size)
        if not intr.focal > 0:
            raise ValueError(f"the focal length must be positive, got {intr.focal}")
    except ValueError as e:
        raise DataError(f"{path}: malformed intrinsics: {e}") from None
    return intr


def read_pose(path: Path) -> np.ndarray:
    """A 4x4 camera-to-world matrix from 16 numbers (4 rows or one row)."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError:
        raise DataError(f"{path}: pose is not a list of numbers") from None
    if values.size != 16 or not np.isfinite(values).all():
        found = f"{values.size}" if values.size != 16 else f"{np.sum(~np.isfinite(values))} that are nan or inf"
        raise DataError(f"{path}: pose must be 16 finite numbers (a 4x4 matrix), found {found}")
    pose = values.reshape(4, 4)
    if abs(np.linalg.det(pose)) < 1e-9:
        raise DataError(f"{path}: pose matrix is not invertible")
    return pose


def read_image(path: Path) -> np.ndarray:
    """An image as float32 (H, W, 3) in [0, 1], alpha composited on white."""
    try:
        image = iio.imread(path)
    except Exception as e:  # imageio raises many types for unreadable files, some with a message of several lines
        raise DataError(f"{path}: cannot be read as an image ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    scale = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1.0
    image = image.astype(np.float32)
    image /= scale                                                     # in place: a 4000 px image is 183 MiB
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] in (2, 4):                                      # with alpha: composite on white
        color, alpha = image[..., :-1], image[..., -1:]
        image = color * alpha + (1 - alpha)
    return image if image.shape[-1] == 3 else np.broadcast_to(image, image.shape[:2] + (3,)).copy()


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
    if not (intr.focal > 0 and intr.focal_y >= 0 and (intr.size is None or min(intr.size) > 0)):
        raise DataError(f"{intr_file}: focal lengths and image size must be positive, got fx {intr.focal}, "
                        f"fy {intr.focal_y or intr.focal}, H W {intr.size}")
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
    return tuple(((lo + hi) / 2).tolist()), float((hi - lo).max())


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
            pose = np.array(frame["transform_matrix"], dtype=np.float64)
            if pose.shape != (4, 4) or not np.isfinite(pose).all() or abs(np.linalg.det(pose)) < 1e-9:
                raise DataError(f"{path}: {where}transform_matrix must be an invertible 4x4 matrix")
            camera = {**meta, **frame}                                         # per-frame values win
            if "fl_x" not in camera and "camera_angle_x" not in camera:
                raise DataError(f"{path}: {where}missing key 'camera_angle_x' (or 'fl_x', 'fl_y', 'cx', 'cy')")
            if any(camera.get(key, 0) for key in ("k1", "k2", "k3", "k4", "p1", "p2")):
                raise DataError(f"{path}: {where}lens distortion (k1, k2, p1, p2...) does not fit DeepVoxels' pinhole "
                                f"camera: undistort the images first (colmap image_undistorter), or set them to 0 if negligible")
            if "fl_x" in camera:
                size = (int(camera["h"]), int(camera["w"])) if "w" in camera and "h" in camera else None
                cameras.add((float(camera["fl_x"]), float(camera.get("fl_y", camera["fl_x"])), float(camera["cx"]),
                             float(camera["cy"]), size))
            else:
                cameras.add((float(camera["camera_angle_x"]),))
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
        cameras[fields[0]] = Intrinsics(fx, cx, cy, size=(int(h), int(w)), focal_y=fy)
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
        if abs(np.linalg.norm(q) - 1) > 1e-3:
            raise DataError(f"{path}: line {n}: quaternion QW QX QY QZ = {' '.join(fields[1:5])} has length "
                            f"{np.linalg.norm(q):.4g}, not 1")
        if not (images / name).is_file():
            raise DataError(f"{path}: line {n}: image {images / name} not found")
        R = quaternion_to_rotation(q / np.linalg.norm(q))                      # world-to-camera
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = R.T, -R.T @ t
        views[name] = (images / name, pose, camera)
    if not views:
        raise DataError(f"{path}: no images")
    names = sorted(views)
    if any(views[n][2] != views[names[0]][2] for n in names):
        raise DataError(f"{model / 'cameras.txt'}: the images use cameras with different intrinsics; DeepVoxels uses one "
                        f"(colmap feature_extractor --ImageReader.single_camera 1)")
    return square_scene([views[n][0] for n in names], [views[n][1] for n in names], views[names[0]][2],
                        model / "cameras.txt", img_size)


def load_scene(root: str | Path, img_size: int) -> tuple[Scene, Scene | None, str]:
    """Detect a scene folder's layout, load it at img_size and say in one line what was found.

    Layouts, first match wins: transforms_train.json (NeRF-synthetic; held-out views from
    transforms_test.json, else transforms_val.json), transforms.json (instant-ngp / nerfstudio),
    bbox.txt or rgb/ + pose/ (NSVF), sparse/0/cameras.txt or sparse/cameras.txt (COLMAP text model,
    photos in images/), train/ (DeepVoxels). Where one file holds every view, every 8th is held out.
    Returns the training views, the held-out views (None: there are none) and the layout's name.
    """
    root = Path(root)
    colmap = next((d for d in (root / "sparse" / "0", root / "sparse") if (d / "cameras.txt").is_file()), None)
    if (root / "transforms_train.json").is_file():
        layout = "NeRF-synthetic"
        train = load_transforms(root / "transforms_train.json", img_size)
        held_out = [root / f"transforms_{split}.json" for split in ("test", "val") if (root / f"transforms_{split}.json").is_file()]
        test = load_transforms(held_out[0], img_size) if held_out else None
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
    h0, w0 = train.source_size
    shape = f"{w0}x{h0} images" + (f" centre-cropped to {min(h0, w0)}x{min(h0, w0)} (principal point shifted)" if h0 != w0 else "")
    print(f"{root}: {layout} layout; {len(train.names)} training and "
          f"{f'{len(test.names)} held-out views' if test is not None else 'no held-out views'}; {shape}, resized to {img_size} px")
    return train, test, layout


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


def scene_config(train: Scene, sizes: Config, grid_center=None, grid_scale=None) -> Config:
    """Fill the scene part of a Config: intrinsics at img_size; the grid from the flags, else the files
    (bbox.txt, then intrinsics.txt: the readers put them in train.intrinsics), else the cameras."""
    i = train.intrinsics
    center, scale = grid_center or i.grid_center, grid_scale or i.grid_scale
    if center is None or scale is None:
        est_center, est_scale = estimate_grid_placement(train.poses, i)
        center, scale = center or est_center, scale or est_scale
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


def grid_warning(scene: Scene, cfg: Config) -> str | None:
    """Check the grid against the training images before training: one warning line, or None if it fits.

    The object's pixels are those that differ from the background, the colour of the image border (views
    whose border is not one colour, like most photographs, are not checked). A view "leaves the grid"
    when more than 0.5% of them lie outside the grid box's projection (grown by a pixel for antialiasing).
    Trying boxes from 1/8 to 4 times the side finds the smallest that encloses the object in every view;
    more than 1x warns (the object is cut off), less than 1/2 too (most voxels are empty).
    """
    images = scene.images                                                        # (V, 3, H, W)
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 0], images[..., -1]], dim=-1)  # (V, 3, 4W)
    background = border.median(dim=-1).values                                  # (V, 3)
    uniform = ((border - background[..., None]).abs().amax(1) < 0.1).float().mean(-1) > 0.9   # (V,)
    object_pixels = ((images - background[..., None, None]).abs().amax(1) > 0.1) & uniform[:, None, None]  # (V, H, W)
    if not object_pixels.any():
        return None if uniform.any() else "note: grid not checked against the images: no training view has a plain background"

    def views_outside(factor: float) -> int:
        box = grid_box_mask(scene, cfg.grid_center, cfg.grid_scale * factor).float()
        box = F.max_pool2d(box[:, None], 3, stride=1, padding=1)[:, 0] > 0         # one pixel of slack
        outside = (object_pixels & ~box).flatten(1).sum(1) > 0.005 * object_pixels.flatten(1).sum(1)
        return int(outside.sum())

    outside_now = views_outside(1.0)
    if outside_now == 0 and views_outside(0.5) > 0:                              # fits, and not loosely: quiet
        return None
    factors = [2 ** (k / 8) for k in range(-24, 17)]                              # 0.125 ... 4
    enclosing = next((f for f in factors if views_outside(f) == 0), None)
    where = f"the grid (side {cfg.grid_scale:.3g}, centre {tuple(round(c, 3) + 0.0 for c in cfg.grid_center)})"
    checked = int(uniform.sum())
    if enclosing is None:
        return (f"warning: the object leaves {where} in {outside_now} of {checked} training views, even at 4x the "
                f"side: check --grid_center and the camera convention (cameras.png)")
    if enclosing > 1:
        return (f"warning: the object leaves {where} in {outside_now} of {checked} training views; "
                f"--grid_scale {1.1 * cfg.grid_scale * enclosing:.3g} would enclose it with a 10% margin (see cameras.png)")
    if enclosing <= 0.5:
        return (f"warning: {where} is {1 / enclosing:.1f}x larger than the object needs in the training views, so the "
                f"object gets few voxels; --grid_scale {1.1 * cfg.grid_scale * enclosing:.3g} would enclose it with a 10% margin")
    return None


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


# The synthetic scenes: textured cubes, each face its own colour and a pattern of cells x cells
# (a checker on the faces facing -x, -y, -z, discs on the others), lit by a fixed light.
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
class SyntheticScene:
    """Boxes, the distance of every camera from the origin, and the grid side written to intrinsics.txt."""

    boxes: tuple[Box, ...]
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
    base = CUBE_COLORS[face]
    color = np.where(on[:, None], base, (base + 1) / 2)                    # "off" cells: a lighter tint
    normal = np.zeros_like(points)
    normal[np.arange(len(points)), normals_axis] = sign
    shade = 0.75 + 0.25 * np.clip(normal @ (CUBE_LIGHT / np.linalg.norm(CUBE_LIGHT)), 0, 1)
    return color * shade[:, None]


def render_boxes(pose: np.ndarray, focal: float, size: int, boxes: tuple[Box, ...], supersample: int = 3) -> np.ndarray:
    """Ray-cast axis-aligned textured cubes, nearest hit wins: (size, size, 3) in [0, 1], white background.

    The camera has a principal point at the image centre; `supersample`^2 rays per pixel, averaged.
    """
    n = size * supersample
    ticks = (np.arange(n) + 0.5) / supersample
    u, v = np.meshgrid(ticks, ticks)
    dirs = np.stack([(u - size / 2) / focal, (v - size / 2) / focal, np.ones_like(u)], -1).reshape(-1, 3) @ pose[:3, :3].T
    origin = pose[:3, 3]
    image, nearest = np.ones((len(dirs), 3)), np.full(len(dirs), np.inf)
    for box in boxes:
        low, high = np.subtract(box.center, box.side / 2), np.add(box.center, box.side / 2)
        with np.errstate(divide="ignore", invalid="ignore"):               # slab test: the ray inside all 3 slabs
            t0, t1 = (low - origin) / dirs, (high - origin) / dirs
        t_near, t_far = np.minimum(t0, t1).max(1), np.maximum(t0, t1).min(1)
        hit = (t_near < t_far) & (t_near > 0) & (t_near < nearest)         # in front of what was hit so far
        local = (origin + t_near[hit, None] * dirs[hit] - box.center) / box.side   # (P, 3) in the unit cube's frame
        axis = np.minimum(t0, t1)[hit].argmax(1)                          # the slab entered last is the face
        sign = np.sign(local[np.arange(len(local)), axis])
        image[hit] = cube_color(local, axis, sign, box.cells)[:, list(box.colors)]
        nearest[hit] = t_near[hit]
    return image.reshape(size, supersample, size, supersample, 3).mean((1, 3))


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
            image = render_boxes(pose, focal, size, spec.boxes)
            iio.imwrite(folder / "rgb" / f"{k:06d}.png", (image * 255).round().astype(np.uint8))
            np.savetxt(folder / "pose" / f"{k:06d}.txt", pose, fmt="%.8f")


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 11. Metrics: PSNR and SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03)
# ─────────────────────────────────────────────────────────────────────────────────────────────

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
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).float()


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


# ─────────────────────────────────────────────────────────────────────────────────────────────
# 12. Checkpoints: plain data (weights_only loading), written atomically
# ─────────────────────────────────────────────────────────────────────────────────────────────

def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[DeepVoxels, dict]:
    """Rebuild the model from a checkpoint (its own Config); returns the model and the whole state."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # empty, truncated, foreign, or a pickle that is more than plain data
        raise DataError(f"{path}: not a DeepVoxels checkpoint (not a readable file of plain tensors)") from None
    try:
        cfg = Config(**{**state["config"], "grid_center": tuple(state["config"]["grid_center"])})
        model = DeepVoxels(cfg).to(device)
        model.load_state_dict(state["model"])
    except Exception as e:  # missing keys, unknown settings and shape mismatches: another version's file
        reason = (str(e).strip().splitlines() or [""])[0][:120]
        raise DataError(f"{path}: not a DeepVoxels checkpoint of this version ({type(e).__name__} {reason})") from None
    return model, state
