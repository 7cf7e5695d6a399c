"""One run directory, one writer: ``train --out DIR`` holds DIR for as long as it runs."""
import os
import signal
import subprocess
import sys

import pytest

from common import training
from common.training import CheckpointError, run_directory_lock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX file locks")

HOLD = """
import sys, time
from common.training import run_directory_lock
with run_directory_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(out_dir):
    """Another process holding ``out_dir``'s lock, like a training run in progress."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(out_dir)], stdout=subprocess.PIPE, text=True,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_into_a_busy_directory_is_refused_and_touches_nothing(tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        (out / "checkpoint.safetensors").write_bytes(b"the other run's")
        with pytest.raises(CheckpointError, match=rf"{out} is in use by another training run \(pid {holder.pid} on "):
            training.train("no-such-backend", out_dir=str(out), resume=True)
        assert (out / "checkpoint.safetensors").read_bytes() == b"the other run's"
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_runs_lock_is_not_stale(tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
    holder.wait()
    with run_directory_lock(str(out)):
        assert (out / ".lock").read_text().startswith(f"pid {os.getpid()} on ")


def test_the_lock_is_released_and_an_empty_new_directory_removed(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="failed before any epoch"):
        with run_directory_lock(str(out)):
            raise RuntimeError("failed before any epoch")
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with run_directory_lock(str(out)):
        pass
    with run_directory_lock(str(out)):  # released: taken again at once
        pass
    assert sorted(os.listdir(out)) == [".lock", "keep.txt"] and (out / ".lock").read_text() == ""


def test_the_lock_removes_what_a_killed_writer_left(tmp_path):
    out = tmp_path / "run"
    with run_directory_lock(out):
        (out / "checkpoint.safetensors").write_bytes(b"kept")
        (out / ".tmp-abc123checkpoint.safetensors").write_bytes(b"half written by a worker that was killed")
    assert sorted(os.listdir(out)) == [".lock", "checkpoint.safetensors"]
