"""The interactive viewer and the architecture figure (matplotlib only):

  python -m tools.viewer --run runs/cube
      drag to orbit the camera (RGB and learned depth side by side), click a pixel to plot the
      visibility weights along its ray against depth, press t to switch between the softmax and
      the naive model of an ablation run (--run runs/ablation-<scene>); no --run: the newest run
  python -m tools.viewer --architecture
      redraw assets/architecture.png from a forward pass of the default model
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import deepvoxels as dv
from scenes import runs, settings, views


def parse_args(argv=None) -> argparse.Namespace:
    """Flags; with none, the viewer opens on the newest run."""
    p = settings.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--ckpt", help="checkpoint file (default: the newest runs/*/ckpt.pt)")
    which.add_argument("--run", help="run folder holding ckpt.pt, or an ablation folder holding "
                                     "softmax/ and naive/ (default: the newest under runs/)")
    p.add_argument("--architecture", action="store_true",
                   help="redraw the architecture figure from a forward pass of the default model "
                        "into <--out>/architecture.png (default: assets/) and stop")
    p.add_argument("--out", help="folder for --architecture (default: the project's assets/)")
    return p.parse_args(argv)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# The interactive viewer
# ─────────────────────────────────────────────────────────────────────────────────────────────

DEGREES_PER_PIXEL = 0.4  # orbit speed of a drag: across a 450-px panel, 180 degrees
CLICK_PIXELS = 3         # a press and release closer than this (screen pixels) is a click,
                         # not a drag


def camera_pose(center, radius: float, azimuth: float, elevation: float) -> torch.Tensor:
    """(1, 4, 4) pose at `radius` from `center`, at azimuth and elevation in degrees (world z up),
    looking at it."""
    return views.orbit_poses(center, radius, 1, elevation, azimuth0=azimuth)


def find_models(args: argparse.Namespace) -> tuple[dict[str, dv.DeepVoxels], dict]:
    """{occlusion kind: model in eval mode} of a run, or of both runs of an ablation folder; and
    one checkpoint's state."""
    folder = Path(args.run) if args.run else None
    paths = [folder / kind / "ckpt.pt" for kind in ("softmax", "naive")] if folder else []
    if not (paths and all(p.is_file() for p in paths)):
        paths = [runs.newest_checkpoint(args.ckpt, args.run)]
    # the viewer renders on the CPU
    loaded = [runs.load_checkpoint(p, "cpu", {"scene": dict}) for p in paths]
    return {model.cfg.occlusion: model.eval() for model, _ in loaded}, loaded[0][1]


