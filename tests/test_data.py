"""Scenes at the door: the five layouts read back, every file checked, the grid placed and
checked, the feature maps sized, the built-in scenes drawn, and broken input fuzzed."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn as nn

import deepvoxels as dv
import train
from scenes import dataset, evaluation, figures, files, grid, layouts, synthetic, views

from conftest import (TINY, TINY_FLAGS, camera, write_scene, nearest_directions,
                      rotation_to_quaternion, export_nerf_synthetic, export_transforms_json,
                      export_colmap, export_nsvf, write_layout, edit, run_train)


# ── Scenes and bad input: layouts, door checks, grid, views, synthetic scenes, fuzz ─────────


def test_loader_reads_both_pose_layouts_alpha_and_rescales_intrinsics(tmp_path):
    folder = tmp_path / "scene" / "train"
    (folder / "rgb").mkdir(parents=True)
    (folder / "pose").mkdir()
    pose = views.look_at(np.array([0.0, -2.0, 1.0]), np.zeros(3))
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[8:, :, 3] = 255                                                   # top quarter transparent
    for k in range(2):
        iio.imwrite(folder / "rgb" / f"{k:06d}.png", rgba)
    np.savetxt(folder / "pose" / "000000.txt", pose)                      # 4 rows
    np.savetxt(folder / "pose" / "000001.txt", pose.reshape(1, 16))       # one row of 16
    (folder / "intrinsics.txt").write_text("40 16 16 0\n0 0 0\n0\n1.5\n32 32\n0\n")
    scene = layouts.load_split(tmp_path / "scene", "train", 16)
    assert torch.allclose(scene.poses[0], scene.poses[1])
    assert torch.allclose(scene.poses[0].double(), torch.from_numpy(pose), atol=1e-6)
    assert ((scene.intrinsics.focal, scene.intrinsics.cx, scene.intrinsics.grid_scale)
            == (20.0, 8.0, 1.5))
    # white where transparent
    assert torch.allclose(scene.images[0, :, 0], torch.tensor([1.0, 1.0, 1.0])[:, None])
    # red where opaque
    assert torch.allclose(scene.images[0, :, -1], torch.tensor([1.0, 0.0, 0.0])[:, None])


def test_world2cam_flag_inverts_the_poses_and_says_so(cube, tmp_path):
    flipped = shutil.copytree(cube, tmp_path / "world2cam")
    for split in ("train", "test"):
        for path in (flipped / split / "pose").glob("*.txt"):
            np.savetxt(path, np.linalg.inv(files.read_pose(path)), fmt="%.10f")
        intrinsics = flipped / split / "intrinsics.txt"
        intrinsics.write_text(intrinsics.read_text() + "1\n")
    original, original_test, _ = layouts.load_layout(cube, 32)
    train, test, layout = layouts.load_layout(flipped, 32)
    assert torch.allclose(train.poses, original.poses, atol=1e-5)
    assert torch.allclose(test.poses, original_test.poses, atol=1e-5)
    said = "\n".join(dataset.describe(flipped, train, test, layout))      # what the scripts print
    assert "line 6 says the poses are world-to-camera: inverted on reading" in said
    # --poses too
    assert torch.allclose(layouts.read_pose_folder(flipped / "test" / "pose"), original_test.poses,
                          atol=1e-5)
    edit(flipped / "train" / "intrinsics.txt", "\n1\n", "\n2\n")
    with pytest.raises(dv.DataError, match="world2cam_poses, must be 0 or 1, got 2"):
        layouts.load_layout(flipped, 32)


def test_loader_keeps_one_full_size_image_in_memory_at_a_time(tmp_path):
    import tracemalloc

    root = write_scene(tmp_path / "scene", n=6)
    pattern = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    for k in range(6):
        iio.imwrite(root / "train" / "rgb" / f"{k:06d}.png", np.roll(pattern, 40 * k, axis=1))
    (root / "train" / "intrinsics.txt").write_text("640 256 256\n0 0 0\n0\n1.25\n512 512\n")
    tracemalloc.start()
    scene = layouts.load_split(root, "train", 16)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_image = 512 * 512 * 3 * 4                                         # float32, 3 MiB
    # all six at once: 6 (and 12 stacked)
    assert peak < 2.5 * one_image
    expected = nn.functional.interpolate(
        torch.from_numpy(np.roll(pattern, 80, axis=1) / 255).permute(2, 0, 1)[None].float(),
        size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(scene.images[2], expected[0], atol=1e-5)
    assert scene.intrinsics.focal == 20.0


def test_quaternion_to_rotation_matches_a_hand_computed_rotation():
    quarter_turn_about_z = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    # x -> y
    assert np.allclose(layouts.quaternion_to_rotation(quarter_turn_about_z) @ [1, 0, 0], [0, 1, 0])
    R = views.look_at(np.array([1.0, -2.0, 0.5]), np.zeros(3))[:3, :3]
    assert np.allclose(layouts.quaternion_to_rotation(rotation_to_quaternion(R)), R, atol=1e-12)


@pytest.mark.parametrize("layout, export, every_8th", [
    ("NeRF-synthetic", export_nerf_synthetic, False),
    ("instant-ngp/nerfstudio transforms.json", export_transforms_json, True),
    ("COLMAP text model", export_colmap, True), ("NSVF", export_nsvf, False)])
def test_every_layout_reads_back_the_cube(cube, tmp_path, layout, export, every_8th):
    root = export(cube, tmp_path / "scene")
    train, test, found = layouts.load_layout(root, 16)
    said = "\n".join(dataset.describe(root, train, test, found))          # what the scripts print
    assert found == layout
    assert f"{layout} layout" in said
    ref_train, ref_test, _ = layouts.load_layout(cube, 16)
    # one file of 16 views: 0 and 8 held out
    if every_8th:
        images, poses = (torch.cat([ref_train.images, ref_test.images]),
                         torch.cat([ref_train.poses, ref_test.poses]))
        held = torch.arange(16) % 8 == 0
        ref_train, ref_test = (layouts.Scene(images[k], poses[k], ref_train.intrinsics, [])
                               for k in (~held, held))
    for scene, ref in ((train, ref_train), (test, ref_test)):
        assert torch.allclose(scene.poses, ref.poses, atol=1e-5)
        assert torch.allclose(scene.images, ref.images, atol=1e-6)
        K, K_ref = (s.intrinsics.matrix() for s in (scene, ref))
        assert torch.allclose(K, K_ref, atol=1e-5)
        assert K[0, 0] == pytest.approx(20.0, abs=1e-5)
    cfg = grid.scene_config(train, asdict(TINY))
    # bbox.txt: the cube's own grid
    if layout == "NSVF":
        expected = (0.0, 0.0, 0.0), 1.25
    # no grid in the files: the estimate
    else:
        expected = grid.estimate_grid_placement(ref_train.poses, ref_train.intrinsics)
    assert np.allclose(cfg.grid_center, expected[0], atol=1e-5)
    assert cfg.grid_scale == pytest.approx(expected[1], abs=1e-5)


def test_nerf_synthetic_holds_out_the_val_views_when_there_is_no_test_file(cube, tmp_path):
    root = export_nerf_synthetic(cube, tmp_path / "scene")
    (root / "transforms_test.json").rename(root / "transforms_val.json")
    _, val, _ = layouts.load_layout(root, 16)
    assert torch.allclose(val.poses, layouts.load_split(cube, "test", 16).poses, atol=1e-5)
    (root / "transforms_val.json").unlink()
    assert layouts.load_layout(root, 16)[1] is None


@pytest.mark.parametrize("fmt, width, height", [("transforms.json", 40, 24), ("COLMAP", 24, 40)])
def test_non_square_images_are_centre_cropped_and_a_known_point_lands_on_its_pixel(
        tmp_path, fmt, width, height):
    fx, fy, cx, cy, z = 30.0, 36.0, width / 2 + 1.0, height / 2 - 0.5, 3.0
    # the point's pixel position, a pixel corner
    u0, v0 = (28.0, 10.0) if width > height else (10.0, 28.0)
    # camera at the origin, OpenCV axes
    point = torch.tensor([(u0 - cx) * z / fx, (v0 - cy) * z / fy, z])
    image = np.full((height, width, 3), 255, np.uint8)
    # a dark 2x2 block centred on it
    image[int(v0) - 1:int(v0) + 1, int(u0) - 1:int(u0) + 1] = 0
    root = tmp_path / "scene"
    (root / "images").mkdir(parents=True)
    # two views: one trains, one is held out
    for k in range(2):
        iio.imwrite(root / "images" / f"{k}.png", image)
    if fmt == "COLMAP":
        (root / "sparse" / "0").mkdir(parents=True)
        (root / "sparse" / "0" / "cameras.txt").write_text(
            f"1 PINHOLE {width} {height} {fx} {fy} {cx} {cy}\n")
        (root / "sparse" / "0" / "images.txt").write_text(
            "".join(f"{k + 1} 1 0 0 0 0 0 0 1 {k}.png\n\n" for k in range(2)))
    else:
        frames = [{"file_path": f"images/{k}.png",
                   "transform_matrix": np.diag([1.0, -1, -1, 1]).tolist()} for k in range(2)]
        (root / "transforms.json").write_text(json.dumps({
            "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": width, "h": height, "frames": frames}))
    train, test, layout = layouts.load_layout(root, 12)             # crop 24x24, then resize by 1/2
    assert "centre-cropped to 24x24" in "\n".join(dataset.describe(root, train, test, layout))
    i = train.intrinsics
    K = i.matrix()
    # fx and fy stay apart
    assert (K[0, 0].item(), K[1, 1].item()) == pytest.approx((fx / 2, fy / 2))
    # one training view: no grid estimate
    with pytest.raises(dv.DataError, match="optical axes are parallel"):
        grid.scene_config(train, asdict(TINY))
    # fx and fy reach the model's cameras
    model = dv.DeepVoxels(grid.scene_config(train, asdict(TINY), (0.0, 0.0, 3.0), 1.0))
    K_model = model.cfg.intrinsics(model.cfg.img_size)
    assert (K_model[0, 0].item(), K_model[1, 1].item()) == pytest.approx((fx / 2, fy / 2))
    uv, _ = dv.camera_to_pixel(dv.world_to_camera(point.view(1, 1, 3), train.poses[:1]), K)
    darkness = 1 - train.images[0].mean(0)                                # (12, 12)
    centres = dv.pixel_centers(12, 12)                                    # (12, 12, 2) as (u, v)
    centroid = (darkness[..., None] * centres).sum((0, 1)) / darkness.sum()
    expected = torch.tensor([(u0 - 8) / 2, v0 / 2] if width > height else [u0 / 2, (v0 - 8) / 2])
    assert torch.allclose(uv[0, 0], expected, atol=1e-4)
    assert torch.allclose(centroid, expected, atol=0.05)


# imageio's legacy plugins, tried on the broken PNG
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("breakage, message", [
    (lambda r: (r / "train" / "pose" / "000001.txt").unlink(),
     "000001.png: image has no pose file"),
    (lambda r: (r / "train" / "rgb" / "000001.png").unlink(), "000001.txt: pose has no image"),
    (lambda r: (r / "train" / "pose" / "000001.txt").write_text("1 0 0\n0 1 0\n"),
     "000001.txt: pose must be 16 numbers"),
    (lambda r: (r / "train" / "pose" / "000001.txt").write_text("1 0 0 0 " * 2 + "0 0 0 0 " * 2),
     "000001.txt: the pose's last row must be 0 0 0 1, got 0 0 0 0"),
    (lambda r: (r / "train" / "pose" / "000001.txt").write_text("a b c"),
     "000001.txt: pose is not a list of numbers"),
    (lambda r: (r / "train" / "intrinsics.txt").write_text("100 8\n"),
     "intrinsics.txt: malformed intrinsics"),
    (lambda r: (r / "train" / "intrinsics.txt").unlink(), "intrinsics.txt: cannot be read"),
    (lambda r: iio.imwrite(r / "train" / "rgb" / "000001.png", np.zeros((8, 8, 3), np.uint8)),
     "000001.png: image is 8x8, but 000000.png is 16x16"),
    (lambda r: (r / "train" / "rgb" / "000001.png").write_bytes(b"not a png"),
     "000001.png: cannot be read as an image"),
])
def test_loader_refuses_bad_input_with_one_clear_line(tmp_path, breakage, message):
    root = write_scene(tmp_path / "scene")
    breakage(root)
    with pytest.raises(dv.DataError, match=message.replace(".", r"\.")):
        layouts.load_split(root, "train", 16)


# imageio's legacy plugins, tried on the broken PNG
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("breakage, message", [
    (lambda r: (r / "train" / "pose" / "000001.txt").write_text(
        "1 0 0 0 0 1 0 0 0 0 1 nan 0 0 0 1"),
     "000001.txt: pose must be a 4x4 matrix of finite numbers"),
    (lambda r: (r / "train" / "intrinsics.txt").write_text("0 8 8\n0 0 0\n0\n1.25\n16 16\n"),
     "intrinsics.txt: the focal length fx must be a finite number > 0, got 0.0"),
    (lambda r: [p.unlink() for p in (r / "train" / "rgb").iterdir()], "rgb: no images found"),
    (lambda r: (r / "train" / "rgb" / "000001.png").write_bytes(
        (r / "train" / "rgb" / "000001.png").read_bytes()[:200]),
     "000001.png: cannot be read as an image (image file is truncated)"),
    # imageio's message has several lines
    (lambda r: (r / "train" / "rgb" / "000001.png").write_bytes(b"not a png"),
     "000001.png: cannot be read as an image (Could not find a backend"),
])
def test_loader_refuses_nan_pose_zero_focal_empty_rgb_and_truncated_png_in_one_line(
        tmp_path, breakage, message):
    root = write_scene(tmp_path / "scene")
    breakage(root)
    with pytest.raises(dv.DataError) as error:
        layouts.load_split(root, "train", 16)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


ROTATION = views.look_at(np.array([0.0, -2.5, 1.0]), np.zeros(3))


@pytest.mark.parametrize("pose, message", [
    (ROTATION @ np.diag([1.0, 1.0, -1.0, 1.0]),
     "the pose's 3x3 part is a reflection (determinant -1)"),
    (np.block([[3 * ROTATION[:3, :3], ROTATION[:3, 3:]], [np.array([[0, 0, 0, 1.0]])]]),
     "a rotation scaled by 3"),
    (np.vstack([ROTATION[:3], [1, 1, 1, 5]]), "the pose's last row must be 0 0 0 1, got 1 1 1 5"),
    (np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
     "not a rotation (its columns are not orthonormal)"),
])
def test_a_pose_must_be_a_proper_rotation_and_a_translation(tmp_path, pose, message):
    root = write_scene(tmp_path / "scene")
    np.savetxt(root / "train" / "pose" / "000001.txt", pose)
    with pytest.raises(dv.DataError) as error:
        layouts.load_split(root, "train", 16)
    assert str(error.value).startswith(str(root / "train" / "pose" / "000001.txt"))
    assert message in str(error.value)


def test_text_files_are_utf8_a_bom_allowed_and_a_folder_is_named(tmp_path):
    root = write_scene(tmp_path / "scene")
    intrinsics = root / "train" / "intrinsics.txt"
    text = intrinsics.read_text()
    # UTF-8 with a byte-order mark
    intrinsics.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert layouts.load_split(root, "train", 16).intrinsics.focal == pytest.approx(20.0)
    intrinsics.write_bytes(text.encode("utf-16"))
    with pytest.raises(dv.DataError, match="intrinsics.txt: is not UTF-8 text"):
        layouts.load_split(root, "train", 16)
    intrinsics.write_text(text)
    pose = root / "train" / "pose" / "000001.txt"
    pose.unlink()
    pose.mkdir()
    with pytest.raises(dv.DataError, match="000001.txt: is a folder, not a file"):
        layouts.load_split(root, "train", 16)


def test_colmap_image_names_that_are_not_utf8_are_one_line(cube, tmp_path):
    root = export_colmap(cube, tmp_path / "colmap")
    images = root / "sparse" / "0" / "images.txt"
    images.write_bytes(images.read_bytes().replace(b"001.png", "00\xe9.png".encode("latin-1")))
    with pytest.raises(dv.DataError, match="images.txt: is not UTF-8 text"):
        layouts.load_layout(root, 32)


def test_images_are_one_frame_of_grey_palette_or_rgb_never_read_channel_by_channel(tmp_path):
    from PIL import Image

    root = write_scene(tmp_path / "scene")
    path = root / "train" / "rgb" / "000001.png"
    rgb = iio.imread(path)
    palette = Image.fromarray(rgb).quantize(64)
    # converted correctly
    palette.save(path)
    assert np.allclose(files.read_image(path), np.asarray(palette.convert("RGB")) / 255, atol=1e-6)
    grey16 = (rgb[..., 1].astype(np.uint16) * 257)
    # 16 bits: the same grey as 8 bits
    iio.imwrite(path, grey16)
    assert np.allclose(files.read_image(path), (rgb[..., 1:2] / 255).repeat(3, -1), atol=1e-6)
    Image.fromarray(rgb).convert("CMYK").save(path.with_suffix(".jpg"))
    path.unlink()
    with pytest.raises(dv.DataError,
                       match="000001.jpg: colour model CMYK is not RGB, grey or a palette"):
        layouts.load_split(root, "train", 16)
    path.with_suffix(".jpg").unlink()
    # an animated PNG
    Image.fromarray(rgb).save(path, save_all=True, append_images=[Image.fromarray(255 - rgb)])
    with pytest.raises(dv.DataError, match="000001.png: holds 2 frames; one image per view"):
        layouts.load_split(root, "train", 16)


def test_held_out_views_with_another_camera_are_refused(cube, tmp_path):
    other = shutil.copytree(cube, tmp_path / "deepvoxels")
    edit(other / "test" / "intrinsics.txt", "40.0 ", "44.0 ")
    with pytest.raises(dv.DataError, match=r"test/intrinsics.txt: the held-out camera \(fx 44"):
        layouts.load_layout(other, 32)
    nerf = export_nerf_synthetic(cube, tmp_path / "nerf")
    meta = json.loads((nerf / "transforms_test.json").read_text())
    (nerf / "transforms_test.json").write_text(
        json.dumps({**meta, "camera_angle_x": meta["camera_angle_x"] * 1.1}))
    with pytest.raises(dv.DataError, match="transforms_test.json: the held-out camera"):
        layouts.load_layout(nerf, 32)


@pytest.mark.parametrize("layout, breakage, message", [
    ("deepvoxels", lambda r: edit(r / "train" / "intrinsics.txt", "40.0 16.0", "40.0 nan"),
     "the principal point cx must be a finite number"),
    ("deepvoxels", lambda r: edit(r / "train" / "intrinsics.txt", "\n1.25\n", "\ninf\n"),
     "the scale (line 4; 0: estimate it) must be a finite number >= 0, got inf"),
    ("deepvoxels", lambda r: edit(r / "train" / "intrinsics.txt", "\n1.25\n", "\n-1\n"),
     "the scale (line 4; 0: estimate it) must be a finite number >= 0, got -1"),
    ("nsvf", lambda r: (r / "bbox.txt").write_text("-1e308 -1e308 -1e308 1e308 1e308 1e308\n"),
     "bbox.txt: the box's longest side (max - min) must be a finite number > 0, got inf"),
    ("nsvf", lambda r: (r / "intrinsics.txt").write_text(
        "inf 0 16 0\n0 40 16 0\n0 0 1 0\n0 0 0 1\n"),
     "intrinsics.txt: the focal length fx must be a finite number > 0, got inf"),
    ("nerf", lambda r: edit(r / "transforms_train.json",
                            '"camera_angle_x": ', '"camera_angle_x": 0, "x": '),
     "transforms_train.json: frame 0: camera_angle_x must be a finite number > 0 and < 3.14159, "
     "got 0"),
    ("colmap", lambda r: edit(r / "sparse" / "0" / "cameras.txt",
                              "PINHOLE 32 32 40", "PINHOLE nan 32 40"),
     "cameras.txt: line 2: WIDTH must be a finite number >= 1, got nan"),
    ("colmap", lambda r: (r / "sparse" / "0" / "images.txt").write_text(
        re.sub(r"\n2 \S+ ", "\n2 nan ", (r / "sparse" / "0" / "images.txt").read_text())),
     "images.txt: line 4: quaternion QW QX QY QZ = nan"),
])
def test_numbers_read_from_files_are_finite_and_in_range(cube, tmp_path, layout, breakage, message):
    export = {"deepvoxels": lambda c, r: shutil.copytree(c, r), "nsvf": export_nsvf,
              "nerf": export_nerf_synthetic, "colmap": export_colmap}
    root = export[layout](cube, tmp_path / layout)
    breakage(root)
    with pytest.raises(dv.DataError) as error:
        layouts.load_layout(root, 32)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("layout, breakage, message", [
    ("nerf", lambda r: edit(r / "transforms_train.json", '"camera_angle_x"', '"angle"'),
     "transforms_train.json: frame 0: missing key 'camera_angle_x'"),
    ("nerf", lambda r: edit(r / "transforms_train.json", '"transform_matrix"', '"matrix"'),
     "transforms_train.json: frame 0: missing key 'transform_matrix'"),
    ("nerf", lambda r: (r / "train" / "r_1.png").unlink(),
     "transforms_train.json: frame 1: image ./train/r_1 not found"),
    ("nerf", lambda r: edit(r / "transforms_test.json", "{", "{{"),
     "transforms_test.json: not valid JSON"),
    ("colmap", lambda r: edit(r / "sparse" / "0" / "cameras.txt", "PINHOLE 32 32 40 40 16 16",
                              "OPENCV 32 32 40 40 16 16 0.1 0 0 0"),
     "cameras.txt: line 2: camera model OPENCV is not a pinhole model"),
    ("colmap", lambda r: edit(r / "sparse" / "0" / "images.txt", "\n2 ", "\n2 2"),
     "images.txt: line 4: quaternion"),
    ("colmap", lambda r: (r / "images" / "001.png").unlink(), "images.txt: line 4: image"),
    ("colmap", lambda r: edit(r / "sparse" / "0" / "images.txt", " 1 001.png", " 7 001.png"),
     "images.txt: line 4: camera 7 is not in cameras.txt"),
    ("nsvf", lambda r: (r / "bbox.txt").write_text("1 1 1 0 0 0\n"),
     "bbox.txt: expected 'x_min y_min z_min x_max y_max z_max"),
    ("nsvf", lambda r: (r / "intrinsics.txt").write_text("40 0 16\n0 0 16\n0 0 1\n"),
     "intrinsics.txt: the focal length fy must be a finite number > 0, got 0.0"),
])
def test_bad_input_in_each_layout_is_one_line_naming_the_file(tmp_path, layout, breakage, message):
    root = write_layout(tmp_path, layout)
    breakage(root)
    with pytest.raises(dv.DataError, match=message.replace(".", r"\.")):
        layouts.load_layout(root, 16)


def test_train_cli_reports_bad_input_in_one_line(tmp_path, monkeypatch):
    # runs/ goes here, not into the checkout
    monkeypatch.chdir(tmp_path)
    cases = [(["--data", str(tmp_path / "missing")], "missing: no such data folder"),
             (["--data", str(tmp_path)], "train: no such folder")]
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    root = write_scene(tmp_path / "scene")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckpt.pt").write_bytes(b"not a checkpoint")
    cases.append((["--data", str(root), "--out", str(tmp_path / "run"), "--resume", *TINY_FLAGS],
                  "ckpt.pt: not a DeepVoxels checkpoint"))
    for args, message in cases:
        result = run_train(*args)
        assert result.returncode == 1
        assert message in result.stderr
        assert result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr
    # refused before a run folder was made
    assert not (tmp_path / "runs").exists()


def test_train_cli_reports_a_bad_colmap_model_in_one_line(tmp_path):
    root = write_layout(tmp_path, "colmap")
    edit(root / "sparse" / "0" / "cameras.txt", "PINHOLE 32 32 40 40 16 16",
         "SIMPLE_RADIAL 32 32 40 16 16 0.01")
    result = run_train("--data", str(root), "--check", "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert ("cameras.txt: line 2: camera model SIMPLE_RADIAL is not a pinhole model"
            in result.stderr)
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr



# ── Issue 30: images.txt without 2D-points lines, an image named twice, images smaller than the
# feature maps, held-out views that are training views ──

def write_colmap(root: Path, images_txt: str, names: list[str]) -> Path:
    """A hand-written COLMAP text model: one 16 px PINHOLE camera (id 1), images.txt as given, and
    a plain 16 px image of its own grey for each name."""
    (root / "sparse" / "0").mkdir(parents=True)
    (root / "images").mkdir()
    for k, name in enumerate(names):
        iio.imwrite(root / "images" / name, np.full((16, 16, 3), 10 * k, np.uint8))
    (root / "sparse" / "0" / "cameras.txt").write_text("# Camera list\n1 PINHOLE 16 16 20 20 8 8\n")
    (root / "sparse" / "0" / "images.txt").write_text(images_txt)
    return root


def test_colmap_images_txt_with_one_line_per_image_reads_every_image_and_says_so(tmp_path):
    names = [f"{k:03d}.png" for k in range(9)]
    # a name may hold a space
    names[4] = "004 copy.png"
    # identity rotations, t = (0, 0, 2 + k / 10): each camera at z = -(2 + k / 10)
    lines = "".join(f"{k + 1} 1 0 0 0 0 0 {2 + k / 10} 1 {name}\n" for k, name in enumerate(names))
    root = write_colmap(tmp_path / "one", "# Image list\n" + lines, names)
    train_views, test, layout = layouts.load_layout(root, 16)
    # every 8th held out: 0 and 8
    assert train_views.names == ["001", "002", "003", "004 copy", "005", "006", "007"]
    assert test.names == ["000", "008"]
    expected = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -2.1], [0, 0, 0, 1]])
    assert torch.allclose(train_views.poses[0], expected)
    said = dataset.describe(root, train_views, test, layout)
    assert said[1] == (f"{root / 'sparse' / '0' / 'images.txt'}: 9 of 9 images have no 2D-points "
                       f"line after them (one line per image): read all 9")


def test_colmap_images_txt_mixing_both_forms_is_read_and_a_line_of_neither_is_one_line(tmp_path):
    images_txt = ("1 1 0 0 0 0 0 2 1 a.png\n10.5 3.25 -1 4 5 7\n"     # its 2D points
                  "2 1 0 0 0 0 0 3 1 b.png\n"                         # none: the next image
                  "3 1 0 0 0 0 0 4 1 c.png\n\n")                      # an empty 2D-points line
    root = write_colmap(tmp_path / "mixed", images_txt, ["a.png", "b.png", "c.png"])
    model = root / "sparse" / "0"
    scene = layouts.load_colmap(model, root / "images", 16)
    assert scene.names == ["a", "b", "c"]
    assert scene.notes == [f"{model / 'images.txt'}: 1 of 3 images have no 2D-points line after "
                           f"them (one line per image): read all 3"]
    # two numbers: neither 2D points (X Y POINT3D_ID) nor an image line
    edit(model / "images.txt", "10.5 3.25 -1 4 5 7", "10.5 3.25")
    with pytest.raises(dv.DataError) as error:
        layouts.load_colmap(model, root / "images", 16)
    assert str(error.value) == (
        f"{model / 'images.txt'}: line 2: after the image on line 1, expected its 2D points "
        f"(X Y POINT3D_ID ...) or the next image (IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME)")


def test_colmap_one_line_per_image_naming_an_unknown_camera_says_so(tmp_path):
    images_txt = "1 1 0 0 0 0 0 2 1 a.png\n2 1 0 0 0 0 0 3 9 b.png\n"   # camera 9: not there
    root = write_colmap(tmp_path / "camera", images_txt, ["a.png", "b.png"])
    with pytest.raises(dv.DataError, match="line 2: camera 9 is not in cameras.txt"):
        layouts.load_colmap(root / "sparse" / "0", root / "images", 16)


def test_colmap_image_named_twice_with_two_poses_is_refused_and_with_one_pose_read_once(tmp_path):
    images_txt = ("1 1 0 0 0 0 0 2 1 a.png\n\n2 1 0 0 0 0 0 3 1 b.png\n\n"
                  "3 1 0 0 0 0 0 4 1 c.png\n\n4 1 0 0 0 0 0 5 1 ./a.png\n\n")
    root = write_colmap(tmp_path / "colmap", images_txt, ["a.png", "b.png", "c.png"])
    model = root / "sparse" / "0"
    with pytest.raises(dv.DataError) as error:
        layouts.load_colmap(model, root / "images", 16)
    assert str(error.value) == (f"{model / 'images.txt'}: line 1 and line 7 name the same image "
                                f"{root / 'images' / 'a.png'} with different poses; one image is "
                                f"one view: remove one of them")
    # the same pose: read once
    edit(model / "images.txt", "0 5 1 ./a.png", "0 2 1 ./a.png")
    scene = layouts.load_colmap(model, root / "images", 16)
    assert scene.names == ["a", "b", "c"]
    assert scene.notes == [f"{model / 'images.txt'}: 1 image(s) named again with the same pose "
                           f"(line 1 and line 7): each read once"]


def write_nerf(root: Path, split: str, frames: list[tuple[str, float]]) -> Path:
    """A hand-written transforms_<split>.json: frames (file_path, z) with an identity rotation at
    height z, camera_angle_x 0.8; a 16 px image of its own grey for each train/r_<k>.png it
    names."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    for k in range(3):
        iio.imwrite(root / "train" / f"r_{k}.png", np.full((16, 16, 3), 40 * k, np.uint8))
    pose = lambda z: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, z], [0, 0, 0, 1]]  # noqa: E731
    (root / f"transforms_{split}.json").write_text(json.dumps(
        {"camera_angle_x": 0.8,
         "frames": [{"file_path": path, "transform_matrix": pose(z)} for path, z in frames]}))
    return root


