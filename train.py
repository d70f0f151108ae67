"""Train DeepVoxels on one scene:  python train.py --data ./cube

Each step, as the authors did: target 1 is a random training view, the source one of its four
nearest neighbours by viewing direction (never itself), target 2 any random view (it may be
target 1 or the source again); the source is fused into the grid, both targets are rendered, and
the loss is --l1_weight x L1 + --gan_weight x the PatchGAN term (the authors: 200 and 1; here L1
alone). Every setting and its flag: settings.py."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import dataset
import deepvoxels as dv
import figures
import runs
import scenes
import settings
import synthetic
from checks import check_writable, run_command
from settings import TrainConfig


def coarse_config(cfg: dv.Config) -> dv.Config | None:
    """The model's configuration at half the image size, feature maps and depth planes (the camera
    scaled with the image), or None where a size cannot halve. The networks are convolutional, so
    the same weights run at either size; the naive occlusion's are not over depth: its planes
    stay."""
    planes = cfg.depth_planes // 2 if cfg.occlusion == "softmax" else cfg.depth_planes
    try:
        return dataclasses.replace(cfg, img_size=cfg.img_size // 2, feat_size=cfg.feat_size // 2,
                                   depth_planes=planes, focal=cfg.focal / 2,
                                   focal_y=cfg.focal_y / 2, cx=cfg.cx / 2, cy=cfg.cy / 2)
    except dv.DataError:  # e.g. feature maps of 16 cannot halve
        return None


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


def main(argv=None) -> None:
    """Train as the flags say; never exits, and leaves signal handlers, denormal flushing and
    torch's random state as it found them."""
    run, sizes = settings.parse_args(argv, description=__doc__)
    with dv.flushed_denormals(), torch.random.fork_rng(
            devices=[] if torch.device(run.device).type == "cpu" else None):
        with runs.train_folder(run.data, run.out, run.resume or run.check, run.overwrite) as out:
            fit(run, sizes, out)


def prepare_scene(run: TrainConfig, sizes: dict,
                  out: Path) -> tuple[scenes.Scene, scenes.Scene | None, dv.Config]:
    """Training views, held-out views or None, and the model's Config, decided here once: the
    sizes ({name: value}, settings' flags) with the scene's camera and grid. Writes
    <out>/cameras.png."""
    check_writable(out, "ckpt.pt", "history.json", "cameras.png", "preview.png")  # not at a save
    if not run.out and out != (default := Path("runs") / Path(run.data).resolve().name):
        print(f"run folder {out}: {default} holds another run (--out chooses the folder)")
    if line := synthetic.generating(run.data):           # said before the few seconds it takes
        print(line)
    train, held_out, cfg, said = dataset.open_scene(run.data, sizes, run.grid_center or None,
                                                    run.grid_scale or None)
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


