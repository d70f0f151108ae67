"""Train DeepVoxels on one scene:  python train.py --data ./cube

Each step (as the authors did): target 1 is a random training view, the source one of its four
nearest neighbours by viewing direction (never itself), target 2 another random view. The source
is lifted and fused into the persistent grid, both targets are rendered, and the loss is
--l1_weight x L1, plus --gan_weight x the adversarial term of a PatchGAN discriminator if W > 0
(the authors: 200 x L1 + 1 x adversarial).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import torch
import torch.nn.functional as F

import deepvoxels as dv


@dataclass
class TrainConfig:
    """Everything about the run that is not the model."""

    data: str = field(default="./cube", metadata={"help": "scene folder in the DeepVoxels layout; a missing folder named 'cube' is generated"})
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
    grid_center: str = field(default="", metadata={"help": "'x y z' world centre of the grid (default: intrinsics.txt, else estimated)"})
    grid_scale: float = field(default=0.0, metadata={"help": "world side length of the grid (default 0: intrinsics.txt, else estimated)"})
    resume: bool = field(default=False, metadata={"help": "continue from <out>/ckpt.pt: same flags, --iters and --minutes count the whole run"})


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


def evaluate(model: dv.DeepVoxels, scene: dv.Scene, device: str, precision: str) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """Mean PSNR of a scene's views rendered from the grid alone (as at test time), with the renders
    (V, 3, H, W) and depth maps (V, 1, h, w); depth is None for the naive occlusion."""
    model.eval()
    with torch.no_grad(), dv.mixed_precision(device, precision):
        outs = [model.render(poses.to(device)) for poses in scene.poses.split(8)]
    model.train()
    rgb = torch.cat([o["rgb"] for o in outs]).float().cpu()
    depth = None if outs[0]["depth"] is None else torch.cat([o["depth"] for o in outs]).float().cpu()
    return dv.psnr(rgb, scene.images).mean().item(), rgb, depth


def save_preview(path: Path, test: dv.Scene, rgb: torch.Tensor, depth: torch.Tensor | None, views: int = 4) -> None:
    """PNG with one row per held-out view: target | prediction | depth (if the model has one)."""
    size = test.images.shape[-1]
    depth_column = [] if depth is None else [dv.colorize_depth(depth[:views], size)]
    rows = torch.cat([test.images[:views], rgb[:views].clamp(0, 1), *depth_column], dim=3)
    image = rows.permute(0, 2, 3, 1).reshape(-1, rows.shape[-1], 3)         # rows stacked vertically
    iio.imwrite(path, (image.numpy() * 255).round().astype("uint8"))


def crop_border(images: torch.Tensor, c: int) -> torch.Tensor:
    """Images (B, 3, H, W) without a border of c pixels: (B, 3, H - 2c, W - 2c)."""
    return images[..., c:images.shape[-2] - c, c:images.shape[-1] - c]


def set_learning_rate(optimizer: torch.optim.Optimizer, run: TrainConfig, progress: float) -> None:
    """Constant, then a linear fall to 0 over the last (1 - decay_from) of the run: the held-out PSNR of
    the 10-minute cube run ends 1-1.5 dB higher and stops wandering between evaluations."""
    decay = min(1.0, (1 - progress) / (1 - run.decay_from)) if run.decay_from < 1 else 1.0
    for group in optimizer.param_groups:
        group["lr"] = run.lr * decay


def discriminator_step(disc: dv.PatchDiscriminator, optimizer: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor) -> None:
    """One Adam step of the discriminator on real views and detached renders (B, 3, H, W)."""
    loss = dv.discriminator_loss(disc, real, fake)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main(argv=None) -> None:
    run, sizes = parse_args(argv)
    torch.set_flush_denormal(True)  # denormal floats in the grid otherwise double the step time
    data = Path(run.data)
    if not data.exists() and data.name in dv.SCENES:
        print(f"{data} does not exist: generating the synthetic scene '{data.name}' there (a few seconds)")
        dv.make_scene(data, data.name)
    if not data.is_dir():
        raise dv.DataError(f"{data}: no such data folder")
    train = dv.load_split(data, "train", sizes.img_size)
    test = dv.load_split(data, "test", sizes.img_size) if (data / "test").is_dir() else train
    center = None
    if run.grid_center:
        try:
            center = tuple(float(v) for v in run.grid_center.split())
        except ValueError:
            center = ()
        if len(center) != 3:
            raise dv.DataError(f"--grid_center: expected three numbers 'x y z', got {run.grid_center!r}")
    cfg = dv.scene_config(train, sizes, center, run.grid_scale or None)
    out = Path(run.out or Path("runs") / data.resolve().name)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"

    torch.manual_seed(run.seed)
    sampler = torch.Generator().manual_seed(run.seed)
    model = dv.DeepVoxels(cfg).to(run.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.lr, fused=True)  # fused: one kernel, 5x faster than per-tensor
    disc = dv.PatchDiscriminator(cfg.unet_width).to(run.device) if run.gan_weight > 0 else None
    disc_optimizer = torch.optim.Adam(disc.parameters(), lr=run.lr, fused=True) if disc is not None else None
    step, seconds, history = 0, 0.0, []
    if run.resume:
        resumed, state = dv.load_checkpoint(ckpt_path, run.device)
        changed = [f"{k} {v} (now {getattr(cfg, k)})" for k, v in dataclasses.asdict(resumed.cfg).items() if getattr(cfg, k) != v]
        if changed:
            raise dv.DataError(f"{ckpt_path}: checkpoint was trained with another configuration: {', '.join(changed)}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if disc is not None and "discriminator" in state:
            disc.load_state_dict(state["discriminator"])
            disc_optimizer.load_state_dict(state["disc_optimizer"])
        step, seconds, history = state["step"], state["seconds"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        sampler.set_state(state["sampler_rng"])
        print(f"resumed {ckpt_path} at step {step}")

    def checkpoint() -> None:
        dv.save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": dataclasses.asdict(cfg),
            "train_config": dataclasses.asdict(run), "step": step, "seconds": seconds, "history": history,
            "torch_rng": torch.get_rng_state(), "sampler_rng": sampler.get_state(),
            **({"discriminator": disc.state_dict(), "disc_optimizer": disc_optimizer.state_dict()} if disc is not None else {})})

    images, poses = train.images.to(run.device), train.poses.to(run.device)
    neighbours = dv.view_neighbours(train.poses)                              # (V, 4)
    baseline = dv.psnr(dv.nearest_view_baseline(train, test.poses), test.images).mean().item()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{len(train.names)} training views, {len(test.names)} test views at {cfg.img_size}px; "
          f"{n_params / 1e6:.2f}M parameters; grid {cfg.grid_size}^3 x {cfg.channels} "
          f"centred at {cfg.grid_center}, side {cfg.grid_scale:.3g}; device {run.device}")
    print(f"nearest-neighbour baseline on the test views: {baseline:.2f} dB PSNR")
    budget = run.minutes * 60 if run.minutes > 0 else math.inf
    next_eval = (seconds // run.eval_every + 1) * run.eval_every
    last_log, last_log_step, start = time.perf_counter(), step, time.perf_counter() - seconds
    c = run.crop
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill saves like Ctrl-C
    try:
        while step < run.iters and seconds < budget:
            target1 = torch.randint(len(images), (), generator=sampler).item()
            source = neighbours[target1, torch.randint(4, (), generator=sampler)].item()
            target2 = torch.randint(len(images), (), generator=sampler).item()
            with dv.mixed_precision(run.device, run.precision):
                pred = model(images[source:source + 1], poses[source:source + 1], poses[[target1, target2]])["rgb"]
            pred, target = crop_border(pred.float(), c), crop_border(images[[target1, target2]], c)
            loss = run.l1_weight * F.l1_loss(pred, target)
            if disc is not None:
                loss = loss + run.gan_weight * dv.generator_adversarial_loss(disc, pred)
            set_learning_rate(optimizer, run, progress=max(step / run.iters, seconds / budget))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if disc is not None:
                discriminator_step(disc, disc_optimizer, target, pred)
            step += 1
            seconds = time.perf_counter() - start
            if seconds >= next_eval or step == run.iters or seconds >= budget:
                eval_start = time.perf_counter()
                test_psnr, rgb, depth = evaluate(model, test, run.device, run.precision)
                history.append({"step": step, "minutes": round(seconds / 60, 3), "test_psnr": round(test_psnr, 3)})
                save_preview(out / "preview.png", test, rgb, depth)
                (out / "history.json").write_text(json.dumps(history, indent=1))
                checkpoint()
                next_eval += run.eval_every
                start += time.perf_counter() - eval_start  # evaluation time does not count as training
            now = time.perf_counter()
            if now - last_log >= run.log_every or step == run.iters or seconds >= budget:
                ms = 1000 * (now - last_log) / max(step - last_log_step, 1)
                left = max(0.0, min(budget - seconds, (run.iters - step) * ms / 1000))
                held_out = f"{history[-1]['test_psnr']:.2f} dB" if history else "-"
                print(f"step {step:6d} | loss {loss.item():.4f} | test PSNR {held_out} | {ms:5.0f} ms/step | "
                      f"grid max {model.grid.abs().max().item():.3g} | {left / 60:4.1f} min left", flush=True)
                last_log, last_log_step = now, step
    except KeyboardInterrupt:
        checkpoint()
        print(f"interrupted: saved step {step} to {ckpt_path}; continue with the same command and --resume")
        sys.exit(130)
    checkpoint()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)
    print(f"done: step {step}, {seconds / 60:.1f} min, test PSNR {history[-1]['test_psnr']:.2f} dB "
          f"(nearest-neighbour baseline {baseline:.2f} dB); peak memory {peak_mb:.0f} MB; checkpoint {ckpt_path}")


if __name__ == "__main__":
    try:
        main()
    except dv.DataError as e:
        sys.exit(f"error: {e}")