def test_transforms_frames_naming_one_file_twice_are_refused_or_read_once(tmp_path):
    # r_0 and r_0.png are the same file
    root = write_nerf(tmp_path / "nerf", "train",
                      [("./train/r_0", 2.0), ("./train/r_1", 3.0), ("train/r_0.png", 4.0)])
    with pytest.raises(dv.DataError) as error:
        layouts.load_transforms(root / "transforms_train.json", 16)
    assert str(error.value) == (f"{root / 'transforms_train.json'}: frame 0 and frame 2 name the "
                                f"same image {root / 'train' / 'r_0.png'} with different poses; "
                                f"one image is one view: remove one of them")
    write_nerf(root, "train", [("./train/r_0", 2.0), ("./train/r_1", 3.0), ("train/r_0.png", 2.0)])
    scene = layouts.load_transforms(root / "transforms_train.json", 16)
    assert scene.names == ["r_0", "r_1"]
    assert scene.notes == [f"{root / 'transforms_train.json'}: 1 image(s) named again with the "
                           f"same pose (frame 0 and frame 2): each read once"]


def test_two_images_of_one_name_would_pair_with_one_pose_file_and_are_refused(tmp_path):
    root = write_scene(tmp_path / "scene")
    rgb = root / "train" / "rgb"
    iio.imwrite(rgb / "000001.jpg", iio.imread(rgb / "000001.png"))
    with pytest.raises(dv.DataError) as error:
        layouts.load_split(root, "train", 16)
    assert str(error.value) == (f"{rgb / '000001.jpg'}: this image and 000001.png would both pair "
                                f"with the pose file {root / 'train' / 'pose' / '000001.txt'} (a "
                                f"view is named by its file name without the extension): keep "
                                f"one image")


