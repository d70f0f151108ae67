"""Train DeepVoxels on one scene:  python train.py --data ./cube

Each step, as the authors did: target 1 is a random training view, the source one of its four
nearest neighbours by viewing direction (never itself), target 2 any random view (it may be
target 1 or the source again); the source is fused into the grid, both targets are rendered, and
the loss is --l1_weight x L1 + --gan_weight x the PatchGAN term (the authors: 200 and 1; here L1
alone, a smooth L1 whose errors below --l1_beta are squared). The first --coarse share of the run
trains at half the size. Every setting and its flag: scenes/settings.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import deepvoxels as dv
from scenes import dataset, evaluation, figures, runs, settings, views
from scenes.layouts import Scene
from scenes.settings import TrainConfig


def main(argv=None) -> None:
    """Train as the flags say; never exits, and leaves signal handlers, denormal flushing and
    torch's random state as it found them."""
    run, sizes = settings.parse_args(argv, description=__doc__)
    with dv.flushed_denormals(), torch.random.fork_rng(
            devices=[] if torch.device(run.device).type == "cpu" else None):
        # the scene first: bad data leaves no run folder behind
        train, held_out, cfg = dataset.open_scene(run.data, sizes, run.grid_center or None,
                                                  run.grid_scale or None)
        # --check into the default folder takes a fresh one: a trained run's cameras.png stays
        reuse = run.resume or (run.check and bool(run.out))
        with runs.train_folder(run.data, run.out, reuse, run.overwrite) as out:
            if not run.out and out.name != Path(run.data).resolve().name:
                print(f"run folder {out}: {out.with_name(Path(run.data).resolve().name)} holds "
                      f"another run (--out chooses the folder)")
            runs.check_writable(out, runs.CHECKPOINT, "history.json", "cameras.png",
                                "preview.png")
            # a refused --resume draws nothing
            state = None if run.check else build_or_resume(run, cfg, out / runs.CHECKPOINT)
            figures.plot_setup(out / "cameras.png", train, held_out, cfg)
            if run.check:
                print(f"wrote {out / 'cameras.png'}; --check: not training")
                return
            fit(run, state, train, held_out, out)


@dataclasses.dataclass
class Training:
    """What a run carries from step to step: the networks and their optimisers (named as in the
    checkpoint), how far it has come, and the generator that draws its views."""

    model: dv.DeepVoxels
    optimizer: torch.optim.Optimizer
    discriminator: dv.PatchDiscriminator | None = None   # with --gan_weight > 0
    disc_optimizer: torch.optim.Optimizer | None = None
    sampler: torch.Generator = dataclasses.field(default_factory=torch.Generator)
    step: int = 0
    seconds: float = 0.0                          # of training, evaluations left out
    history: list[dict] = dataclasses.field(default_factory=list)   # one row per evaluation
    kept: str = "no checkpoint was written"       # what an error line says survives

    def parts(self) -> dict:
        """The networks and optimisers by their checkpoint names (the discriminator's if any)."""
        names = ("model", "optimizer", "discriminator", "disc_optimizer")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def fit(run: TrainConfig, state: Training, train: Scene, held_out: Scene | None,
        out: Path) -> None:
    """Train the model (new or resumed: build_or_resume) into the folder `out`, evaluate and
    checkpoint it as it goes (every --eval_every seconds, and at the end)."""
    cfg = state.model.cfg
    score = Scoring.of(run, train, held_out, state, out)
    phases = training_phases(run, cfg, train.images.to(run.device))
    poses, neighbours = train.poses.to(run.device), views.view_neighbours(train.poses)
    budget = run.minutes * 60 if run.minutes > 0 else math.inf
    log = Log(run, score, budget, state)
    next_eval, start = score.next_evaluation(state), time.perf_counter() - state.seconds
    with runs.stop_requests() as stop:
        while state.step < run.iters and state.seconds < budget and not stop:
            share = max(state.step / run.iters, state.seconds / budget)   # of the run, so far
            set_learning_rate(state.optimizer, run, share)
            phase_cfg, images = next((c, i) for until, c, i in phases if share < until)
            state.model.cfg = phase_cfg   # the same weights run at either size
            try:
                loss = training_step(state, images, poses,
                                     sample_views(neighbours, state.sampler), run)
            finally:
                state.model.cfg = cfg     # evaluations and checkpoints at full size
            check_finite(state, loss)
            state.step, state.seconds = state.step + 1, time.perf_counter() - start
            last = state.step == run.iters or state.seconds >= budget
            if state.seconds >= next_eval or last:
                start += score.evaluate_and_save(state)   # evaluating is not training time
                next_eval += run.eval_every
            log.step(state, loss, last)
    save_checkpoint(state, run, out / runs.CHECKPOINT, score.scene)
    log.end(state, out / runs.CHECKPOINT, interrupted=bool(stop))
    if stop:
        raise KeyboardInterrupt   # after the save: the command line exits 130


