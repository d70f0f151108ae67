"""Train DeepVoxels on one scene:  python train.py --data ./cube

Each step (as the authors did): target 1 is a random training view, the source one of its four
nearest neighbours by viewing direction (never itself), target 2 another random view. The source
is lifted and fused into the persistent grid, both targets are rendered, and the loss is
--l1_weight x L1, plus --gan_weight x the adversarial term of a PatchGAN discriminator if W > 0
(the authors: 200 x L1 + 1 x adversarial).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import resource
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import torch
import torch.nn.functional as F

import deepvoxels as dv
import scenes


@dataclass
class TrainConfig:
    """Everything about the run that is not the model."""

    data: str = field(default="./cube", metadata={"help": "scene folder: DeepVoxels, NSVF, NeRF-synthetic (transforms_*.json), instant-ngp/nerfstudio "
                                                  "(transforms.json) or a COLMAP text model, detected from its files; a missing folder named after "
                                                  f"a synthetic scene ({', '.join(scenes.SCENES)}) is generated"})
    out: str = field(default="", metadata={"help": "run folder for checkpoint, logs and previews (default: runs/<scene name>)"})
    iters: int = field(default=100_000, metadata={"help": "stop after this many steps in all, counted over the whole run when resumed"})
    minutes: float = field(default=10.0, metadata={"help": "stop after this much training time, counted over the whole run when resumed (0: no limit)"})
    lr: float = field(default=4e-4, metadata={"help": "Adam learning rate of the model and the discriminator (the authors: 4e-4)"})
    decay_from: float = field(default=0.75, metadata={"help": "fraction of the run (of --iters or --minutes, whichever comes first) after which "
                                                       "the learning rate falls linearly to 0; 1 keeps it constant, as the authors did"})
    crop: int = field(default=0, metadata={"help": "border pixels left out of the loss (the authors: 5 of 512, under 1 px at our 64 px: hence 0)"})
    l1_weight: float = field(default=1.0, metadata={"help": "weight of the L1 term (the authors: 200, next to --gan_weight 1; "
                                                     "alone, Adam makes its scale irrelevant, so 1 keeps the logged loss in image units)"})
    gan_weight: float = field(default=0.0, metadata={"help": "weight W of the adversarial term; 0 turns the PatchGAN discriminator off "
                                                      "(the authors: 1 next to --l1_weight 200: sharpens texture that L1 alone blurs, once L1 has fit the views)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "cpu or cuda (default: cuda when available)"})
    precision: str = field(default="auto", metadata={"help": "bf16 (mixed precision), fp32, or auto: bf16 on a GPU or a CPU with bf16 units (default: auto)",
                                                     "choices": ("auto", "bf16", "fp32")})
    eval_every: float = field(default=30.0, metadata={"help": "seconds of training between held-out evaluations"})
    log_every: float = field(default=5.0, metadata={"help": "seconds between log lines"})
    grid_center: str = field(default="", metadata={"help": "'x y z' world centre of the grid (default: bbox.txt, else intrinsics.txt, else estimated from the cameras)"})
    grid_scale: float = field(default=0.0, metadata={"help": "world side length of the grid (default 0: bbox.txt, else intrinsics.txt, else estimated from the cameras)"})
    resume: bool = field(default=False, metadata={"help": "continue from <out>/ckpt.pt: same flags, --iters and --minutes count the whole run"})
    check: bool = field(default=False, metadata={"help": "only load the data, check the grid against the images, write <out>/cameras.png and exit "
                                                 "(seconds: do it before a long run)"})


def parse_args(argv=None) -> tuple[TrainConfig, dv.Config]:
    """Flags for every field of TrainConfig and of the model sizes in deepvoxels.Config."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes = [f for f in dataclasses.fields(dv.Config) if "help" in f.metadata]
    for f in dataclasses.fields(TrainConfig) + tuple(sizes):
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name}", action="store_true", help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            parser.add_argument(f"--{f.name}", type=kind, default=f.default, choices=f.metadata.get("choices"),
                                help=f.metadata["help"] if "default" in f.metadata["help"] else f"{f.metadata['help']} (default: {f.default})")
    args = vars(parser.parse_args(argv))
    train = TrainConfig(**{f.name: args[f.name] for f in dataclasses.fields(TrainConfig)})
    return train, dv.Config(**{f.name: args[f.name] for f in sizes})