def test_images_with_fewer_pixels_across_than_the_feature_maps_are_a_warning(tmp_path):
    # 16 px images, intrinsics for 16 x 16
    root = write_scene(tmp_path / "scene")
    said = []
    # resized up to 32 px, feature maps 16 x 16: as the tests load the cube
    dataset.open_scene(root, {**asdict(TINY), "img_size": 32}, log=said.append)
    assert not [line for line in said if "fewer pixels across" in line]
    for path in root.glob("*/rgb/*.png"):
        iio.imwrite(path, np.full((1, 1, 3), 128, np.uint8))
    said = []
    dataset.open_scene(root, asdict(TINY), log=said.append)
    assert (f"warning: {root / 'train' / 'rgb' / '000000.png'}: the images are 1x1 px, fewer "
            f"pixels across than the 16 x 16 feature maps; resized to 16 px they cannot hold what "
            f"the model is asked to learn (use images of at least 16 px across)") in said


def test_a_held_out_view_that_is_also_a_training_view_is_a_warning_naming_it(tmp_path):
    root = write_scene(tmp_path / "scene", n=3)
    said = []
    dataset.open_scene(root, asdict(TINY), log=said.append)
    assert not [line for line in said if "also a training view" in line]
    # the same pixels at the same pose, under another name
    shutil.copy(root / "train" / "rgb" / "000002.png", root / "test" / "rgb" / "000000.png")
    shutil.copy(root / "train" / "pose" / "000002.txt", root / "test" / "pose" / "000000.txt")
    said = []
    dataset.open_scene(root, asdict(TINY), log=said.append)
    assert (f"warning: 1 of 1 held-out views is also a training view: "
            f"{root / 'test' / 'rgb' / '000000.png'} (the pixels and pose of training view "
            f"000002); the held-out PSNR counts it as a novel view") in said
    # the same file, at another pose
    nerf = write_nerf(tmp_path / "nerf", "train", [("./train/r_0", 2.0), ("./train/r_1", 3.0)])
    write_nerf(nerf, "test", [("./train/r_2", 2.5), ("train/r_1.png", 4.0)])
    train_views, test, _ = layouts.load_layout(nerf, 16)
    assert dataset.shared_views(train_views, test) == (
        f"warning: 1 of 2 held-out views is also a training view: "
        f"{nerf / 'train' / 'r_1.png'} (the file of training view r_1); the held-out PSNR counts "
        f"it as a novel view")

