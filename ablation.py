"""The paper's occlusion ablation (its Fig. 5) on one scene:  python ablation.py --data ./cube --iters 1000

Trains the model with the visibility softmax and the naive one (depth flattened into channels,
reduced by 2D convolutions) for the same number of steps (or minutes) with train.py, then reports
for both the PSNR on the training and on the held-out views (rendered from the grid alone, as at
test time) and the parameter count, and writes <out>/ablation.png: one row per held-out view,
target | softmax | naive | softmax depth. Flags it does not know go to train.py for both runs.
A missing --data folder named two_cubes is generated: two cubes that hide each other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import imageio.v3 as iio
import torch
import torch.nn.functional as F

import deepvoxels as dv
import train as trainer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="./cube", help="scene folder in the DeepVoxels layout (default: ./cube)")
    parser.add_argument("--iters", type=int, default=1000, help="training steps of each model (default: 1000)")
    parser.add_argument("--minutes", type=float, default=0.0, help="training time of each model, if it ends before --iters (default: 0, no limit)")
    parser.add_argument("--out", default="", help="folder for both runs and the picture (default: runs/ablation-<scene name>)")
    parser.add_argument("--compare_only", action="store_true", help="skip training: compare the checkpoints already in --out")
    parser.add_argument("--rows", type=int, default=6, help="held-out views in the picture, evenly spaced (default: 6)")
    args, train_flags = parser.parse_known_args(argv)
    out = Path(args.out or Path("runs") / f"ablation-{Path(args.data).resolve().name}")
    if not Path(args.data).exists() and Path(args.data).name == "two_cubes":
        print(f"{args.data} does not exist: generating the two-cube scene there (a few seconds)")
        dv.make_cube_scene(args.data, render=dv.render_boxes)
    kinds = ("softmax", "naive")
    if not args.compare_only:
        for kind in kinds:
            print(f"── training the {kind} model ──", flush=True)
            trainer.main(["--data", args.data, "--out", str(out / kind), "--iters", str(args.iters),
                          "--minutes", str(args.minutes), "--occlusion", kind, *train_flags])

    print("\n| occlusion | parameters | steps | minutes | train PSNR (dB) | held-out PSNR (dB) |\n|---|---|---|---|---|---|")
    columns = []
    for kind in kinds:
        model, state = dv.load_checkpoint(out / kind / "ckpt.pt")
        train_views = dv.load_split(args.data, "train", model.cfg.img_size)
        test = dv.load_split(args.data, "test", model.cfg.img_size)
        train_psnr, _, _ = trainer.evaluate(model, train_views, "cpu", "fp32")
        test_psnr, test_rgb, depth = trainer.evaluate(model, test, "cpu", "fp32")
        n_params = sum(p.numel() for p in model.parameters())
        print(f"| {kind} | {n_params:,} | {state['step']} | {state['seconds'] / 60:.1f} | {train_psnr:.2f} | {test_psnr:.2f} |")
        columns.append(test_rgb.clamp(0, 1))
        if depth is not None:
            depth_column = dv.colorize_depth(depth, test_rgb.shape[-1])
    baseline = dv.psnr(dv.nearest_view_baseline(train_views, test.poses), test.images).mean()
    print(f"| nearest training view | - | - | - | - | {baseline:.2f} |")
    rows = torch.linspace(0, len(test.names) - 1, args.rows).round().long()
    picture = torch.cat([test.images, *columns, depth_column], dim=3)[rows]       # (rows, 3, H, 4W)
    picture = F.interpolate(picture, scale_factor=max(1, 128 // picture.shape[-2]), mode="nearest")  # at least 128 px high
    picture = picture.permute(0, 2, 3, 1).reshape(-1, picture.shape[-1], 3)        # rows stacked vertically
    iio.imwrite(out / "ablation.png", (picture.numpy() * 255).round().astype("uint8"))
    print(f"\nheld-out views {rows.tolist()}: target | softmax | naive | softmax depth -> {out / 'ablation.png'}")


if __name__ == "__main__":
    try:
        main()
    except dv.DataError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # train.main saved the checkpoint first
        sys.exit(130)
