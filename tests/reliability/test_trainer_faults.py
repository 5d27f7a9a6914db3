"""Trainer failures and checkpoints: `distill-ray train` killed (SIGKILL, the
`trainer.fail_after_step` hook) and started again with `--resume` passes over a damaged newer
checkpoint and trains the same steps with the same losses as an uninterrupted run; checkpoints
carry a manifest, and each way of damaging one (no manifest, a truncated, flipped or missing
file, a garbled manifest, a save cut off before its rename) is named in one line and the
previous good one used; only the newest K are kept. SIGTERM (preemption) or Ctrl-C mid-run
finishes the step under way and checkpoints it, and `--resume` trains the remaining steps with
the uninterrupted run's rows and losses; a second Ctrl-C while saving stops at once, leaving no
half checkpoint.

One uninterrupted run (`baseline`, sgo mixing generated and dataset batches, so the resume has
two data streams and the mixing RNG to restore) is the reference for the others."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_driver import make_cfg, metrics_of

from distill_ray.config import dump_config
from distill_ray.errors import DistillError
from distill_ray.pipeline.driver import run
from distill_ray.trainer.checkpoints import MANIFEST, checkpoint_dirs, checkpoint_problem, latest_good_checkpoint

pytestmark = pytest.mark.slow

STEPS, SAVE_EVERY = 6, 2
REPO = Path(__file__).parents[2]


def fault_cfg(tiny_local, out: Path):
    cfg = make_cfg(tiny_local, out, "sgo", rollout__max_staleness=0, method__lambda_on=0.5)
    cfg.trainer.max_steps, cfg.trainer.save_every, cfg.trainer.keep_checkpoints = STEPS, SAVE_EVERY, 2
    cfg.rollout.max_new_tokens, cfg.data.test = 16, None
    return cfg


@pytest.fixture(scope="module")
def baseline(ray_local, tiny_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run(fault_cfg(tiny_local, out), quiet=True)
    return {"out": out, "result": result, "metrics": metrics_of(out)}


def test_the_reference_run_mixes_both_streams_and_keeps_the_newest_two_checkpoints(baseline):
    on_policy = [m["on_policy"] for m in baseline["metrics"]]
    assert 0.0 in on_policy and 1.0 in on_policy  # both the prompt stream and the data stream are used
    names = sorted(p.name for p in (baseline["out"] / "checkpoints").iterdir())
    assert names == ["step_000004", "step_000006"]  # step_000002 pruned (keep_checkpoints=2)
    assert all((baseline["out"] / "checkpoints" / n / MANIFEST).is_file() for n in names)


def start_cli(*args: str, ray_address: str, logs: Path) -> subprocess.Popen:
    """`distill-ray ...` in its own process, a driver joining the session's Ray cluster (as on a
    real cluster: a killed driver's actors and placement group are reclaimed by Ray), in its own
    session, so anything it leaves behind after a SIGKILL is cleaned up by process group. Its
    output goes to logs/stdout and logs/stderr: a pipe nobody reads while it runs could fill up
    and stall it."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    with (logs / "stdout").open("w") as stdout, (logs / "stderr").open("w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "distill_ray.cli", *args], cwd=REPO, env=env, text=True,
                                stdout=stdout, stderr=stderr, start_new_session=True)


