"""Run folders: no run overwrites another, one command per folder, a run renders from anywhere."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import imageio.v3 as iio
import pytest
import torch

import deepvoxels as dv
import render
import train
from scenes import runs

from conftest import ROOT, TINY_FLAGS, run_train, run_render, tiny_checkpoints


# ── Run folders: no run overwrites another, one command per folder, a run renders from anywhere ──

def quick_run(data, *flags: str) -> None:
    train.main(["--data", str(data), "--iters", "2", "--minutes", "0", "--eval_every", "1e9",
                "--log_every", "1e9", *TINY_FLAGS, *flags])


def ended_process() -> int:
    """The process id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_same_command_twice_keeps_the_first_checkpoint_byte_for_byte(
        cube, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    quick_run(cube)
    first = (tmp_path / "runs" / "cube" / "ckpt.pt").read_bytes()
    quick_run(cube, "--iters", "3")
    assert (tmp_path / "runs" / "cube" / "ckpt.pt").read_bytes() == first
    assert torch.load(tmp_path / "runs" / "cube-2" / "ckpt.pt", weights_only=True)["step"] == 3
    assert "run folder runs/cube-2: runs/cube holds another run" in capsys.readouterr().out
    # --overwrite is for an --out folder: without one, a new folder as ever
    quick_run(cube, "--iters", "2", "--overwrite")
    assert (tmp_path / "runs" / "cube" / "ckpt.pt").read_bytes() == first
    assert torch.load(tmp_path / "runs" / "cube-3" / "ckpt.pt", weights_only=True)["step"] == 2
    # each run let its folder go
    assert not list((tmp_path / "runs").glob("*/run.lock"))
    with pytest.raises(
            dv.DataError,
            match="ckpt.pt: holds a run already; continue it with --resume, choose another --out, "
                  "or replace it with --overwrite"):
        # --out names the folder: refused
        quick_run(cube, "--out", "runs/cube")
    assert (tmp_path / "runs" / "cube" / "ckpt.pt").read_bytes() == first
    quick_run(cube, "--out", "runs/cube", "--iters", "4", "--overwrite")
    assert torch.load(tmp_path / "runs" / "cube" / "ckpt.pt", weights_only=True)["step"] == 4
    # --resume continues runs/<scene>
    quick_run(cube, "--resume", "--iters", "5")
    assert torch.load(tmp_path / "runs" / "cube" / "ckpt.pt", weights_only=True)["step"] == 5
    # a checkpoint written when the model held its intrinsics as buffers resumes too
    state = torch.load(tmp_path / "runs" / "cube" / "ckpt.pt", weights_only=True)
    state["model"].update(K=torch.eye(3), K_feat=torch.eye(3))
    torch.save(state, tmp_path / "runs" / "cube" / "ckpt.pt")
    quick_run(cube, "--resume", "--iters", "6")
    assert torch.load(tmp_path / "runs" / "cube" / "ckpt.pt", weights_only=True)["step"] == 6


def test_check_never_redraws_a_trained_runs_cameras(cube, tmp_path, monkeypatch):
    """--check into the default folder while it holds a trained run draws in a fresh folder; with
    --out it takes the folder named."""
    monkeypatch.chdir(tmp_path)
    quick_run(cube)
    drawn = (tmp_path / "runs" / "cube" / "cameras.png").read_bytes()
    quick_run(cube, "--check", "--grid_scale", "0.8")
    assert (tmp_path / "runs" / "cube" / "cameras.png").read_bytes() == drawn
    assert (tmp_path / "runs" / "cube-2" / "cameras.png").exists()
    assert not (tmp_path / "runs" / "cube-2" / "ckpt.pt").exists()
    quick_run(cube, "--check", "--grid_scale", "0.8", "--out", "runs/cube")
    assert (tmp_path / "runs" / "cube" / "cameras.png").read_bytes() != drawn


def test_a_refused_resume_draws_nothing_and_leaves_no_folder(cube, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(dv.DataError, match="no such checkpoint"):
        quick_run(cube, "--resume")
    assert not (tmp_path / "runs").exists()
    quick_run(cube)
    drawn = (tmp_path / "runs" / "cube" / "cameras.png").read_bytes()
    with pytest.raises(dv.DataError,
                       match=r"grid_scale 1.25 \(now 2.0\).*the grid: --grid_scale 1.25"):
        quick_run(cube, "--resume", "--iters", "3", "--grid_scale", "2")
    assert (tmp_path / "runs" / "cube" / "cameras.png").read_bytes() == drawn


def test_a_second_run_into_a_folder_in_use_is_refused_in_one_line_and_the_first_ends_intact(
        cube, tmp_path):
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--data", str(cube),
                              "--out", str(tmp_path), "--iters", "300", "--minutes", "0",
                              "--log_every", "0", "--eval_every", "1e9", "--precision", "fp32",
                              *TINY_FLAGS],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in first.stdout:
        # training: the folder is held
        if line.startswith("step"):
            break
    second = run_train("--data", str(cube), "--out", str(tmp_path), "--iters", "2",
                       "--overwrite", *TINY_FLAGS)
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1
    assert (f"{tmp_path}: in use by process {first.pid} (a run, a render or an ablation)"
            in second.stderr)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0
    assert stderr == ""
    assert "done: step 300" in stdout
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 300
    assert not (tmp_path / "run.lock").exists()


def test_a_lock_left_by_a_process_that_is_gone_is_taken_over(cube, tmp_path):
    # a run killed mid-way left it
    (tmp_path / "run.lock").write_text(f"{ended_process()} \n")
    quick_run(cube, "--out", str(tmp_path))
    assert (tmp_path / "ckpt.pt").exists()
    assert not (tmp_path / "run.lock").exists()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # Linux: the id reused by another process
        if runs.process_start(alive.pid):
            (tmp_path / "run.lock").write_text(f"{alive.pid} 1\n")
            quick_run(cube, "--out", str(tmp_path), "--overwrite")
        # its own writer: refused
        (tmp_path / "run.lock").write_text(f"{alive.pid} {runs.process_start(alive.pid)}\n")
        with pytest.raises(dv.DataError, match=f"in use by process {alive.pid}"):
            quick_run(cube, "--out", str(tmp_path), "--overwrite")
        # a render into it too
        with pytest.raises(dv.DataError, match=f"in use by process {alive.pid}"):
            render.main(["--run", str(tmp_path), "--out", str(tmp_path), "--frames", "1"])
        # a refused command leaves the lock alone
        assert (tmp_path / "run.lock").read_text().split()[0] == str(alive.pid)
    finally:
        alive.kill()
        alive.wait()


def test_out_naming_a_file_is_one_line_in_train_and_render_and_the_file_is_kept(
        cube, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes\n")
    result = run_train("--data", str(cube), "--out", "notes.txt", "--check", *TINY_FLAGS)
    assert result.returncode == 1
    assert result.stderr == "error: notes.txt: is a file, not a folder: choose another --out\n"
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"
    # without --out: runs/<scene> is the file, whether the run reuses it (--check) or not
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "cube").write_text("")
    for flags in (["--check"], ["--iters", "1"]):
        result = run_train("--data", str(cube), *flags, *TINY_FLAGS)
        assert result.returncode == 1
        assert result.stderr == "error: runs/cube: is a file, not a folder: choose another --out\n"
    # render takes the same lock
    quick_run(cube, "--out", "run")
    with pytest.raises(dv.DataError) as error:
        render.main(["--run", "run", "--out", "notes.txt", "--frames", "1"])
    assert str(error.value) == "notes.txt: is a file, not a folder: choose another --out"
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"
    # a folder where the lock file goes
    (tmp_path / "run" / "run.lock").mkdir()
    with pytest.raises(dv.DataError) as error:
        quick_run(cube, "--out", "run", "--overwrite")
    assert str(error.value) == "run/run.lock: is a folder, not a lock file: delete it"


def test_a_refused_command_leaves_no_folder_behind(cube, tmp_path, monkeypatch):
    from tools import ablation

    monkeypatch.chdir(tmp_path)
    # a typo in --data
    result = run_train("--data", "./cubee")
    assert result.returncode == 1
    assert result.stderr == "error: cubee: no such data folder\n"
    assert list(tmp_path.iterdir()) == []
    # the ablation claims runs/ablation-cubee before its first run opens the scene
    with pytest.raises(dv.DataError, match="^cubee: no such data folder$"):
        ablation.main(["--data", "./cubee", "--iters", "1", *TINY_FLAGS])
    assert list(tmp_path.iterdir()) == []
    # a name the file system refuses, after the folder above it was made
    with pytest.raises(dv.DataError, match="cannot write the output folder"):
        quick_run(cube, "--out", f"made/{'x' * 300}")
    assert list(tmp_path.iterdir()) == []
    # a folder that was there before is kept
    (tmp_path / "mine").mkdir()
    with pytest.raises(dv.DataError, match="^cubee: no such data folder$"):
        ablation.main(["--data", "./cubee", "--out", "mine", "--iters", "1", *TINY_FLAGS])
    assert list(tmp_path.iterdir()) == [tmp_path / "mine"]
    assert list((tmp_path / "mine").iterdir()) == []

def test_render_from_another_working_directory_and_after_the_data_moved_or_went(
        cube, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    shutil.copytree(cube, project / "cube")
    monkeypatch.chdir(project)
    # --data as typed: a relative path
    quick_run("cube", "--out", "runs/cube")
    monkeypatch.chdir(tmp_path)
    report = render.main(["--run", str(project / "runs" / "cube"), "--frames", "2"])
    assert report["data"] == str(project / "cube")
    assert (project / "runs" / "cube" / "render" / "metrics.json").exists()
    moved = tmp_path / "moved"
    # the run and its data moved together
    project.rename(moved)
    report = render.main(["--run", str(moved / "runs" / "cube"), "--frames", "2",
                          "--out", str(tmp_path / "r1")])
    assert report["data"] == str(moved / "runs" / "cube" / ".." / ".." / "cube")
    # the data is gone: the orbit alone
    shutil.rmtree(moved / "cube")
    capsys.readouterr()
    report = render.main(["--run", str(moved / "runs" / "cube"), "--frames", "2",
                          "--out", str(tmp_path / "r2")])
    assert report["data"] is None
    assert iio.imread(tmp_path / "r2" / "orbit.gif").shape == (2, 16, 32, 3)
    assert not (tmp_path / "r2" / "metrics.json").exists()
    assert "the data folder is gone: wrote" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--elevation", "nan"],
     "--elevation: the value must be a finite number >= -90 and <= 90, got nan"),
    (["--elevation", "91"],
     "--elevation: the value must be a finite number >= -90 and <= 90, got 91.0"),
    (["--frames", "0"], "--frames: the value must be a finite number >= 1, got 0"),
    (["--size", "-1"], "--size: the value must be a finite number >= 0, got -1"),
])
def test_render_numbers_are_checked_in_one_line(tmp_path, flags, message):
    result = run_render("--ckpt", str(tmp_path / "missing.pt"), *flags)
    assert result.returncode == 1
    assert result.stderr == f"error: {message}\n"


