"""Train DeepVoxels on one scene:  python train.py --data ./cube

Each step, as the authors did: target 1 is a random training view, the source one of its four
nearest neighbours by viewing direction (never itself), target 2 any random view (it may be
target 1 or the source again); the source
is fused into the grid, both targets are rendered, the loss is --l1_weight x L1 + --gan_weight x
the PatchGAN term (the authors: 200 and 1; here L1 alone)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import resource
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import checks
import dataset
import deepvoxels as dv
import figures
import render
import runs
import scenes
import synthetic


def flag(default, help: str, *valid: tuple[str, float], **more):
    """A TrainConfig field: its default, its --help text, and the rules its number must keep
    ((">", 0), ...)."""
    return dataclasses.field(default=default, metadata={"help": help, "valid": valid, **more})


@dataclasses.dataclass
class TrainConfig:
    """Everything about the run that is not the model."""

    data: str = flag("./cube", "scene folder in any of the five layouts (docs/your-data.md); "
                               f"{', '.join(synthetic.SCENES)} are generated if missing")
    out: str = flag("", "run folder for checkpoint, logs and previews (default: runs/<scene name>, "
                        "or the first free runs/<scene name>-2, -3... when that holds another run)")
    iters: int = flag(100_000, "stop after this many steps in all, counted over the whole run "
                               "when resumed", (">=", 1))
    minutes: float = flag(10.0, "stop after this much training time, counted over the whole run "
                                "when resumed (0: no limit)", (">=", 0))
    lr: float = flag(4e-4, "Adam learning rate of the model and the discriminator (the authors: "
                           "4e-4)", (">", 0))
    coarse: float = flag(0.5, "share of the run trained coarse first: images, feature maps and "
                              "depth planes at half their size, cheaper steps (0: none; sizes that "
                              "cannot halve: none)", (">=", 0), ("<", 1))
    decay_from: float = flag(0.75, "share of the run after which the learning rate falls linearly "
                                   "to 0 (1: constant, as the authors)", (">=", 0), ("<=", 1))
    crop: int = flag(0, "border pixels left out of the loss (the authors: 5 of 512, under 1 px at "
                        "our 64 px: hence 0)", (">=", 0))
    l1_weight: float = flag(1.0, "weight of the L1 term (the authors: 200 beside --gan_weight 1; "
                                 "alone its scale does not matter)", (">=", 0))
    gan_weight: float = flag(0.0, "weight of the PatchGAN adversarial term, 0: no discriminator "
                                  "(the authors: 1; it sharpens texture)", (">=", 0))
    seed: int = flag(0, "random seed")
    device: str = flag("cuda" if torch.cuda.is_available() else "cpu",
                       "cpu or cuda (default: cuda when available)")
    precision: str = flag("auto", "bf16, fp32, or auto: bf16 on a GPU or a CPU with bf16 units "
                                  "(default: auto)", choices=("auto", "bf16", "fp32"))
    eval_every: float = flag(30.0, "seconds of training between held-out evaluations", (">", 0))
    log_every: float = flag(5.0, "seconds between log lines", (">=", 0))
    grid_center: str = flag("", "'x y z' world centre of the grid (default: bbox.txt, else "
                                "intrinsics.txt, else estimated from the cameras)")
    grid_scale: float = flag(0.0, "world side of the grid (default 0: bbox.txt, else "
                                  "intrinsics.txt, else estimated from the cameras)", (">=", 0))
    resume: bool = flag(False, "continue from <out>/ckpt.pt: same flags, --iters and --minutes "
                               "count the whole run")
    overwrite: bool = flag(False, "start a new run in an --out folder that holds one: its "
                                  "checkpoint is replaced at the first save")
    check: bool = flag(False, "only load the data, check the grid against the images, write "
                              "<out>/cameras.png and exit (seconds)")


def parse_args(argv=None) -> tuple[TrainConfig, dv.Config, bool]:
    """Flags for every field of TrainConfig and of the model sizes in deepvoxels.Config, each
    checked before any work, and whether --feat_size is left to the scene (not given:
    grid_check.feature_size decides)."""
    parser = checks.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes = [f for f in dataclasses.fields(dv.Config) if "help" in f.metadata]
    for f in dataclasses.fields(TrainConfig) + tuple(sizes):
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name}", action="store_true", help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            parser.add_argument(f"--{f.name}", type=kind,
                                default=None if f.name == "feat_size" else f.default,
                                choices=f.metadata.get("choices"),
                                help=(f.metadata["help"] if "default" in f.metadata["help"]
                                      else f"{f.metadata['help']} (default: {f.default})"))
    args = vars(parser.parse_args(argv))
    checks.check_device(args["device"])
    feat_from_scene, args["feat_size"] = (args["feat_size"] is None,
                                          dv.Config.feat_size if args["feat_size"] is None
                                          else args["feat_size"])
    for f in dataclasses.fields(TrainConfig):
        if f.metadata["valid"]:
            checks.check_number(f"--{f.name}", "the value", args[f.name], *f.metadata["valid"])
    run, model_sizes = (TrainConfig(**{f.name: args[f.name]
                                       for f in dataclasses.fields(TrainConfig)}),
                        dv.Config(**{f.name: args[f.name] for f in sizes}))
    if 2 * run.crop >= model_sizes.img_size:
        raise dv.DataError(f"--crop {run.crop}: leaves no pixel of the {model_sizes.img_size} px "
                           "images for the loss")
    return run, model_sizes, feat_from_scene


def coarse_config(cfg: dv.Config) -> dv.Config | None:
    """The model's configuration at half the image size, feature maps and depth planes (the camera
    scaled with the image), or None where a size cannot halve. Every network is convolutional, so
    the same weights run at either size."""
    try:
        return dataclasses.replace(cfg, img_size=cfg.img_size // 2, feat_size=cfg.feat_size // 2,
                                   depth_planes=cfg.depth_planes // 2, focal=cfg.focal / 2,
                                   focal_y=cfg.focal_y / 2, cx=cfg.cx / 2, cy=cfg.cy / 2)
    except dv.DataError:  # e.g. feature maps of 16 cannot halve
        return None


@contextlib.contextmanager
def at_size(model: dv.DeepVoxels, cfg: dv.Config | None):
    """Inside, the model lifts, projects and renders at cfg's sizes and camera (None: its own);
    restored after."""
    if cfg is None:
        yield
        return
    saved = model.cfg, model.K, model.K_feat
    model.cfg = cfg
    model.K = dv.intrinsics_matrix(cfg.focal, cfg.cx, cfg.cy, focal_y=cfg.focal_y).to(saved[1])
    model.K_feat = dv.intrinsics_matrix(cfg.focal, cfg.cx, cfg.cy, cfg.feat_size / cfg.img_size,
                                        cfg.focal_y).to(saved[1])
    try:
        yield
    finally:
        model.cfg, model.K, model.K_feat = saved


def set_learning_rate(optimizer: torch.optim.Optimizer, run: TrainConfig, progress: float) -> None:
    """Constant, then a linear fall to 0 over the last (1 - decay_from) of the run (a higher
    held-out PSNR than a constant rate)."""
    decay = min(1.0, (1 - progress) / (1 - run.decay_from)) if run.decay_from < 1 else 1.0
    for group in optimizer.param_groups:
        group["lr"] = run.lr * decay


class Diverged(dv.DataError):
    """The loss, the grid or the weights stopped being finite (a DataError: every command line
    reports it in one line)."""


def sample_views(neighbours: torch.Tensor, generator: torch.Generator) -> tuple[int, int, int]:
    """(source, target 1, target 2): a random target 1, the source one of its neighbours (its row
    of (V, k), never itself), a random target 2."""
    target1 = torch.randint(len(neighbours), (), generator=generator).item()
    source = neighbours[target1, torch.randint(neighbours.shape[1], (), generator=generator)].item()
    target2 = torch.randint(len(neighbours), (), generator=generator).item()
    return source, target1, target2


def training_step(parts: dict, images: torch.Tensor, poses: torch.Tensor,
                  views: tuple[int, int, int], run: TrainConfig) -> float:
    """Fuse the source view, render both targets, take an Adam step on the loss (then the
    discriminator's); returns the loss. `parts`: "model" and "optimizer", and with --gan_weight > 0
    "discriminator" and "disc_optimizer" (as build_or_resume makes them)."""
    (source, target1, target2), model, disc = views, parts["model"], parts.get("discriminator")
    with dv.mixed_precision(run.device, run.precision):
        pred = model(images[source:source + 1], poses[source:source + 1],
                     poses[[target1, target2]])["rgb"]                    # (2, 3, H, W)
    c, size = run.crop, images.shape[-1]  # the loss leaves out a border of c pixels
    pred, target = (pred.float()[..., c:size - c, c:size - c],
                    images[[target1, target2]][..., c:size - c, c:size - c])
    loss = run.l1_weight * F.l1_loss(pred, target)
    if disc is not None:
        loss = loss + run.gan_weight * dv.generator_adversarial_loss(disc, pred)
    parts["optimizer"].zero_grad(set_to_none=True)
    loss.backward()
    parts["optimizer"].step()
    if disc is not None:  # then the discriminator's own step on real and rendered views
        parts["disc_optimizer"].zero_grad(set_to_none=True)
        dv.discriminator_loss(disc, target, pred).backward()
        parts["disc_optimizer"].step()
    return loss.item()


@contextlib.contextmanager
def stop_requests():
    """Ctrl-C and SIGTERM append to the yielded list, read between steps: none stops halfway.
    Handlers restored after; main thread only."""
    requested: list[int] = []
    signals = ((signal.SIGINT, signal.SIGTERM)
               if threading.current_thread() is threading.main_thread() else ())
    previous = {s: signal.signal(s, lambda signum, frame: requested.append(signum))
                for s in signals}
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def peak_memory(device: str) -> str:
    """"peak memory N MB" of this process, and on a CUDA device ", peak GPU memory N MB" (what the
    run's tensors held at most)."""
    gpu = (f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f} MB"
           if torch.device(device).type == "cuda" else "")
    return (
        "peak memory "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == 'darwin' else 2 ** 10):.0f}"
        f" MB{gpu}")