def test_scene_config_estimates_the_grid_when_the_file_does_not_say(cube):
    scene = layouts.load_split(cube, "train", 16)
    scene.intrinsics = replace(scene.intrinsics, grid_center=None, grid_scale=None)
    cfg = grid.scene_config(scene, asdict(TINY))
    # contains the unit cube
    assert np.allclose(cfg.grid_center, 0, atol=1e-4)
    assert 1.0 < cfg.grid_scale < 2.5
    assert grid.scene_config(scene, asdict(TINY), grid_center=(1, 2, 3),
                               grid_scale=4.0).grid_center == (1, 2, 3)


@pytest.mark.parametrize("center, side, message", [
    (None, float("nan"), "--grid_scale: the grid's side must be a finite number > 0, got nan"),
    (None, float("inf"), "--grid_scale: the grid's side must be a finite number > 0, got inf"),
    (None, -1.0, "--grid_scale: the grid's side must be a finite number > 0, got -1.0"),
    ((0.0, float("nan"), 0.0), None,
     "--grid_center: the grid centre's y must be a finite number, got nan"),
])
def test_grid_flags_are_finite_and_positive(cube, center, side, message):
    train, _, _ = layouts.load_layout(cube, 32)
    with pytest.raises(dv.DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        grid.scene_config(train, asdict(TINY), center, side)


def test_grid_warning_is_quiet_on_the_cube_and_fires_on_a_grid_too_small_or_too_large(cube, capsys):
    train, _, _ = layouts.load_layout(cube, 32)
    cfg = grid.scene_config(train, asdict(TINY))
    assert grid.grid_warning(train, cfg) is None
    small = grid.grid_warning(train, replace(cfg, grid_scale=0.6))
    assert small.startswith("warning: the object leaves the grid")
    assert "in 12 of 12 training views" in small
    suggested = float(small.split("--grid_scale ")[1].split()[0])
    assert 1.0 < suggested < 1.5
    assert grid.grid_warning(train, replace(cfg, grid_scale=suggested)) is None
    # half the cube outside
    off_centre = grid.grid_warning(train, replace(cfg, grid_center=(0.6, 0.0, 0.0)))
    assert "the object leaves the grid" in off_centre
    large = grid.grid_warning(train, replace(cfg, grid_scale=4.0))
    assert "larger than the object needs" in large
    assert 1.0 < float(large.split("--grid_scale ")[1].split()[0]) < 1.5
    # no plain background: nothing to check against
    photographs = replace(train, images=torch.rand_like(train.images))
    assert grid.grid_warning(photographs, replace(cfg, grid_scale=0.6)).startswith(
        "note: grid not checked")


def test_a_side_the_images_contradict_is_refitted_unless_the_flag_gave_it(cube, tmp_path):
    """The cube (side 1) in a grid of side 0.6 named by intrinsics.txt: the door grows the grid
    to enclose it with a 10% margin (the cube itself, side 1, is the smallest box that holds its
    silhouette in every view) and says so; --grid_scale 0.6 is kept with a warning; a side
    estimated from the cameras twice too large shrinks, one named by the files is only warned
    about."""
    small = shutil.copytree(cube, tmp_path / "small_grid")
    for split in ("train", "test"):
        edit(small / split / "intrinsics.txt", "\n1.25\n", "\n0.6\n")
    said = []
    train, _, cfg = dataset.open_scene(small, asdict(TINY), log=said.append)
    assert 0.95 <= cfg.grid_scale <= 1.2, said        # 1.1 x about 1, less a pixel of slack
    assert grid.grid_warning(train, cfg) is None      # it holds the cube now
    assert any(line.startswith("grid fitted to the object: side") for line in said), said
    assert any("--grid_scale 0.6 keeps that side" in line for line in said), said
    said.clear()
    _, _, kept = dataset.open_scene(small, asdict(TINY), grid_scale=0.6, log=said.append)
    assert kept.grid_scale == 0.6
    assert any(line.startswith("warning: the object leaves the grid") for line in said), said
    train, _, _ = layouts.load_layout(cube, 32)
    large = replace(grid.scene_config(train, asdict(TINY)), grid_scale=4.0)
    shrunk, line = grid.fit_grid(train, large, "cameras")
    assert 0.95 <= shrunk.grid_scale <= 1.2, line
    assert line.startswith("grid fitted to the object"), line
    named, line = grid.fit_grid(train, large, "the data")
    assert named.grid_scale == 4.0
    assert "larger than the object needs" in line


def test_the_made_scene_hidden_leaves_the_grid_its_files_name_and_the_door_refits_it(tmp_path):
    """`hidden` (a SCENES entry) names a grid of side 1 in intrinsics.txt, but its ball reaches
    0.72 from the centre: the door must grow the grid and say so (docs/measurements.md)."""
    synthetic.make_scene(tmp_path / "hidden", "hidden", n_train=12, n_test=2, size=64)
    assert "\n1.0\n" in (tmp_path / "hidden" / "train" / "intrinsics.txt").read_text()
    said = []
    train, _, cfg = dataset.open_scene(tmp_path / "hidden", asdict(TINY), log=said.append)
    assert cfg.grid_scale > 1.2, said
    assert grid.grid_warning(train, cfg) is None
    assert any(line.startswith("grid fitted to the object: side") for line in said), said


@pytest.mark.parametrize("half_side, stray_pixels, warns",
                         [(0.5, False, False), (0.5, True, False), (0.4, False, True)])
def test_grid_warning_is_quiet_for_a_tight_box_and_warns_for_one_20_percent_too_small(
        cube, tmp_path, half_side, stray_pixels, warns):
    root = export_nsvf(cube, tmp_path / "nsvf")
    (root / "bbox.txt").write_text(
        f"{-half_side} {-half_side} {-half_side} {half_side} {half_side} {half_side} 0.05\n")
    train, _, _ = layouts.load_layout(root, 32)
    # a speck of shadow or dust in 2 views: no reason for a coarser grid
    if stray_pixels:
        train.images[:2, :, 2:4, 2:4] = 0.0
    cfg = grid.scene_config(train, asdict(TINY))
    assert cfg.grid_scale == pytest.approx(2 * half_side)
    warning = grid.grid_warning(train, cfg)
    assert ((warning is not None and warning.startswith("warning: the object leaves the grid"))
            == warns), warning


def test_footprint_of_a_ball_is_its_analytic_diameter():
    ball, distance, focal, size = synthetic.Ball((0.0, 0.0, 0.0), 0.5), 2.5, 40.0, 32
    poses = [views.look_at(distance * np.array(d) / np.linalg.norm(d), np.zeros(3))
             for d in ([1, 0, 0.3], [0, 1, -0.5], [-1, 0.2, 0])]
    images = torch.from_numpy(np.stack([synthetic.ray_cast(p, focal, size, (ball,))
                                        for p in poses])).permute(0, 3, 1, 2).float()
    scene = layouts.Scene(images, torch.from_numpy(np.stack(poses)).float(),
                         files.Intrinsics(focal, size / 2, size / 2), ["a", "b", "c"])
    # the tangent cone's width
    diameter_px = 2 * focal * ball.radius / np.sqrt(distance ** 2 - ball.radius ** 2)
    # antialiased edge pixels count
    assert grid.footprint(scene) * size == pytest.approx(diameter_px, abs=1.5)
    # no plain background
    assert grid.footprint(replace(scene, images=torch.rand_like(images))) is None


# 27 %, 62 %, 75 % of the frame
@pytest.mark.parametrize("name, fine", [("small", True), ("ball", True), ("cube", False)])
def test_feature_size_rule_gives_small_objects_full_resolution_features_and_large_ones_the_default(
        tmp_path, name, fine):
    synthetic.make_scene(tmp_path / name, name, n_train=6, n_test=1, size=64)
    train_views, _, _ = layouts.load_layout(tmp_path / name, 64)
    chosen, line = grid.feature_size(train_views, 64)
    assert chosen == (64 if fine else dv.Config.feat_size)
    assert f"feature maps {chosen} x {chosen}" in line
    assert ("under 70%" in line) == fine
    assert "--feat_size sets them" in line


def test_train_sizes_feature_maps_by_the_rule_only_when_feat_size_is_not_given(tmp_path, capsys):
    synthetic.make_scene(tmp_path / "small", "small", n_train=6, n_test=1, size=64)
    tiny = [flag for pair in zip(TINY_FLAGS[::2], TINY_FLAGS[1::2])
            if pair[0] not in ("--img_size", "--feat_size") for flag in pair]
    common = ["--data", str(tmp_path / "small"), "--out", str(tmp_path / "run"), "--img_size", "32",
              "--iters", "1", "--minutes", "0", *tiny]
    train.main(common)
    assert "feature maps 32 x 32 (the object spans" in capsys.readouterr().out
    assert torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)["config"]["feat_size"] == 32
    train.main([*common, "--out", str(tmp_path / "given"), "--feat_size", "16"])
    assert "feature maps" not in capsys.readouterr().out
    assert (torch.load(tmp_path / "given" / "ckpt.pt", weights_only=True)["config"]["feat_size"]
            == 16)


