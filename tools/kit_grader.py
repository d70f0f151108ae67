"""The grader of this kit: each exercise of EXERCISES.md graded by one command, in seconds on a CPU

    pytest -k projection      (or lifting, gru, view_volume, occlusion; plain `pytest`: all)

Each test runs your functions from deepvoxels.py on fixed inputs and compares what they return with
reference.npz: the numbers a finished deepvoxels.py made of the same inputs. Some tests check what
the paper states, whatever the numbers: a voxel behind the camera gets mask 0, the update gate lies
in [0, 1], the visibility weights of a pixel sum to 1 over depth. A failure says where (which
voxel, pixel, plane or equation), what was expected and what your code gave.

(In the project this file is tools/kit_grader.py; `python -m tools.handout --kit DIR` copies it
into the kit as test_exercises.py, beside the reference.npz it reads.)
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

import deepvoxels as dv

REFERENCE = np.load(Path(__file__).with_name("reference.npz"))
CFG = dv.Config(**{name: tuple(value) if isinstance(value, list) else value
                   for name, value in json.loads(str(REFERENCE["config"])).items()})
TOLERANCE = 1e-4   # relative, and absolute near 0: float32 arithmetic done in another order


def ref(name: str) -> torch.Tensor:
    """An array of reference.npz (an input, a weight or an expected output) as a tensor."""
    return torch.from_numpy(REFERENCE[name])


def weights(prefix: str) -> dict[str, torch.Tensor]:
    """A network's fixed weights, as a state dict."""
    return {key[len(prefix):]: ref(key) for key in REFERENCE.files if key.startswith(prefix)}


def fail(message: str):
    pytest.fail(message, pytrace=False)     # the message alone: no traceback through torch


def run(exercise: str, function, *args):
    """function(*args) without gradients. A stub, or an error in deepvoxels.py, fails the test
    with one message naming the exercise (and the line of deepvoxels.py where it broke)."""
    try:
        with torch.no_grad():
            return function(*args)
    except NotImplementedError as e:
        message = (f"{e} (EXERCISES.md says what to read first)" if f"({exercise})" in str(e)
                   else f"{exercise} uses {e}: EXERCISES.md gives the order")
    except Exception as e:
        where = "".join(f"\n  deepvoxels.py line {frame.lineno}, in {frame.name}: {frame.line}"
                        for frame in traceback.extract_tb(e.__traceback__)
                        if Path(frame.filename).name == "deepvoxels.py")
        message = f"{exercise}: {type(e).__name__}: {e}{where}"
    fail(message)           # outside the except: no "during handling of the above exception"


def check_shape(what: str, found, shape: tuple[int, ...], meaning: str) -> None:
    """Shapes first: a wrong one would make every comparison below meaningless."""
    if not isinstance(found, torch.Tensor):
        fail(f"{what} is a {type(found).__name__}, not a tensor of shape {meaning}")
    if tuple(found.shape) != tuple(shape):
        fail(f"{what}: shape {tuple(found.shape)}, expected {tuple(shape)} = {meaning}")


def check_pair(what: str, found, count: int):
    """The tuple a function returns, its length checked."""
    if not isinstance(found, tuple) or len(found) != count:
        fail(f"{what} should return a tuple of {count} tensors, returned a "
             f"{type(found).__name__}" + (f" of {len(found)}" if isinstance(found, tuple) else ""))
    return found


def worst(found: torch.Tensor, expected: torch.Tensor, vector: bool = False) -> tuple | None:
    """Index of the entry furthest out of tolerance (with `vector`: of the vector along the last
    dimension), or None when every entry is within it."""
    expected = expected.double()
    excess = (found.double() - expected).abs() - TOLERANCE * (1 + expected.abs())
    excess = torch.where(excess.isnan(), torch.inf, excess)
    if vector:
        excess = excess.amax(dim=-1)
    if excess.max() <= 0:
        return None
    return tuple(int(i) for i in np.unravel_index(int(excess.argmax()), excess.shape))


def close(found: torch.Tensor, expected: torch.Tensor) -> bool:
    """Whether `found` matches `expected` everywhere (to name a typical mistake when it does)."""
    return found.shape == expected.shape and worst(found, expected) is None


def show(value: torch.Tensor) -> str:
    """A number or a vector, 4 decimals."""
    if value.dim() == 0:
        return f"{value.item():.4f}"
    return "(" + ", ".join(f"{v:.4f}" for v in value.tolist()) + ")"


# ── 1. projection ──────────────────────────────────────────────────────────────────────────