def build_or_resume(run: TrainConfig, cfg: dv.Config, ckpt_path: Path) -> Training:
    """The networks and optimisers, new and seeded, or with --resume the checkpoint's if it fits
    the flags."""
    torch.manual_seed(run.seed)
    model = dv.DeepVoxels(cfg).to(run.device)
    state = Training(model, torch.optim.Adam(model.parameters(), lr=run.lr, fused=True),
                     sampler=torch.Generator().manual_seed(run.seed))  # fused: one kernel, faster
    if run.gan_weight > 0:  # the PatchGAN discriminator and its optimiser
        state.discriminator = dv.PatchDiscriminator(cfg.unet_width).to(run.device)
        state.disc_optimizer = torch.optim.Adam(state.discriminator.parameters(), lr=run.lr,
                                                fused=True)
    if not run.resume:
        return state
    needs = {"step": int, "seconds": float, "history": list, "train_config": dict,
             "torch_rng": torch.Tensor, "sampler_rng": torch.Tensor}
    resumed, saved = runs.load_checkpoint(ckpt_path, run.device, needs)
    trained = {**dataclasses.asdict(resumed.cfg),
               "gan_weight": saved["train_config"].get("gan_weight", 0.0)}   # with or without a
    now = {**dataclasses.asdict(cfg), "gan_weight": run.gan_weight}         # discriminator
    if changed := [f"{k} {v} (now {now[k]})" for k, v in trained.items() if now[k] != v]:
        grid = (f" (the grid: --grid_scale {trained['grid_scale']:g})"
                if trained["grid_scale"] != now["grid_scale"] else "")
        raise dv.DataError(f"{ckpt_path}: checkpoint was trained with another configuration: "
                           f"{', '.join(changed)}; resume with the same flags{grid}")
    for name, part in state.parts().items():  # the networks, then their optimisers
        if not isinstance(saved.get(name), dict):
            raise dv.DataError(f"{ckpt_path}: not a DeepVoxels checkpoint of this version "
                               f"(no valid {name} entry)")
        part.load_state_dict(saved[name])
    state.step, state.seconds, state.history = saved["step"], saved["seconds"], saved["history"]
    state.kept = f"{ckpt_path} keeps step {state.step}, the last finite state"
    torch.set_rng_state(saved["torch_rng"])
    state.sampler.set_state(saved["sampler_rng"])
    print(f"resumed {ckpt_path} at step {state.step}")
    return state


# ─────────────────────────────────────────────────────────────────────────────────────────────
# One step
# ─────────────────────────────────────────────────────────────────────────────────────────────

def sample_views(neighbours: torch.Tensor, generator: torch.Generator) -> tuple[int, int, int]:
    """(source, target 1, target 2): a random target 1, the source one of its neighbours (its row
    of (V, k), never itself), a random target 2."""
    target1 = torch.randint(len(neighbours), (), generator=generator).item()
    source = neighbours[target1, torch.randint(neighbours.shape[1], (), generator=generator)].item()
    target2 = torch.randint(len(neighbours), (), generator=generator).item()
    return source, target1, target2


