"""Render a trained DeepVoxels model:  python render.py --run runs/cube

1. A 360-degree orbit of novel views around the grid centre, RGB | depth side by side, written as
   orbit.gif (and orbit.mp4 when imageio can write MP4). `--poses DIR` renders your own path.
2. Every test view rendered from the persistent grid alone (no encoder, no GRU), with PSNR and
   SSIM per view and their means, next to the nearest-neighbour baseline (copy the training image
   whose viewing direction is closest): a table on screen and metrics.json.
3. sheet.png: ground truth | prediction | depth | absolute error for a few test views.

The model, its configuration, the orbit's radius and where its data is come from the checkpoint: a
run renders from any working directory; where its data folder is gone, the orbit alone. Metrics are
computed at the size the model renders (its img_size); --size only resizes the images written. The
interactive viewer and the architecture figure: python -m tools.viewer.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

import deepvoxels as dv
from scenes import dataset, evaluation, figures, runs, settings, views
from scenes.files import check_number, to_uint8
from scenes.layouts import Scene, read_pose_folder

VIDEO_FPS = 12   # playback speed of the orbit: 36 frames make a 3-second turn
SHEET_VIEWS = 4  # test views on sheet.png, spread over the test split


def parse_args(argv=None) -> argparse.Namespace:
    """Flags; every one has a default, so `python render.py` renders the newest run."""
    p = settings.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--ckpt", help="checkpoint file (default: the newest runs/*/ckpt.pt)")
    which.add_argument("--run", help="run folder holding ckpt.pt (default: the newest under runs/)")
    p.add_argument("--data", help="scene folder for the test views (default: the one the "
                                  "checkpoint was trained on)")
    p.add_argument("--poses", help="folder of pose .txt files (dataset format, e.g. "
                                   "cube/test/pose) to render as path.gif instead of the orbit")
    p.add_argument("--frames", type=int, default=36, help="frames of the orbit (default: 36)")
    p.add_argument("--elevation", type=float, default=20.0,
                   help="orbit elevation above the grid centre in degrees, -90 to 90 (default: 20)")
    p.add_argument("--size", type=int, default=0,
                   help="pixel size of the written frames (default: the model's img_size)")
    p.add_argument("--out", help="output folder (default: <run>/render)")
    settings.add_device_flags(p)
    args = p.parse_args(argv)
    check_number("--frames", "the value", args.frames, (">=", 1))
    check_number("--elevation", "the value", args.elevation, (">=", -90), ("<=", 90))
    check_number("--size", "the value", args.size, (">=", 0))
    settings.check_device(args.device)
    return args


def write_video(stem: Path, frames: np.ndarray) -> list[Path]:
    """Write frames (T, H, W, 3) as stem.gif, and stem.mp4 when imageio has an MP4 writer."""
    iio.imwrite(stem.with_suffix(".gif"), frames, duration=1000 / VIDEO_FPS, loop=0)
    try:
        iio.imwrite(stem.with_suffix(".mp4"), frames, fps=VIDEO_FPS)
    except Exception as e:  # imageio raises OSError without a backend, others when one fails
        stem.with_suffix(".mp4").unlink(missing_ok=True)
        print(f"wrote {stem.name}.gif; for an MP4 as well, pip install imageio[ffmpeg] "
              f"(imageio has no MP4 writer here: {type(e).__name__})")
        return [stem.with_suffix(".gif")]
    return [stem.with_suffix(".gif"), stem.with_suffix(".mp4")]


def main(argv=None) -> dict:
    """Render the orbit (or --poses), score every test view, write the sheet; returns what
    metrics.json holds (without the data folder: the orbit alone, and what it wrote)."""
    args = parse_args(argv)
    ckpt = runs.newest_checkpoint(args.ckpt, args.run)
    model, state = runs.load_checkpoint(ckpt, args.device,  # weights_only
                                        {"step": int, "seconds": float, "scene": dict})
    model.eval()
    data = Path(args.data) if args.data else runs.find_data(state["scene"]["data"], ckpt)
    if args.data and not data.is_dir():
        raise dv.DataError(f"{data}: no such data folder")
    path = read_pose_folder(Path(args.poses)) if args.poses else None
    precision = dv.resolve_precision(args.device, args.precision)  # what auto chose, for the log
    print(f"{ckpt}: step {state['step']}, {state['seconds'] / 60:.1f} min of training; "
          f"{data or 'no data folder'} at {model.cfg.img_size}px; device {args.device}, "
          f"{precision}")
    scene = (dataset.open_scene(data, settings.sizes_of(model.cfg), model.cfg.grid_center,
                                model.cfg.grid_scale, check_grid=False)[:2]
             if data else None)                                               # before any output
    out = Path(args.out or ckpt.parent / "render")
    video = "path" if args.poses else "orbit"
    with runs.claimed(out), dv.flushed_denormals():  # one command at a time writes there
        runs.check_writable(out, "metrics.json", "sheet.png", f"{video}.gif", f"{video}.mp4")
        return render_run(model, state, ckpt, data, scene, path, out, args, precision)


def render_run(model: dv.DeepVoxels, state: dict, ckpt: Path, data: Path | None,
               scene: tuple[Scene, Scene | None] | None, path: torch.Tensor | None, out: Path,
               args: argparse.Namespace, precision: str) -> dict:
    """The three outputs of main into `out`; `scene`: the training and held-out views of the
    folder `data`, or None when it is gone; `path`: --poses or None for the orbit; `precision`:
    what --precision resolved to, for metrics.json."""
    cfg, size = model.cfg, args.size or model.cfg.img_size

    # 1. The orbit (or --poses), RGB | depth per frame.
    if path is None:
        path = views.orbit_poses(cfg.grid_center, state["scene"]["orbit_radius"], args.frames,
                                  args.elevation)
    rgb, depth, seconds = evaluation.render_views(model, path, args.device, args.precision)
    near, far = dv.view_depth_range(path, cfg)  # one colour scale for every frame
    depth_range = (near.min().item(), far.max().item())
    frames = torch.cat([figures.resize(rgb, size),
                        figures.depth_images(depth, len(rgb), size, depth_range)], dim=3)
    videos = write_video(out / ("path" if args.poses else "orbit"), to_uint8(frames))
    if scene is None:
        print(f"{state['scene']['data']['absolute']}: the data folder is gone: wrote "
              f"{', '.join(map(str, videos))} only (the metrics and sheet.png need --data)")
        return {"checkpoint": str(ckpt), "step": state["step"], "data": None,
                "videos": [str(v) for v in videos]}

    # 2. Every test view from the grid alone, and the nearest-neighbour baseline on the same views.
    train, held_out = scene
    split, test = ("train", train) if held_out is None else ("test", held_out)
    pred, pred_depth, test_seconds = evaluation.render_views(model, test.poses, args.device,
                                                          args.precision)
    nearest = evaluation.nearest_views(train, held_out)
    scores = {"psnr": evaluation.psnr(pred, test.images),
              "ssim": evaluation.ssim(pred, test.images),
              "baseline_psnr": evaluation.psnr(nearest, test.images),
              "baseline_ssim": evaluation.ssim(nearest, test.images)}
    ms = 1000 * statistics.median((seconds + test_seconds)[1:])   # the first view warms up
    report = {"checkpoint": str(ckpt), "step": state["step"], "data": str(data), "split": split,
              "img_size": cfg.img_size, "device": args.device, "precision": precision,
              "render_ms": round(ms, 2), "fps": round(1000 / ms, 1),
              "mean": {k: round(v.mean().item(), 4) for k, v in scores.items()},
              "views": [{"name": name, **{k: round(v[i].item(), 4) for k, v in scores.items()}}
                        for i, name in enumerate(test.names)]}
    (out / "metrics.json").write_text(json.dumps(report, indent=1))

    # 3. The sheet: ground truth | prediction | depth | absolute error
    #    (mean over colours, not scaled).
    pick = views.evenly_spaced(len(test.names), SHEET_VIEWS)
    error = ((pred[pick].clamp(0, 1) - test.images[pick]).abs().mean(1, keepdim=True)
             .expand(-1, 3, -1, -1))
    rows = torch.cat([figures.resize(test.images[pick], size), figures.resize(pred[pick], size),
                      figures.depth_images(pred_depth, len(pred), size)[pick],
                      figures.resize(error, size)], dim=3)
    # rows stacked vertically
    iio.imwrite(out / "sheet.png", np.concatenate(to_uint8(rows)))

    print(f"{'view':>10} {'PSNR':>7} {'SSIM':>6} | {'nearest view: PSNR':>18} {'SSIM':>6}")
    for row in report["views"] + [{"name": "mean", **report["mean"]}]:
        print(f"{row['name']:>10} {row['psnr']:7.2f} {row['ssim']:6.3f} | "
              f"{row['baseline_psnr']:18.2f} {row['baseline_ssim']:6.3f}")
    print(f"render: {ms:.1f} ms per view, {1000 / ms:.1f} fps (median of "
          f"{len(seconds) + len(test_seconds) - 1} views after one warm-up, {cfg.img_size}px, "
          "batch 1)")
    print(f"wrote {', '.join(str(p) for p in [*videos, out / 'metrics.json', out / 'sheet.png'])}")
    return report


if __name__ == "__main__":
    settings.run_command(main)
