"""train.py: the view sampler, the schedule, the coarse phase, resume, checkpoints, signals,
divergence and flags."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

import deepvoxels as dv
import train
from scenes import layouts, runs, settings, views

from conftest import ROOT, SMALL_FLAGS, TINY, TINY_FLAGS, camera, write_scene, nearest_directions


# ── Training and faults: steps, resume, checkpoints, signals, divergence, flags ─────────────

@pytest.mark.parametrize("count", [2, 3, 12])
def test_sample_views_draws_the_source_among_target_1s_four_nearest_views_never_target_1(
        cube, count):
    poses = layouts.load_split(cube, "train", 16).poses[:count]
    # independent of view_neighbours
    nearest = nearest_directions(poses, 4)
    generator = torch.Generator().manual_seed(0)
    draws = [train.sample_views(views.view_neighbours(poses), generator) for _ in range(400)]
    for source, target1, target2 in draws:
        assert source != target1
        assert source in nearest[target1]
        assert 0 <= target2 < count
    # every view is a target
    assert {d[1] for d in draws} == {d[2] for d in draws} == set(range(count))
    # every neighbour used
    assert {(d[1], d[0]) for d in draws} == {(t, s) for t in range(count) for s in nearest[t]}


def test_learning_rate_is_constant_then_falls_linearly_to_zero():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    for decay_from, progress, expected in [(0.75, 0.0, 1.0), (0.75, 0.75, 1.0), (0.75, 0.875, 0.5),
                                           (0.75, 1.0, 0.0), (0.5, 0.6, 0.8), (1.0, 0.99, 1.0)]:
        train.set_learning_rate(optimizer,
                                settings.TrainConfig(lr=2.0, decay_from=decay_from), progress)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2.0 * expected)


class FixedRendering(torch.nn.Module):
    """Stands in for the model in train.training_step: 'renders' its own parameter."""

    def __init__(self, rgb: torch.Tensor):
        super().__init__()
        self.rgb = torch.nn.Parameter(rgb.clone())

    def forward(self, source_image, source_pose, target_poses):
        return {"rgb": self.rgb}


@pytest.mark.parametrize("beta", [0.1, 0.0])
def test_the_loss_is_l1_above_beta_and_squared_below_it_pixel_by_pixel(beta):
    torch.manual_seed(0)
    images = torch.rand(3, 3, 8, 8)
    # errors from 0.0005 (a plain background nearly learnt) to 0.5 (an object not yet learnt)
    errors = torch.logspace(-3.3, -0.3, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    signs = torch.where(torch.rand(2, 3, 8, 8) < 0.5, -1.0, 1.0)
    model = FixedRendering(images[[1, 2]] + errors * signs)
    state = train.Training(model, torch.optim.SGD(model.parameters(), lr=0.0))
    run = settings.TrainConfig(l1_beta=beta, l1_weight=3.0, crop=0, device="cpu",
                               precision="fp32")
    loss = train.training_step(state, images, torch.eye(4).expand(3, 4, 4), (0, 1, 2), run)
    # the smooth L1 of every pixel in turn, as its formula reads, and its derivative
    total, slopes = 0.0, []
    for e in (model.rgb.detach() - images[[1, 2]]).flatten().tolist():
        total += e * e / (2 * beta) if abs(e) < beta else abs(e) - beta / 2
        slopes.append(e / beta if abs(e) < beta else math.copysign(1.0, e))
    n = errors.numel()
    assert loss == pytest.approx(3.0 * total / n, rel=1e-5)
    # every pixel's gradient: below beta a pixel off by 0.001 pulls 1 % as hard as one off by
    # 0.1 or more; the plain L1 (beta 0) pulls every pixel alike
    expected = 3.0 * torch.tensor(slopes).reshape(2, 3, 8, 8) / n
    assert torch.allclose(model.rgb.grad, expected, rtol=1e-4, atol=1e-9)


def test_coarse_phase_trains_at_half_size_and_gives_back_the_full_size_model(
        cube, tmp_path, monkeypatch):
    cfg = replace(TINY, img_size=32, feat_size=32, focal=40.0, cx=16.0, cy=16.0)
    half = train.coarse_config(cfg)
    assert (half.img_size, half.feat_size, half.depth_planes) == (16, 16, 4)
    assert train.coarse_config(TINY) is None
    model = dv.DeepVoxels(cfg)
    # a world point, seen by a camera
    point = torch.tensor([[[0.1, -0.2, 0.3]]])
    pose = camera([0.5, -2.5, 0.8])
    uv_full, _ = dv.camera_to_pixel(dv.world_to_camera(point, pose), cfg.intrinsics(cfg.feat_size))
    uv_half, _ = dv.camera_to_pixel(dv.world_to_camera(point, pose),
                                    half.intrinsics(half.feat_size))
    # the same point, half the pixel coordinates
    assert torch.allclose(uv_half, uv_full / 2, atol=1e-5)
    model.cfg = half
    # the same weights at half the size
    assert model.render(pose)["rgb"].shape == (1, 3, 16, 16)
    # its 2D convs read C x D channels
    naive = train.coarse_config(replace(cfg, occlusion="naive"))
    assert naive.depth_planes == cfg.depth_planes
    assert naive.img_size == 16
    seen = []
    step = train.training_step
    monkeypatch.setattr(train, "training_step", lambda state, images, *rest: seen.append(
        (images.shape[-1], state.model.cfg.depth_planes)) or step(state, images, *rest))
    train.main(["--data", str(cube), "--out", str(tmp_path), "--iters", "4", "--minutes", "0",
                "--coarse", "0.5", "--img_size", "32", "--feat_size", "32", *TINY_FLAGS[4:]])
    # half the run coarse, then full size
    assert seen == [(16, 4), (16, 4), (32, 8), (32, 8)]
    assert runs.load_checkpoint(tmp_path / "ckpt.pt")[0].cfg.img_size == 32
    seen.clear()
    train.main(["--data", str(cube), "--out", str(tmp_path / "naive"), "--iters", "2", "--minutes",
                "0", "--coarse", "0.5", "--img_size", "32", "--feat_size", "32", *TINY_FLAGS[4:],
                "--occlusion", "naive"])
    # the naive occlusion's coarse steps keep every depth plane (it crashed on half of them)
    assert seen == [(16, 8), (32, 8)]


def test_a_checkpoint_that_still_holds_the_intrinsics_buffers_loads(tmp_path):
    model = dv.DeepVoxels(replace(TINY, focal=20.0))
    model.grid = torch.randn_like(model.grid)  # a fused grid: a zero one would match a fresh model
    # as checkpoints written before the intrinsics were read from the Config held them
    weights = {**model.state_dict(), "K": model.cfg.intrinsics(16),
               "K_feat": model.cfg.intrinsics(16)}
    runs.save_checkpoint(tmp_path / "old.pt", {"config": asdict(model.cfg), "model": weights})
    loaded, _ = runs.load_checkpoint(tmp_path / "old.pt")
    assert loaded.cfg == model.cfg
    assert torch.equal(loaded.grid, model.grid)


def test_a_checkpoint_older_than_occlusion_size_scores_its_whole_view_volume(tmp_path):
    model = dv.DeepVoxels(replace(TINY, img_size=64, feat_size=64))
    # written before occlusion_size: its occlusion U-Net saw all 64 x 64 feature pixels
    config = {k: v for k, v in asdict(model.cfg).items() if k != "occlusion_size"}
    runs.save_checkpoint(tmp_path / "old.pt", {"config": config, "model": model.state_dict()})
    loaded, _ = runs.load_checkpoint(tmp_path / "old.pt")
    assert loaded.cfg == replace(model.cfg, occlusion_size=64)


def test_resume_gives_the_same_next_step_as_running_on(cube, tmp_path):
    common = ["--data", str(cube), "--minutes", "0", "--eval_every", "1e9", "--log_every", "1e9",
              "--precision", "fp32", *TINY_FLAGS]
    train.main([*common, "--iters", "4", "--out", str(tmp_path / "straight")])
    train.main([*common, "--iters", "2", "--out", str(tmp_path / "resumed")])
    train.main([*common, "--iters", "4", "--out", str(tmp_path / "resumed"), "--resume"])
    straight = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)
    assert straight["step"] == resumed["step"] == 4
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


def test_recipe_flags_round_trip_through_the_checkpoint_and_resume_restores_the_discriminator(
        cube, tmp_path):
    flags = ["--data", str(cube), "--minutes", "0", "--eval_every", "1e9", "--log_every", "1e9",
             "--precision", "fp32", "--occlusion", "naive", "--gan_weight", "0.5",
             "--l1_weight", "200", "--l1_beta", "0", "--crop", "1", "--lr", "1e-4",
             "--gru_dropout", "0.1", *SMALL_FLAGS]
    train.main([*flags, "--iters", "4", "--out", str(tmp_path / "straight")])
    train.main([*flags, "--iters", "2", "--out", str(tmp_path / "resumed")])
    train.main([*flags, "--iters", "4", "--out", str(tmp_path / "resumed"), "--resume"])
    straight = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)
    assert straight["config"]["occlusion"] == "naive"
    assert straight["config"]["gru_dropout"] == 0.1
    run = straight["train_config"]
    assert ((run["gan_weight"], run["l1_weight"], run["l1_beta"], run["crop"], run["lr"])
            == (0.5, 200.0, 0.0, 1, 1e-4))
    assert straight["disc_optimizer"]["param_groups"][0]["lr"] == 1e-4
    model, _ = runs.load_checkpoint(tmp_path / "straight" / "ckpt.pt")
    assert isinstance(model.occlusion, dv.NaiveOcclusion)
    for part in ("model", "discriminator"):
        for name, value in straight[part].items():
            assert torch.equal(value, resumed[part][name]), (part, name)


def test_resume_with_another_gan_weight_is_refused_in_one_line(cube, tmp_path):
    common = ["--data", str(cube), "--minutes", "0", "--iters", "1", *SMALL_FLAGS]
    train.main([*common, "--out", str(tmp_path / "gan"), "--gan_weight", "0.5"])
    train.main([*common, "--out", str(tmp_path / "plain")])
    for folder, now, before in (("gan", "0.0", 0.5), ("gan", "1.0", 0.5), ("plain", "0.5", 0.0)):
        with pytest.raises(dv.DataError) as error:
            train.main([*common, "--out", str(tmp_path / folder), "--gan_weight", now, "--resume",
                        "--iters", "2"])
        assert (f"checkpoint was trained with another configuration: gan_weight {before} "
                f"(now {float(now)})" in str(error.value))
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("entry", ["optimizer", "step", "sampler_rng"])
def test_resume_refuses_a_checkpoint_without_an_entry_it_reads(cube, tmp_path, entry):
    common = ["--data", str(cube), "--out", str(tmp_path), "--minutes", "0", *TINY_FLAGS]
    train.main([*common, "--iters", "1"])
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    del state[entry]
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(
            dv.DataError,
            match=f"ckpt.pt: not a DeepVoxels checkpoint of this version .no valid {entry} entry"):
        train.main([*common, "--iters", "2", "--resume"])


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", "truncated", "foreign dict"])
def test_load_checkpoint_refuses_what_is_not_a_checkpoint(cube, tmp_path, content):
    path = tmp_path / "ckpt.pt"
    if content == "truncated":
        train.main(["--data", str(cube), "--minutes", "0", "--iters", "1", "--out", str(tmp_path),
                    *TINY_FLAGS])
        path.write_bytes(path.read_bytes()[:1000])
    elif content == "foreign dict":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(dv.DataError, match="ckpt.pt: not a DeepVoxels checkpoint"):
        runs.load_checkpoint(path)


def test_checkpoint_from_another_configuration_is_refused(cube, tmp_path):
    common = ["--data", str(cube), "--minutes", "0", "--iters", "1", "--out", str(tmp_path),
              *TINY_FLAGS]
    train.main(common)
    assert not list(tmp_path.glob("*.tmp"))                              # written atomically
    model, state = runs.load_checkpoint(tmp_path / "ckpt.pt")
    assert model.cfg.grid_size == 8
    assert state["step"] == 1
    with pytest.raises(dv.DataError, match="another configuration"):
        train.main([*common, "--resume", "--grid_size", "12"])


def test_a_failed_checkpoint_write_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    runs.save_checkpoint(path, {"step": 1})

    # what torch.save does when the disk fills
    def disk_full(state, file):
        Path(file).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
            dv.DataError,
            match="ckpt.pt: cannot write the checkpoint .the write stopped part-way") as error:
        runs.save_checkpoint(path, {"step": 2})
    assert "\n" not in str(error.value)
    assert not (tmp_path / "ckpt.pt.tmp").exists()
    monkeypatch.undo()
    # the saved checkpoint is kept
    assert torch.load(path, weights_only=True) == {"step": 1}


ENDLESS_SAVES = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from scenes import runs
for i in range(1_000_000):
    state = {"i": i, "weights": [torch.full((1000,), float(i)) for _ in range(2000)]}
    print(i, flush=True)
    runs.save_checkpoint(sys.argv[2], state)
"""