def main(argv=None) -> None:
    """Train as the flags say; never exits, and leaves signal handlers, denormal flushing and
    torch's random state as it found them."""
    run, sizes, feat_from_scene = parse_args(argv)
    with dv.flushed_denormals(), torch.random.fork_rng(
            devices=[] if torch.device(run.device).type == "cpu" else None):
        with run_folder(run) as out:
            fit(run, sizes, out, feat_from_scene)


def run_folder(run: TrainConfig) -> contextlib.AbstractContextManager[Path]:
    """The run folder, held by this run alone while it trains (runs.claimed): without --out,
    runs/<scene> or the first free runs/<scene>-2, -3...; --out as given, refused when it holds a
    checkpoint that --resume or --overwrite does not name (--check writes cameras.png only: it
    takes the folder as it is)."""
    if not run.out:
        return runs.claimed(Path("runs") / Path(run.data).resolve().name,
                            new=not (run.resume or run.check))
    if ((Path(run.out) / runs.CHECKPOINT).exists()
            and not (run.resume or run.overwrite or run.check)):
        raise dv.DataError(f"{Path(run.out) / runs.CHECKPOINT}: holds a run already; continue it "
                           f"with --resume, choose another --out, or replace it with --overwrite")
    return runs.claimed(Path(run.out))


