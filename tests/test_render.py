"""render.py and the metrics: PSNR and SSIM against direct formulas, the orbit, the evaluation,
bad input."""

from __future__ import annotations

import json
import os
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
import render
import train
from scenes import evaluation, grid, layouts, runs, views

from conftest import TINY, TINY_FLAGS, run_render


# ── render.py: PSNR and SSIM, the orbit, evaluation, bad input ──────────────────────────────

@pytest.fixture(scope="session")
def tiny_run(cube, tmp_path_factory) -> Path:
    """A run folder with a checkpoint trained for 3 steps at the tiny sizes."""
    out = tmp_path_factory.mktemp("runs") / "cube"
    train.main(["--data", str(cube), "--out", str(out), "--iters", "3", "--minutes", "0",
                "--eval_every", "1e9", "--log_every", "1e9", "--precision", "fp32", *TINY_FLAGS])
    return out


def test_psnr_matches_numpy():
    torch.manual_seed(0)
    # predictions outside [0, 1] are clamped
    a, b = torch.rand(3, 3, 8, 8) * 1.2 - 0.1, torch.rand(3, 3, 8, 8)
    mse = ((np.clip(a.numpy(), 0, 1) - b.numpy()) ** 2).reshape(3, -1).mean(1)
    assert np.allclose(evaluation.psnr(a, b).numpy(), 10 * np.log10(1 / mse), atol=1e-4)
    # MSE 0.01
    assert evaluation.psnr(b * 0 + 0.5, b * 0 + 0.6).numpy() == pytest.approx([20.0] * 3, abs=1e-4)