def test_checkpoint_left_by_a_sigkill_mid_write_is_a_complete_save(tmp_path):
    # 2000 small tensors: one save takes a few hundred ms,
    # so the kill lands in the middle of writing one
    path = tmp_path / "ckpt.pt"
    process = subprocess.Popen([sys.executable, "-c", ENDLESS_SAVES, str(ROOT), str(path)],
                               stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        # the 3rd save has just begun
        if int(line) == 2:
            time.sleep(0.02)
            # SIGKILL: no handler, no clean-up
            process.kill()
            break
    process.wait(timeout=30)
    state = torch.load(path, weights_only=True)
    assert state["i"] in (1, 2)
    assert len(state["weights"]) == 2000
    assert all(torch.equal(w, torch.full((1000,), float(state["i"]))) for w in state["weights"])


def denormals_flushed() -> bool:
    """Whether the CPU flushes denormal floats to zero, read from Python's own arithmetic."""
    tiny = float("1e-310")
    return tiny * 1.0 == 0.0


def test_train_main_in_process_leaves_signal_handlers_denormals_and_rng_as_it_found_them(
        cube, tmp_path):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # render.main, for one, turns flushing on
    outside = denormals_flushed()
    try:
        for flushing in (False, True):
            torch.set_flush_denormal(flushing)
            assert denormals_flushed() == flushing
            torch.manual_seed(123)
            rng = torch.get_rng_state()
            train.main(["--data", str(cube), "--out", str(tmp_path), "--iters", "2",
                        "--minutes", "0", "--overwrite", *TINY_FLAGS])
            with pytest.raises(dv.DataError):                             # and when it fails
                train.main(["--data", str(cube), "--out", str(tmp_path), "--resume",
                            "--grid_size", "12", *TINY_FLAGS[2:4]])
            assert {s: signal.getsignal(s) for s in handlers} == handlers
            assert denormals_flushed() == flushing
            assert torch.equal(torch.get_rng_state(), rng)
    finally:
        torch.set_flush_denormal(outside)


def test_sigterm_mid_step_finishes_the_step_and_saves_a_checkpoint_that_resumes_exactly(
        cube, tmp_path, monkeypatch):
    common = ["--data", str(cube), "--minutes", "0", "--eval_every", "1e9", "--log_every", "1e9",
              "--precision", "fp32", "--iters", "6", *TINY_FLAGS]
    train.main([*common, "--out", str(tmp_path / "straight")])
    fuse, calls = dv.DeepVoxels.fuse, []

    # the signal lands after fuse rebound the grid, before the optimizer stepped
    def fuse_then_sigterm(self, *args):
        out = fuse(self, *args)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(dv.DeepVoxels, "fuse", fuse_then_sigterm)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # not SystemExit: main never exits
    with pytest.raises(KeyboardInterrupt):
        train.main([*common, "--out", str(tmp_path / "resumed")])
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)["step"] == 3
    monkeypatch.undo()
    train.main([*common, "--out", str(tmp_path / "resumed"), "--resume"])
    straight = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