def test_check_flag_loads_checks_plots_and_exits(cube, tmp_path, capsys):
    root = export_nerf_synthetic(cube, tmp_path / "scene")
    train.main(["--data", str(root), "--out", str(tmp_path / "run"), "--grid_scale", "0.6",
                "--check", *TINY_FLAGS])
    out = capsys.readouterr().out
    assert "NeRF-synthetic layout; 12 training and 4 held-out views" in out
    assert "warning: the object leaves the grid" in out
    assert iio.imread(tmp_path / "run" / "cameras.png").shape[:2] == (500, 1100)
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_view_neighbours_and_nearest_view_baseline():
    poses = torch.cat([camera([2.0, 0, 0]), camera([0, 2.0, 0]), camera([1.9, 0.3, 0]),
                       camera([-2.0, 0, 0])])
    neighbours = views.view_neighbours(poses, k=2)
    assert neighbours[0].tolist() == [2, 1]
    assert (neighbours != torch.arange(4)[:, None]).all()
    train_scene = layouts.Scene(torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2), poses,
                               files.Intrinsics(1, 1, 1), list("abcd"))
    copied = evaluation.nearest_view_baseline(
        train_scene, torch.cat([camera([-1.5, 0.2, 0.1]), camera([0.1, 3.0, 0])]))
    assert copied[:, 0, 0, 0].tolist() == [3.0, 1.0]