def finish_cli(proc: subprocess.Popen, logs: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    try:
        proc.wait(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray helpers orphaned by a killed driver
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, (logs / "stdout").read_text(), (logs / "stderr").read_text())


def cli(*args: str, ray_address: str, logs: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    return finish_cli(start_cli(*args, ray_address=ray_address, logs=logs), logs, timeout)


def test_a_killed_training_process_resumes_from_its_last_good_checkpoint_with_the_same_losses(baseline, ray_local, tiny_local, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    dump_config(fault_cfg(tiny_local, out), config)

    killed = cli("train", str(config), "--set", "trainer.fail_after_step=5", ray_address=address, logs=tmp_path / "killed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [m["step"] for m in metrics_of(out)] == [1, 2, 3, 4, 5]  # step 5 ran, its checkpoint was not due
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000002", "step_000004"]
    # and a newer checkpoint damaged on disk (a flipped bit): the resume must pass over it
    shutil.copytree(ckpts / "step_000004", ckpts / "step_000005")
    _bit_flip(ckpts / "step_000005")

    resumed = cli("train", str(config), "--resume", ray_address=address, logs=tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{ckpts / 'step_000005'} is not usable (file " in resumed.stderr
    assert f"resumed from {ckpts / 'step_000004'} at step 5" in resumed.stdout
    metrics = metrics_of(out)
    # the killed run's step 5 was dropped from the records and trained again: each step once
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    want = baseline["metrics"]
    assert [m["rows"] for m in metrics] == [m["rows"] for m in want]  # same data order
    assert [m["on_policy"] for m in metrics] == [m["on_policy"] for m in want]  # same mixing RNG
    assert [m["loss"] for m in metrics] == pytest.approx([m["loss"] for m in want], abs=1e-5)
    # the damaged one was set aside, the newest two good ones kept
    assert sorted(p.name for p in ckpts.iterdir()) == [".step_000005.bad", "step_000004", "step_000006"]


# ---------------------------------------------------------------- preemption (SIGTERM) and Ctrl-C (SIGINT)

STOP_AFTER = 2  # the signal is sent once this step is in metrics.jsonl


def wait_until(proc: subprocess.Popen, condition, timeout: float = 400) -> bool:
    """Poll `condition` while the process runs; False if it ended first (a guard against a hang, not a timing check)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


def steps_logged(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [int(json.loads(line)["step"]) for line in lines if line.endswith("}")]  # a line being written is skipped


def send(proc: subprocess.Popen, signum: int) -> None:
    """SIGTERM to the process, as Kubernetes and cloud shutdowns send it; SIGINT to its whole process
    group, as a terminal's Ctrl-C does."""
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)


def no_periodic_checkpoint_cfg(tiny_local, out: Path, config: Path, save_delay_s: float = 0.0) -> None:
    cfg = fault_cfg(tiny_local, out)
    cfg.trainer.save_every = 0  # only the last step is saved: any earlier checkpoint can come from the signal alone
    cfg.trainer.fault_save_delay_s = save_delay_s
    dump_config(cfg, config)


# SIGINT takes the same path as SIGTERM (StopOnSignal; tests/reliability/test_stop_signals.py sends
# both); its end-to-end run is `make test-extended` (CI's time budget)
@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.extended)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_mid_run_checkpoints_the_step_under_way_and_resume_continues_exactly(baseline, ray_local, tiny_local, tmp_path, signum):
    address = ray_local.get_runtime_context().gcs_address
    out, config, name = tmp_path / "run", tmp_path / "run.yaml", signal.Signals(signum).name
    no_periodic_checkpoint_cfg(tiny_local, out, config)

    proc = start_cli("train", str(config), ray_address=address, logs=tmp_path / "stopped")
    assert wait_until(proc, lambda: STOP_AFTER in steps_logged(out)), (tmp_path / "stopped" / "stderr").read_text()[-2000:]
    send(proc, signum)
    stopped = finish_cli(proc, tmp_path / "stopped")
    assert stopped.returncode == 128 + signum, stopped.stderr[-2000:]  # 143 for SIGTERM, 130 for SIGINT
    steps = [m["step"] for m in metrics_of(out)]
    last = int(steps[-1])
    # the step under way when the signal came was finished (or, sent just after step 2's line, step 2 itself), and no more
    assert last in (STOP_AFTER, STOP_AFTER + 1) and steps == list(range(1, last + 1))
    ckpts = out / "checkpoints"
    saved = ckpts / f"step_{last:06d}"
    assert sorted(os.listdir(ckpts) if ckpts.is_dir() else []) == [saved.name]  # renamed into place: no staging directory left
    assert checkpoint_problem(saved) is None  # its MANIFEST.json matches every file
    said = [line for line in stopped.stderr.splitlines() if line.startswith("stopped")]
    assert said == [f"stopped by {name} after step {last}: checkpoint {saved} written; --resume continues from it"], stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr

    resumed = cli("train", str(config), "--resume", ray_address=address, logs=tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {saved} at step {last + 1}" in resumed.stdout
    metrics = metrics_of(out)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    want = baseline["metrics"]
    # each step trained the rows the uninterrupted run's step did: none lost, none trained twice
    assert [m["rows"] for m in metrics] == [m["rows"] for m in want]
    assert [m["on_policy"] for m in metrics] == [m["on_policy"] for m in want]  # same mixing RNG
    assert [m["loss"] for m in metrics] == pytest.approx([m["loss"] for m in want], abs=1e-5)


def test_a_second_ctrl_c_while_saving_stops_at_once_and_leaves_no_half_checkpoint(ray_local, tiny_local, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    out, config, logs = tmp_path / "run", tmp_path / "run.yaml", tmp_path / "stopped"
    no_periodic_checkpoint_cfg(tiny_local, out, config, save_delay_s=30.0)  # the save waits for the second Ctrl-C
    ckpts = out / "checkpoints"

    proc = start_cli("train", str(config), ray_address=address, logs=logs)
    assert wait_until(proc, lambda: STOP_AFTER in steps_logged(out)), (logs / "stderr").read_text()[-2000:]
    send(proc, signal.SIGINT)
    # the save the first Ctrl-C asked for has begun once its staging directory exists; it stays
    # unsealed for trainer.fault_save_delay_s (30 s), far longer than the poll and the handler need
    assert wait_until(proc, lambda: any(ckpts.glob(".step_*.tmp"))), (logs / "stderr").read_text()[-2000:]
    send(proc, signal.SIGINT)
    stopped = finish_cli(proc, logs)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    said = [line for line in stopped.stderr.splitlines() if line.startswith("stopped")]
    assert len(said) == 1 and said[0].startswith("stopped at once by a second SIGINT"), stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    # what the cut-off save left is its staging directory, which --resume ignores: no step_N at all
    # (the ranks went with the driver, before the delayed save could seal and rename it)
    time.sleep(2)
    assert checkpoint_dirs(ckpts) == [] and any(ckpts.glob(".step_*.tmp"))


# ---------------------------------------------------------------- corrupt checkpoints


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST), key=lambda p: p.stat().st_size)


def _no_manifest(ckpt: Path) -> None:
    (ckpt / MANIFEST).unlink()


def _truncated(ckpt: Path) -> None:
    path = _largest_file(ckpt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bit_flip(ckpt: Path) -> None:
    path = _largest_file(ckpt)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _missing_file(ckpt: Path) -> None:
    (ckpt / "client_state.pt").unlink()


def _garbled_manifest(ckpt: Path) -> None:
    (ckpt / MANIFEST).write_text('{"files": ')


CORRUPTIONS = {
    "no manifest": (_no_manifest, "no MANIFEST.json"),
    "truncated file": (_truncated, "bytes, the manifest says"),
    "flipped bit": (_bit_flip, "does not match its SHA-256"),
    "missing file": (_missing_file, "file client_state.pt is missing"),
    "garbled manifest": (_garbled_manifest, "MANIFEST.json is unreadable"),
}


@pytest.fixture
def checkpoints(baseline, tmp_path) -> Path:
    """A copy of the reference run's checkpoints (step_000004, step_000006) to damage."""
    root = tmp_path / "checkpoints"
    shutil.copytree(baseline["out"] / "checkpoints", root)
    return root


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(checkpoints, kind):
    damage, reason = CORRUPTIONS[kind]
    damage(checkpoints / "step_000006")
    said: list[str] = []
    assert latest_good_checkpoint(checkpoints, said.append) == checkpoints / "step_000004"
    assert len(said) == 1 and "\n" not in said[0]
    assert str(checkpoints / "step_000006") in said[0] and reason in said[0], said[0]


def test_a_save_cut_off_before_its_rename_is_ignored_and_reported(checkpoints):
    partial = checkpoints / ".step_000008.tmp"  # what a crash during a save leaves behind
    shutil.copytree(checkpoints / "step_000006", partial)
    _truncated(partial)
    said: list[str] = []
    assert latest_good_checkpoint(checkpoints, said.append) == checkpoints / "step_000006"
    assert len(said) == 1 and str(partial) in said[0]


def test_no_usable_checkpoint_at_all_is_a_one_line_error(checkpoints):
    _truncated(checkpoints / "step_000004")
    _no_manifest(checkpoints / "step_000006")
    with pytest.raises(DistillError) as info:
        latest_good_checkpoint(checkpoints, lambda line: None)
    message = str(info.value)
    assert "\n" not in message and f"no usable checkpoint in {checkpoints}" in message
    assert "step_000004: file" in message and "step_000006: no MANIFEST.json" in message


def test_checkpoints_passed_over_are_set_aside_only_once_a_good_one_is_found(checkpoints):
    _truncated(checkpoints / "step_000006")
    assert latest_good_checkpoint(checkpoints, lambda line: None, set_aside=True) == checkpoints / "step_000004"
    assert sorted(p.name for p in checkpoints.iterdir()) == [".step_000006.bad", "step_000004"]
    _no_manifest(checkpoints / "step_000004")
    with pytest.raises(DistillError):
        latest_good_checkpoint(checkpoints, lambda line: None, set_aside=True)
    assert (checkpoints / "step_000004").is_dir()  # nothing usable: nothing moved
