"""Checkpoint directories on disk: atomic, verifiable, pruned.

    output_dir/checkpoints/step_000004/      a finished checkpoint (MANIFEST.json written last)
    output_dir/checkpoints/.step_000006.tmp/ a save in progress, or one a crash cut off (ignored)

A checkpoint is written into a hidden staging directory and renamed into place only when
every rank's files are on disk and `MANIFEST.json` (the size and SHA-256 of every file) has
been written last (`TrainerRank.save_checkpoint`). On resume, `latest_good_checkpoint` walks
the checkpoints newest first and takes the first whose files all match their manifest; each
one it passes over is named in one line with the reason (no manifest, a missing or truncated
file, a checksum mismatch). `prune_checkpoints` keeps the newest `trainer.keep_checkpoints`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from distill_ray.errors import DistillError

MANIFEST = "MANIFEST.json"
PREFIX = "step_"
CLIENT_STATE = "client_state.pt"  # the driver's state (step, data positions, its RNG), written by rank 0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: Path, step: int) -> None:
    """Record the size and SHA-256 of every file under `directory`; call it after the last file
    is written and before the directory is renamed into place (the manifest marks it complete)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(directory).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    tmp = directory / f".{MANIFEST}.tmp"
    with tmp.open("w") as f:
        json.dump({"format": 1, "step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)
    _fsync_dir(directory)


def checkpoint_problem(directory: Path) -> str | None:
    """Why `directory` cannot be resumed from (one line), or None when every file matches its manifest."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} (the save did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"{MANIFEST} is unreadable"
    for name, want in files.items():
        path = directory / name
        if not path.is_file():
            return f"file {name} is missing"
        size = path.stat().st_size
        if size != want["bytes"]:
            return f"file {name} has {size} bytes, the manifest says {want['bytes']} (truncated or overwritten)"
        if _sha256(path) != want["sha256"]:
            return f"file {name} does not match its SHA-256 in {MANIFEST} (corrupt)"
    return None


def checkpoint_dirs(root: Path) -> list[Path]:
    """Finished-looking checkpoint directories under `root`, oldest first (by step number)."""
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[len(PREFIX):]))


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def latest_good_checkpoint(root: Path, say: Callable[[str], None] | None = None, set_aside: bool = False) -> Path | None:
    """The newest checkpoint under `root` that passes `checkpoint_problem`; None when there is none.

    Each newer one passed over, and each staging directory a crash left behind, is reported
    through `say` in one line. With `set_aside`, each one passed over is renamed to
    `.step_N.bad` (kept for inspection; no later resume or pruning counts it). Raises
    DistillError when checkpoints exist but none is usable: starting from step 1 would silently
    overwrite them.
    """
    say = say or _warn
    for staging in sorted(root.glob(f".{PREFIX}*.tmp")) if root.is_dir() else []:
        say(f"[checkpoint] ignoring {staging}: a save that did not finish (no rename into place)")
    candidates = checkpoint_dirs(root)
    problems, passed_over = [], []
    for directory in reversed(candidates):
        problem = checkpoint_problem(directory)
        if problem is None:
            for bad in passed_over if set_aside else []:  # only once a good one is found: all stay put otherwise
                aside = bad.with_name(f".{bad.name}.bad")
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(bad, aside)
            return directory
        problems.append(f"{directory.name}: {problem}")
        passed_over.append(directory)
        say(f"[checkpoint] {directory} is not usable ({problem}); trying the previous one")
    if candidates:
        raise DistillError(f"--resume: no usable checkpoint in {root} ({'; '.join(problems)})")
    return None


def prune_checkpoints(root: Path, keep: int, newest: Path) -> list[Path]:
    """After saving `newest`: delete all but the newest `keep` checkpoints up to it that carry a
    manifest (0: keep all); older directories without one go too. Checkpoints after `newest` (left
    by an earlier attempt that a resume went back from) are not touched. Returns what was deleted."""
    if keep <= 0:
        return []
    dirs = checkpoint_dirs(root)
    if newest not in dirs:
        return []
    dirs = dirs[: dirs.index(newest) + 1]
    complete = [d for d in dirs if (d / MANIFEST).is_file()]
    if len(complete) <= keep:
        return []
    removed = dirs[: dirs.index(complete[-keep])]
    for d in removed:
        shutil.rmtree(d, ignore_errors=True)
    return removed


def read_client_state(directory: Path) -> dict:
    """The driver's state saved in checkpoint `directory`, read in the driver (no trainer rank needed)."""
    import torch

    path = Path(directory) / CLIENT_STATE
    if not path.is_file():
        raise DistillError(f"checkpoint {directory}: {CLIENT_STATE} missing")
    return torch.load(path, weights_only=False)


def drop_records_from(path: Path, step: int) -> int:
    """Remove the lines of a metrics JSONL file whose "step" is >= `step` (a resumed run trains
    those steps again and logs them anew); returns how many were dropped. Rewritten atomically;
    a torn last line (the process died mid-write) is dropped too."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        at = record.get("step") if isinstance(record, dict) else None
        if isinstance(at, (int, float)) and not isinstance(at, bool) and at >= step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return dropped