def test_view_neighbours_with_few_views_are_every_other_view():
    for n in (2, 3, 4, 5, 7):
        poses = views.orbit_poses((0.0, 0.0, 0.0), 2.5, n, elevation=10.0 * n)
        neighbours = views.view_neighbours(poses)
        assert neighbours.shape == (n, min(4, n - 1))
        assert [set(row.tolist()) for row in neighbours] == nearest_directions(poses, min(4, n - 1))
    assert views.view_neighbours(poses[:1]).shape == (1, 0)


def test_cube_is_deterministic_and_opaque_where_expected(cube, tmp_path):
    synthetic.make_scene(tmp_path / "again", n_train=12, n_test=4, size=32)
    for name in ("train/rgb/000003.png", "test/pose/000001.txt", "train/intrinsics.txt"):
        assert (cube / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    pose = views.look_at(np.array([2.5, 0, 0]), np.zeros(3))
    image = synthetic.ray_cast(pose, 32.0, 32, synthetic.SCENES["cube"].shapes)
    # The cube's +x face spans |y|, |z| <= 0.5 at distance 2:
    # pixels within 32 * 0.5/2 = 8 of the centre.
    assert (image[9:23, 9:23] < 0.99).any(-1).all()
    assert np.allclose(image[:5], 1.0)
    assert np.allclose(image[27:], 1.0)


def test_two_cubes_scene_shows_the_nearer_cube():
    far, near = synthetic.SCENES["two_cubes"].shapes
    axis = np.subtract(near.center, far.center)
    # both centres on the optical axis
    pose = views.look_at(3 * axis / np.linalg.norm(axis), np.zeros(3))
    both, alone_near, alone_far = (synthetic.ray_cast(pose, 40.0, 24, boxes)
                                   for boxes in ((far, near), (near,), (far,)))
    # the nearer cube hides the other
    assert np.array_equal(both[10:14, 10:14], alone_near[10:14, 10:14])
    assert not np.allclose(alone_near[10:14, 10:14], alone_far[10:14, 10:14])


def test_blocks_scene_is_harder_small_finely_textured_and_self_occluding(tmp_path):
    spec = synthetic.SCENES["blocks"]
    synthetic.make_scene(tmp_path, "blocks", n_train=20, n_test=2, size=48)
    train = layouts.load_split(tmp_path, "train", 48)
    # cameras below the equator too
    assert (train.poses[:, 2, 3] < 0).sum() >= 8
    # (V, H, W): not the white background
    foreground = (train.images < 0.99).any(1)
    # (V, 48): rows, then columns
    for occupied in (foreground.any(2), foreground.any(1)):
        first, last = occupied.float().argmax(1), 47 - occupied.flip(1).float().argmax(1)
        # objects fill at most half the frame
        assert occupied.any(1).all()
        assert (last - first + 1).max() <= 24
    assert min(box.cells for box in spec.shapes) >= 6
    # across a -z face
    line = np.stack([np.linspace(-0.499, 0.499, 400), np.zeros(400), np.zeros(400)], 1)
    color = synthetic.cube_color(line, np.full(400, 2), -np.ones(400), cells=8)
    # 8 checker cells: 7 edges
    assert (np.abs(np.diff(color, axis=0)).sum(1) > 0.05).sum() == 7
    # one block hides the other
    a, b = spec.shapes[0], spec.shapes[1]
    axis = np.subtract(b.center, a.center)
    pose = views.look_at(np.asarray(b.center) + 3 * axis / np.linalg.norm(axis),
                          np.asarray(b.center))
    both, alone_b = (synthetic.ray_cast(pose, 40.0, 24, shapes) for shapes in ((a, b), (b,)))
    assert np.array_equal(both[11:13, 11:13], alone_b[11:13, 11:13])
    assert not np.allclose(synthetic.ray_cast(pose, 40.0, 24, (a,))[11:13, 11:13],
                           alone_b[11:13, 11:13])


def test_ball_ray_cast_is_a_disc_of_the_analytic_radius_and_small_fills_under_a_third_of_the_frame(
        tmp_path):
    ball = synthetic.Ball((0.0, 0.0, 0.0), 0.5)
    distance, focal, size = 2.5, 80.0, 64
    image = synthetic.ray_cast(views.look_at(np.array([distance, 0.0, 0.0]), np.zeros(3)), focal,
                               size, (ball,), supersample=1)
    # the cone's tangent
    radius_px = focal * ball.radius / np.sqrt(distance ** 2 - ball.radius ** 2)
    # a ray per pixel centre
    assert (image < 1).any(-1).sum() == pytest.approx(np.pi * radius_px ** 2, rel=0.02)
    synthetic.make_scene(tmp_path / "small", "small", n_train=8, n_test=1, size=48)
    for path in (tmp_path / "small" / "train" / "rgb").glob("*.png"):
        columns = np.flatnonzero((iio.imread(path) < 250).any(-1).any(0))
        assert 0 < columns[-1] - columns[0] + 1 < 48 / 3


FUZZ_VALUES = ("nan", "inf", "0", "-1", "1e300")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d*)?(?:e[-+]?\d+)?(?![\w.])")