def fit(run: TrainConfig, sizes: dict, out: Path) -> None:
    """Load the scene, build or resume the model, train it into the folder `out`, evaluate and
    checkpoint it as it goes."""
    train, held_out, cfg = prepare_scene(run, sizes, out)
    if run.check:
        return
    parts, progress = build_or_resume(run, cfg, ckpt_path := out / runs.CHECKPOINT)
    scene = {"data": runs.data_entry(run.data, out),
             "orbit_radius": scenes.orbit_radius(train.poses, cfg.grid_center)}
    model = parts["model"]
    images, poses = train.images.to(run.device), train.poses.to(run.device)
    neighbours = scenes.view_neighbours(train.poses)                       # (V, min(4, V - 1))
    test, split, baseline_name, baseline, note = scenes.baseline(train, held_out)
    # training views scored beside the held-out ones: the gap says whether it fits only its views
    watch = scenes.spread_views(train, 8) if held_out is not None else None
    print(*([note] if note else []),
          f"{len(train.names)} training views, {len(held_out.names) if held_out else 'no'} "
          f"test views at {cfg.img_size}px; {dv.parameter_count(model) / 1e6:.2f}M parameters; "
          f"grid {cfg.grid_size}^3 x {cfg.channels} centred at {cfg.grid_center}, side "
          f"{cfg.grid_scale:.3g}; device {run.device}, "
          f"{dv.resolve_precision(run.device, run.precision)}",
          f"{baseline_name} on the {split} views: {baseline:.2f} dB PSNR", sep="\n")
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
    with runs.stop_requests() as stop:
        while progress["step"] < run.iters and progress["seconds"] < budget and not stop:
            share = max(progress["step"] / run.iters, progress["seconds"] / budget)  # of the run
            set_learning_rate(parts["optimizer"], run, share)
            coarse_now = coarse is not None and share < run.coarse
            model.cfg = coarse if coarse_now else cfg  # the same weights run at either size
            try:
                loss = training_step(parts, coarse_images if coarse_now else images, poses,
                                     sample_views(neighbours, progress["sampler"]), run)
            finally:
                model.cfg = cfg  # evaluations and checkpoints at full size
            if not (math.isfinite(loss) and model.grid.isfinite().all()):
                raise Diverged(f"step {progress['step'] + 1}: loss {loss:.4g}, grid max "
                               f"{model.grid.abs().max().item():.3g}: training diverged (try a "
                               f"lower --lr); {progress['kept']}")
            progress["step"] += 1
            progress["seconds"] = time.perf_counter() - start
            last_step = progress["step"] == run.iters or progress["seconds"] >= budget
            if progress["seconds"] >= next_eval or last_step:
                eval_start = time.perf_counter()
                evaluate_and_save(parts, progress, run, out, test, watch, scene)
                next_eval += run.eval_every
                start += time.perf_counter() - eval_start  # evaluating is not training time
            if (now := time.perf_counter()) - last_log >= run.log_every or last_step:
                ms = 1000 * (now - last_log) / max(progress["step"] - last_log_step, 1)
                left = max(0.0, min(budget - progress["seconds"],
                                    (run.iters - progress["step"]) * ms / 1000))
                print(f"step {progress['step']:6d} | loss {loss:.4f} | {split} PSNR "
                      f"{last_psnr(progress)} | {ms:5.0f} ms/step | grid max "
                      f"{model.grid.abs().max().item():#.3g} | {left / 60:4.1f} min left",
                      flush=True)
                last_log, last_log_step = now, progress["step"]
    save_checkpoint(parts, progress, run, ckpt_path, scene)
    if stop:
        print(f"interrupted: saved step {progress['step']} to {ckpt_path}; "
              f"continue with --resume --out {out}")
        raise KeyboardInterrupt
    print(f"done: step {progress['step']}, {progress['seconds'] / 60:.1f} min, {split} PSNR "
          f"{last_psnr(progress)} ({baseline_name} {baseline:.2f} dB); "
          f"{runs.peak_memory(run.device)}; checkpoint {ckpt_path}")


def evaluate_and_save(parts: dict, progress: dict, run: TrainConfig, out: Path,
                      test: scenes.Scene, watch: scenes.Scene | None, scene: dict) -> None:
    """Score the test views (and the watched training views, where there are held-out ones) into
    the history, then write the checkpoint, preview.png and history.json."""
    model = parts["model"]
    psnr, rgb, depth = figures.evaluate(model, test, run.device, run.precision)
    progress["history"].append({"step": progress["step"],
                                "minutes": round(progress["seconds"] / 60, 3),
                                "test_psnr": round(psnr, 3)})
    if watch is not None:
        progress["history"][-1]["train_psnr"] = round(
            figures.evaluate(model, watch, run.device, run.precision)[0], 3)
    save_checkpoint(parts, progress, run, out / runs.CHECKPOINT, scene)
    figures.save_preview(out / "preview.png", test, rgb, depth)
    (out / "history.json").write_text(json.dumps(progress["history"], indent=1))


def last_psnr(progress: dict) -> str:
    """The last evaluation's PSNR, or "-" before the first."""
    return f"{progress['history'][-1]['test_psnr']:.2f} dB" if progress["history"] else "-"


if __name__ == "__main__":
    run_command(main)