def training_step(state: Training, images: torch.Tensor, poses: torch.Tensor,
                  views: tuple[int, int, int], run: TrainConfig) -> float:
    """Fuse the source view, render both targets, take an Adam step on the loss (then the
    discriminator's); returns the loss."""
    (source, target1, target2), disc = views, state.discriminator
    with dv.mixed_precision(run.device, run.precision):
        pred = state.model(images[source:source + 1], poses[source:source + 1],
                           poses[[target1, target2]])["rgb"]              # (2, 3, H, W)
    c, size = run.crop, images.shape[-1]  # the loss leaves out a border of c pixels
    pred, target = (pred.float()[..., c:size - c, c:size - c],
                    images[[target1, target2]][..., c:size - c, c:size - c])
    # Smooth L1, per pixel error e: |e| - β/2 above β (the paper's L1, shifted), e²/(2β) below;
    # β = 0 (--l1_beta 0) is exactly the paper's L1. Below β a pixel's gradient is e/β: one off by
    # 0.001 pulls 1 % as hard as one off by 0.1 or more. With the plain L1 every pixel pulls alike,
    # and a small object on a plain background learnt far more slowly (docs/measurements.md).
    loss = run.l1_weight * F.smooth_l1_loss(pred, target, beta=run.l1_beta)
    if disc is not None:
        loss = loss + run.gan_weight * dv.generator_adversarial_loss(disc, pred)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    if disc is not None:  # then the discriminator's own step on real and rendered views
        state.disc_optimizer.zero_grad(set_to_none=True)
        dv.discriminator_loss(disc, target, pred).backward()
        state.disc_optimizer.step()
    return loss.item()


def set_learning_rate(optimizer: torch.optim.Optimizer, run: TrainConfig, progress: float) -> None:
    """Constant, then a linear fall to 0 over the last (1 - decay_from) of the run (a higher
    held-out PSNR than a constant rate)."""
    decay = min(1.0, (1 - progress) / (1 - run.decay_from)) if run.decay_from < 1 else 1.0
    for group in optimizer.param_groups:
        group["lr"] = run.lr * decay


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


def training_phases(run: TrainConfig, cfg: dv.Config,
                    images: torch.Tensor) -> list[tuple[float, dv.Config, torch.Tensor]]:
    """[(until this share of the run, Config, training images (V, 3, H, W) at its size)]: the
    coarse phase at half the size where --coarse asks for one and the sizes can halve, then the
    full size."""
    coarse = coarse_config(cfg) if run.coarse > 0 else None
    if coarse is None:
        return [(math.inf, cfg, images)]
    print(f"the first {run.coarse:.0%} of the run at {coarse.img_size}px, "
          f"{coarse.feat_size} x {coarse.feat_size} feature maps, {coarse.depth_planes} depth "
          f"planes (--coarse); the held-out PSNR, rendered at {cfg.img_size}px, rises once the "
          f"run is at that size")
    half = F.interpolate(images, size=coarse.img_size, mode="area")          # (V, 3, H/2, W/2)
    return [(run.coarse, coarse, half), (math.inf, cfg, images)]


class Diverged(dv.DataError):
    """The loss, the grid or the weights stopped being finite (a DataError: every command line
    reports it in one line)."""


def check_finite(state: Training, loss: float) -> None:
    """Raise Diverged when the step's loss or the grid is no longer finite."""
    if not (math.isfinite(loss) and state.model.grid.isfinite().all()):
        raise Diverged(f"step {state.step + 1}: loss {loss:.4g}, grid max "
                       f"{state.model.grid.abs().max().item():.3g}: training diverged (try a "
                       f"lower --lr); {state.kept}")


# ─────────────────────────────────────────────────────────────────────────────────────────────
# Evaluations, checkpoints and the log
# ─────────────────────────────────────────────────────────────────────────────────────────────

def save_checkpoint(state: Training, run: TrainConfig, ckpt_path: Path, scene: dict) -> None:
    """Write the run's checkpoint, with `scene` (where its data is, the orbit radius); raises
    Diverged instead when the weights or the grid are no longer finite."""
    if not all(t.isfinite().all() for t in state.model.state_dict().values()
               if t.is_floating_point()):
        raise Diverged(f"step {state.step}: the weights or the grid are no longer finite "
                       f"(training diverged); {state.kept}")
    runs.save_checkpoint(ckpt_path, {name: p.state_dict() for name, p in state.parts().items()} | {
        "config": dataclasses.asdict(state.model.cfg), "train_config": dataclasses.asdict(run),
        "torch_rng": torch.get_rng_state(), "sampler_rng": state.sampler.get_state(),
        "scene": scene, "step": state.step, "seconds": state.seconds, "history": state.history})
    state.kept = f"{ckpt_path} keeps step {state.step}, the last finite state"