def fuzz_layouts(root: Path) -> dict[str, tuple[Path, list[Path]]]:
    """A tiny cube (4 + 2 views, 16 px) in each of the five layouts, with the text files to break in
    each."""
    synthetic.make_scene(root / "deepvoxels", n_train=4, n_test=2, size=16)
    dv_root = root / "deepvoxels"
    by_layout = {"deepvoxels": (dv_root, [dv_root / "train" / "intrinsics.txt",
                                          dv_root / "train" / "pose" / "000000.txt",
                                          dv_root / "test" / "intrinsics.txt"])}
    nsvf = export_nsvf(dv_root, root / "nsvf")
    by_layout["nsvf"] = (nsvf, [nsvf / "intrinsics.txt", nsvf / "bbox.txt",
                                sorted((nsvf / "pose").glob("0_*"))[0]])
    nerf = export_nerf_synthetic(dv_root, root / "nerf")
    by_layout["nerf"] = (nerf, [nerf / "transforms_train.json", nerf / "transforms_test.json"])
    ngp = export_transforms_json(dv_root, root / "ngp")
    by_layout["transforms.json"] = (ngp, [ngp / "transforms.json"])
    colmap = export_colmap(dv_root, root / "colmap")
    by_layout["colmap"] = (colmap, [colmap / "sparse" / "0" / "cameras.txt",
                                    colmap / "sparse" / "0" / "images.txt"])
    return by_layout


