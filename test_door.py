"""Validation at the door (to be merged into test_deepvoxels.py by subject)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import deepvoxels as dv
import scenes
from test_deepvoxels import TINY, TINY_FLAGS, cube, edit, export_colmap, export_nerf_synthetic, export_nsvf, export_transforms_json, write_scene  # noqa: F401
import train


def test_world2cam_flag_inverts_the_poses_and_says_so(cube, tmp_path, capsys):
    flipped = shutil.copytree(cube, tmp_path / "world2cam")
    for split in ("train", "test"):
        for path in (flipped / split / "pose").glob("*.txt"):
            np.savetxt(path, np.linalg.inv(scenes.read_pose(path)), fmt="%.10f")
        intrinsics = flipped / split / "intrinsics.txt"
        intrinsics.write_text(intrinsics.read_text() + "1\n")
    original, original_test, _ = scenes.load_scene(cube, 32)
    train, test, _ = scenes.load_scene(flipped, 32)
    assert torch.allclose(train.poses, original.poses, atol=1e-5) and torch.allclose(test.poses, original_test.poses, atol=1e-5)
    assert "line 6 says the poses are world-to-camera: inverted on reading" in capsys.readouterr().out
    edit(flipped / "train" / "intrinsics.txt", "\n1\n", "\n2\n")
    with pytest.raises(dv.DataError, match="world2cam_poses, must be 0 or 1, got 2"):
        scenes.load_scene(flipped, 32)


@pytest.mark.parametrize("half_side, stray_pixels, warns", [(0.5, False, False), (0.5, True, False), (0.4, False, True)])
def test_grid_warning_is_quiet_for_a_tight_box_and_warns_for_one_20_percent_too_small(cube, tmp_path, half_side, stray_pixels, warns):
    root = export_nsvf(cube, tmp_path / "nsvf")
    (root / "bbox.txt").write_text(f"{-half_side} {-half_side} {-half_side} {half_side} {half_side} {half_side} 0.05\n")
    train, _, _ = scenes.load_scene(root, 32)
    if stray_pixels:                                  # a speck of shadow or dust in 2 views: no reason for a coarser grid
        train.images[:2, :, 2:4, 2:4] = 0.0
    cfg = scenes.scene_config(train, TINY)
    assert cfg.grid_scale == pytest.approx(2 * half_side)
    warning = scenes.grid_warning(train, cfg)
    assert (warning is not None and warning.startswith("warning: the object leaves the grid")) == warns, warning


ROTATION = scenes.look_at(np.array([0.0, -2.5, 1.0]), np.zeros(3))


@pytest.mark.parametrize("pose, message", [
    (ROTATION @ np.diag([1.0, 1.0, -1.0, 1.0]), "the pose's 3x3 part is a reflection (determinant -1)"),
    (np.block([[3 * ROTATION[:3, :3], ROTATION[:3, 3:]], [np.array([[0, 0, 0, 1.0]])]]), "a rotation scaled by 3"),
    (np.vstack([ROTATION[:3], [1, 1, 1, 5]]), "the pose's last row must be 0 0 0 1, got 1 1 1 5"),
    (np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), "not a rotation (its columns are not orthonormal)"),
])
def test_a_pose_must_be_a_proper_rotation_and_a_translation(tmp_path, pose, message):
    root = write_scene(tmp_path / "scene")
    np.savetxt(root / "train" / "pose" / "000001.txt", pose)
    with pytest.raises(dv.DataError) as error:
        scenes.load_split(root, "train", 16)
    assert str(error.value).startswith(str(root / "train" / "pose" / "000001.txt")) and message in str(error.value)


def test_text_files_are_utf8_a_bom_allowed_and_a_folder_is_named(tmp_path):
    root = write_scene(tmp_path / "scene")
    intrinsics = root / "train" / "intrinsics.txt"
    text = intrinsics.read_text()
    intrinsics.write_bytes(b"\xef\xbb\xbf" + text.encode())                            # UTF-8 with a byte-order mark
    assert scenes.load_split(root, "train", 16).intrinsics.focal == pytest.approx(20.0)
    intrinsics.write_bytes(text.encode("utf-16"))
    with pytest.raises(dv.DataError, match="intrinsics.txt: is not UTF-8 text"):
        scenes.load_split(root, "train", 16)
    intrinsics.write_text(text)
    pose = root / "train" / "pose" / "000001.txt"
    pose.unlink()
    pose.mkdir()
    with pytest.raises(dv.DataError, match="000001.txt: is a folder, not a file"):
        scenes.load_split(root, "train", 16)


def test_colmap_image_names_that_are_not_utf8_are_one_line(cube, tmp_path):
    root = export_colmap(cube, tmp_path / "colmap")
    images = root / "sparse" / "0" / "images.txt"
    images.write_bytes(images.read_bytes().replace(b"001.png", "00\xe9.png".encode("latin-1")))
    with pytest.raises(dv.DataError, match="images.txt: is not UTF-8 text"):
        scenes.load_scene(root, 32)


def test_images_are_one_frame_of_grey_palette_or_rgb_never_read_channel_by_channel(tmp_path):
    from PIL import Image

    root = write_scene(tmp_path / "scene")
    path = root / "train" / "rgb" / "000001.png"
    rgb = iio.imread(path)
    palette = Image.fromarray(rgb).quantize(64)
    palette.save(path)                                                              # converted correctly
    assert np.allclose(scenes.read_image(path), np.asarray(palette.convert("RGB")) / 255, atol=1e-6)
    grey16 = (rgb[..., 1].astype(np.uint16) * 257)
    iio.imwrite(path, grey16)                                                       # 16 bits: the same grey as 8 bits
    assert np.allclose(scenes.read_image(path), (rgb[..., 1:2] / 255).repeat(3, -1), atol=1e-6)
    Image.fromarray(rgb).convert("CMYK").save(path.with_suffix(".jpg"))
    path.unlink()
    with pytest.raises(dv.DataError, match="000001.jpg: colour model CMYK is not RGB, grey or a palette"):
        scenes.load_split(root, "train", 16)
    path.with_suffix(".jpg").unlink()
    Image.fromarray(rgb).save(path, save_all=True, append_images=[Image.fromarray(255 - rgb)])   # an animated PNG
    with pytest.raises(dv.DataError, match="000001.png: holds 2 frames; one image per view"):
        scenes.load_split(root, "train", 16)


def test_held_out_views_with_another_camera_are_refused(cube, tmp_path):
    other = shutil.copytree(cube, tmp_path / "deepvoxels")
    edit(other / "test" / "intrinsics.txt", "40.0 ", "44.0 ")
    with pytest.raises(dv.DataError, match=r"test/intrinsics.txt: the held-out camera \(fx 44"):
        scenes.load_scene(other, 32)
    nerf = export_nerf_synthetic(cube, tmp_path / "nerf")
    meta = json.loads((nerf / "transforms_test.json").read_text())
    (nerf / "transforms_test.json").write_text(json.dumps({**meta, "camera_angle_x": meta["camera_angle_x"] * 1.1}))
    with pytest.raises(dv.DataError, match="transforms_test.json: the held-out camera"):
        scenes.load_scene(nerf, 32)


@pytest.mark.parametrize("layout, breakage, message", [
    ("deepvoxels", lambda r: edit(r / "train" / "intrinsics.txt", "40.0 16.0", "40.0 nan"), "the principal point cx must be a finite number"),
    ("deepvoxels", lambda r: edit(r / "train" / "intrinsics.txt", "\n1.25\n", "\ninf\n"), "the scale (line 4; 0: estimate it) must be a finite number >= 0, got inf"),
    ("deepvoxels", lambda r: edit(r / "train" / "intrinsics.txt", "\n1.25\n", "\n-1\n"), "the scale (line 4; 0: estimate it) must be a finite number >= 0, got -1"),
    ("nsvf", lambda r: (r / "bbox.txt").write_text("-1e308 -1e308 -1e308 1e308 1e308 1e308\n"), "bbox.txt: the box's longest side (max - min) must be a finite number > 0, got inf"),
    ("nsvf", lambda r: (r / "intrinsics.txt").write_text("inf 0 16 0\n0 40 16 0\n0 0 1 0\n0 0 0 1\n"), "intrinsics.txt: the focal length fx must be a finite number > 0, got inf"),
    ("nerf", lambda r: edit(r / "transforms_train.json", '"camera_angle_x": ', '"camera_angle_x": 0, "x": '), "transforms_train.json: frame 0: camera_angle_x must be a finite number > 0 and < 3.14159, got 0"),
    ("colmap", lambda r: edit(r / "sparse" / "0" / "cameras.txt", "PINHOLE 32 32 40", "PINHOLE nan 32 40"), "cameras.txt: line 2: WIDTH must be a finite number >= 1, got nan"),
    ("colmap", lambda r: (r / "sparse" / "0" / "images.txt").write_text(re.sub(r"\n2 \S+ ", "\n2 nan ", (r / "sparse" / "0" / "images.txt").read_text())),
     "images.txt: line 4: quaternion QW QX QY QZ = nan"),
])
def test_numbers_read_from_files_are_finite_and_in_range(cube, tmp_path, layout, breakage, message):
    export = {"deepvoxels": lambda c, r: shutil.copytree(c, r), "nsvf": export_nsvf, "nerf": export_nerf_synthetic, "colmap": export_colmap}
    root = export[layout](cube, tmp_path / layout)
    breakage(root)
    with pytest.raises(dv.DataError) as error:
        scenes.load_scene(root, 32)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("center, side, message", [
    (None, float("nan"), "--grid_scale: the grid's side must be a finite number > 0, got nan"),
    (None, float("inf"), "--grid_scale: the grid's side must be a finite number > 0, got inf"),
    (None, -1.0, "--grid_scale: the grid's side must be a finite number > 0, got -1.0"),
    ((0.0, float("nan"), 0.0), None, "--grid_center: the grid centre's y must be a finite number, got nan"),
])
def test_grid_flags_are_finite_and_positive(cube, center, side, message):
    train, _, _ = scenes.load_scene(cube, 32)
    with pytest.raises(dv.DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scenes.scene_config(train, TINY, center, side)


@pytest.mark.parametrize("sizes, message", [
    ({"img_size": 0}, "img_size / feat_size (0 / 16)"), ({"channels": 0}, "channels, unet_width and occlusion_width"),
    ({"gru_dropout": 2.0}, "gru_dropout (2.0) must be at least 0 and below 1"),
])
def test_config_refuses_sizes_below_one_and_dropout_out_of_range(sizes, message):
    with pytest.raises(dv.DataError, match="^sizes: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        dv.Config(**{**TINY.__dict__, **sizes})


def test_a_failed_checkpoint_write_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    dv.save_checkpoint(path, {"step": 1})

    def disk_full(state, file):                                     # what torch.save does when the disk fills
        Path(file).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(dv.DataError, match="ckpt.pt: cannot write the checkpoint .the write stopped part-way") as error:
        dv.save_checkpoint(path, {"step": 2})
    assert "\n" not in str(error.value) and not (tmp_path / "ckpt.pt.tmp").exists()
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}                       # the saved checkpoint is kept


def test_ball_is_ray_cast_as_a_disc_of_the_analytic_radius_and_small_fills_under_a_third_of_the_frame(tmp_path):
    ball = scenes.Ball((0.0, 0.0, 0.0), 0.5)
    distance, focal, size = 2.5, 80.0, 64
    image = scenes.ray_cast(scenes.look_at(np.array([distance, 0.0, 0.0]), np.zeros(3)), focal, size, (ball,), supersample=1)
    radius_px = focal * ball.radius / np.sqrt(distance ** 2 - ball.radius ** 2)          # the cone's tangent
    assert (image < 1).any(-1).sum() == pytest.approx(np.pi * radius_px ** 2, rel=0.02)   # a ray per pixel centre
    scenes.make_scene(tmp_path / "small", "small", n_train=8, n_test=1, size=48)
    for path in (tmp_path / "small" / "train" / "rgb").glob("*.png"):
        columns = np.flatnonzero((iio.imread(path) < 250).any(-1).any(0))
        assert 0 < columns[-1] - columns[0] + 1 < 48 / 3


# ── Fuzz: every layout broken in many small ways gives exit 0 or one error line, and --check passes only what trains ──

FUZZ_VALUES = ("nan", "inf", "0", "-1", "1e300")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d*)?(?:e[-+]?\d+)?(?![\w.])")


def fuzz_layouts(root: Path) -> dict[str, tuple[Path, list[Path]]]:
    """A tiny cube (4 + 2 views, 16 px) in each of the five layouts, with the text files to break in each."""
    scenes.make_scene(root / "deepvoxels", n_train=4, n_test=2, size=16)
    dv_root = root / "deepvoxels"
    layouts = {"deepvoxels": (dv_root, [dv_root / "train" / "intrinsics.txt", dv_root / "train" / "pose" / "000000.txt",
                                        dv_root / "test" / "intrinsics.txt"])}
    nsvf = export_nsvf(dv_root, root / "nsvf")
    layouts["nsvf"] = (nsvf, [nsvf / "intrinsics.txt", nsvf / "bbox.txt", sorted((nsvf / "pose").glob("0_*"))[0]])
    nerf = export_nerf_synthetic(dv_root, root / "nerf")
    layouts["nerf"] = (nerf, [nerf / "transforms_train.json", nerf / "transforms_test.json"])
    ngp = export_transforms_json(dv_root, root / "ngp")
    layouts["transforms.json"] = (ngp, [ngp / "transforms.json"])
    colmap = export_colmap(dv_root, root / "colmap")
    layouts["colmap"] = (colmap, [colmap / "sparse" / "0" / "cameras.txt", colmap / "sparse" / "0" / "images.txt"])
    return layouts


def breakages(path: Path) -> list[tuple[str, object]]:
    """(name, what to do to the file's text or the file) for one file: numbers made extreme, lines removed or
    duplicated, the file emptied, made a folder or saved as UTF-16."""
    text = path.read_text()
    numbers = list(NUMBER.finditer(text))
    picked = numbers[:12] + numbers[12::max(1, len(numbers) // 6)]               # every number of a small file, a few of a large one
    values = FUZZ_VALUES + (("NaN", "Infinity") if path.suffix == ".json" else ())
    cases = [(f"number {m.group()} at {m.start()} -> {v}", text[:m.start()] + v + text[m.end():]) for m in picked for v in values]
    lines = text.splitlines(keepends=True)
    for i in sorted({0, len(lines) // 2, len(lines) - 1}):
        cases += [(f"line {i + 1} removed", "".join(lines[:i] + lines[i + 1:])), (f"line {i + 1} twice", "".join(lines[:i + 1] + lines[i:]))]
    return cases + [("empty", ""), ("a folder", None), ("UTF-16", text.encode("utf-16"))]


def test_fuzz_every_layout_broken_gives_one_error_line_or_a_run_that_trains(tmp_path, monkeypatch, capsys):
    drawn = []
    monkeypatch.setattr(scenes, "plot_setup", lambda path, train_views, test, cfg: drawn.append(cfg))   # matplotlib takes 0.2 s
    layouts, outcomes, trained = fuzz_layouts(tmp_path / "clean"), {"error": 0, "passed": 0}, 0
    for layout, (clean, files) in layouts.items():
        for file in files:
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
                    train.main(["--data", str(broken), "--out", str(tmp_path / "run"), "--check", *TINY_FLAGS])
                except dv.DataError as error:                                 # the command line prints it as one line
                    assert "\n" not in str(error) and str(error), case
                    outcomes["error"] += 1
                else:                                                         # --check passed: what it passed must train
                    outcomes["passed"] += 1
                    cfg = drawn[-1]
                    assert all(np.isfinite([*cfg.grid_center, cfg.grid_scale, cfg.focal, cfg.cx, cfg.cy, cfg.near])), case
                    if trained < 12 and (any(v in name for v in ("nan", "inf", "1e300", "NaN", "Infinity")) or trained < 3):
                        trained += 1
                        train.main(["--data", str(broken), "--out", str(tmp_path / "run"), "--iters", "2", "--minutes", "0", *TINY_FLAGS])
                shutil.rmtree(broken)
                capsys.readouterr()
    assert outcomes["error"] > 500 and outcomes["passed"] > 10, outcomes


NO_CUDA = [] if torch.cuda.is_available() else [(["--device", "cuda"], "--device cuda: this machine has no such device")]


@pytest.mark.parametrize("flags, message", [
    (["--lrr", "1"], "unrecognized arguments: --lrr 1"), (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--lr", "-1"], "--lr: the value must be a finite number > 0, got -1.0"),
    (["--eval_every", "0"], "--eval_every: the value must be a finite number > 0, got 0.0"),
    (["--decay_from", "2"], "--decay_from: the value must be a finite number >= 0 and <= 1, got 2.0"),
    (["--img_size", "0"], "sizes: img_size / feat_size (0 / 32)"), (["--channels", "0"], "sizes: channels, unet_width and occlusion_width"),
    (["--gru_dropout", "2"], "gru_dropout (2.0) must be at least 0 and below 1"),
    (["--crop", "8", *TINY_FLAGS[:4]], "--crop 8: leaves no pixel of the 16 px images for the loss"),
    (["--device", "tpu9"], "--device tpu9: not a device torch knows"), *NO_CUDA,
    (["--grid_scale", "nan"], "--grid_scale: the value must be a finite number >= 0, got nan"),
    (["--grid_scale", "-1"], "--grid_scale: the value must be a finite number >= 0, got -1.0"),
    (["--grid_center", "0 nan 0"], "--grid_center: the grid centre's y must be a finite number, got nan"),
])
def test_train_flags_are_checked_before_any_work_in_one_line(cube, tmp_path, flags, message):
    with pytest.raises(dv.DataError) as error:
        train.main(["--data", str(cube), "--out", str(tmp_path / "run"), *flags])
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_a_misspelt_flag_is_one_line_and_exit_1_in_every_script(tmp_path):
    import subprocess
    import sys

    for script in ("train.py", "render.py", "ablation.py"):
        result = subprocess.run([sys.executable, str(Path(__file__).parent / script), "--itres", "5"], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, (script, result.stderr)
        assert result.stderr.startswith(f"error: {script}: unrecognized arguments: --itres 5"), result.stderr


def test_outputs_are_checked_writable_before_any_work(cube, tmp_path):
    (tmp_path / "run" / "cameras.png").mkdir(parents=True)
    with pytest.raises(dv.DataError, match="cameras.png: is a folder, so cameras.png cannot be written there"):
        train.main(["--data", str(cube), "--out", str(tmp_path / "run"), "--iters", "1", *TINY_FLAGS])
    assert not (tmp_path / "run" / "ckpt.pt").exists()


@pytest.mark.parametrize("entry", ["optimizer", "step", "sampler_rng"])
def test_resume_refuses_a_checkpoint_without_an_entry_it_reads(cube, tmp_path, entry):
    common = ["--data", str(cube), "--out", str(tmp_path), "--minutes", "0", *TINY_FLAGS]
    train.main([*common, "--iters", "1"])
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    del state[entry]
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(dv.DataError, match=f"ckpt.pt: not a DeepVoxels checkpoint of this version .no valid {entry} entry"):
        train.main([*common, "--iters", "2", "--resume"])


def test_render_checks_its_device_and_numbers_before_loading_anything(tmp_path):
    import render

    cases = [(["--frames", "0"], "--frames: the value must be a finite number >= 1, got 0"), (["--device", "tpu9"], "not a device torch knows")]
    if not torch.cuda.is_available():                  # the checkpoint is never called "not a DeepVoxels checkpoint" for it
        cases.append((["--device", "cuda"], "--device cuda: this machine has no such device"))
    for flags, message in cases:
        with pytest.raises(dv.DataError, match=re.escape(message)):
            render.main(["--ckpt", str(tmp_path / "missing.pt"), *flags])