def prepare_scene(run: TrainConfig, sizes: dv.Config, out: Path,
                  feat_from_scene: bool) -> tuple[scenes.Scene, scenes.Scene | None, dv.Config]:
    """Training views, held-out views or None, the configuration with the grid placed; writes
    <out>/cameras.png."""
    # fail now, not at the first save
    checks.check_writable(out, "ckpt.pt", "history.json", "cameras.png", "preview.png")
    if not run.out and out != (default := Path("runs") / Path(run.data).resolve().name):
        print(f"run folder {out}: {default} holds another run (--out chooses the folder)")
    if line := synthetic.generating(run.data):           # said before the few seconds it takes
        print(line)
    train, held_out, cfg, said = dataset.open_scene(run.data, sizes, run.grid_center or None,
                                                    run.grid_scale or None, feat_from_scene)
    print(*said, sep="\n")
    figures.plot_setup(out / "cameras.png", train, held_out, cfg)
    if run.check:
        print(f"grid centred at {tuple(round(c, 3) + 0.0 for c in cfg.grid_center)}, "
              f"side {cfg.grid_scale:.3g}; wrote {out / 'cameras.png'}; --check: not training")
    return train, held_out, cfg


def build_or_resume(run: TrainConfig, cfg: dv.Config, ckpt_path: Path) -> tuple[dict, dict]:
    """The networks and optimisers, named as in the checkpoint, and the run's progress (steps,
    training seconds without evaluations, the evaluations' history, the view sampler): new and
    seeded, or with --resume the checkpoint's if it fits the flags."""
    torch.manual_seed(run.seed)
    model = dv.DeepVoxels(cfg).to(run.device)
    # fused: one kernel, faster
    parts = {"model": model,
             "optimizer": torch.optim.Adam(model.parameters(), lr=run.lr, fused=True)}
    if run.gan_weight > 0:  # the PatchGAN discriminator and its optimiser
        parts["discriminator"] = dv.PatchDiscriminator(cfg.unet_width).to(run.device)
        parts["disc_optimizer"] = torch.optim.Adam(parts["discriminator"].parameters(), lr=run.lr,
                                                   fused=True)
    progress = {"step": 0, "seconds": 0.0, "history": [],
                "sampler": torch.Generator().manual_seed(run.seed),
                "kept": "no checkpoint was written"}
    if not run.resume:
        return parts, progress
    needs = {"step": int, "seconds": float, "history": list, "train_config": dict,
             "torch_rng": torch.Tensor, "sampler_rng": torch.Tensor}
    resumed, saved = dv.load_checkpoint(ckpt_path, run.device, needs)
    trained = {**dataclasses.asdict(resumed.cfg),
               "gan_weight": saved["train_config"].get("gan_weight", 0.0)}   # with or without a
    now = {**dataclasses.asdict(cfg), "gan_weight": run.gan_weight}         # discriminator
    if changed := [f"{k} {v} (now {now[k]})" for k, v in trained.items() if now[k] != v]:
        raise dv.DataError(f"{ckpt_path}: checkpoint was trained with another configuration: "
                           f"{', '.join(changed)}; resume with the same flags")
    for name, part in parts.items():  # the networks, then their optimisers
        if not isinstance(saved.get(name), dict):
            raise dv.DataError(f"{ckpt_path}: not a DeepVoxels checkpoint of this version "
                               f"(no valid {name} entry)")
        part.load_state_dict(saved[name])
    progress.update(step=saved["step"], seconds=saved["seconds"], history=saved["history"],
                    kept=f"{ckpt_path} keeps step {saved['step']}, the last finite state")
    torch.set_rng_state(saved["torch_rng"])
    progress["sampler"].set_state(saved["sampler_rng"])
    print(f"resumed {ckpt_path} at step {saved['step']}")
    return parts, progress