def test_sigterm_to_the_command_line_saves_and_exits_130_in_one_line(cube, tmp_path):
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--data", str(cube),
                                "--out", str(tmp_path), "--log_every", "0", "--minutes", "0",
                                "--iters", "100000", *TINY_FLAGS],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("step"):
            break
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr == ""
    last = stdout.strip().splitlines()[-1]
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"]
    assert last == (f"interrupted: saved step {saved} to {tmp_path / 'ckpt.pt'}; "
                    f"continue with --resume --out {tmp_path}")


@pytest.mark.parametrize("poison", ["grid", "weights"])
def test_non_finite_grid_or_weights_stop_in_one_line_and_keep_the_last_finite_checkpoint(
        cube, tmp_path, monkeypatch, poison):
    step, calls = train.training_step, []

    def poisoned_step(state, *args):
        loss, model = step(state, *args), state.model
        calls.append(1)
        if len(calls) == 4 and poison == "grid":
            # the grid blew up in the 4th step
            model.grid = model.grid * float("inf")
        if len(calls) == 4 and poison == "weights":
            # a weight did, with a finite loss
            next(model.parameters()).data[0] = float("nan")
        return loss

    monkeypatch.setattr(train, "training_step", poisoned_step)
    # evaluated and saved after every step:
    with pytest.raises(train.Diverged) as error:
        train.main(["--data", str(cube), "--out", str(tmp_path), "--minutes", "0", "--iters", "6",
                    "--eval_every", "1e-9", *TINY_FLAGS])
    assert str(error.value).startswith("step 4: ")
    assert f"{tmp_path / 'ckpt.pt'} keeps step 3" in str(error.value)
    # the grid is checked after every step, the weights (and the grid again) before every checkpoint
    assert (("grid max nan" if poison == "grid" else "the weights or the grid are no longer finite")
            in str(error.value))
    assert "\n" not in str(error.value)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["step"] == 3
    assert all(v.isfinite().all() for v in state["model"].values() if v.is_floating_point())
    assert [h["step"] for h in json.loads((tmp_path / "history.json").read_text())] == [1, 2, 3]


