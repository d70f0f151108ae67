"""Every setting of a training run, decided once before any work: train.py's command line.

`TrainConfig` holds the run (its data, folder, recipe and device); `SIZE_FLAGS` the model's sizes,
whose values deepvoxels.Config holds. tools/ablation.py passes its extra flags on to train.py, and
tools/benchmark.py takes the size flags; both check them here first. Every script's command line
starts here too (tools/handout.py aside, whose flags need no checks): `ArgumentParser`,
`run_command` (one line for bad input, never a traceback), the device flags. The help texts say
what a setting is for and the authors' value where they chose one; how each default was chosen is
in docs/measurements.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

import deepvoxels as dv
from deepvoxels import DataError
from scenes.files import check_number
from scenes.synthetic import SCENES


# ─────────────────────────────────────────────────────────────────────────────────────────────
# Every script's command line: one line for bad input, the device and its precision
# ─────────────────────────────────────────────────────────────────────────────────────────────

def run_command(main) -> None:
    """A script's entry point: bad input ends it with one line on stderr and exit status 1, an
    interrupt (after whatever main saved first) with exit status 130, never a traceback."""
    try:
        main()
    except DataError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the scripts, but a misspelt or mistyped flag is one DataError line, not a
    usage block."""

    def error(self, message: str):
        raise DataError(f"{self.prog}: {message} (see --help)")


def check_device(device: str) -> str:
    """`device` if torch can compute on it on this machine; else one DataError line."""
    try:
        kind = torch.device(device)
    except RuntimeError:
        raise DataError(f"--device {device}: not a device torch knows "
                        f"(cpu, cuda, cuda:1, mps)") from None
    present = {"cpu": 1, "cuda": torch.cuda.device_count(),
               "mps": int(torch.backends.mps.is_available())}.get(kind.type, 0)
    if (kind.index or 0) >= present:
        raise DataError(f"--device {device}: this machine has no such device "
                        f"(torch sees {torch.cuda.device_count()} CUDA GPUs)")
    return device


DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DEVICE_HELP = "cpu or cuda (default: cuda when available)"
PRECISION_HELP = ("bf16, fp32, or auto: bf16 on a GPU or a CPU with bf16 units, fp32 elsewhere "
                  "(default: auto)")
PRECISIONS = ("auto", "bf16", "fp32")


def add_device_flags(parser: argparse.ArgumentParser, precision: bool = True) -> None:
    """--device (and --precision) as train.py has them, for render.py and benchmark.py."""
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=DEVICE_HELP)
    if precision:
        parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)


# ─────────────────────────────────────────────────────────────────────────────────────────────
# A training run's settings: TrainConfig, and the model's sizes
# ─────────────────────────────────────────────────────────────────────────────────────────────

def flag(default, help: str, *valid: tuple[str, float], **more):
    """A TrainConfig field: its default, its --help text, and the rules its number must keep
    ((">", 0), ...)."""
    return dataclasses.field(default=default, metadata={"help": help, "valid": valid, **more})


@dataclasses.dataclass
class TrainConfig:
    """Everything about the run that is not the model."""

    data: str = flag("./cube", "scene folder in any of the five layouts (docs/your-data.md); "
                               f"{', '.join(SCENES)} are generated if missing")
    out: str = flag("", "run folder for checkpoint, logs and previews (default: runs/<scene "
                        "name>, or the first free runs/<scene name>-2, -3... when that holds "
                        "another run)")
    iters: int = flag(100_000, "stop after this many steps, counted over the whole run when "
                               "resumed", (">=", 1))
    minutes: float = flag(10.0, "stop after this much training time, counted over the whole "
                                "run when resumed (0: no limit)", (">=", 0))
    lr: float = flag(4e-4, "Adam learning rate of the model and the discriminator (the "
                           "authors: 4e-4)", (">", 0))
    coarse: float = flag(0.5, "share of the run trained first at half the image size, feature "
                              "maps and depth planes (the naive occlusion keeps its planes; 0: "
                              "none; sizes that cannot halve: none)",
                         (">=", 0), ("<", 1))
    decay_from: float = flag(0.75, "share of the run after which the learning rate falls "
                                   "linearly to 0 (1: constant, as the authors)",
                             (">=", 0), ("<=", 1))
    crop: int = flag(0, "border pixels left out of the loss (the authors: 5 of 512 px)",
                     (">=", 0))
    l1_weight: float = flag(1.0, "weight of the L1 term (the authors: 200 beside --gan_weight "
                                 "1; alone its scale does not matter)", (">=", 0))
    l1_beta: float = flag(0.1, "errors below this are squared in the L1 term, above it they "
                               "count as L1 (smooth L1): a small object's errors are no longer "
                               "drowned by a plain background's tiny ones (0: the authors' plain "
                               "L1)", (">=", 0))
    gan_weight: float = flag(0.0, "weight of the PatchGAN adversarial term, 0: no "
                                  "discriminator (the authors: 1)", (">=", 0))
    seed: int = flag(0, "random seed")
    device: str = flag(DEFAULT_DEVICE, DEVICE_HELP)
    precision: str = flag("auto", PRECISION_HELP, choices=PRECISIONS)
    eval_every: float = flag(30.0, "seconds of training between held-out evaluations",
                             (">", 0))
    log_every: float = flag(5.0, "seconds between log lines", (">=", 0))
    grid_center: str = flag("", "'x y z' world centre of the grid (default: bbox.txt, else "
                                "intrinsics.txt, else estimated from the cameras)")
    grid_scale: float = flag(0.0, "world side of the grid (default 0: bbox.txt, else "
                                  "intrinsics.txt, else estimated from the cameras)", (">=", 0))
    resume: bool = flag(False, "continue from <out>/ckpt.pt: same flags, --iters and "
                               "--minutes count the whole run")
    overwrite: bool = flag(False, "start a new run in an --out folder that holds one: its "
                                  "checkpoint is replaced at the first save")
    check: bool = flag(False, "only load the data, check the grid against the images, write "
                              "<out>/cameras.png and exit (seconds)")


