"""The extra commands: the viewer and the architecture figure, the ablation."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import deepvoxels as dv
from scenes import evaluation, grid, layouts, runs, views
from tools import viewer

from conftest import (ROOT, SMALL, TINY, TINY_FLAGS, export_nerf_synthetic, export_colmap,
                      tiny_checkpoints)


# ── Viewer and architecture figure ──────────────────────────────────────────────────────────


def send(figure, name: str, ax, u: float, v: float, button: int = 1):
    """A synthetic mouse event at image coordinates (u, v) of axes `ax`, through the figure's
    callbacks."""
    from matplotlib.backend_bases import MouseEvent

    x, y = ax.transData.transform((u, v))
    figure.canvas.callbacks.process(name, MouseEvent(name, figure.canvas, x, y, button=button))


def test_viewer_orbits_on_drag_plots_the_clicked_ray_and_switches_models(tmp_path):
    from matplotlib.backend_bases import KeyEvent
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = tiny_checkpoints(tmp_path / "ablation")
    loaded, _ = viewer.find_models(viewer.parse_args(["--run", str(tmp_path / "ablation")]))
    assert sorted(loaded) == ["naive", "softmax"]
    figure = Figure()
    FigureCanvasAgg(figure)
    window = viewer.Viewer(loaded, radius=2.5, figure=figure, azimuth=0.0, elevation=20.0)
    figure.canvas.draw()

    def expected(kind: str, azimuth: float, elevation: float) -> dict:
        """The model's render from a camera placed by hand: 2.5 units from the origin, world z
        up."""
        a, e = np.radians(azimuth), np.radians(elevation)
        eye = 2.5 * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        with torch.no_grad():
            return models[kind].render(
                torch.from_numpy(views.look_at(eye, np.zeros(3))).float()[None])

    shown = lambda: window.ax_rgb.images[0].get_array()
    assert np.allclose(shown(),
                       expected("softmax", 0, 20)["rgb"][0].clamp(0, 1).permute(1, 2, 0).numpy(),
                       atol=1e-5)
    # drag 50 screen pixels right and 25 up on the RGB panel:
    # the camera turns -20 degrees, goes 10 down
    x0, y0 = window.ax_rgb.transData.transform((8.0, 8.0))
    u1, v1 = window.ax_rgb.transData.inverted().transform((x0 + 50, y0 + 25))
    send(figure, "button_press_event", window.ax_rgb, 8.0, 8.0)
    send(figure, "motion_notify_event", window.ax_rgb, u1, v1)
    send(figure, "button_release_event", window.ax_rgb, u1, v1)
    assert (window.azimuth, window.elevation) == pytest.approx((-20.0, 10.0), abs=1e-6)
    assert window.pixel is None
    after_drag = expected("softmax", -20, 10)
    assert np.allclose(shown(), after_drag["rgb"][0].clamp(0, 1).permute(1, 2, 0).numpy(),
                       atol=1e-5)
    # click feature pixel (row 5, column 11) on the depth panel:
    # its weights against the plane depths
    send(figure, "button_press_event", window.ax_depth, 11.5, 5.5)
    send(figure, "button_release_event", window.ax_depth, 11.6, 5.4)
    assert window.pixel == (5, 11)
    assert (window.azimuth, window.elevation) == pytest.approx((-20.0, 10.0))
    (line,) = window.ax_ray.lines[:1]
    near, far = dv.view_depth_range(window.pose, models["softmax"].cfg)
    assert np.allclose(line.get_xdata(), np.linspace(near.item(), far.item(), 8), atol=1e-5)
    assert np.allclose(line.get_ydata(), after_drag["weights"][0, :, 5, 11].numpy(), atol=1e-6)
    assert line.get_ydata().sum() == pytest.approx(1.0, abs=1e-5)
    # t: the naive model from the same camera, which has no weights to plot
    figure.canvas.callbacks.process("key_press_event",
                                    KeyEvent("key_press_event", figure.canvas, "t"))
    assert window.kind == "naive"
    assert not window.ax_ray.lines
    assert np.allclose(shown(),
                       expected("naive", -20, 10)["rgb"][0].clamp(0, 1).permute(1, 2, 0).numpy(),
                       atol=1e-5)


def test_architecture_figure_shows_the_forward_pass_shapes_and_is_current(tmp_path):
    # sizes unlike the defaults: every letter differs
    cfg = replace(SMALL, grid_size=12, depth_planes=24)
    drawn = viewer.draw_architecture(dv.DeepVoxels(cfg), tmp_path / "architecture.png")
    letters = {"B": 2, "C": cfg.channels, "N": cfg.grid_size, "D": cfg.depth_planes,
               "h": cfg.feat_size, "w": cfg.feat_size, "H": cfg.img_size, "W": cfg.img_size}
    # the letters of the docstrings, evaluated by hand
    for arrow in drawn["arrows"]:
        expected = [letters.get(part, None) or int(part)
                    for part in arrow["letters"].strip("()").split(", ")]
        assert arrow["shape"] == expected, arrow
    assert json.loads(iio.immeta(tmp_path / "architecture.png")["Description"]) == drawn
    assert drawn["parameters"]["total"] == sum(p.numel() for p in dv.DeepVoxels(cfg).parameters())
    assert {a["key"] for a in drawn["arrows"]} >= {"features", "lifted", "grid", "inpainted",
                                                   "view_volume", "weights", "depth", "rgb"}
    # the picture in the README: drawn from the current default model
    stored = json.loads(iio.immeta(ROOT / "assets" / "architecture.png")["Description"])
    current = viewer.architecture(dv.DeepVoxels(dv.Config()))
    assert stored == current, (
        "assets/architecture.png is out of date: redraw it with "
        " python -m tools.viewer --architecture")


# ── Ablation ────────────────────────────────────────────────────────────────────────────────

def test_ablation_holdout_half_trains_on_one_azimuth_half_and_holds_out_far_views(cube, tmp_path):
    from tools import ablation

    scene = ablation.split_by_azimuth(cube, tmp_path / "half", 20.0,
                                      asdict(replace(TINY, img_size=32)))
    train_views, held_out = (layouts.load_split(scene, "train", 32),
                             layouts.load_split(scene, "test", 32))
    every = torch.cat([layouts.load_split(cube, s, 32).poses
                       for s in ("train", "test")]).double().numpy()
    eyes = every[:, :3, 3]
    # azimuth in [0, 180): y >= 0 (grid centre 0)
    y_positive = eyes[:, 1] >= 0
    assert len(train_views.names) == y_positive.sum()
    assert (train_views.poses[:, 1, 3] >= 0).all()
    directions = every[:, :3, 2]
    angles = np.degrees(np.arccos(np.clip(directions @ directions[y_positive].T, -1, 1))).min(1)
    assert len(held_out.names) == (~y_positive & (angles >= 20)).sum() > 0
    assert (held_out.poses[:, 1, 3] < 0).all()
    assert (ablation.angle_to_training(train_views, held_out) >= 20 - 1e-3).all()
    # written at 32 px as read
    k, name = next((k, n) for k, n in enumerate(train_views.names) if n.startswith("train"))
    assert torch.equal(train_views.images[k],
                       layouts.load_split(cube, "train", 32).images[int(name[5:])])
    assert (train_views.intrinsics.focal
            == pytest.approx(layouts.load_split(cube, "train", 32).intrinsics.focal))


def test_ablation_hold_outs_write_the_grid_flags_and_one_focal_length(cube, tmp_path):
    from tools import ablation

    sizes = asdict(replace(TINY, img_size=32))
    scene = ablation.split_sparse(cube, tmp_path / "sparse", 3, sizes, ((0.1, 0.0, 0.0), 2.0))
    lines = (scene / "train" / "intrinsics.txt").read_text().splitlines()
    # --grid_center and --grid_scale reach the written split
    assert lines[1].split() == ["0.1", "0.0", "0.0"]
    assert float(lines[3]) == 2.0
    views = {"train": [("train", layouts.load_split(cube, "train", 32), 0)]}
    cfg = grid.scene_config(views["train"][0][1], sizes)
    written = ablation.write_views(tmp_path / "near", views,
                                   replace(cfg, focal=40.0, focal_y=40.2))
    # fx and fy 0.5 % apart: their mean, the layout's one focal length
    assert float((written / "train" / "intrinsics.txt").read_text().split()[0]) == 40.1
    with pytest.raises(dv.DataError, match=r"differ by more than 1 % \(40, 41\)"):
        ablation.write_views(tmp_path / "far", views, replace(cfg, focal=40.0, focal_y=41.0))


def test_ablation_holdout_sparse_keeps_views_far_apart_and_the_whole_test_split(cube, tmp_path):
    from tools import ablation

    scene = ablation.split_sparse(cube, tmp_path / "sparse", 5, asdict(replace(TINY, img_size=32)))
    kept, every = layouts.load_split(scene, "train", 32), layouts.load_split(cube, "train", 32)
    assert len(kept.names) == 5
    assert all(name.startswith("train") for name in kept.names)
    order = [int(name[5:11]) for name in kept.names]
    assert order[0] == 0
    assert torch.equal(kept.images, every.images[order])
    angle = lambda a, b: np.degrees(
        np.arccos(np.clip(float(every.poses[a, :3, 2] @ every.poses[b, :3, 2]), -1, 1)))
    # the greedy rule, by hand: each next view is the one farthest from its closest chosen view
    chosen = [0]
    for _ in range(4):
        chosen.append(max((v for v in range(len(every.names)) if v not in chosen),
                          key=lambda v: min(angle(v, c) for c in chosen)))
    assert sorted(chosen) == order
    test, original = layouts.load_split(scene, "test", 32), layouts.load_split(cube, "test", 32)
    assert torch.equal(test.images, original.images)
    assert torch.allclose(test.poses, original.poses, atol=1e-6)
    shutil.copytree(cube / "train", tmp_path / "no_test" / "train")
    with pytest.raises(
            dv.DataError,
            match="no_test: --holdout sparse tests on the scene's held-out views, and it has none"):
        ablation.split_sparse(tmp_path / "no_test", tmp_path / "out", 5,
                              asdict(replace(TINY, img_size=32)))


@pytest.mark.parametrize("layout", ["nerf", "colmap"])
def test_ablation_holdouts_work_on_other_layouts(cube, tmp_path, layout):
    from tools import ablation

    export = {"nerf": export_nerf_synthetic, "colmap": export_colmap}[layout]
    source = export(cube, tmp_path / layout)
    train, held_out, _ = layouts.load_layout(source, 32)
    half = ablation.split_by_azimuth(source, tmp_path / "half", 20.0,
                                     asdict(replace(TINY, img_size=32)))
    written = [layouts.load_split(half, s, 32) for s in ("train", "test")]
    assert sum(len(s.names) for s in written) <= len(train.names) + len(held_out.names)
    # by azimuth
    assert all((s.poses[:, 1, 3] >= 0).all() == (s is written[0]) for s in written)
    sparse = ablation.split_sparse(source, tmp_path / "sparse", 4,
                                   asdict(replace(TINY, img_size=32)))
    assert torch.allclose(layouts.load_split(sparse, "test", 32).poses, held_out.poses, atol=1e-6)


def test_ablation_runs_both_models_and_logs_the_training_views_psnr_beside_the_held_out_one(
        cube, tmp_path, capsys):
    from tools import ablation

    ablation.main(["--data", str(cube), "--out", str(tmp_path), "--iters", "2", "--minutes", "0",
                   "--eval_every", "1e-9", "--precision", "fp32", *TINY_FLAGS])
    table = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith(("| softmax", "| naive"))]
    assert len(table) == 2
    assert (tmp_path / "ablation.png").exists()
    assert (tmp_path / "ablation-curves.png").exists()
    train_views = layouts.load_split(cube, "train", 16)
    # the 8 views train.py scores
    watched = torch.linspace(0, len(train_views.names) - 1, 8).round().long()
    for kind in ("softmax", "naive"):
        model, state = runs.load_checkpoint(tmp_path / kind / "ckpt.pt")
        assert [h["step"] for h in state["history"]] == [1, 2]
        with torch.no_grad():
            # the saved step, scored again
            rgb = model.eval().render(train_views.poses[watched])["rgb"]
        assert (state["history"][-1]["train_psnr"]
                == pytest.approx(evaluation.psnr(rgb, train_views.images[watched]).mean().item(),
                                 abs=2e-3))