def ssim_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2004 written out: one 11x11 Gaussian window (sigma 1.5) per valid position and
    channel."""
    d = np.arange(11) - 5
    w = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * 1.5 ** 2))
    w /= w.sum()
    # K1, K2 times the dynamic range L = 1
    c1, c2 = (0.01 * 1) ** 2, (0.03 * 1) ** 2
    values = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                px, py = x[c, i:i + 11, j:j + 11], y[c, i:i + 11, j:j + 11]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cov = (w * (px - mx) * (py - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cov + c2)
                              / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_direct_formula_and_its_properties():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 15, 14)
    y = (0.7 * x + 0.3 * torch.rand(2, 3, 15, 14)).clamp(0, 1)
    expected = [ssim_direct(x[k].double().numpy(), y[k].double().numpy()) for k in range(2)]
    assert np.allclose(evaluation.ssim(x, y).numpy(), expected, atol=1e-5)
    assert torch.allclose(evaluation.ssim(x, x), torch.ones(2), atol=1e-6)  # identical images
    assert torch.allclose(evaluation.ssim(x, y), evaluation.ssim(y, x), atol=1e-6)  # symmetric
    smooth = torch.linspace(0, 1, 32).expand(1, 3, 32, 32)
    noisy = [(smooth + s * torch.randn(1, 3, 32, 32)).clamp(0, 1) for s in (0.02, 0.1, 0.3)]
    scores = [evaluation.ssim(n, smooth).item() for n in noisy]
    # more noise, lower SSIM
    assert 1 > scores[0] > scores[1] > scores[2]


def test_orbit_circles_the_grid_centre_at_the_training_cameras_mean_distance(cube):
    scene = layouts.load_split(cube, "train", 16)
    cfg = replace(TINY, grid_center=(0.2, -0.1, 0.3))
    poses = views.orbit_poses(cfg.grid_center, views.orbit_radius(scene.poses, cfg.grid_center),
                               8, 30.0).double().numpy()
    eyes = poses[:, :3, 3] - np.array(cfg.grid_center)
    radius = np.mean([np.linalg.norm(p[:3, 3] - np.array(cfg.grid_center))
                      for p in scene.poses.double().numpy()])
    assert np.allclose(np.linalg.norm(eyes, axis=1), radius, atol=1e-5)
    # 30 degrees up
    assert np.allclose(eyes[:, 2], radius * np.sin(np.radians(30)), atol=1e-5)
    # looking at the centre
    assert np.allclose(poses[:, :3, 2], -eyes / radius, atol=1e-5)
    azimuth = np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0]))
    # a full turn in 8 steps
    assert np.allclose(np.diff(azimuth) % 360, 45, atol=1e-3)


def test_evaluate_renders_in_eval_mode_and_restores_the_mode(cube):
    torch.manual_seed(0)
    scene = layouts.load_split(cube, "test", 16)
    model = dv.DeepVoxels(grid.scene_config(scene, asdict(TINY)))
    model.fuse(scene.images[:1], scene.poses[:1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    psnr, rgb, _ = evaluation.evaluate(model.train(), scene, "cpu", "fp32")
    assert all(m.training for m in model.modules())
    # batch-norm statistics untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        expected = model.eval().render(scene.poses)["rgb"]
    assert torch.allclose(rgb, expected, atol=1e-6)
    assert psnr == pytest.approx(evaluation.psnr(expected, scene.images).mean().item(), abs=1e-5)
    evaluation.evaluate(model, scene, "cpu", "fp32")
    assert not any(m.training for m in model.modules())


def test_newest_checkpoint_takes_the_newest_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(dv.DataError, match="no \\*/ckpt.pt found"):
        runs.newest_checkpoint()
    for name, mtime in (("old", 1000), ("new", 2000), ("older", 500)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "ckpt.pt").write_bytes(b"")
        os.utime(tmp_path / "runs" / name / "ckpt.pt", (mtime, mtime))
    assert runs.newest_checkpoint() == Path("runs/new/ckpt.pt")
    assert runs.newest_checkpoint(run="x") == Path("x/ckpt.pt")
    assert runs.newest_checkpoint(ckpt="y.pt") == Path("y.pt")


def test_render_end_to_end(tiny_run, cube, tmp_path, capsys):
    report = render.main(["--run", str(tiny_run), "--frames", "6", "--size", "24",
                          "--precision", "fp32"])
    out = tiny_run / "render"
    assert json.loads((out / "metrics.json").read_text()) == report
    assert report["step"] == 3
    assert report["split"] == "test"
    assert [v["name"] for v in report["views"]] == ["000000", "000001", "000002", "000003"]
    assert report["mean"]["psnr"] == pytest.approx(np.mean([v["psnr"] for v in report["views"]]),
                                                   abs=1e-3)
    assert report["fps"] > 0
    assert f"{report['fps']:.1f} fps" in capsys.readouterr().out
    # Every test PSNR again, independently: the checkpoint's model in eval mode, numpy PSNR.
    model, _ = runs.load_checkpoint(tiny_run / "ckpt.pt")
    test, train_split = layouts.load_split(cube, "test", 16), layouts.load_split(cube, "train", 16)
    with torch.no_grad():
        pred = model.eval().render(test.poses)["rgb"].clamp(0, 1).numpy()
    mse = ((pred - test.images.numpy()) ** 2).reshape(4, -1).mean(1)
    assert np.allclose([v["psnr"] for v in report["views"]], -10 * np.log10(mse), atol=1e-3)
    # The baseline: the training image whose viewing direction (camera z axis) is closest, in numpy.
    closest = np.argmax(test.poses[:, :3, 2].numpy() @ train_split.poses[:, :3, 2].numpy().T,
                        axis=1)
    mse = ((train_split.images.numpy()[closest] - test.images.numpy()) ** 2).reshape(4, -1).mean(1)
    assert np.allclose([v["baseline_psnr"] for v in report["views"]], -10 * np.log10(mse),
                       atol=1e-3)
    # The GIF: 6 frames of RGB | depth at 24 px; RGB is the model's orbit (up to the GIF's palette),
    # depth is coloured.
    frames = iio.imread(out / "orbit.gif")
    assert frames.shape == (6, 24, 48, 3)
    with torch.no_grad():
        orbit = model.render(views.orbit_poses(
            model.cfg.grid_center, views.orbit_radius(train_split.poses, model.cfg.grid_center),
            6, 20.0))["rgb"]
    orbit = nn.functional.interpolate(orbit, size=(24, 24), mode="bilinear",
                                      antialias=True).clamp(0, 1)
    assert np.abs(frames[:, :, :24] / 255 - orbit.permute(0, 2, 3, 1).numpy()).mean() < 0.02
    assert np.abs(frames[:, :, 24:, 0].astype(int) - frames[:, :, 24:, 2]).mean() > 10
    assert iio.imread(out / "sheet.png").shape == (4 * 24, 4 * 24, 3)
    assert (out / "orbit.gif").stat().st_size < 200_000


def test_render_poses_folder_and_a_model_without_depth(cube, tmp_path):
    train.main(["--data", str(cube), "--out", str(tmp_path / "run"), "--iters", "1",
                "--minutes", "0", "--occlusion", "naive", *TINY_FLAGS])
    render.main(["--ckpt", str(tmp_path / "run" / "ckpt.pt"),
                 "--poses", str(cube / "train" / "pose"), "--out", str(tmp_path / "out")])
    frames = iio.imread(tmp_path / "out" / "path.gif")
    # one frame per pose file, model size
    assert frames.shape == (12, 16, 32, 3)
    assert np.abs(frames[:, :, 16:].astype(int) - 128).max() <= 1           # no depth: a grey panel


def test_render_cli_reports_bad_input_in_one_line(tiny_run, cube, tmp_path):
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "poses").mkdir()
    np.savetxt(tmp_path / "poses" / "000000.txt", np.eye(4))
    (tmp_path / "poses" / "000001.txt").write_text("1 2 3")
    (tmp_path / "a_file").write_text("")
    ckpt = str(tiny_run / "ckpt.pt")
    cases = [(["--ckpt", str(tmp_path / "missing.pt")], "missing.pt: no such checkpoint"),
             (["--ckpt", str(tmp_path / "corrupt.pt")], "corrupt.pt: not a DeepVoxels checkpoint"),
             (["--ckpt", ckpt, "--data", str(tmp_path / "nodata")], "nodata: no such data folder"),
             (["--ckpt", ckpt, "--poses", str(tmp_path / "poses")],
              "000001.txt: pose must be 16 numbers"),
             (["--ckpt", ckpt, "--poses", str(tmp_path / "noposes")],
              "noposes: no such poses folder"),
             (["--ckpt", ckpt, "--out", str(tmp_path / "a_file" / "render")],
              "render: cannot write the output folder")]
    for args, message in cases:
        result = run_render(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr


def test_render_checks_its_device_and_numbers_before_loading_anything(tmp_path):
    cases = [(["--frames", "0"], "--frames: the value must be a finite number >= 1, got 0"),
             (["--device", "tpu9"], "not a device torch knows")]
    # the checkpoint is never called "not a DeepVoxels checkpoint" for it
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda: this machine has no such device"))
    for flags, message in cases:
        with pytest.raises(dv.DataError, match=re.escape(message)):
            render.main(["--ckpt", str(tmp_path / "missing.pt"), *flags])


def test_render_without_held_out_views_scores_the_baseline_on_each_views_nearest_other(
        cube, tmp_path):
    """With no test/ split render.py scores the training views, and the baseline copies each
    one's nearest other view: copying the view itself would score about 100 dB."""
    data = shutil.copytree(cube, tmp_path / "no_test")
    shutil.rmtree(data / "test")
    train.main(["--data", str(data), "--out", str(tmp_path / "run"), "--iters", "1",
                "--minutes", "0", *TINY_FLAGS])
    report = render.main(["--run", str(tmp_path / "run"), "--frames", "1"])
    train_views = layouts.load_split(data, "train", 16)
    nearest = train_views.images[views.view_neighbours(train_views.poses)[:, 0]]
    expected = evaluation.psnr(nearest, train_views.images).mean().item()
    assert report["split"] == "train"
    assert report["mean"]["baseline_psnr"] == pytest.approx(expected, abs=1e-3)