@pytest.mark.parametrize("flag, message", [
    ("--iters 0", "--iters: the value must be a finite number >= 1, got 0"),
    ("--minutes inf", "--minutes: the value must be a finite number >= 0, got inf"),
    ("--rows 0", "--rows: the value must be a finite number >= 1, got 0"),
    ("--margin nan", "--margin: the value must be a finite number >= 0 and < 180, got nan"),
    ("--views 1", "--views: the value must be a finite number >= 2, got 1"),
])
def test_ablation_and_benchmark_numbers_are_checked_in_one_line(tmp_path, flag, message):
    from tools import ablation
    from tools import benchmark

    with pytest.raises(dv.DataError, match=re.escape(message)):
        ablation.main(["--out", str(tmp_path), *flag.split()])
    with pytest.raises(dv.DataError,
                       match=re.escape("--repeats: the value must be a finite number >= 1, got 0")):
        benchmark.main(["--repeats", "0"])


def test_ablation_never_replaces_an_ablation_unasked(cube, tmp_path, monkeypatch, capsys):
    from tools import ablation

    tiny_checkpoints(tmp_path / "done")
    before = (tmp_path / "done" / "softmax" / "ckpt.pt").read_bytes()
    with pytest.raises(dv.DataError,
                       match="done: holds an ablation already; compare it with --compare_only"):
        ablation.main(["--data", str(cube), "--out", str(tmp_path / "done"), *TINY_FLAGS])
    monkeypatch.chdir(tmp_path)
    tiny_checkpoints(tmp_path / "runs" / "ablation-cube")
    ablation.main(["--data", str(cube), "--iters", "1", "--eval_every", "1e9",
                   "--precision", "fp32", *TINY_FLAGS])
    assert ("ablation folder runs/ablation-cube-2: runs/ablation-cube holds another ablation"
            in capsys.readouterr().out)
    assert (tmp_path / "runs" / "ablation-cube-2" / "ablation.png").exists()
    assert (tmp_path / "done" / "softmax" / "ckpt.pt").read_bytes() == before