def evaluate(model: dv.DeepVoxels, scene: scenes.Scene, device: str, precision: str) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """Mean PSNR of a scene's views rendered from the grid alone in eval mode, renders (V, 3, H, W), depth (V, 1, h, w) or None."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), dv.mixed_precision(device, precision):
        outs = [model.render(poses.to(device)) for poses in scene.poses.split(8)]
    model.train(was_training)
    rgb = torch.cat([o["rgb"] for o in outs]).float().cpu()
    depth = None if outs[0]["depth"] is None else torch.cat([o["depth"] for o in outs]).float().cpu()  # None: naive occlusion
    return dv.psnr(rgb, scene.images).mean().item(), rgb, depth


def save_preview(path: Path, test: scenes.Scene, rgb: torch.Tensor, depth: torch.Tensor | None, views: int = 4) -> None:
    """PNG with one row per held-out view: target | prediction | depth (if the model has one)."""
    size = test.images.shape[-1]
    depth_column = [] if depth is None else [scenes.colorize_depth(depth[:views], size)]
    rows = torch.cat([test.images[:views], rgb[:views].clamp(0, 1), *depth_column], dim=3)  # (views, 3, H, 2W or 3W)
    image = rows.permute(0, 2, 3, 1).reshape(-1, rows.shape[-1], 3)                        # rows stacked vertically
    iio.imwrite(path, (image.numpy() * 255).round().astype("uint8"))


def set_learning_rate(optimizer: torch.optim.Optimizer, run: TrainConfig, progress: float) -> None:
    """Constant, then a linear fall to 0 over the last (1 - decay_from) of the run (1-1.5 dB more on the 10-minute cube)."""
    decay = min(1.0, (1 - progress) / (1 - run.decay_from)) if run.decay_from < 1 else 1.0
    for group in optimizer.param_groups:
        group["lr"] = run.lr * decay


def discriminator_step(disc: dv.PatchDiscriminator, optimizer: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor) -> None:
    """One Adam step of the discriminator on real views and detached renders (B, 3, H, W)."""
    loss = dv.discriminator_loss(disc, real, fake)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class Diverged(dv.DataError):
    """The loss, the grid or the weights stopped being finite (a DataError: every command line reports it in one line)."""


def sample_views(neighbours: torch.Tensor, generator: torch.Generator) -> tuple[int, int, int]:
    """(source, target 1, target 2): a random target 1, the source one of its neighbours (its row of (V, k), never itself), a random target 2."""
    target1 = torch.randint(len(neighbours), (), generator=generator).item()
    source = neighbours[target1, torch.randint(neighbours.shape[1], (), generator=generator)].item()
    target2 = torch.randint(len(neighbours), (), generator=generator).item()
    return source, target1, target2


def training_step(model: dv.DeepVoxels, optimizer: torch.optim.Optimizer, disc: dv.PatchDiscriminator | None,
                  disc_optimizer: torch.optim.Optimizer | None, images: torch.Tensor, poses: torch.Tensor,
                  views: tuple[int, int, int], run: TrainConfig) -> float:
    """Fuse the source view, render both targets, take an Adam step on the loss (then the discriminator's); returns the loss."""
    source, target1, target2 = views
    with dv.mixed_precision(run.device, run.precision):
        pred = model(images[source:source + 1], poses[source:source + 1], poses[[target1, target2]])["rgb"]  # (2, 3, H, W)
    c, size = run.crop, images.shape[-1]                                  # the loss leaves out a border of c pixels
    pred, target = pred.float()[..., c:size - c, c:size - c], images[[target1, target2]][..., c:size - c, c:size - c]
    loss = run.l1_weight * F.l1_loss(pred, target)
    if disc is not None:
        loss = loss + run.gan_weight * dv.generator_adversarial_loss(disc, pred)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if disc is not None:
        discriminator_step(disc, disc_optimizer, target, pred)
    return loss.item()


@contextlib.contextmanager
def stop_requests():
    """Ctrl-C and SIGTERM append to the yielded list, read between steps so that none stops halfway; handlers restored after."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():   # Python lets only the main thread set handlers
        yield requested
        return
    previous = {s: signal.signal(s, lambda signum, frame: requested.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def flush_denormal_enabled() -> bool:
    """Whether denormal floats are flushed to zero now (torch has no getter): a denormal times 1 then reads 0."""
    return (torch.tensor([1e-40]) * 1.0).item() == 0.0


def gpu_memory(device: str) -> str:
    """", peak GPU memory N MB" on a CUDA device (what the run's tensors held at most), else ""."""
    return f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f} MB" if torch.device(device).type == "cuda" else ""


def main(argv=None) -> None:
    """Train as the flags say, never exiting and restoring signal handlers, denormal flushing and torch's random state."""
    run, sizes = parse_args(argv)
    flushing = flush_denormal_enabled()
    try:
        with torch.random.fork_rng(devices=[] if torch.device(run.device).type == "cpu" else None):
            torch.set_flush_denormal(True)  # denormal floats in the grid otherwise double the step time
            fit(run, sizes)
    finally:
        torch.set_flush_denormal(flushing)


def prepare_scene(run: TrainConfig, sizes: dv.Config) -> tuple[scenes.Scene, scenes.Scene | None, dv.Config, Path]:
    """Training views, held-out views or None, the configuration with the grid placed, the run folder (with cameras.png)."""
    data = Path(run.data)
    if not data.exists() and data.name in scenes.SCENES:
        print(f"{data} does not exist: generating the synthetic scene '{data.name}' there (a few seconds)")
        scenes.make_scene(data, data.name)
    if not data.is_dir():
        raise dv.DataError(f"{data}: no such data folder")
    train, held_out, _ = scenes.load_scene(data, sizes.img_size)
    if len(train.names) < 2:
        raise dv.DataError(f"{data}: training needs at least 2 views (a source and another target), found {len(train.names)}")
    try:
        center = tuple(float(v) for v in run.grid_center.split()) if run.grid_center else None
    except ValueError:
        center = ()
    if center is not None and len(center) != 3:
        raise dv.DataError(f"--grid_center: expected three numbers 'x y z', got {run.grid_center!r}")
    cfg = scenes.scene_config(train, sizes, center, run.grid_scale or None)
    out = Path(run.out or Path("runs") / data.resolve().name)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()                           # fail now, not at the first checkpoint
    except OSError as e:
        raise dv.DataError(f"{out}: cannot write the output folder ({e.strerror})") from None
    if warning := scenes.grid_warning(train, cfg):
        print(warning)
    scenes.plot_setup(out / "cameras.png", train, held_out, cfg)
    if run.check:
        print(f"grid centred at {tuple(round(c, 3) + 0.0 for c in cfg.grid_center)}, side {cfg.grid_scale:.3g}; "
              f"wrote {out / 'cameras.png'}; --check: not training")
    return train, held_out, cfg, out


@dataclass
class RunState:
    """What a checkpoint holds besides the flags: the networks, their optimisers, the view sampler, how far the run got."""

    model: dv.DeepVoxels
    optimizer: torch.optim.Optimizer
    disc: dv.PatchDiscriminator | None                 # the discriminator and its optimizer: None when --gan_weight is 0
    disc_optimizer: torch.optim.Optimizer | None
    sampler: torch.Generator                           # draws each step's views
    step: int = 0
    seconds: float = 0.0                               # training time so far, evaluations left out
    history: list[dict] = field(default_factory=list)  # one entry per held-out evaluation
    saved_step: int | None = None                      # the step the checkpoint holds, once one is written


def build_or_resume(run: TrainConfig, cfg: dv.Config, ckpt_path: Path) -> RunState:
    """A seeded new model with its optimisers; with --resume the checkpoint's, random states included, if it fits the flags."""
    torch.manual_seed(run.seed)
    model = dv.DeepVoxels(cfg).to(run.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.lr, fused=True)  # fused: one kernel, 5x faster than per-tensor
    disc = dv.PatchDiscriminator(cfg.unet_width).to(run.device) if run.gan_weight > 0 else None
    disc_optimizer = torch.optim.Adam(disc.parameters(), lr=run.lr, fused=True) if disc is not None else None
    state = RunState(model, optimizer, disc, disc_optimizer, sampler=torch.Generator().manual_seed(run.seed))
    if not run.resume:
        return state
    resumed, saved = dv.load_checkpoint(ckpt_path, run.device)
    changed = [f"{k} {v} (now {getattr(cfg, k)})" for k, v in dataclasses.asdict(resumed.cfg).items() if getattr(cfg, k) != v]
    if changed:
        raise dv.DataError(f"{ckpt_path}: checkpoint was trained with another configuration: {', '.join(changed)}")
    trained_gan_weight = saved.get("train_config", {}).get("gan_weight", 0.0)
    if trained_gan_weight != run.gan_weight:  # the discriminator would be dropped, or a fresh one added
        raise dv.DataError(f"{ckpt_path}: checkpoint was trained with --gan_weight {trained_gan_weight} "
                           f"(now {run.gan_weight}); resume with the same value")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if disc is not None and "discriminator" in saved:
        disc.load_state_dict(saved["discriminator"])
        disc_optimizer.load_state_dict(saved["disc_optimizer"])
    state.step, state.seconds, state.history, state.saved_step = saved["step"], saved["seconds"], saved["history"], saved["step"]
    torch.set_rng_state(saved["torch_rng"])
    state.sampler.set_state(saved["sampler_rng"])
    print(f"resumed {ckpt_path} at step {state.step}")
    return state


def kept(state: RunState, ckpt_path: Path) -> str:
    """What a diverged run leaves behind, for its message."""
    return f"{ckpt_path} keeps step {state.saved_step}, the last finite state" if state.saved_step is not None else "no checkpoint was written"


def save_checkpoint(state: RunState, run: TrainConfig, ckpt_path: Path) -> None:
    """Write the run's checkpoint; raises Diverged instead when the weights or the grid are no longer finite."""
    if not all(t.isfinite().all() for t in state.model.state_dict().values() if t.is_floating_point()):
        raise Diverged(f"step {state.step}: the weights or the grid are no longer finite (training diverged); {kept(state, ckpt_path)}")
    gan = {"discriminator": state.disc.state_dict(), "disc_optimizer": state.disc_optimizer.state_dict()} if state.disc is not None else {}
    dv.save_checkpoint(ckpt_path, {                                       # a failed write raises DataError
        "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(), "config": dataclasses.asdict(state.model.cfg),
        "train_config": dataclasses.asdict(run), "step": state.step, "seconds": state.seconds, "history": state.history,
        "torch_rng": torch.get_rng_state(), "sampler_rng": state.sampler.get_state(), **gan})
    state.saved_step = state.step


def fit(run: TrainConfig, sizes: dv.Config) -> None:
    """Load the scene, build or resume the model, train it, evaluate and checkpoint it as it goes."""
    train, held_out, cfg, out = prepare_scene(run, sizes)
    if run.check:
        return
    ckpt_path = out / "ckpt.pt"
    state = build_or_resume(run, cfg, ckpt_path)
    images, poses = train.images.to(run.device), train.poses.to(run.device)
    neighbours = scenes.view_neighbours(train.poses)                              # (V, min(4, V - 1))
    if held_out is None:  # each view against its nearest *other* view (itself would score ~100 dB)
        print("no test/ split: PSNR is measured on the training views; the baseline copies each one's nearest other view")
        test, split, baseline_name, baseline_images = train, "train", "nearest-other-view baseline", train.images[neighbours[:, 0]]
    else:
        test, split, baseline_name, baseline_images = held_out, "test", "nearest-neighbour baseline", scenes.nearest_view_baseline(train, held_out.poses)
    baseline = dv.psnr(baseline_images, test.images).mean().item()
    watched = torch.linspace(0, len(train.names) - 1, min(8, len(train.names))).round().long()  # training views scored at each evaluation
    train_watch = None if held_out is None else scenes.Scene(train.images[watched], train.poses[watched], train.intrinsics,
                                                             [train.names[i] for i in watched])
    print(f"{len(train.names)} training views, {len(held_out.names) if held_out else 'no'} test views at {cfg.img_size}px; "
          f"{sum(p.numel() for p in state.model.parameters()) / 1e6:.2f}M parameters; grid {cfg.grid_size}^3 x {cfg.channels} "
          f"centred at {cfg.grid_center}, side {cfg.grid_scale:.3g}; device {run.device}, {dv.resolve_precision(run.device, run.precision)}")
    print(f"{baseline_name} on the {split} views: {baseline:.2f} dB PSNR")

    budget = run.minutes * 60 if run.minutes > 0 else math.inf
    next_eval = (state.seconds // run.eval_every + 1) * run.eval_every
    last_log, last_log_step, start = time.perf_counter(), state.step, time.perf_counter() - state.seconds
    with stop_requests() as stop:
        while state.step < run.iters and state.seconds < budget and not stop:
            set_learning_rate(state.optimizer, run, progress=max(state.step / run.iters, state.seconds / budget))
            views = sample_views(neighbours, state.sampler)
            loss = training_step(state.model, state.optimizer, state.disc, state.disc_optimizer, images, poses, views, run)
            if not (math.isfinite(loss) and state.model.grid.isfinite().all()):
                raise Diverged(f"step {state.step + 1}: loss {loss:.4g}, grid max {state.model.grid.abs().max().item():.3g}: "
                               f"training diverged (try a lower --lr); {kept(state, ckpt_path)}")
            state.step += 1
            state.seconds = time.perf_counter() - start
            last_step = state.step == run.iters or state.seconds >= budget
            if state.seconds >= next_eval or last_step:                   # evaluate, checkpoint, write the preview
                eval_start = time.perf_counter()
                psnr, rgb, depth = evaluate(state.model, test, run.device, run.precision)
                state.history.append({"step": state.step, "minutes": round(state.seconds / 60, 3), "test_psnr": round(psnr, 3)})
                if train_watch is not None:  # the gap between the two shows when the model fits its views but not novel ones
                    state.history[-1]["train_psnr"] = round(evaluate(state.model, train_watch, run.device, run.precision)[0], 3)
                save_checkpoint(state, run, ckpt_path)
                save_preview(out / "preview.png", test, rgb, depth)
                (out / "history.json").write_text(json.dumps(state.history, indent=1))
                next_eval += run.eval_every
                start += time.perf_counter() - eval_start                     # evaluation time does not count as training
            now = time.perf_counter()
            if now - last_log >= run.log_every or last_step:
                ms = 1000 * (now - last_log) / max(state.step - last_log_step, 1)
                left = max(0.0, min(budget - state.seconds, (run.iters - state.step) * ms / 1000))
                held_out_psnr = f"{state.history[-1]['test_psnr']:.2f} dB" if state.history else "-"
                print(f"step {state.step:6d} | loss {loss:.4f} | {split} PSNR {held_out_psnr} | {ms:5.0f} ms/step | "
                      f"grid max {state.model.grid.abs().max().item():#.3g} | {left / 60:4.1f} min left", flush=True)
                last_log, last_log_step = now, state.step
    save_checkpoint(state, run, ckpt_path)
    if stop:
        print(f"interrupted: saved step {state.step} to {ckpt_path}; continue with the same command and --resume")
        raise KeyboardInterrupt
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)
    final = f"{state.history[-1]['test_psnr']:.2f} dB" if state.history else "-"
    print(f"done: step {state.step}, {state.seconds / 60:.1f} min, {split} PSNR {final} ({baseline_name} {baseline:.2f} dB); "
          f"peak memory {peak_mb:.0f} MB{gpu_memory(run.device)}; checkpoint {ckpt_path}")


if __name__ == "__main__":
    try:
        main()
    except dv.DataError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