NO_CUDA = ([] if torch.cuda.is_available()
           else [(["--device", "cuda"], "--device cuda: this machine has no such device")])


@pytest.mark.parametrize("flags, message", [
    (["--lrr", "1"], "unrecognized arguments: --lrr 1"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--lr", "-1"], "--lr: the value must be a finite number > 0, got -1.0"),
    (["--eval_every", "0"], "--eval_every: the value must be a finite number > 0, got 0.0"),
    (["--decay_from", "2"],
     "--decay_from: the value must be a finite number >= 0 and <= 1, got 2.0"),
    (["--img_size", "0"], "sizes: img_size / feat_size (0 / 32)"),
    (["--feat_size", "12"], "sizes: img_size / feat_size (64 / 12)"),
    (["--channels", "0"], "sizes: channels, unet_width and occlusion_width"),
    (["--gru_dropout", "2"], "gru_dropout (2.0) must be at least 0 and below 1"),
    (["--crop", "8", *TINY_FLAGS[:4]],
     "--crop 8: leaves no pixel of the 16 px images for the loss"),
    (["--device", "tpu9"], "--device tpu9: not a device torch knows"), *NO_CUDA,
    (["--grid_scale", "nan"], "--grid_scale: the value must be a finite number >= 0, got nan"),
    (["--grid_scale", "-1"], "--grid_scale: the value must be a finite number >= 0, got -1.0"),
    (["--grid_center", "0 nan 0"],
     "--grid_center: the grid centre's y must be a finite number, got nan"),
])
def test_train_flags_are_checked_before_any_work_in_one_line(cube, tmp_path, flags, message):
    with pytest.raises(dv.DataError) as error:
        train.main(["--data", str(cube), "--out", str(tmp_path / "run"), "--minutes", "0.02",
                    *flags])
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_a_misspelt_flag_is_one_line_and_exit_1_in_every_script(tmp_path):
    for command, prog in ((["train.py"], "train.py"), (["render.py"], "render.py"),
                          (["-m", "tools.ablation"], "ablation.py")):
        result = subprocess.run([sys.executable, *command, "--itres", "5"],
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr.count("\n") == 1, (command, result.stderr)
        assert result.stderr.startswith(f"error: {prog}: unrecognized arguments: --itres 5"), (
            result.stderr)


def test_outputs_are_checked_writable_before_any_work(cube, tmp_path):
    (tmp_path / "run" / "cameras.png").mkdir(parents=True)
    with pytest.raises(dv.DataError,
                       match="cameras.png: is a folder, so cameras.png cannot be written there"):
        train.main(["--data", str(cube), "--out", str(tmp_path / "run"), "--iters", "1",
                    *TINY_FLAGS])
    assert not (tmp_path / "run" / "ckpt.pt").exists()
    from tools import ablation

    # ablation.py's picture: before any training
    (tmp_path / "ablation" / "ablation.png").mkdir(parents=True)
    with pytest.raises(dv.DataError,
                       match="ablation.png: is a folder, so ablation.png cannot be written there"):
        ablation.main(["--data", str(cube), "--out", str(tmp_path / "ablation"), "--iters", "1",
                       *TINY_FLAGS])
    assert not (tmp_path / "ablation" / "softmax").exists()


def test_train_refuses_one_view_unwritable_output_and_bad_sizes_in_one_line(tmp_path):
    root = write_scene(tmp_path / "scene", n=1)
    (tmp_path / "a_file").write_text("")
    cases = [
        (["--data", str(root), "--out", str(tmp_path / "run")], "training needs at least 2 views"),
        (["--data", str(write_scene(tmp_path / "two")), "--out", str(tmp_path / "a_file" / "run")],
         "run: cannot write the output folder"),
        (["--data", str(root), "--feat_size", "8"],
         "sizes: feat_size (8) must be a multiple of 8 and at least 16")]
    for args, message in cases:
        with pytest.raises(dv.DataError) as error:
            # the last --feat_size wins
            train.main([*TINY_FLAGS, "--minutes", "0", "--iters", "1", *args])
        assert message in str(error.value)
        assert "\n" not in str(error.value)


def test_gpu_peak_memory_is_reported_only_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 1536 * 2 ** 20)
    assert runs.peak_memory("cuda").endswith(", peak GPU memory 1536 MB")
    assert runs.peak_memory("cuda:0").endswith("1536 MB")
    assert "GPU" not in runs.peak_memory("cpu")
