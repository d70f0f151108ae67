"""The paper's occlusion ablation (its Fig. 5) on one scene:
  python -m tools.ablation --data ./cube --iters 1000

Trains the model with the visibility softmax and the naive one (depth flattened into channels,
reduced by 2D convolutions) for the same number of steps (or minutes) with train.py, then reports
for both the PSNR on the training and on the held-out views (rendered from the grid alone, as at
test time) and the parameter count, and writes <out>/ablation.png, a row for each of --rows
held-out views, evenly spaced (target | softmax | naive | softmax depth), and
<out>/ablation-curves.png, both models' PSNR over their runs. Flags it does not know go to
train.py for both runs (`python train.py --help` lists them).
A missing --data folder named after a built-in scene is generated, as train.py does: two_cubes,
for one, holds two cubes that hide each other.

--holdout half tests novel views far from the training ones (the paper's "fits the training
views, fails at novel ones"): the scene's views, train and test split together, are split by
azimuth around the grid centre (world z up); both models train on one half and are tested on the
views of the other half whose viewing direction is at least --margin degrees from every training
view's. Surfaces on the far side of the objects are then never seen in training.

--holdout sparse keeps every surface seen and the held-out cameras still far: both models train on
--views training views as far apart as they can be (by viewing direction) and are tested on the
scene's held-out views, which lie between them. Either split is written to <out>/scene in the
DeepVoxels layout at the model's image size, from a scene in any of the five layouts.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # no pyplot: no global backend

import deepvoxels as dv
import train as trainer  # the command train.py, run once per model
from scenes import dataset, evaluation, figures, runs, settings, views
from scenes.files import Intrinsics, check_number, to_uint8
from scenes.layouts import Scene, write_split, write_view


def all_views(data: Path, sizes: dict,
              grid: tuple = (None, None)) -> tuple[dict[str, Scene], dv.Config]:
    """The views of a scene in any layout at the model's image size (sizes: settings' flags), by
    where they came from ({"train": Scene, "test": Scene} or {"train": Scene}), and its Config
    with the grid placed (`grid`: train.py's --grid_center and --grid_scale, None where not
    given)."""
    train, held_out, cfg = dataset.open_scene(data, sizes, *grid)
    return {"train": train, **({"test": held_out} if held_out is not None else {})}, cfg


def write_views(dest: Path, halves: dict[str, list[tuple[str, Scene, int]]],
                cfg: dv.Config) -> Path:
    """Write each entry of halves ({"train": views, "test": views}, a view being (the split it came
    from, its Scene, its index there)) as dest/<entry> in the DeepVoxels layout, at the scene's
    image size, with cfg's camera and grid; file names carry the split they came from. Returns
    dest."""
    focal = (cfg.focal + (cfg.focal_y or cfg.focal)) / 2  # the layout has one focal length
    if abs(cfg.focal - focal) > 0.005 * focal:            # fx and fy more than 1 % apart
        raise dv.DataError(f"{dest}: --holdout half and sparse write the DeepVoxels layout, which "
                           f"has one focal length, and this camera's two differ by more than 1 % "
                           f"({cfg.focal:g}, {cfg.focal_y:g})")
    shutil.rmtree(dest, ignore_errors=True)
    camera = Intrinsics(focal, cfg.cx, cfg.cy, cfg.grid_center, cfg.near, cfg.grid_scale,
                        (cfg.img_size, cfg.img_size))
    for half, chosen in halves.items():
        write_split(dest / half, camera)
        for split, scene, k in chosen:
            write_view(dest / half, f"{split}{scene.names[k]}", scene.images[k],
                       scene.poses[k].double().numpy())
    return dest


def split_by_azimuth(data: Path, dest: Path, margin: float, sizes: dict,
                     grid: tuple = (None, None)) -> Path:
    """Write the views of a scene (training and held-out together) whose camera azimuth around the
    grid centre is in [0, 180) degrees as dest/train, and those of the other half whose viewing
    direction is at least `margin` degrees from every training view's as dest/test; returns dest."""
    by_split, cfg = all_views(data, sizes, grid)
    every = [(split, scene, k) for split, scene in by_split.items()
             for k in range(len(scene.names))]
    poses = torch.cat([scene.poses for scene in by_split.values()]).double().numpy()
    eyes = poses[:, :3, 3] - np.array(cfg.grid_center)
    first_half = np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0])) % 360 < 180
    directions = poses[:, :3, 2]
    closest = np.degrees(np.arccos(np.clip(directions @ directions[first_half].T,
                                           -1, 1))).min(axis=1)
    held_out = ~first_half & (closest >= margin)
    return write_views(dest, {"train": [v for v, keep in zip(every, first_half) if keep],
                              "test": [v for v, keep in zip(every, held_out) if keep]}, cfg)


