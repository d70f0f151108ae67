"""Run folders: where a command writes, one command at a time in each, and how a run is found again.

Nothing a user does twice loses a run:
  * train.py without --out takes runs/<scene>, or, when that holds a checkpoint or a live run,
    the first free runs/<scene>-2, runs/<scene>-3, ...; with --out it refuses a folder that holds
    a checkpoint unless told --resume or --overwrite.
  * Every command that writes into a folder (a training run, a render, an ablation) holds the
    folder's lock file while it works: the process id and start time of its writer. A second
    command is refused while that process lives; a lock left by a killed process is taken over.
  * A checkpoint is plain data (loaded with weights_only), written to a temporary file and then
    renamed, so a crash never leaves half of one. It names its data folder twice, absolute and
    relative to the run folder, so a run renders from any working directory, and after the run
    and its data moved together.
  * Ctrl-C or a SIGTERM during training is read between steps (`stop_requests`): the run saves
    its checkpoint and stops, never halfway through a step.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import signal
import sys
import tempfile
import threading
from pathlib import Path

import torch

from deepvoxels import Config, DataError, DeepVoxels


CHECKPOINT = "ckpt.pt"
LOCK = "run.lock"


# ─────────────────────────────────────────────────────────────────────────────────────────────
# Which folder a command writes to, one command at a time
# ─────────────────────────────────────────────────────────────────────────────────────────────

def check_writable(folder: Path, *names: str) -> Path:
    """Make `folder` and check that it, and each file or folder (no suffix) `names` in it, can be
    written, before any slow work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise DataError(f"{folder}: cannot write the output folder ({e.strerror or e})") from None
    for name in names:                                                   # no suffix: a folder
        if (folder / name).exists() and (folder / name).is_dir() == bool(Path(name).suffix):
            raise DataError(f"{folder / name}: is {'a folder' if Path(name).suffix else 'a file'}, "
                            f"so {name} cannot be written there")
    return folder


def process_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (Linux: [0] the state, [19] the start
    time), or [] where there is no such file."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def process_start(pid: int) -> str:
    """When process pid started, or "" where that is unknown."""
    fields = process_stat(pid)
    return fields[19] if len(fields) > 19 else ""


def is_running(pid: int, started: str) -> bool:
    """Whether the process that wrote a lock (pid, its start time or "") still runs."""
    if os.name == "nt":  # os.kill(pid, 0) sends Ctrl-C there: never guess a run is gone
        return True
    try:
        os.kill(pid, 0)               # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:           # another user's process
        return True
    if process_stat(pid)[:1] == ["Z"]:
        return False                  # a zombie: ended, not yet reaped by its parent
    return not started or process_start(pid) in ("", started)   # a new process under a reused id


def lock_holder(folder: Path) -> int | None:
    """The process id of the live command that holds folder's lock, or None."""
    try:
        pid, _, started = (folder / LOCK).read_text().strip().partition(" ")
        return int(pid) if is_running(int(pid), started) else None
    except (OSError, ValueError):     # no lock, or a lock cut short by a crash: nobody holds it
        return None


def try_lock(folder: Path) -> int | None:
    """Take folder's lock (making the folder); None when taken, else the live holder's process
    id."""
    me = f"{os.getpid()} {process_start(os.getpid())}"
    if folder.exists() and not folder.is_dir():   # mkdir would say "exists", like a lock
        raise DataError(f"{folder}: is a file, not a folder: choose another --out")
    if (folder / LOCK).is_dir():                  # it would read as a lock that cannot be cleared
        raise DataError(f"{folder / LOCK}: is a folder, not a lock file: delete it")
    for _ in range(2):                # the second try after clearing a stale lock
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if (holder := lock_holder(folder)) is not None:
                return holder
            (folder / LOCK).unlink(missing_ok=True)      # left by a process that is gone
            continue
        except OSError as e:
            raise DataError(f"{folder}: cannot write the output folder "
                            f"({e.strerror or e})") from None
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        return None
    return lock_holder(folder) or -1  # another command cleared the same stale lock first


def in_use(folder: Path, pid: int) -> DataError:
    return DataError(f"{folder}: in use by process {pid} (a run, a render or an ablation); "
                     f"wait for it, or choose another --out (if no such process runs, delete "
                     f"{folder / LOCK})")


def holds_run(folder: Path) -> bool:
    """Whether a folder holds a checkpoint, or a folder in it does (an ablation's softmax/ and
    naive/)."""
    return (folder / CHECKPOINT).exists() or any(folder.glob(f"*/{CHECKPOINT}"))


@contextlib.contextmanager
def claimed(folder: Path, new: bool = False):
    """Hold folder's lock for the block and yield the folder. With new: the first of folder,
    folder-2, folder-3, ... that holds no checkpoint and no live command. Folders made here and
    still empty at the end are removed."""
    candidates = (folder.with_name(f"{folder.name}-{i}") if i > 1 else folder
                  for i in itertools.count(1))
    for candidate in candidates if new else [folder]:
        if new and holds_run(candidate):
            continue
        made = [d for d in (candidate, *candidate.parents) if not d.exists()]  # innermost first
        try:
            holder = try_lock(candidate)
        except DataError:                                # e.g. a name too long, after its parents
            remove_empty(made)
            raise
        if holder is None:
            break
        if not new:
            raise in_use(folder, holder)
    try:
        yield candidate
    finally:
        with contextlib.suppress(OSError, ValueError):   # only our own lock is removed
            if int((candidate / LOCK).read_text().split()[0]) == os.getpid():
                (candidate / LOCK).unlink()
        remove_empty(made)         # a command refused before it wrote anything leaves no folder