def test_projection_world_to_camera():
    points, poses, expected = ref("world_points"), ref("poses"), ref("camera_points")
    found = run("projection", dv.world_to_camera, points, poses)
    check_shape("world_to_camera's result", found, points.shape,
                "(B, ..., 3), the shape of the points")
    if (at := worst(found, expected, vector=True)) is not None:
        fail(f"world_to_camera: point {list(at[1:])} of batch {at[0]} at world (x, y, z) = "
             f"{show(points[at])}: expected camera coordinates {show(expected[at])}, found "
             f"{show(found[at])}. The pose of camera {at[0]} is camera-to-world, [R | t]: "
             f"x_world = R x_cam + t")


def test_projection_camera_to_pixel():
    points, K = ref("camera_points_in_front"), ref("K")
    uv, z = check_pair("camera_to_pixel", run("projection", dv.camera_to_pixel, points, K), 2)
    check_shape("camera_to_pixel's pixels", uv, ref("pixels").shape, "(..., 2), one (u, v) each")
    check_shape("camera_to_pixel's depths", z, points.shape[:-1], "(...), one z each")
    expected = ref("pixels")
    if (at := worst(uv, expected, vector=True)) is not None:
        swapped = (" u and v are exchanged: u = fx x / z + cx goes with x (the column), "
                   "v = fy y / z + cy with y (the row)." if close(uv.flip(-1), expected) else "")
        fail(f"camera_to_pixel: camera point {list(at)} at (x, y, z) = {show(points[at])}, with "
             f"fx = {K[0, 0]:g}, fy = {K[1, 1]:g}, cx = {K[0, 2]:g}, cy = {K[1, 2]:g}: expected "
             f"(u, v) = {show(expected[at])}, found {show(uv[at])}.{swapped}")
    if (at := worst(z, points[..., 2])) is not None:
        fail(f"camera_to_pixel: camera point {list(at)} at (x, y, z) = {show(points[at])}: "
             f"expected depth z = {show(points[at][2])}, found {show(z[at])}")


# ── 2. lifting ─────────────────────────────────────────────────────────────────────────────

def lifted() -> tuple[torch.Tensor, torch.Tensor]:
    """lift's volume and mask for the reference's two cameras, their shapes checked."""
    out = run("lifting", dv.lift, ref("features"), ref("poses"), CFG)
    volume, mask = check_pair("lift", out, 2)
    check_shape("lift's volume", volume, ref("lifted").shape, "(B, C, N, N, N)")
    check_shape("lift's mask", mask, ref("mask").shape, "(B, 1, N, N, N)")
    return volume, mask


def voxel(at: tuple) -> str:
    """A voxel of the reference's grid and where its centre lands in that camera's feature map."""
    b, k, j, i = at
    uv, depth = ref("voxel_uv")[b, k, j, i], ref("voxel_depth")[b, k, j, i]
    lands = (f"its centre lands at (u, v) = {show(uv)}, depth {depth:.4f}" if depth > 0
             else f"its centre lies behind the camera, at depth {depth:.4f}")
    return f"voxel [z={k}, y={j}, x={i}] seen by camera {b} ({lands})"


def test_lifting_gives_mask_0_behind_the_camera():
    volume, mask = lifted()
    behind = ref("voxel_depth") <= 0                                         # (B, N, N, N)
    for what, value in (("mask", mask[:, 0]), ("feature", volume.abs().amax(dim=1))):
        if (behind & (value != 0)).any():
            at = tuple(int(i) for i in (behind & (value != 0)).nonzero()[0])
            fail(f"lift: {voxel(at)}: its {what} is {value[at]:.4f}, but a voxel behind the "
                 f"camera gets mask 0 and a zero feature (projected, it lands on the image "
                 f"mirrored)")


def test_lifting_mask():
    _, mask = lifted()
    expected = ref("mask")[:, 0]
    if (at := worst(mask[:, 0], expected)) is not None:
        fail(f"lift: the mask of {voxel(at)} is {mask[:, 0][at]:.4f}, expected "
             f"{expected[at]:.0f}: a voxel is valid (1) when its centre lies in front of the "
             f"camera and inside the {CFG.feat_size} x {CFG.feat_size} feature map, 0 <= u <= w "
             f"and 0 <= v <= h")


def test_lifting_features():
    volume, _ = lifted()
    expected = ref("lifted")
    if (at := worst(volume, expected)) is not None:
        b, c, k, j, i = at
        fail(f"lift: channel {c} of {voxel((b, k, j, i))}: expected {expected[at]:.4f}, found "
             f"{volume[at]:.4f} (the feature map read bilinearly at (u, v), times the mask)")