@dataclasses.dataclass
class Scoring:
    """How a run is scored: the views (held-out, else training), their nearest-view baseline, the
    training views watched beside them, and where the results go."""

    run: TrainConfig
    out: Path
    test: Scene
    split: str                 # "test", or "train" without held-out views
    baseline_name: str
    baseline: float            # dB
    watch: Scene | None        # 8 training views, scored beside held-out ones: does it generalise?
    scene: dict                # the checkpoint's record of the data folder and orbit radius

    @classmethod
    def of(cls, run: TrainConfig, train: Scene, held_out: Scene | None, state: Training,
           out: Path) -> Scoring:
        """The scoring of a run, after printing what it trains."""
        test, split, name, baseline, note = evaluation.baseline(train, held_out)
        cfg = state.model.cfg
        print(*([note] if note else []),
              f"{len(train.names)} training views, {len(held_out.names) if held_out else 'no'} "
              f"test views at {cfg.img_size}px; {dv.parameter_count(state.model) / 1e6:.2f}M "
              f"parameters; grid {cfg.grid_size}^3 x {cfg.channels}; device {run.device}, "
              f"{dv.resolve_precision(run.device, run.precision)}",
              f"{name} on the {split} views: {baseline:.2f} dB PSNR", sep="\n")
        scene = {"data": runs.data_entry(run.data, out),
                 "orbit_radius": views.orbit_radius(train.poses, cfg.grid_center)}
        watch = views.spread_views(train, 8) if held_out is not None else None
        return cls(run, out, test, split, name, baseline, watch, scene)

    def next_evaluation(self, state: Training) -> float:
        """Training seconds at which the next evaluation is due."""
        return (state.seconds // self.run.eval_every + 1) * self.run.eval_every

    def evaluate_and_save(self, state: Training) -> float:
        """Score the test views (and the watched training views) into the history, then write the
        checkpoint, preview.png and history.json; returns the seconds it took."""
        start, run = time.perf_counter(), self.run
        psnr, rgb, depth = evaluation.evaluate(state.model, self.test, run.device, run.precision)
        row = {"step": state.step, "minutes": round(state.seconds / 60, 3),
               "test_psnr": round(psnr, 3)}
        if self.watch is not None:
            row["train_psnr"] = round(evaluation.evaluate(state.model, self.watch, run.device,
                                                          run.precision)[0], 3)
        state.history.append(row)
        save_checkpoint(state, run, self.out / runs.CHECKPOINT, self.scene)
        figures.save_preview(self.out / "preview.png", self.test, rgb, depth)
        (self.out / "history.json").write_text(json.dumps(state.history, indent=1))
        return time.perf_counter() - start


class Log:
    """A line every --log_every seconds; the held-out PSNR only on the first line after each
    evaluation (between them it has not changed)."""

    def __init__(self, run: TrainConfig, score: Scoring, budget: float, state: Training):
        self.run, self.score, self.budget = run, score, budget
        self.time, self.step_at, self.evaluations = (time.perf_counter(), state.step,
                                                     len(state.history))

    def step(self, state: Training, loss: float, last: bool) -> None:
        now, run = time.perf_counter(), self.run
        if now - self.time < run.log_every and not last:
            return
        ms = 1000 * (now - self.time) / max(state.step - self.step_at, 1)
        left = max(0.0, min(self.budget - state.seconds, (run.iters - state.step) * ms / 1000))
        new = len(state.history) != self.evaluations
        psnr = f"{self.score.split} PSNR {last_psnr(state)}" if new else ""
        print(f"step {state.step:6d} | loss {loss:.4f} | {psnr:19} | {ms:5.0f} ms/step | grid max "
              f"{state.model.grid.abs().max().item():#.3g} | {left / 60:4.1f} min left",
              flush=True)
        self.time, self.step_at, self.evaluations = now, state.step, len(state.history)

    def end(self, state: Training, ckpt_path: Path, interrupted: bool) -> None:
        if interrupted:
            print(f"interrupted: saved step {state.step} to {ckpt_path}; "
                  f"continue with --resume --out {ckpt_path.parent}")
            return
        print(f"done: step {state.step}, {state.seconds / 60:.1f} min, {self.score.split} PSNR "
              f"{last_psnr(state)} ({self.score.baseline_name} {self.score.baseline:.2f} dB); "
              f"{runs.peak_memory(self.run.device)}; checkpoint {ckpt_path}")


def last_psnr(state: Training) -> str:
    """The last evaluation's PSNR, or "-" before the first."""
    return f"{state.history[-1]['test_psnr']:.2f} dB" if state.history else "-"


if __name__ == "__main__":
    settings.run_command(main)