class Viewer:
    """A matplotlib figure on trained models: RGB | depth from an orbiting camera | weights along a
    clicked ray."""

    def __init__(self, models: dict[str, dv.DeepVoxels], radius: float, figure,
                 azimuth: float = 0.0, elevation: float = 20.0):
        self.models, self.kind = models, next(iter(models))
        # the inpainted grid depends on no view: once per model
        with torch.no_grad():
            self.inpainted = {kind: model.inpainting(model.grid) for kind, model in models.items()}
        self.radius, self.azimuth, self.elevation = radius, azimuth, elevation
        self.pixel = None   # (row, column) of the clicked pixel in the feature map
        # (screen x, screen y, azimuth, elevation, image u, image v) when the button went down
        self.press = None
        self.figure = figure
        self.ax_rgb, self.ax_depth, self.ax_ray = figure.subplots(
            1, 3, gridspec_kw={"width_ratios": [1, 1, 1.4]})
        figure.subplots_adjust(left=0.02, right=0.98, bottom=0.16, top=0.84, wspace=0.25)
        for name, handler in (("button_press_event", self.on_press),
                              ("motion_notify_event", self.on_motion),
                              ("button_release_event", self.on_release),
                              ("key_press_event", self.on_key)):
            figure.canvas.mpl_connect(name, handler)
        self.update()

    @property
    def pose(self) -> torch.Tensor:
        """(1, 4, 4) the current camera."""
        return camera_pose(self.models[self.kind].cfg.grid_center, self.radius, self.azimuth,
                           self.elevation)

    def update(self) -> None:
        """Render the current model from the current camera and redraw all three panels."""
        model = self.models[self.kind]
        with torch.no_grad():
            self.out = model.render_inpainted(self.inpainted[self.kind], self.pose)
        size = model.cfg.img_size
        other = [k for k in self.models if k != self.kind]
        self.ax_rgb.clear()
        self.ax_rgb.imshow(self.out["rgb"][0].clamp(0, 1).permute(1, 2, 0).numpy(),
                           extent=(0, size, size, 0))
        self.ax_rgb.set_title(f"{self.kind} occlusion" + (f" (t: {other[0]})" if other else "")
                              + f"\nazimuth {self.azimuth:.0f}°, elevation {self.elevation:.0f}°")
        self.ax_depth.clear()
        if self.out["depth"] is None:
            self.ax_depth.imshow(np.full((size, size), 0.5), cmap="gray", vmin=0, vmax=1,
                                 extent=(0, size, size, 0))
            self.ax_depth.set_title("no depth: naive occlusion")
        else:
            self.ax_depth.imshow(self.out["depth"][0, 0].numpy(), cmap="viridis_r",
                                 extent=(0, size, size, 0))
            self.ax_depth.set_title("learned depth (bright: near)")
        self.ax_rgb.axis("off")
        self.ax_depth.axis("off")
        self.draw_ray()

    def draw_ray(self) -> None:
        """Plot the visibility weights along the clicked pixel's ray against the depth of each
        plane."""
        self.ax_ray.clear()
        self.ax_ray.set(xlabel="depth along the ray (world units)", ylabel="visibility weight")
        if self.pixel is None or self.out["weights"] is None:
            self.ax_ray.set_title("click a pixel" if self.out["weights"] is not None
                                  else "naive occlusion: no visibility weights")
        else:
            i, j = self.pixel
            self.ax_ray.plot(self.out["depths"][0].numpy(), self.out["weights"][0, :, i, j].numpy(),
                             ".-", color="tab:red")
            self.ax_ray.axvline(self.out["depth"][0, 0, i, j].item(), color="gray", ls="--", lw=1)
            self.ax_ray.set_title(f"weights along feature pixel (row {i}, column {j})\n"
                                  "dashed: its depth Σ_d w_d z_d")
            size, h = self.models[self.kind].cfg.img_size, self.out["weights"].shape[-1]
            for ax in (self.ax_rgb, self.ax_depth):
                ax.plot((j + 0.5) * size / h, (i + 0.5) * size / h, "o", color="tab:red", ms=5)
        self.figure.canvas.draw_idle()

    def on_press(self, event) -> None:
        if event.button == 1 and event.inaxes in (self.ax_rgb, self.ax_depth):
            self.press = (event.x, event.y, self.azimuth, self.elevation, event.xdata, event.ydata)

    def on_motion(self, event) -> None:
        if self.press is not None and event.button == 1:
            x, y, azimuth, elevation = self.press[:4]
            # drag right: the object turns right
            self.azimuth = azimuth - (event.x - x) * DEGREES_PER_PIXEL
            self.elevation = float(np.clip(elevation - (event.y - y) * DEGREES_PER_PIXEL, -85, 85))
            self.update()

    def on_release(self, event) -> None:
        if self.press is None:
            return
        x, y, _, _, u, v = self.press
        self.press = None
        # a click: pick the pixel under it
        if abs(event.x - x) < CLICK_PIXELS and abs(event.y - y) < CLICK_PIXELS:
            size = self.models[self.kind].cfg.img_size
            h = self.models[self.kind].cfg.feat_size
            self.pixel = (min(int(v / size * h), h - 1), min(int(u / size * h), h - 1))
            self.update()

    def on_key(self, event) -> None:
        if event.key == "t" and len(self.models) > 1:
            kinds = list(self.models)
            self.kind = kinds[(kinds.index(self.kind) + 1) % len(kinds)]
            self.update()