# ── 3. gru ─────────────────────────────────────────────────────────────────────────────────

def gru_step() -> tuple[torch.Tensor, torch.Tensor]:
    """IntegrationGRU with the reference's weights (eval: no dropout) on its X and H."""
    def step():
        gru = dv.IntegrationGRU(CFG).eval()
        gru.load_state_dict(weights("gru/"))
        return gru(ref("gru_X"), ref("gru_H"))
    H_new, Z = check_pair("IntegrationGRU.forward", run("gru", step), 2)
    check_shape("the update gate Z", Z, ref("gru_Z").shape, "(1, 1, N, N, N), one per voxel")
    check_shape("the new grid H'", H_new, ref("gru_H").shape, "(1, C, N, N, N), as H")
    return H_new, Z


def test_gru_update_gate_lies_in_0_1():
    _, Z = gru_step()
    outside = (Z < 0) | (Z > 1) | Z.isnan()
    if outside.any():
        at = tuple(int(i) for i in outside.nonzero()[0])
        fail(f"Eq. 1: the update gate at voxel [z={at[2]}, y={at[3]}, x={at[4]}] is "
             f"{Z[at]:.4f}: Z = σ(W_z X + U_z H + b_z) is a sigmoid, so it lies in [0, 1]")


def test_gru_eq_1_update_gate():
    _, Z = gru_step()
    expected = ref("gru_Z")
    if (at := worst(Z, expected)) is not None:
        inverted = " (that is 1 − Z)" if close(1 - Z, expected) else ""
        fail(f"Eq. 1, Z = σ(W_z X + U_z H + b_z): at voxel [z={at[2]}, y={at[3]}, x={at[4]}] "
             f"expected Z = {expected[at]:.4f}, found {Z[at]:.4f}{inverted}")


def test_gru_eq_2_to_4_new_grid():
    H_new, _ = gru_step()
    H, Z, S, expected = ref("gru_H"), ref("gru_Z"), ref("gru_S"), ref("gru_H_new")
    if (at := worst(H_new, expected)) is None:
        return
    place = (f"at voxel [z={at[2]}, y={at[3]}, x={at[4]}], channel {at[1]}: expected "
             f"H' = {expected[at]:.4f}, found {H_new[at]:.4f}")
    if close(H_new, (Z * H + (1 - Z) * S).float()):
        fail(f"Eq. 4, H' = (1 − Z)∘H + Z∘S: {place}: Z and 1 − Z are exchanged (Z is the share "
             f"of the proposal S that replaces the old content H)")
    z = Z[0, 0, at[2], at[3], at[4]]
    yours = (H_new[at] - (1 - z) * H[at]) / z
    fail(f"Eq. 2-4: {place}. Read back through Eq. 4, H' = (1 − Z)∘H + Z∘S, your proposal S there "
         f"is {yours:.4f}, expected {S[at]:.4f}: check Eq. 2, R = σ(W_r X + U_r H + b_r), and "
         f"Eq. 3, S = ReLU(W_s X + U_s (R∘H) + b_s); if S is right, Eq. 4")


# ── 4. view_volume ─────────────────────────────────────────────────────────────────────────

def volume_points() -> tuple[torch.Tensor, torch.Tensor]:
    out = run("view_volume", dv.view_volume_points, ref("poses"), CFG)
    points, depths = check_pair("view_volume_points", out, 2)
    check_shape("view_volume_points' points", points, ref("points").shape, "(B, D, h, w, 3)")
    check_shape("view_volume_points' depths", depths, ref("depths").shape, "(B, D)")
    return points, depths


def test_view_volume_depths():
    _, depths = volume_points()
    expected = ref("depths")
    if (at := worst(depths, expected)) is not None:
        fail(f"view_volume_points: plane {at[1]} of camera {at[0]} should lie at depth "
             f"{expected[at]:.4f}, found {depths[at]:.4f}: {CFG.depth_planes} planes evenly "
             f"spaced from near to far (view_depth_range), both included")


def test_view_volume_points():
    points, _ = volume_points()
    expected = ref("points")
    if (at := worst(points, expected, vector=True)) is not None:
        b, d, i, j = at
        swapped = (" Rows and columns are exchanged: points[b, d, i, j] belongs to the pixel in "
                   "row i (v = i + 0.5) and column j (u = j + 0.5)."
                   if close(points.transpose(2, 3), expected) else "")
        fail(f"view_volume_points: the pixel in row {i}, column {j} on plane {d} of camera {b}: "
             f"expected the world point (x, y, z) = {show(expected[at])}, found "
             f"{show(points[at])}.{swapped}")