def split_sparse(data: Path, dest: Path, n_views: int, sizes: dict,
                 grid: tuple = (None, None)) -> Path:
    """Write n_views of a scene's training views as dest/train, chosen far apart: each next one the
    view whose direction is farthest from those already chosen (starting from the first); its
    held-out views as dest/test; returns dest."""
    by_split, cfg = all_views(data, sizes, grid)
    if "test" not in by_split:
        raise dv.DataError(f"{data}: --holdout sparse tests on the scene's held-out views, and it "
                           "has none")
    train = by_split["train"]
    directions = train.poses[:, :3, 2].double().numpy()
    # cosine to the closest chosen view
    chosen, nearest_cosine = [0], directions @ directions[0]
    while len(chosen) < min(n_views, len(train.names)):
        chosen.append(int(np.argmin(nearest_cosine)))
        nearest_cosine = np.maximum(nearest_cosine, directions @ directions[chosen[-1]])
    test = by_split["test"]
    return write_views(dest, {"train": [("train", train, k) for k in sorted(chosen)],
                              "test": [("test", test, k) for k in range(len(test.names))]}, cfg)


def angle_to_training(train: Scene, held_out: Scene) -> torch.Tensor:
    """(V,) angle in degrees between each held-out viewing direction and the closest training
    one."""
    cosine = (held_out.poses[:, :3, 2] @ train.poses[:, :3, 2].T).amax(dim=1).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cosine))


def main(argv=None) -> None:
    parser = settings.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="./cube",
                        help="scene folder, any layout train.py reads (default: ./cube)")
    parser.add_argument("--iters", type=int, default=1000,
                        help="training steps of each model (default: 1000)")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="training time of each model, if it ends before --iters "
                             "(default: 0, no limit)")
    parser.add_argument("--out", default="",
                        help="folder for both runs and the picture (default: "
                             "runs/ablation-<scene name>, -half or -sparse added for those "
                             "hold-outs; -2, -3... when that holds another ablation)")
    parser.add_argument("--compare_only", action="store_true",
                        help="skip training: compare the checkpoints already in --out")
    parser.add_argument("--rows", type=int, default=6,
                        help="held-out views in the picture, evenly spaced (default: 6)")
    parser.add_argument("--holdout", default="test", choices=("test", "half", "sparse"),
                        help="test: the scene's test split; half: train on one azimuth half of "
                             "all views, test on the other half, far from every training view; "
                             "sparse: train on --views views far apart, test on the test split "
                             "(default: test)")
    parser.add_argument("--margin", type=float, default=30.0,
                        help="--holdout half: the least angle in degrees between a held-out "
                             "viewing direction and every training one (default: 30)")
    parser.add_argument("--views", type=int, default=16,
                        help="--holdout sparse: training views kept (default: 16)")
    args, train_flags = parser.parse_known_args(argv)
    for name, *rules in (("iters", (">=", 1)), ("minutes", (">=", 0)), ("rows", (">=", 1)),
                         ("margin", (">=", 0), ("<", 180)), ("views", (">=", 2))):
        check_number(f"--{name}", "the value", getattr(args, name), *rules)
    # train.py's flags, checked before any work
    run, sizes = settings.parse_args(["--data", args.data, *train_flags])
    suffix = "" if args.holdout == "test" else f"-{args.holdout}"
    out = Path(args.out or Path("runs") / f"ablation-{Path(args.data).resolve().name}{suffix}")
    if args.out and runs.holds_run(out) and not (args.compare_only or run.resume or run.overwrite):
        raise dv.DataError(f"{out}: holds an ablation already; compare it with --compare_only, "
                           f"continue it with --resume, choose another --out, or replace it "
                           f"with --overwrite")
    # before any training
    # one command at a time
    with runs.claimed(out, new=not (args.out or args.compare_only or run.resume)) as folder:
        runs.check_writable(folder, "ablation.png", "ablation-curves.png", "softmax", "naive")
        if folder != out:
            print(f"ablation folder {folder}: {out} holds another ablation "
                  "(--out chooses the folder)")
        compare(args, train_flags, folder, sizes, (run.grid_center or None, run.grid_scale or None))