def view(args: argparse.Namespace) -> Viewer:
    """Open the viewer on the run of --run / --ckpt (the newest run by default)."""
    import matplotlib.pyplot as plt

    models, state = find_models(args)
    viewer = Viewer(models, state["scene"]["orbit_radius"], plt.figure(figsize=(11, 3.8)))
    print("drag: orbit | click: weights along that pixel's ray"
          + (" | t: softmax <-> naive" if len(models) > 1 else ""))
    plt.show()
    return viewer


# ─────────────────────────────────────────────────────────────────────────────────────────────
# The architecture in one picture (--architecture): every shape from a real forward pass
# ─────────────────────────────────────────────────────────────────────────────────────────────

# Blocks of one training step: name -> (column, row, title, the module that holds its parameters).
BLOCKS = {
    "source": (0, 2, "source image", None),
    "extract": (1, 2, "2. feature extraction\nFeatureExtractor", "encoder"),
    "lift": (2, 2, "3. lifting\nlift", None),
    "gru": (3, 2, "4. integration\nIntegrationGRU", "gru"),
    "grid": (4, 2, "persistent grid H\n(the DeepVoxels)", None),
    "inpaint": (3, 1, "5. 3D inpainting\n3D U-Net", "inpainting"),
    "project": (2, 1, "6. projection\nproject", None),
    "occlusion": (1, 1, "7. occlusion\nsoftmax over depth", "occlusion"),
    "render": (0, 1, "8. rendering\nRenderingNet", "renderer"),
    "loss": (-1, 1, "loss\nsmooth L1\n(+ adversarial)", None),
    "poses": (2, 0, "target poses", None),
    "depth": (1, 0, "visibility weights $w_d$,\ndepth map $\\sum_d w_d z_d$", None),
    "targets": (-1, 0, "target images", None),
}
# Arrows: (from, to, what flows, its shape in the letters of deepvoxels.py, where the forward pass
# returns it).
ARROWS = [
    ("source", "extract", "source image", "(1, 3, H, W)", "source_image"),
    ("extract", "lift", "features", "(1, C, h, w)", "features"),
    ("lift", "gru", "lifted X", "(1, C, N, N, N)", "lifted"),
    ("grid", "gru", "H", "(1, C, N, N, N)", "grid"),
    ("gru", "grid", "H' (written back)", "(1, C, N, N, N)", "grid"),
    ("gru", "inpaint", "H'", "(1, C, N, N, N)", "grid"),
    ("inpaint", "project", "inpainted", "(1, C, N, N, N)", "inpainted"),
    ("poses", "project", "target poses", "(B, 4, 4)", "target_poses"),
    ("project", "occlusion", "view volume", "(B, C, D, h, w)", "view_volume"),
    ("occlusion", "depth", "weights", "(B, D, h, w)", "weights"),
    ("occlusion", "depth", "depth", "(B, 1, h, w)", "depth"),
    ("occlusion", "render", "flat features", "(B, C, h, w)", "flat_features"),
    ("render", "loss", "rgb", "(B, 3, H, W)", "rgb"),
    ("targets", "loss", "target images", "(B, 3, H, W)", "target_images"),
]