# The model's sizes: deepvoxels.Config's fields and defaults, with what each is for.
SIZE_FLAGS = {
    "img_size": "H = W of the images the model renders (the authors: 512)",
    "feat_size": "h = w of the 2D feature maps used for lifting and projection (the authors: "
                 "64; default 0: decided by the object's share of the frame, scenes/grid.py: "
                 "feature_size)",
    "grid_size": "N voxels per grid side (the authors: 32); the GRU and inpainting cost grows "
                 "as N^3",
    "channels": "C features per voxel (the authors: 64)",
    "depth_planes": "D depth planes of the canonical view volume (the authors: 2N); the "
                    "occlusion network, the largest part of a step, grows with D x "
                    "feat_size^2 (feat_size at most occlusion_size): lower it first to save "
                    "time or memory",
    "unet_width": "base width of the 2D feature-extraction and rendering U-Nets",
    "occlusion_width": "base width of the occlusion network's 3D U-Net",
    "occlusion_size": "h = w at most of the view volume the occlusion U-Net sees: larger "
                      "feature maps are averaged down to it, its scores interpolated back",
    "occlusion": "softmax: the paper's visibility softmax over depth; naive: its Fig. 5 "
                 "ablation (depth flattened into channels, reduced by 2D convs)",
    "gru_dropout": "channel dropout on the two terms of the GRU proposal S, W_s X and "
                   "U_s (R∘H) (the authors: 0.2)",
}


FROM_THE_SCENE = {"feat_size": 0}  # the size flags whose default the scene decides


def parse_args(argv=None, description: str | None = None) -> tuple[TrainConfig, dict]:
    """The run's settings and the model's sizes ({name: value}, feat_size 0 where the scene
    decides it), each checked before any work."""
    parser = ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes = {f.name: f for f in dataclasses.fields(dv.Config) if f.name in SIZE_FLAGS}
    for f in dataclasses.fields(TrainConfig):
        add_flag(parser, f.name, f.type, f.default, f.metadata["help"], f.metadata.get("choices"))
    for name, f in sizes.items():
        add_flag(parser, name, f.type, FROM_THE_SCENE.get(name, f.default), SIZE_FLAGS[name],
                 tuple(dv.OCCLUSION_NETS) if name == "occlusion" else None)
    args = vars(parser.parse_args(argv))
    check_device(args["device"])
    for f in dataclasses.fields(TrainConfig):
        if f.metadata["valid"]:
            check_number(f"--{f.name}", "the value", args[f.name], *f.metadata["valid"])
    run = TrainConfig(**{f.name: args[f.name] for f in dataclasses.fields(TrainConfig)})
    model_sizes = {name: args[name] for name in sizes}
    dv.Config(**fixed_sizes(model_sizes))  # checked together: a DataError names each that fails
    if 2 * run.crop >= model_sizes["img_size"]:
        raise DataError(f"--crop {run.crop}: leaves no pixel of the {model_sizes['img_size']} "
                           "px images for the loss")
    return run, model_sizes


def sizes_of(cfg: dv.Config) -> dict:
    """A trained model's sizes ({name: value}, as parse_args gives them): the door opens its scene
    at them (render.py, the ablation)."""
    return {name: getattr(cfg, name) for name in SIZE_FLAGS}


def fixed_sizes(sizes: dict) -> dict:
    """The sizes with a feature-map size left to the scene (0) at Config's default: where no scene
    decides (the checks above, benchmark.py)."""
    return {**sizes, "feat_size": sizes["feat_size"] or dv.Config.feat_size}


def add_flag(parser: argparse.ArgumentParser, name: str, kind: str, default, help: str,
             choices: tuple | None) -> None:
    """--name: a switch for a bool, else a value of its type, its default in its help text."""
    if kind == "bool":
        parser.add_argument(f"--{name}", action="store_true", help=help)
        return
    parser.add_argument(f"--{name}", type={"int": int, "float": float, "str": str}[kind],
                        default=default, choices=choices,
                        help=help if "default" in help else f"{help} (default: {default})")