def remove_empty(folders: list[Path]) -> None:
    """Remove each of `folders` (innermost first) that is empty; the others are kept."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def train_folder(data: str, out: str, reuse: bool,
                 overwrite: bool) -> contextlib.AbstractContextManager[Path]:
    """A training run's folder, claimed: without `out`, runs/<scene> (`reuse`: --resume), else
    the first free of runs/<scene>, runs/<scene>-2, -3...; `out` as given, refused
    when it holds a checkpoint unless `reuse` or `overwrite` says what to do with it."""
    if not out:
        return claimed(Path("runs") / Path(data).resolve().name, new=not reuse)
    if (Path(out) / CHECKPOINT).exists() and not (reuse or overwrite):
        raise DataError(f"{Path(out) / CHECKPOINT}: holds a run already; continue it with "
                        f"--resume, choose another --out, or replace it with --overwrite")
    return claimed(Path(out))


def newest_checkpoint(ckpt: str | None = None, run: str | None = None) -> Path:
    """--ckpt, else <--run>/ckpt.pt, else the most recently written runs/*/ckpt.pt."""
    if ckpt or run:
        return Path(ckpt or Path(run) / CHECKPOINT)
    found = sorted(Path("runs").glob(f"*/{CHECKPOINT}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DataError(f"runs: no */{CHECKPOINT} found (train one with train.py, or pass --ckpt)")
    return found[-1]


# ─────────────────────────────────────────────────────────────────────────────────────────────
# Checkpoints: plain data (weights_only loading), written atomically, and where their data is
# ─────────────────────────────────────────────────────────────────────────────────────────────

def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write to a temporary file, then rename: a crash never leaves a half-written checkpoint. Any
    failure (a full disk, a file-size limit: torch.save raises RuntimeError as well as OSError) is
    one DataError line, and the partial temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as e:  # RuntimeError: torch.save's own writer
        tmp.unlink(missing_ok=True)
        reason = (e.strerror if isinstance(e, OSError) and e.strerror
                  else "the write stopped part-way: is the disk full?")
        raise DataError(f"{path}: cannot write the checkpoint ({reason})") from None


def load_checkpoint(path: str | Path, device: str = "cpu",
                    needs: dict[str, type] | None = None) -> tuple[DeepVoxels, dict]:
    """Rebuild the model from a checkpoint (its own Config); returns the model and the whole state,
    which must hold every entry of `needs` ({"step": int, ...}) with its type."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # empty, truncated, foreign, or a pickle that is more than plain data
        raise DataError(f"{path}: not a DeepVoxels checkpoint "
                        "(not a readable file of plain tensors)") from None
    needs = {"config": dict, "model": dict, **(needs or {})}
    missing = [key for key, kind in needs.items()
               if not isinstance(state, dict) or not isinstance(state.get(key), kind)]
    if missing:
        raise DataError(f"{path}: not a DeepVoxels checkpoint of this version "
                        f"(no valid {', '.join(missing)} entry)")
    try:
        saved = state["config"]
        # checkpoints older than occlusion_size: the occlusion U-Net saw the whole view volume
        whole = max(saved.get("feat_size") or 0, Config.occlusion_size)
        cfg = Config(**{"occlusion_size": whole, **saved,
                        "grid_center": tuple(saved["grid_center"])})
        model = DeepVoxels(cfg).to(device)
        state["model"] = {k: v for k, v in state["model"].items()   # older checkpoints held the
                          if k not in ("K", "K_feat")}                # intrinsics as buffers too
        model.load_state_dict(state["model"])
    except Exception as e:
        # missing keys, unknown settings and shape mismatches: another version's file
        reason = (str(e).strip().splitlines() or [""])[0][:120]
        raise DataError(f"{path}: not a DeepVoxels checkpoint of this version "
                        f"({type(e).__name__} {reason})") from None
    return model, state


def data_entry(data: str | Path, run_folder: Path) -> dict[str, str]:
    """The checkpoint's record of the data folder: absolute, and relative to the run folder."""
    data = Path(data).resolve()
    return {"absolute": str(data), "from_run": os.path.relpath(data, run_folder.resolve())}


def find_data(entry: dict, ckpt: Path) -> Path | None:
    """The data folder a checkpoint was trained on, where it can still be found, else None."""
    for folder in (Path(entry["absolute"]), ckpt.parent / entry["from_run"]):
        if folder.is_dir():
            return folder
    return None


# ─────────────────────────────────────────────────────────────────────────────────────────────
# While a run trains: stop requests, memory
# ─────────────────────────────────────────────────────────────────────────────────────────────

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
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
        2 ** 10 if sys.platform == "darwin" else 1)                         # macOS counts bytes
    gpu = (f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f} MB"
           if torch.device(device).type == "cuda" else "")
    return f"peak memory {kilobytes / 2 ** 10:.0f} MB{gpu}"