def architecture(model: dv.DeepVoxels, targets: int = 2) -> dict:
    """{"arrows": ARROWS with each tensor's shape in a training forward pass (a random source,
    `targets` targets), "parameters": {block: count}}."""
    cfg = model.cfg
    poses = views.orbit_poses(cfg.grid_center, 2.5 * cfg.grid_scale, targets + 1)
    source = torch.rand(1, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        out = model.eval()(source, poses[:1], poses[1:])
    out = {**out, "source_image": source, "target_poses": poses[1:],
           "target_images": torch.rand_like(out["rgb"])}
    arrows = [{"from": a, "to": b, "name": name, "letters": letters, "key": key,
               "shape": list(out[key].shape)}
              for a, b, name, letters, key in ARROWS]
    parameters = {block: dv.parameter_count(getattr(model, module))
                  for block, (_, _, _, module) in BLOCKS.items() if module}
    return {"arrows": arrows, "parameters": {**parameters, "total": dv.parameter_count(model)}}


def draw_architecture(model: dv.DeepVoxels, path: Path) -> dict:
    """Every stage a block, every tensor an arrow with its shape, saved to `path` with
    architecture(model) in the PNG's Description."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    drawn = architecture(model)
    cfg, dx, box_w, box_h = model.cfg, 3.0, 1.7, 0.62
    figure = Figure(figsize=(15, 5.6), dpi=90)
    FigureCanvasAgg(figure)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set(xlim=(-1 * dx - 1.1, 4 * dx + 1.1), ylim=(-0.55, 2.75))
    ax.axis("off")
    for block, (column, row, title, module) in BLOCKS.items():
        params = "" if module is None else f"\n{drawn['parameters'][block] / 1e6:.2f} M parameters"
        color = "#dde8f5" if module else "#f3f3f3"
        ax.add_patch(FancyBboxPatch((column * dx - box_w / 2, row - box_h / 2), box_w, box_h,
                                    boxstyle="round,pad=0.03", fc=color, ec="#445"))
        ax.text(column * dx, row, title + params, ha="center", va="center", fontsize=8.5)
    # where two arrows join two blocks
    offsets = {("grid", "gru"): 0.12, ("gru", "grid"): -0.12, "weights": -0.4, "depth": 0.4}
    for arrow in drawn["arrows"]:
        (x0, y0), (x1, y1) = [(BLOCKS[arrow[k]][0] * dx, BLOCKS[arrow[k]][1])
                              for k in ("from", "to")]
        label = f"{arrow['name']}\n{arrow['letters']}\n{tuple(arrow['shape'])}"
        if y0 == y1:  # horizontal: from edge to edge, label above
            y0 = y1 = y0 + offsets.get((arrow["from"], arrow["to"]), 0)
            sign = 1 if x1 > x0 else -1
            start, end = (x0 + sign * box_w / 2, y0), (x1 - sign * box_w / 2, y1)
            where = dict(xy=((x0 + x1) / 2, y0 + (0.03 if y0 >= BLOCKS[arrow["to"]][1] else -0.03)),
                         ha="center", va="bottom" if y0 >= BLOCKS[arrow["to"]][1] else "top")
        else:  # vertical: label to the right (left of a left arrow)
            shift = offsets.get(arrow["key"], 0) if arrow["from"] == "occlusion" else 0
            x0 = x1 = x0 + shift
            sign = 1 if y1 > y0 else -1
            start, end = (x0, y0 + sign * box_h / 2), (x1, y1 - sign * box_h / 2)
            where = dict(xy=(x0 + (0.08 if shift >= 0 else -0.08), (y0 + y1) / 2),
                         ha="left" if shift >= 0 else "right", va="center")
        ax.annotate("", xy=end, xytext=start,
                    arrowprops=dict(arrowstyle="-|>", color="#223", lw=1.2))
        ax.text(*where["xy"], label, ha=where["ha"], va=where["va"], fontsize=7.5, color="#223")
    ax.text(-1 * dx - 1.0, 2.62,
            f"DeepVoxels, one training step (deepvoxels.py, default Config): B = 2 targets, "
            f"C = {cfg.channels} features, N = {cfg.grid_size} voxels per side, "
            f"D = {cfg.depth_planes} depth planes, h = w = {cfg.feat_size}, "
            f"H = W = {cfg.img_size}; {drawn['parameters']['total'] / 1e6:.2f} M parameters. "
            "Test time starts at the persistent grid.", fontsize=9, va="top")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, metadata={"Description": json.dumps(drawn)})
    return drawn

def main(argv=None) -> Viewer | None:
    """Redraw the architecture figure with --architecture, else open the viewer."""
    args = parse_args(argv)
    if not args.architecture:
        with dv.flushed_denormals():
            return view(args)
    path = Path(args.out or Path(__file__).parents[1] / "assets") / "architecture.png"
    draw_architecture(dv.DeepVoxels(dv.Config()), path)
    print(f"wrote {path}")
    return None


if __name__ == "__main__":
    settings.run_command(main)