def breakages(path: Path) -> list[tuple[str, object]]:
    """(name, what to do to the file's text or the file) for one file: numbers made extreme, lines
    removed or duplicated, the file emptied, made a folder or saved as UTF-16."""
    text = path.read_text()
    numbers = list(NUMBER.finditer(text))
    # every number of a small file, a few of a large one
    picked = numbers[:12] + numbers[12::max(1, len(numbers) // 6)]
    values = FUZZ_VALUES + (("NaN", "Infinity") if path.suffix == ".json" else ())
    cases = [(f"number {m.group()} at {m.start()} -> {v}", text[:m.start()] + v + text[m.end():])
             for m in picked for v in values]
    lines = text.splitlines(keepends=True)
    for i in sorted({0, len(lines) // 2, len(lines) - 1}):
        cases += [(f"line {i + 1} removed", "".join(lines[:i] + lines[i + 1:])),
                  (f"line {i + 1} twice", "".join(lines[:i + 1] + lines[i:]))]
    return cases + [("empty", ""), ("a folder", None), ("UTF-16", text.encode("utf-16"))]


def test_fuzz_every_layout_broken_gives_one_error_line_or_a_run_that_trains(
        tmp_path, monkeypatch, capsys):
    drawn = []
    # matplotlib takes 0.2 s
    monkeypatch.setattr(figures, "plot_setup",
                        lambda path, train_views, test, cfg: drawn.append(cfg))
    by_layout, outcomes, trained = fuzz_layouts(tmp_path / "clean"), {"error": 0, "passed": 0}, 0
    for layout, (clean, breakable) in by_layout.items():
        for file in breakable:
            for name, content in breakages(file):
                broken = shutil.copytree(clean, tmp_path / "broken", dirs_exist_ok=False)
                target = broken / file.relative_to(clean)
                if content is None:
                    target.unlink()
                    target.mkdir()
                elif isinstance(content, bytes):
                    target.write_bytes(content)
                else:
                    target.write_text(content)
                case = f"{layout}: {file.name}: {name}"
                try:
                    train.main(["--data", str(broken), "--out", str(tmp_path / "run"),
                                "--check", *TINY_FLAGS])
                # the command line prints it as one line
                except dv.DataError as error:
                    assert "\n" not in str(error), case
                    assert str(error), case
                    outcomes["error"] += 1
                # --check passed: what it passed must train
                else:
                    outcomes["passed"] += 1
                    cfg = drawn[-1]
                    assert all(np.isfinite([*cfg.grid_center, cfg.grid_scale, cfg.focal, cfg.cx,
                                            cfg.cy, cfg.near])), case
                    if trained < 12 and (
                            any(v in name for v in ("nan", "inf", "1e300", "NaN", "Infinity"))
                            or trained < 3):
                        trained += 1
                        train.main(["--data", str(broken), "--out", str(tmp_path / "run"),
                                    "--iters", "2", "--minutes", "0", "--overwrite", *TINY_FLAGS])
                shutil.rmtree(broken)
                capsys.readouterr()
    assert outcomes["error"] > 500, outcomes
    assert outcomes["passed"] > 10, outcomes