def test_view_volume_project():
    out = run("view_volume", dv.project, ref("grid"), ref("poses"), CFG)
    volume, _ = check_pair("project", out, 2)
    expected = ref("view_volume")
    check_shape("project's view volume", volume, expected.shape, "(B, C, D, h, w)")
    if (at := worst(volume, expected)) is not None:
        b, c, d, i, j = at
        fail(f"project: channel {c} of the pixel in row {i}, column {j} on plane {d} of camera "
             f"{b}: expected {expected[at]:.4f}, found {volume[at]:.4f}: the grid read "
             f"trilinearly at that pixel's point (x, y, z) = {show(ref('points')[b, d, i, j])} "
             f"(0 outside the grid)")


# ── 5. occlusion ───────────────────────────────────────────────────────────────────────────

def occlusion(cfg: dv.Config = CFG) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OcclusionNet with the reference's weights (eval) on its view volume and depths."""
    def flatten():
        net = dv.OcclusionNet(cfg).eval()
        net.load_state_dict(weights("occlusion/"))
        return net(ref("volume"), ref("depths"))
    flat, w, depth = check_pair("OcclusionNet.forward", run("occlusion", flatten), 3)
    check_shape("the flat features", flat, ref("flat").shape, "(B, C, h, w)")
    check_shape("the visibility weights", w, ref("weights").shape, "(B, D, h, w)")
    check_shape("the depth map", depth, ref("depth").shape, "(B, 1, h, w)")
    return flat, w, depth


def test_occlusion_weights_sum_to_1_over_depth():
    _, w, _ = occlusion()
    if (w < 0).any() or w.isnan().any():
        b, d, i, j = (int(k) for k in ((w < 0) | w.isnan()).nonzero()[0])
        fail(f"OcclusionNet.forward: the visibility weight of plane {d} at the pixel in row {i}, "
             f"column {j} of view {b} is {w[b, d, i, j]:.4f}: a softmax gives weights >= 0")
    total = w.sum(dim=1)                                                      # (B, h, w)
    if (at := worst(total, torch.ones_like(total))) is not None:
        b, i, j = at
        fail(f"OcclusionNet.forward: the visibility weights of the pixel in row {i}, column {j} "
             f"of view {b} sum to {total[at]:.4f} over its {CFG.depth_planes} depth planes, not 1: "
             f"the softmax runs over the depth planes of each pixel, Σ_d w_d = 1")


def check_weights(w: torch.Tensor, expected: torch.Tensor, where: str, why: str) -> None:
    """Fail, naming the visibility weight furthest from the reference's, where one is off."""
    if (at := worst(w, expected)) is not None:
        b, d, i, j = at
        fail(f"{where}: the visibility weight of plane {d} at the pixel in row {i}, column {j} "
             f"of view {b}: expected {expected[at]:.4f}, found {w[at]:.4f} ({why})")


def test_occlusion_weights():
    check_weights(occlusion()[1], ref("weights"), "OcclusionNet.forward",
                  "the softmax over depth of the scores of the 3D U-Net, which reads the volume "
                  "and a depth channel")


def test_occlusion_features_and_depth():
    flat, _, depth = occlusion()
    for found, name, equation in ((flat, "flat", "features(u, v) = Σ_d w_d(u, v) · volume_d(u, v)"),
                                  (depth, "depth", "depth(u, v) = Σ_d w_d(u, v) · z_d")):
        expected = ref(name)
        if (at := worst(found, expected)) is not None:
            b, c, i, j = at
            channel = f"channel {c} of " if name == "flat" else ""
            fail(f"OcclusionNet.forward, {equation}: {channel}the pixel in row {i}, column {j} "
                 f"of view {b}: expected {expected[at]:.4f}, found {found[at]:.4f}")


def test_occlusion_averages_a_volume_wider_than_occlusion_size():
    size = CFG.feat_size // 2
    check_weights(occlusion(dataclasses.replace(CFG, occlusion_size=size))[1],
                  ref("averaged_weights"),
                  f"OcclusionNet.forward with occlusion_size {size} under {CFG.feat_size} x "
                  f"{CFG.feat_size} maps",
                  f"the U-Net reads the volume averaged down to {size} x {size} in x, y, and its "
                  f"scores come back to {CFG.feat_size} x {CFG.feat_size}, interpolated "
                  f"trilinearly, before the softmax")
