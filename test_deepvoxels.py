"""The paper's stages, each against an independent computation: hand-computed projections, naive
loops, analytic depths, exact round trips. CPU only, offline; run with `pytest`. Groups, in the
order of deepvoxels.py: 1. cameras and grid addressing; 3. lifting; 4. GRU; 6-7. projection and
occlusion; 8. rendering and the adversarial loss; 9. the whole model (training, sizes, precision,
FastConv3d). Everything else is tested in tests/, one file per subject; tests/conftest.py shares
this file's sizes and cube scene."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn as nn

import deepvoxels as dv
import train
from scenes import evaluation, grid, layouts, settings, synthetic, views

HERE = Path(__file__).parent
TINY = dv.Config(img_size=16, feat_size=16, grid_size=8, channels=8, depth_planes=8, unet_width=8,
                 occlusion_width=4)
TINY_FLAGS = ["--img_size", "16", "--feat_size", "16", "--grid_size", "8", "--channels", "8",
              "--depth_planes", "8", "--unet_width", "8", "--occlusion_width", "4"]
# 32 px: the batch-1 encoder keeps 2x2 maps at its bottom
SMALL = replace(TINY, img_size=32, feat_size=16)
SMALL_FLAGS = ["--img_size", "32", "--feat_size", "16", "--grid_size", "8", "--channels", "8",
               "--depth_planes", "8", "--unet_width", "8", "--occlusion_width", "4"]


@pytest.fixture(scope="session")
def cube(tmp_path_factory) -> Path:
    """A small synthetic cube scene on disk (12 training and 4 test views at 32 px)."""
    root = tmp_path_factory.mktemp("data") / "cube"
    synthetic.make_scene(root, n_train=12, n_test=4, size=32)
    return root


def camera(eye, target=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """(1, 4, 4) OpenCV pose looking at target."""
    return torch.from_numpy(views.look_at(np.array(eye, float),
                                          np.array(target, float))).float()[None]


# ── 1. Cameras and grid addressing ──────────────────────────────────────────────────────────

def test_projection_matches_hand_computation():
    # Camera at (0, 0, -5) with identity rotation: camera axes = world axes.
    pose = torch.eye(4)[None]
    pose[0, 2, 3] = -5.0
    K = dv.intrinsics_matrix(100.0, 100.0, 50.0, 40.0)
    uv, z = dv.camera_to_pixel(dv.world_to_camera(torch.tensor([[[1.0, 2.0, 5.0]]]), pose), K)
    # camera coords (1, 2, 10): u = 100 * 1/10 + 50 = 60, v = 100 * 2/10 + 40 = 60
    assert torch.allclose(uv, torch.tensor([[[60.0, 60.0]]]))
    assert torch.allclose(z, torch.tensor([[10.0]]))


def test_look_at_is_opencv_and_pixel_to_ray_round_trips():
    pose = camera([3.0, 1.0, 2.0])
    K = dv.intrinsics_matrix(80.0, 80.0, 32.0, 32.0)
    uv, z = dv.camera_to_pixel(dv.world_to_camera(torch.zeros(1, 1, 3), pose), K)
    # target on the principal point
    assert torch.allclose(uv[0, 0], torch.tensor([32.0, 32.0]), atol=1e-4)
    assert z.item() == pytest.approx(14 ** 0.5, rel=1e-5)
    up_world = dv.world_to_camera(torch.tensor([[[0.0, 0.0, 0.5]]]), pose)
    # world up is image up (y down)
    assert up_world[0, 0, 1] < 0
    points = torch.randn(1, 20, 3) * 0.5
    uv, z = dv.camera_to_pixel(dv.world_to_camera(points, pose), K)
    origins, dirs = dv.pixel_to_ray(uv[0], K, pose)
    assert torch.allclose(origins + z[..., None] * dirs, points, atol=1e-4)


def test_opengl_to_opencv_flips_y_and_z():
    gl = torch.eye(4)
    # OpenGL camera at z = 4 looking down -z, at the origin
    gl[:3, 3] = torch.tensor([0.0, 0.0, 4.0])
    cv = dv.opengl_to_opencv(gl)
    uv, z = dv.camera_to_pixel(dv.world_to_camera(torch.tensor([[[0.0, 1.0, 0.0]]]), cv[None]),
                               dv.intrinsics_matrix(10, 10, 0, 0))
    assert z.item() == pytest.approx(4.0)      # in front of the camera
    assert uv[0, 0, 1] < 0                      # world +y (OpenGL up) is up in the image: v < cy


def naive_trilinear(grid: np.ndarray, point: np.ndarray, cfg: dv.Config) -> np.ndarray:
    """Trilinear interpolation written out: grid (C, z, y, x), voxel centres at
    -L/2 + (i + 0.5) L/N."""
    n, L = cfg.grid_size, cfg.grid_scale
    # continuous (x, y, z) voxel index
    idx = (point - np.array(cfg.grid_center)) / L * n + n / 2 - 0.5
    out = np.zeros(grid.shape[0])
    base = np.floor(idx).astype(int)
    for corner in np.ndindex(2, 2, 2):
        i = base + corner
        weight = np.prod(1 - np.abs(idx - i))
        if (i >= 0).all() and (i < n).all():
            out += weight * grid[:, i[2], i[1], i[0]]
    return out


def test_grid_addressing_matches_naive_loop():
    cfg = replace(TINY, grid_center=(0.3, -0.2, 0.1), grid_scale=2.0)
    torch.manual_seed(0)
    grid = torch.randn(1, 3, 8, 8, 8)
    centers = dv.voxel_centers(cfg)                                       # (N, N, N, 3)
    sampled = nn.functional.grid_sample(grid, dv.world_to_grid_coords(centers, cfg)[None],
                                        align_corners=False)
    # voxel centres read back exactly
    assert torch.allclose(sampled, grid, atol=1e-5)
    # some fall outside the grid
    points = torch.rand(30, 3) * 2.4 - 1.2 + torch.tensor(cfg.grid_center)
    sampled = nn.functional.grid_sample(
        grid, dv.world_to_grid_coords(points, cfg).view(1, 1, 1, 30, 3), align_corners=False)
    expected = np.stack([naive_trilinear(grid[0].numpy(), p, cfg) for p in points.numpy()], 1)
    assert np.allclose(sampled[0, :, 0, 0].numpy(), expected, atol=1e-5)


# ── 3. Lifting ──────────────────────────────────────────────────────────────────────────────

def test_lifting_matches_naive_projection_loop():
    # the grid overfills the view: some voxels land near the image's edge, some outside
    cfg = replace(TINY, grid_scale=2.0, focal=16.0, cx=8.0, cy=8.0)
    pose = camera([0.3, -1.8, 0.9])
    features = torch.zeros(1, 2, 8, 8)
    # one bright pixel: row 3, column 5
    features[0, 0, 3, 5] = 1.0
    # a constant channel: the image footprint
    features[0, 1] = 1.0
    # 8 x 8 maps: K_feat has f = 8, c = 4
    lifted, mask = dv.lift(features, pose, cfg)
    c2w = pose[0].double().numpy()
    in_outer_ring = 0
    for (k, j, i), center in zip(np.ndindex(8, 8, 8),
                                 dv.voxel_centers(cfg).reshape(-1, 3).double().numpy()):
        x, y, z = c2w[:3, :3].T @ (center - c2w[:3, 3])
        # K at feature size: f = 8, c = 4
        u, v = 8.0 * x / z + 4.0, 8.0 * y / z + 4.0
        inside = z > 0 and 0 <= u <= 8 and 0 <= v <= 8
        assert mask[0, 0, k, j, i] == float(inside)
        # bilinear weight of pixel (3, 5), whose centre is at (5.5, 3.5);
        # outside the outermost pixel centres the edge pixel's value (border
        # padding: the point is clamped onto the centres' square [0.5, 7.5]^2)
        uc, vc = min(max(u, 0.5), 7.5), min(max(v, 0.5), 7.5)
        expected = max(0, 1 - abs(uc - 5.5)) * max(0, 1 - abs(vc - 3.5)) if inside else 0.0
        assert lifted[0, 0, k, j, i].item() == pytest.approx(expected, abs=1e-5)
        # full strength wherever valid
        assert lifted[0, 1, k, j, i].item() == pytest.approx(float(inside), abs=1e-5)
        in_outer_ring += inside and not (0.5 <= u <= 7.5 and 0.5 <= v <= 7.5)
    # the case that zero padding got wrong
    assert in_outer_ring > 5


def test_lifting_zeroes_voxels_behind_the_camera():
    # a very wide field of view
    cfg = replace(TINY, grid_scale=1.0, focal=4.0, cx=8.0, cy=8.0)
    # inside the grid, looking along +x
    pose = camera([0.0, 0.0, 0.0], target=(1.0, 0.0, 0.0))
    lifted, mask = dv.lift(torch.ones(1, 1, 8, 8), pose, cfg)
    assert mask[..., :4].sum() == 0
    assert lifted[..., :4].abs().sum() == 0  # x < 0: behind
    assert mask[..., 4:].sum() > 0


def test_lift_then_project_returns_each_pixels_feature():
    cfg = replace(TINY, grid_size=32, grid_scale=1.0, focal=20.0, cx=8.0, cy=8.0, depth_planes=16)
    pose = camera([0.0, -2.5, 0.5])
    # feat_size = img_size = 16
    uv = dv.pixel_centers(16, 16)
    # (1, 2, 16, 16): each pixel's (u, v)
    features = (uv / 16).permute(2, 0, 1)[None]
    lifted, _ = dv.lift(features, pose, cfg)
    volume, _ = dv.project(lifted, pose, cfg)                             # (1, 2, D, 8, 8)
    points, _ = dv.view_volume_points(pose, cfg)
    # well inside the grid, away from the image border
    inside = (dv.world_to_grid_coords(points, cfg).abs() < 0.8).all(-1)
    inside[..., [0, -1], :] = inside[..., :, [0, -1]] = False
    expected = (uv / 16).expand(cfg.depth_planes, 16, 16, 2)
    error = (volume[0].permute(1, 2, 3, 0) - expected)[inside[0]]
    assert inside.sum() > 100
    assert error.abs().max() < 0.01  # a sixth of a pixel


# ── 4. GRU integration ──────────────────────────────────────────────────────────────────────

def test_gru_keeps_H_when_Z_is_0_and_takes_S_when_Z_is_1():
    gru = dv.IntegrationGRU(TINY).eval()                                  # eval: no dropout
    X, H = torch.randn(1, 8, 8, 8, 8), torch.randn(1, 8, 8, 8, 8)
    # rows: z, r, then s (W); z, r (U)
    W, b, U = gru.W_zrs.weight, gru.W_zrs.bias, gru.U_zr.weight
    with torch.no_grad():
        W[0].zero_(), U[0].zero_()
        b[0] = -100.0                                                     # Z = σ(-100) = 0
        assert torch.allclose(gru(X, H)[0], H, atol=1e-6)
        # Z = 1: H' = S, computed here term by term
        b[0] = 100.0
        xc, hc = torch.cat([X, gru.coords], 1), torch.cat([H, gru.coords], 1)
        R = torch.sigmoid(F.conv3d(xc, W[1:2], b[1:2], padding=1) + F.conv3d(hc, U[1:2], padding=1))
        S = torch.relu(F.conv3d(xc, W[2:], b[2:], padding=1)
                       + F.conv3d(torch.cat([R * H, gru.coords], 1), gru.U_s.weight, padding=1))
        assert torch.allclose(gru(X, H)[0], S, atol=1e-5)


def test_fuse_updates_the_persistent_grid_and_detaches_it():
    torch.manual_seed(0)
    model = dv.DeepVoxels(TINY)
    assert model.grid.abs().sum() == 0
    assert "grid" in model.state_dict()
    out = model.fuse(torch.rand(1, 3, 16, 16), camera([0.0, -3.0, 0.0]))
    assert torch.equal(model.grid, out["grid"].detach())
    assert model.grid.abs().sum() > 0
    assert not model.grid.requires_grad
    assert out["grid"].requires_grad


# ── 6-7. Projection and occlusion ───────────────────────────────────────────────────────────

def test_view_volume_covers_the_grid():
    cfg = replace(TINY, grid_scale=1.0, focal=16.0, cx=8.0, cy=8.0)
    pose = camera([2.0, 0.5, -1.0])
    near, far = dv.view_depth_range(pose, cfg)
    corners = torch.tensor(list(np.ndindex(2, 2, 2)), dtype=torch.float32) - 0.5
    _, z = dv.camera_to_pixel(dv.world_to_camera(corners[None], pose),
                              dv.intrinsics_matrix(16, 16, 8, 8))
    assert near.item() <= z.min().item()
    assert far.item() >= z.max().item()


def test_depth_range_covers_the_grid_for_a_camera_that_looks_past_its_centre():
    cfg = replace(TINY, grid_scale=1.25)
    eye, angle = np.array([0.0, -2.5, 0.0]), np.radians(20)
    # the axis misses the centre by 20 degrees
    pose = camera(eye, eye + [np.sin(angle), np.cos(angle), 0.0])
    near, far = dv.view_depth_range(pose, cfg)
    corners = torch.tensor(list(np.ndindex(2, 2, 2)), dtype=torch.float32) * 1.25 - 0.625
    _, z = dv.camera_to_pixel(dv.world_to_camera(corners[None], pose),
                              dv.intrinsics_matrix(16, 16, 8, 8))
    # 1.27, not 1.42
    assert near.item() == pytest.approx(2.5 * np.cos(angle) - 1.25 * 3 ** 0.5 / 2, abs=1e-5)
    assert near.item() <= z[z > 0].min().item()
    assert far.item() >= z.max().item()


class FeatureMagnitude(nn.Module):
    """A stand-in occlusion U-Net whose logit is 50x the first feature: picks the brightest
    sample."""

    def forward(self, x):
        return 50 * x[:, :1]


def test_occlusion_of_an_opaque_slab_gives_its_analytic_depth():
    cfg = replace(TINY, grid_size=16, grid_scale=2.0, depth_planes=64, focal=16.0, cx=8.0, cy=8.0)
    grid = torch.zeros(1, 8, 16, 16, 16)
    # an opaque slab: the voxel layer z index 4, world z = -0.4375
    grid[:, :, 4] = 1.0
    pose = torch.eye(4)[None]
    # camera at z = -3 looking along +z: slab depth 2.5625
    pose[0, 2, 3] = -3.0
    occlusion = dv.OcclusionNet(cfg)
    occlusion.unet = FeatureMagnitude()
    # feat_size = img_size = 16
    volume, depths = dv.project(grid, pose, cfg)
    features, weights, depth = occlusion(volume, depths)
    # a distribution over depth
    assert torch.allclose(weights.sum(1), torch.ones(1, 16, 16), atol=1e-5)
    center = depth[0, 0, 4:12, 4:12]                                      # rays that cross the slab
    spacing = (depths[0, 1] - depths[0, 0]).item()
    assert (center - 2.5625).abs().max() < spacing / 2
    assert torch.allclose(features[0, :, 4:12, 4:12],
                          (weights[:, None] * volume).sum(2)[0, :, 4:12, 4:12])


def test_real_occlusion_net_with_its_depth_channel_finds_an_unseen_opaque_slab():
    cfg = replace(TINY, grid_size=16, grid_scale=2.0, depth_planes=32, focal=16.0, cx=8.0, cy=8.0)
    pose = torch.eye(4)[None]
    # at z = -3 looking along +z
    pose[0, 2, 3] = -3.0

    def slab(layer: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        grid = torch.zeros(1, 8, 16, 16, 16)
        # opaque voxel layer at world z = -1 + (layer + 0.5) / 8
        grid[:, :, layer] = 1.0
        return *dv.project(grid, pose, cfg), 3.0 - 1 + (layer + 0.5) / 8

    torch.manual_seed(0)
    occlusion = dv.OcclusionNet(cfg)
    seen = []
    occlusion.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    optimizer = torch.optim.Adam(occlusion.parameters(), lr=1e-2)
    # slabs at six depths; 3, 7 and 12 never seen
    for step in range(60):
        volume, depths, true_depth = slab([2, 4, 6, 9, 11, 13][step % 6])
        loss = (occlusion(volume, depths)[2][0, 0, 4:12, 4:12] - true_depth).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ramp = torch.linspace(-1, 1, 32).view(1, 32, 1, 1).expand(1, 32, 16, 16)
    # C features + the depth channel
    assert seen[0].shape == (1, 9, 32, 16, 16)
    assert torch.equal(seen[0][:, 8], ramp)
    # the first slab seen, unchanged
    assert torch.equal(seen[0][:, :8], slab(2)[0])
    occlusion.eval()
    with torch.no_grad():
        for layer in (3, 7, 12):
            volume, depths, true_depth = slab(layer)
            _, weights, depth = occlusion(volume, depths)
            spacing = (depths[0, 1] - depths[0, 0]).item()
            assert (depth[0, 0, 4:12, 4:12] - true_depth).abs().max() < spacing / 2
            assert torch.allclose(weights.sum(1), torch.ones(1, 16, 16), atol=1e-5)


def test_occlusion_scores_a_wider_volume_at_occlusion_size_and_weighs_every_feature_pixel():
    # feature maps of 16 x 16, an occlusion U-Net that sees at most 8 x 8
    cfg = replace(TINY, occlusion_size=8)
    occlusion = dv.OcclusionNet(cfg)
    seen = []
    occlusion.unet.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    torch.manual_seed(0)
    # a different feature at every pixel, the same at every depth: whatever the weights,
    # Σ_d w_d · volume_d is that pixel's feature
    pattern = torch.rand(1, 8, 1, 16, 16)
    features, weights, depth = occlusion(pattern.expand(1, 8, 8, 16, 16),
                                         torch.linspace(2, 3, 8)[None])
    unet_in, logits = seen[0]
    assert unet_in.shape == (1, 9, 8, 8, 8)
    # the U-Net's input is the volume averaged over 2 x 2 pixels
    assert torch.allclose(unet_in[:, :8, 0], F.avg_pool2d(pattern[:, :, 0], 2), atol=1e-6)
    assert weights.shape == (1, 8, 16, 16) and depth.shape == (1, 1, 16, 16)
    assert torch.allclose(weights.sum(1), torch.ones(1, 16, 16), atol=1e-5)
    # the scores come back at 16 x 16: a corner pixel takes its corner block's (interpolation
    # repeats the border), and its weights are their softmax over depth
    for y, x in ((0, 0), (15, 15)):
        assert torch.allclose(weights[0, :, y, x], logits[0, 0, :, y // 2, x // 2].softmax(0),
                              atol=1e-6)
    # the weighted sum reads the volume at full size: no pixel's feature is averaged away
    assert torch.allclose(features, pattern[:, :, 0], atol=1e-5)


def test_naive_occlusion_has_many_more_parameters():
    cfg = dv.Config(depth_planes=32)                                     # C = 16, D = 32
    naive, softmax = dv.NaiveOcclusion(cfg), dv.OcclusionNet(cfg)
    # by hand: 3x3 convs 512 -> 256 -> 128 -> 64 -> 32 (no bias,
    # batch norm: 2 per channel), then 32 -> 16 with bias
    convs = (9 * (512 * 256 + 256 * 128 + 128 * 64 + 64 * 32) + 2 * (256 + 128 + 64 + 32)
             + 9 * 32 * 16 + 16)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(naive) == convs == 1_572_304
    assert count(naive) > 10 * count(softmax)
    assert (count(dv.DeepVoxels(replace(cfg, occlusion="naive"))) - count(dv.DeepVoxels(cfg))
            == count(naive) - count(softmax))


# ── 8. Rendering and the adversarial loss ───────────────────────────────────────────────────

class ConstantCritic(nn.Module):
    """A stand-in discriminator that scores every image with its one parameter s."""

    def __init__(self, s: float):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(s))

    def forward(self, image):
        return self.s.expand(len(image), 1, 2, 2)


def test_gan_losses_match_their_formulas_and_the_generator_wants_higher_scores():
    sigma = lambda s: 1 / (1 + np.exp(-s))
    fake = torch.rand(2, 3, 8, 8)
    for s in (-2.0, 0.0, 3.0):
        assert (dv.generator_adversarial_loss(ConstantCritic(s), fake).item()
                == pytest.approx(-np.log(sigma(s)), rel=1e-5))
        both = dv.discriminator_loss(ConstantCritic(s), fake, fake).item()
        assert both == pytest.approx(-np.log(sigma(s)) - np.log(1 - sigma(s)), rel=1e-5)
    losses = [dv.generator_adversarial_loss(ConstantCritic(s), fake).item()
              for s in (-2.0, 0.0, 3.0)]
    # a higher score on fakes, a lower loss
    assert losses[0] > losses[1] > losses[2]
    # a gradient step of the generator's loss on the fakes raises
    # a real discriminator's score on them
    torch.manual_seed(0)
    disc = dv.PatchDiscriminator(8).eval()
    fake = torch.rand(2, 3, 32, 32, requires_grad=True)
    dv.generator_adversarial_loss(disc, fake).backward()
    with torch.no_grad():
        assert disc(fake - 0.05 * fake.grad.sign()).mean() > disc(fake).mean()


def test_generator_loss_uses_the_fakes_batch_statistics_and_updates_running_ones_as_documented():
    torch.manual_seed(0)
    disc, fake = dv.PatchDiscriminator(8), torch.rand(2, 3, 32, 32)
    running = [m.running_mean.clone() for m in disc.modules() if isinstance(m, nn.BatchNorm2d)]
    loss = dv.generator_adversarial_loss(disc, fake)
    assert all(not torch.equal(a, m.running_mean) for a, m in zip(
        running, (m for m in disc.modules() if isinstance(m, nn.BatchNorm2d))))
    # train mode both times
    assert loss.item() == pytest.approx(nn.functional.softplus(-disc(fake)).mean().item(), rel=1e-5)


def test_discriminator_gets_gradients_only_in_its_own_step():
    torch.manual_seed(0)
    disc = dv.PatchDiscriminator(8)
    # stands in for the rendering network
    generator = nn.Parameter(torch.rand(2, 3, 32, 32))
    real = torch.rand(2, 3, 32, 32)
    dv.generator_adversarial_loss(disc, generator * 1.0).backward()     # the generator's step
    assert all(p.grad is None for p in disc.parameters())
    assert generator.grad.abs().sum() > 0
    assert all(p.requires_grad for p in disc.parameters())              # unfrozen again afterwards
    generator.grad = None
    before = [p.detach().clone() for p in disc.parameters()]
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-3)
    # the discriminator's step, as train.training_step takes it
    dv.discriminator_loss(disc, real, generator * 1.0).backward()
    optimizer.step()
    assert generator.grad is None
    assert all(not torch.equal(a, b) for a, b in zip(before, disc.parameters()))


# ── 9. The whole model: training, config sizes, precision, FastConv3d ───────────────────────

@pytest.fixture(scope="session")
def fitted(cube):
    """The small model after 300 steps on the cube's 12 training views (about 10 s), with both
    splits at 32 px."""
    torch.manual_seed(0)
    train_views, test_views = (layouts.load_split(cube, "train", 32),
                               layouts.load_split(cube, "test", 32))
    model = dv.DeepVoxels(grid.scene_config(train_views, asdict(SMALL)))
    state = train.Training(model, torch.optim.Adam(model.parameters(), lr=2e-3))
    run = settings.TrainConfig(device="cpu", precision="fp32", lr=2e-3)
    neighbours, generator = (views.view_neighbours(train_views.poses),
                             torch.Generator().manual_seed(0))
    for _ in range(300):
        train.training_step(state, train_views.images, train_views.poses,
                            train.sample_views(neighbours, generator), run)
    return model.eval(), train_views, test_views


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    cfg = replace(TINY, grid_scale=1.25, focal=20.0, cx=8.0, cy=8.0)
    model = dv.DeepVoxels(cfg)
    # a non-zero grid, so U_* see input
    model.fuse(torch.rand(1, 3, 16, 16), camera([0.0, -2.5, 0.0]))
    out = model(torch.rand(1, 3, 16, 16), camera([0.5, -2.5, 0.3]),
                torch.cat([camera([2.5, 0, 0]), camera([0, 0, 2.5])]))
    (out["rgb"] - 0.3).abs().mean().backward()
    missing = [name for name, p in model.named_parameters()
               if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_render_uses_only_the_grid():
    torch.manual_seed(0)
    model = dv.DeepVoxels(replace(TINY, grid_scale=1.25, focal=20.0, cx=8.0, cy=8.0)).eval()
    # the test-time path must not need them
    model.encoder = model.gru = None
    out = model.render(torch.cat([camera([2.5, 0, 0]), camera([0, 2.5, 0])]))
    assert out["rgb"].shape == (2, 3, 16, 16)
    assert out["depth"].shape == (2, 1, 16, 16)
    assert torch.allclose(out["weights"].sum(1), torch.ones(2, 16, 16), atol=1e-5)


def test_short_overfit_lowers_the_loss(cube):
    torch.manual_seed(0)
    scene = layouts.load_split(cube, "train", 16)
    model = dv.DeepVoxels(grid.scene_config(scene, asdict(TINY)))
    state = train.Training(model, torch.optim.Adam(model.parameters(), lr=2e-3))
    # the L1 loss alone, no crop
    run = settings.TrainConfig(device="cpu", precision="fp32", lr=2e-3)
    images, poses = scene.images[:3], scene.poses[:3]
    # (source, target 1, target 2: the source)
    views = [(step % 3, (step + 1) % 3, step % 3) for step in range(80)]
    losses = [train.training_step(state, images, poses, v, run) for v in views]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


def test_naive_occlusion_trains_and_renders(cube, tmp_path):
    torch.manual_seed(0)
    scene = layouts.load_split(cube, "train", 32)
    model = dv.DeepVoxels(grid.scene_config(scene, asdict(replace(SMALL, occlusion="naive"))))
    state = train.Training(model, torch.optim.Adam(model.parameters(), lr=2e-3))
    run = settings.TrainConfig(device="cpu", precision="fp32", lr=2e-3)
    # (source, target 1, target 2: the source)
    views = [(step % 3, (step + 1) % 3, step % 3) for step in range(40)]
    losses = [train.training_step(state, scene.images, scene.poses, v, run) for v in views]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    out = model.eval().render(scene.poses[:2])
    assert out["rgb"].shape == (2, 3, 32, 32)
    assert out["flat_features"].shape == (2, 8, 16, 16)
    # no visibility, no depth map
    assert out["depth"] is None
    assert out["weights"] is None
    # the command line: train, evaluate and write the preview without a depth column
    train.main(["--data", str(cube), "--out", str(tmp_path), "--minutes", "0", "--iters", "2",
                "--eval_every", "1e-9", "--occlusion", "naive", *SMALL_FLAGS])
    assert iio.imread(tmp_path / "preview.png").shape == (4 * 32, 2 * 32, 3)  # target | prediction
    # by default: no discriminator, L1 x 1
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert "discriminator" not in state
    assert ((state["train_config"]["gan_weight"], state["train_config"]["l1_weight"])
            == (0.0, 1.0))


def each_render_is_closest_to_its_own_image(model: dv.DeepVoxels, scene: layouts.Scene) -> bool:
    """For every pose A and every other view B: the render for A is closer (L1) to image A than
    to image B."""
    with torch.no_grad():
        rgb = model.render(scene.poses)["rgb"]
    distance = (rgb[:, None] - scene.images[None]).abs().flatten(2).mean(-1)   # (render, image)
    return bool((distance.argmin(1) == torch.arange(len(scene.poses))).all())


def test_learning_only_correct_geometry_renders_each_view_closest_to_its_own_image(
        fitted, monkeypatch):
    model, _, test_views = fitted
    # On held-out poses, between the training ones. A renderer that learned the mean image (its
    # loss halves too) cannot pass: it gives one image for every pose. The smallest margin here
    # is 0.02 (L1, images in [0, 1]). What it cannot see: a model *trained* with a mirrored
    # lifting passed it too (measured), as the GRU and the inpainting U-Net learn around it;
    # lifting's geometry is checked against a naive loop in section 3.
    assert each_render_is_closest_to_its_own_image(model, test_views)
    project = dv.project
    monkeypatch.setattr(dv, "project", lambda grid, poses, cfg: project(
        grid, poses[:1].expand(len(poses), -1, -1), cfg))
    # control: every view through one camera
    assert not each_render_is_closest_to_its_own_image(model, test_views)
    # control: camera x flipped (a mirror image)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    monkeypatch.setattr(dv, "project", lambda grid, poses, cfg: project(grid, poses @ mirror, cfg))
    assert not each_render_is_closest_to_its_own_image(model, test_views)


def unchecked_config(**sizes) -> dv.Config:
    """A Config built without its size check, to see what the model itself does with those sizes."""
    cfg = object.__new__(dv.Config)
    cfg.__dict__.update({**dv.Config().__dict__, **sizes})
    return cfg


def model_runs(cfg: dv.Config) -> bool:
    """Whether a training step's forward (batch 1, train mode) and a one-view render give maps
    of the configured sizes."""
    try:
        model = dv.DeepVoxels(cfg).train()
        out = model(torch.rand(1, 3, cfg.img_size, cfg.img_size), camera([0.0, -2.5, 0.5]),
                    camera([2.5, 0.0, 0.5]))
        return out["features"].shape[-1] == cfg.feat_size and out["rgb"].shape[-1] == cfg.img_size
    # size mismatches; batch norm on one value
    except (RuntimeError, ValueError):
        return False


@pytest.mark.parametrize("sizes, field", [
    ({}, None), ({"img_size": 64, "feat_size": 16}, None),
    ({"feat_size": 24, "img_size": 24}, None),
    ({"grid_size": 12}, None), ({"depth_planes": 4}, None), ({"depth_planes": 12}, None),
    # ratio 3: the encoder makes 24 px maps
    ({"img_size": 48, "feat_size": 16}, "img_size / feat_size"),
    # the encoder U-Net's bottom is 1x1
    ({"img_size": 16, "feat_size": 8}, "feat_size"),
    # 20 -> 10 -> 5 -> 2, back to 4 != 5
    ({"img_size": 20, "feat_size": 20}, "feat_size"),
    ({"grid_size": 4}, "grid_size"), ({"grid_size": 10}, "grid_size"),
    # 6 -> 3 -> 1, back to 2 != 3
    ({"depth_planes": 6}, "depth_planes"),
    # the occlusion U-Net at 8 x 8 under 16 x 16 maps; at 6 x 6: 6 -> 3 -> 1, back to 2 != 3
    ({"occlusion_size": 8}, None), ({"occlusion_size": 6}, "occlusion_size"),
])
def test_config_accepts_exactly_the_sizes_the_model_runs_with(sizes, field):
    small = {"img_size": 32, "feat_size": 16, "grid_size": 8, "channels": 2, "depth_planes": 8,
             "unet_width": 2, "occlusion_width": 2, "grid_scale": 1.25, "focal": 40.0,
             "cx": 16.0, "cy": 16.0}
    cfg = {**small, **sizes}
    assert model_runs(unchecked_config(**cfg)) == (field is None)
    if field is None:
        dv.Config(**cfg)
    else:
        with pytest.raises(dv.DataError, match=f"^sizes: {field} \\(") as error:
            dv.Config(**cfg)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("sizes, message", [
    ({"img_size": 0}, "img_size / feat_size (0 / 16)"),
    ({"channels": 0}, "channels, unet_width and occlusion_width"),
    ({"gru_dropout": 2.0}, "gru_dropout (2.0) must be at least 0 and below 1"),
])
def test_config_refuses_sizes_below_one_and_dropout_out_of_range(sizes, message):
    with pytest.raises(dv.DataError,
                       match="^sizes: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        dv.Config(**{**TINY.__dict__, **sizes})


def test_precision_auto_means_bf16_on_a_gpu_and_fp32_or_bf16_on_a_cpu_by_its_units(monkeypatch):
    assert [dv.resolve_precision("cpu", p) for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    assert dv.resolve_precision("cuda", "auto") == "bf16"
    for has_units, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: has_units)
        assert dv.resolve_precision("cpu", "auto") == expected
        assert torch.is_autocast_enabled("cpu") is False
        with dv.mixed_precision("cpu", "auto"):
            assert torch.is_autocast_enabled("cpu") is has_units


def test_bf16_rendering_agrees_with_fp32(fitted):
    model, _, test_views = fitted
    with torch.no_grad():
        fp32 = model.render(test_views.poses)
        with dv.mixed_precision("cpu", "bf16"):
            bf16 = model.render(test_views.poses)
    assert bf16["rgb"].dtype == torch.bfloat16                            # it really ran in bf16
    # within 1% RMS (measured: 50-52 dB)
    assert evaluation.psnr(bf16["rgb"].float(), fp32["rgb"].clamp(0, 1)).min() > 40
    depth_range = (fp32["depths"][:, -1] - fp32["depths"][:, 0]).min()
    # 2% of near-far (measured: 0.5%)
    assert (bf16["depth"] - fp32["depth"]).abs().max() < 0.02 * depth_range


def test_fast_conv3d_at_batch_one_equals_the_plain_convolution_with_its_gradients():
    torch.manual_seed(0)
    conv = dv.FastConv3d(5, 7, 3, padding=1)
    x = torch.randn(1, 5, 8, 6, 4, requires_grad=True)                  # D, H, W all different
    out = conv(x)
    reference = F.conv3d(x, conv.weight, conv.bias, padding=1)          # PyTorch's own (slow) path
    assert out.shape == (1, 7, 8, 6, 4)
    assert torch.allclose(out, reference, atol=1e-5)
    grads = torch.autograd.grad((out * reference.detach()).sum(), (x, conv.weight))
    expected = torch.autograd.grad((reference * reference.detach()).sum(), (x, conv.weight))
    assert all(torch.allclose(g, e, atol=1e-4) for g, e in zip(grads, expected))