def compare(args: argparse.Namespace, train_flags: list[str], out: Path, sizes: dict,
            grid: tuple) -> None:
    """Train both models into out/softmax and out/naive (unless --compare_only), then compare
    them; `sizes`: the model sizes of train.py's flags (a hold-out is written at their img_size),
    `grid`: its --grid_center and --grid_scale (None where not given)."""
    if args.holdout == "half":
        args.data = str(split_by_azimuth(Path(args.data), out / "scene", args.margin, sizes, grid))
    if args.holdout == "sparse":
        args.data = str(split_sparse(Path(args.data), out / "scene", args.views, sizes, grid))
    kinds = ("softmax", "naive")
    if not args.compare_only:
        for kind in kinds:
            print(f"── training the {kind} model ──", flush=True)
            trainer.main(["--data", args.data, "--out", str(out / kind), "--iters",
                          str(args.iters), "--minutes", str(args.minutes), "--occlusion", kind,
                          *train_flags])

    models = {kind: runs.load_checkpoint(out / kind / "ckpt.pt") for kind in kinds}
    cfg = models["softmax"][0].cfg  # both share the sizes and the grid
    train_views, test, _ = dataset.open_scene(args.data, settings.sizes_of(cfg), cfg.grid_center,
                                              cfg.grid_scale, check_grid=False)
    test = train_views if test is None else test
    print("\nboth models rendered in fp32 (train.py's log renders in --precision)")
    print("| occlusion | parameters | steps | minutes | train PSNR (dB) | held-out PSNR (dB) "
          "| gap (dB) |\n|---|---|---|---|---|---|---|")
    columns, histories = [], {}
    for kind, (model, state) in models.items():
        histories[kind] = state["history"]
        train_psnr, _, _ = evaluation.evaluate(model, train_views, "cpu", "fp32")
        test_psnr, test_rgb, depth = evaluation.evaluate(model, test, "cpu", "fp32")
        n_params = dv.parameter_count(model)
        print(f"| {kind} | {n_params:,} | {state['step']} | {state['seconds'] / 60:.1f} | "
              f"{train_psnr:.2f} | {test_psnr:.2f} | {train_psnr - test_psnr:.2f} |")
        columns.append(test_rgb.clamp(0, 1))
        if depth is not None:
            depth_column = figures.colorize_depth(depth, test_rgb.shape[-1])
    baseline = evaluation.psnr(evaluation.nearest_view_baseline(train_views, test.poses),
                               test.images).mean()
    print(f"| nearest training view | - | - | - | - | {baseline:.2f} | - |")
    angles = angle_to_training(train_views, test)
    print(f"{len(train_views.names)} training views; each of the {len(test.names)} held-out views "
          f"is {angles.min():.0f} to {angles.max():.0f} degrees (mean {angles.mean():.0f}) from "
          "the nearest training view's direction")
    rows = views.evenly_spaced(len(test.names), args.rows)
    picture = torch.cat([test.images, *columns, depth_column], dim=3)[rows]  # (rows, 3, H, 4W)
    # at least 128 px high
    picture = F.interpolate(picture, scale_factor=max(1, 128 // picture.shape[-2]), mode="nearest")
    iio.imwrite(out / "ablation.png", np.concatenate(to_uint8(picture)))  # rows stacked vertically
    print(f"\nheld-out views {rows.tolist()}: target | softmax | naive | softmax depth -> "
          f"{out / 'ablation.png'}")
    plot_curves(out / "ablation-curves.png", histories, baseline.item())
    print(f"training and held-out PSNR over the runs -> {out / 'ablation-curves.png'}")


def plot_curves(path: Path, histories: dict[str, list[dict]], baseline: float) -> None:
    """PSNR against step of each model: held-out views solid, training views dashed (where train.py
    logged them)."""
    figure = Figure(figsize=(6.4, 4))
    axes = figure.subplots()
    for (kind, history), color in zip(histories.items(), ("tab:blue", "tab:red")):
        steps = [h["step"] for h in history]
        axes.plot(steps, [h["test_psnr"] for h in history], ".-", color=color,
                  label=f"{kind}: held-out views")
        if all("train_psnr" in h for h in history):
            axes.plot(steps, [h["train_psnr"] for h in history], ".--", color=color,
                      label=f"{kind}: training views")
    axes.axhline(baseline, color="gray", lw=1, label="nearest training view (held-out)")
    axes.set(xlabel="step", ylabel="PSNR (dB)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    settings.run_command(main)