def save_checkpoint(parts: dict, progress: dict, run: TrainConfig, ckpt_path: Path,
                    scene: dict) -> None:
    """Write the run's checkpoint, with `scene` (where its data is, the orbit radius); raises
    Diverged instead when the weights or the grid are no longer finite."""
    if not all(t.isfinite().all() for t in parts["model"].state_dict().values()
               if t.is_floating_point()):
        raise Diverged(f"step {progress['step']}: the weights or the grid are no longer finite "
                       f"(training diverged); {progress['kept']}")
    # a failed write: DataError
    dv.save_checkpoint(ckpt_path, {name: part.state_dict() for name, part in parts.items()} | {
        "config": dataclasses.asdict(parts["model"].cfg), "train_config": dataclasses.asdict(run),
        "torch_rng": torch.get_rng_state(), "sampler_rng": progress["sampler"].get_state(),
        "scene": scene, **{k: progress[k] for k in ("step", "seconds", "history")}})
    progress["kept"] = f"{ckpt_path} keeps step {progress['step']}, the last finite state"


def fit(run: TrainConfig, sizes: dv.Config, out: Path, feat_from_scene: bool = False) -> None:
    """Load the scene, build or resume the model, train it into the folder `out`, evaluate and
    checkpoint it as it goes."""
    train, held_out, cfg = prepare_scene(run, sizes, out, feat_from_scene)
    if run.check:
        return
    parts, progress = build_or_resume(run, cfg, ckpt_path := out / runs.CHECKPOINT)
    scene = {"data": runs.data_entry(run.data, out),
             "orbit_radius": scenes.orbit_radius(train.poses, cfg.grid_center)}
    model = parts["model"]
    images, poses = train.images.to(run.device), train.poses.to(run.device)
    neighbours = scenes.view_neighbours(train.poses)  # (V, min(4, V - 1))
    test, split, baseline_name, baseline, note = scenes.baseline(train, held_out)
    if note:
        print(note)
    watch = scenes.spread_views(train, 8)  # training views scored beside the held-out ones
    print(f"{len(train.names)} training views, {len(held_out.names) if held_out else 'no'} test "
          f"views at {cfg.img_size}px; {dv.parameter_count(model) / 1e6:.2f}M "
          f"parameters; grid {cfg.grid_size}^3 x {cfg.channels} centred at {cfg.grid_center}, "
          f"side {cfg.grid_scale:.3g}; device {run.device}, "
          f"{dv.resolve_precision(run.device, run.precision)}")
    print(f"{baseline_name} on the {split} views: {baseline:.2f} dB PSNR")
    coarse = coarse_config(cfg) if run.coarse > 0 else None
    if coarse is not None:  # the first part of the run, at half the sizes
        coarse_images = F.interpolate(images, size=coarse.img_size, mode="area")  # (V, 3, H/2, W/2)
        print(f"the first {run.coarse:.0%} of the run at {coarse.img_size}px, "
              f"{coarse.feat_size} x {coarse.feat_size} feature maps, "
              f"{coarse.depth_planes} depth planes (--coarse); the held-out PSNR, rendered at "
              f"{cfg.img_size}px, rises once the run is at that size")
    budget = run.minutes * 60 if run.minutes > 0 else math.inf
    next_eval = (progress["seconds"] // run.eval_every + 1) * run.eval_every
    last_log, last_log_step, start = (time.perf_counter(), progress["step"],
                                      time.perf_counter() - progress["seconds"])
    with stop_requests() as stop:
        while progress["step"] < run.iters and progress["seconds"] < budget and not stop:
            # the share of the run done
            share = max(progress["step"] / run.iters, progress["seconds"] / budget)
            set_learning_rate(parts["optimizer"], run, share)
            coarse_now = coarse is not None and share < run.coarse
            with at_size(model, coarse if coarse_now else None):
                loss = training_step(parts, coarse_images if coarse_now else images, poses,
                                     sample_views(neighbours, progress["sampler"]), run)
            if not (math.isfinite(loss) and model.grid.isfinite().all()):
                raise Diverged(f"step {progress['step'] + 1}: loss {loss:.4g}, grid max "
                               f"{model.grid.abs().max().item():.3g}: training diverged (try a "
                               f"lower --lr); {progress['kept']}")
            progress["step"] += 1
            progress["seconds"] = time.perf_counter() - start
            last_step = progress["step"] == run.iters or progress["seconds"] >= budget
            # evaluate, checkpoint, write the preview
            if progress["seconds"] >= next_eval or last_step:
                eval_start = time.perf_counter()
                psnr, rgb, depth = render.evaluate(model, test, run.device, run.precision)
                progress["history"].append({"step": progress["step"],
                                            "minutes": round(progress["seconds"] / 60, 3),
                                            "test_psnr": round(psnr, 3)})
                if held_out is not None:  # the gap: it fits its views but not novel ones
                    progress["history"][-1]["train_psnr"] = round(
                        render.evaluate(model, watch, run.device, run.precision)[0], 3)
                save_checkpoint(parts, progress, run, ckpt_path, scene)
                render.save_preview(out / "preview.png", test, rgb, depth)
                (out / "history.json").write_text(json.dumps(progress["history"], indent=1))
                next_eval += run.eval_every
                # evaluation time does not count as training
                start += time.perf_counter() - eval_start
            if (now := time.perf_counter()) - last_log >= run.log_every or last_step:
                ms = 1000 * (now - last_log) / max(progress["step"] - last_log_step, 1)
                left = max(0.0, min(budget - progress["seconds"],
                                    (run.iters - progress["step"]) * ms / 1000))
                psnr_now = (f"{progress['history'][-1]['test_psnr']:.2f} dB" if progress["history"]
                            else "-")
                print(f"step {progress['step']:6d} | loss {loss:.4f} | {split} PSNR {psnr_now} | "
                      f"{ms:5.0f} ms/step | grid max {model.grid.abs().max().item():#.3g} | "
                      f"{left / 60:4.1f} min left", flush=True)
                last_log, last_log_step = now, progress["step"]
    save_checkpoint(parts, progress, run, ckpt_path, scene)
    if stop:
        print(f"interrupted: saved step {progress['step']} to {ckpt_path}; "
              f"continue with --resume --out {out}")
        raise KeyboardInterrupt
    final = f"{progress['history'][-1]['test_psnr']:.2f} dB" if progress["history"] else "-"
    print(f"done: step {progress['step']}, {progress['seconds'] / 60:.1f} min, {split} PSNR "
          f"{final} ({baseline_name} {baseline:.2f} dB); {peak_memory(run.device)}; "
          f"checkpoint {ckpt_path}")


if __name__ == "__main__":
    checks.run_command(main)
