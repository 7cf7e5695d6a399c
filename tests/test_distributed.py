"""Data-parallel training: the shard rule, the oracle's sharded step, the launcher, and every
backend's engine against the oracle over loopback (2 workers, CPU).

What a step means is written once, in :mod:`common.distributed`'s docstring, and computed by
:func:`common.oracle.sharded_sgd_step`; each backend's ``distributed.DistributedTrainer`` must
compute it on its framework's own engine. Every job here is bounded in time and leaves no
process behind.
"""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from common import distributed, oracle
from common.backend import BACKENDS, backend_part
from common.data import BatchLoader, fashion_mnist_loader
from common.distributed import DistributedError
from common.sharding import shard_slices
from common.spec import get_spec
from common.weights import init_weights, load_weights, read_metadata

#: In tf, these run on TensorFlow's graph executor (tests/conftest.py), as the command-line tests do.
pytestmark = pytest.mark.graph_executor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A whole 2-worker job here (start-up, one short epoch, evaluation) stays well inside this.
JOB_TIMEOUT = 240
#: A killed worker ends the job within this many seconds (the launcher polls every 0.1 s and
#: gives the others STOP_GRACE_SECONDS before SIGKILL).
FAULT_BOUND = distributed.STOP_GRACE_SECONDS + 10
#: Smaller still than helpers.SMALL_ARCH: each worker is a process that builds and compiles it.
TINY_ARCH = "((1, 8), (1, 16))"


def _update_norm(after, before) -> float:
    return float(np.sqrt(sum(np.sum((after[k].astype(np.float64) - before[k]) ** 2) for k in before)))


# --- the shard rule and the oracle (framework-free) ----------------------------------------

def test_shards_are_contiguous_equal_and_cover_the_global_order():
    images = np.zeros((21, 28, 28), np.uint8)
    labels = np.arange(21)
    whole = [b.tolist() for _, b in BatchLoader(images, labels, 8, seed=3)]
    for workers in (1, 2, 4):
        loaders = [BatchLoader(images, labels, 8, seed=3, shard=(rank, workers)) for rank in range(workers)]
        assert len({len(loader) for loader in loaders}) == 1
        shards = [[b.tolist() for _, b in loader] for loader in loaders]
        for step, batch in enumerate(whole):
            if len(batch) < workers:
                assert all(len(s) == step for s in shards)  # a last batch smaller than N is skipped
                continue
            size = len(batch) // workers
            joined = sum((s[step] for s in shards), [])
            assert joined == batch[:size * workers]  # rank order is batch order; the rest is left out
            assert {len(s[step]) for s in shards} == {size}


def test_the_order_does_not_depend_on_the_number_of_workers():
    images, labels = np.zeros((64, 28, 28), np.uint8), np.arange(64)
    one = [b.tolist() for _, b in BatchLoader(images, labels, 16, seed=5)]
    two = [BatchLoader(images, labels, 16, seed=5, shard=(rank, 2)) for rank in range(2)]
    for loader in two:
        loader.set_epoch(0)
    joined = [a.tolist() + b.tolist() for (_, a), (_, b) in zip(*two)]
    assert joined == one


def test_a_batch_size_that_does_not_split_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^--batch-size 10 does not split evenly over 4 workers; choose a batch size "
                                         r"divisible by 4"):
        fashion_mnist_loader("train", 10, synthetic=True, subset=40, shard=(0, 4))
    with pytest.raises(ValueError, match="shard must be"):
        BatchLoader(np.zeros((4, 28, 28)), np.arange(4), 2, shard=(2, 2))
    assert shard_slices(3, 4) == []


def test_the_sharded_step_of_copies_is_the_single_step():
    """N workers holding copies of one batch see the same statistics and gradients as one
    worker: the mean over workers must give back exactly the single-process step."""
    arch = TINY_ARCH
    weights = init_weights(arch, 0)
    images, labels = oracle.step_batch(seed=4, batch_size=4, size=16)
    loss, single = oracle.sgd_step(weights, images, labels, 0.05, arch=arch)
    copies = (np.concatenate([images] * 3), np.concatenate([labels] * 3))
    sharded_loss, sharded = oracle.sharded_sgd_step(weights, *copies, 0.05, 3, arch=arch)
    assert sharded_loss == pytest.approx(loss, rel=1e-12)
    for name in weights:
        np.testing.assert_allclose(sharded[name], single[name], rtol=0, atol=1e-7, err_msg=name)
    assert oracle.sharded_sgd_step(weights, images, labels, 0.05, 1, arch=arch)[0] == loss


def test_the_sharded_step_averages_the_shards():
    """Two different halves: gradients and running statistics are the means of the halves'."""
    arch = TINY_ARCH
    weights = init_weights(arch, 1)
    images, labels = oracle.step_batch(seed=5, batch_size=8, size=16)
    halves = [oracle.sgd_step(weights, images[part], labels[part], 0.05, arch=arch) for part in shard_slices(8, 2)]
    loss, after = oracle.sharded_sgd_step(weights, images, labels, 0.05, 2, arch=arch)
    assert loss == pytest.approx(np.mean([h[0] for h in halves]), rel=1e-12)
    for name in weights:  # SGD is linear in the gradient, so the mean of the halves' steps is the step
        want = (halves[0][1][name].astype(np.float64) + halves[1][1][name]) / 2
        np.testing.assert_allclose(after[name], want, rtol=0, atol=2e-7, err_msg=name)
    _, whole = oracle.sgd_step(weights, images, labels, 0.05, arch=arch)
    assert _update_norm(whole, after) > 1e-3 * _update_norm(whole, weights)  # per-shard BatchNorm is not global


# --- the job's description and the launcher (framework-free) ------------------------------

@pytest.mark.parametrize("name", list(BACKENDS))
def test_each_engines_variables_describe_the_job(name):
    environments = distributed.worker_environments(name, 3, "127.0.0.1", [29500, 29501, 29502])
    assert [distributed.job_size(name, env) for env in environments] == [3, 3, 3]
    assert distributed.job_size(name, {}) == 1
    for env in environments:
        assert set(env) <= set(backend_part(name, "launch").ENGINE_VARIABLES) | {"DMLC_NODE_HOST"}


@pytest.mark.parametrize("name", list(BACKENDS))
def test_the_launch_facts_import_without_the_framework(name):
    """The launcher runs where the framework is absent: a backend's launch module imports none."""
    code = (f"import sys; from common.backend import backend_part; backend_part({name!r}, 'launch'); "
            f"frameworks = {{'torch', 'tensorflow', 'mxnet', 'jax', 'flax', 'keras'}} & set(sys.modules); "
            f"assert not frameworks, frameworks")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))


def test_a_job_description_that_cannot_be_read_is_one_line():
    with pytest.raises(DistributedError, match="^TF_CONFIG is not a JSON object"):
        distributed.job_size("tf", {"TF_CONFIG": "{nope"})
    with pytest.raises(DistributedError, match="^WORLD_SIZE must be an integer, got 'two'"):
        distributed.job_size("torch", {"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(DistributedError, match="^DMLC_ROLE=server: MXNet's server is not a training process"):
        distributed.job_size("mx", {"DMLC_ROLE": "server"})


def test_cores_are_split_between_workers():
    assert distributed.cpu_groups(2, cpus=[0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert distributed.cpu_groups(3, cpus=[0, 1]) == [[0], [1], [0]]


def test_a_busy_port_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DistributedError, match=rf"^port {port} on 127.0.0.1 is not free .*choose another --port"):
            distributed.launch([sys.executable, "-c", "pass"], "torch", 2, port=port)


FAKE_WORKER = """
import os, sys, time
index = int(os.environ["RESNET_WORKER_INDEX"])
assert os.environ["WORLD_SIZE"] == "2" and os.environ["RANK"] == str(index)
with open(os.path.join(sys.argv[1], f"pid{index}"), "w") as f:
    f.write(str(os.getpid()))
if index == 1 and sys.argv[2] == "error":
    deadline = time.time() + 60
    while not os.path.exists(os.path.join(sys.argv[1], "pid0")) and time.time() < deadline:
        time.sleep(0.05)  # fail once worker 0 is up, so that it is there to be stopped
    from common.distributed import report_error
    report_error("the data set is missing")
    sys.exit(1)
time.sleep(0.5 if sys.argv[2] == "ok" else 120)
"""


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead
        return stat.read().split(")")[-1].split()[0] != "Z"


def _fake_job(tmp_path, mode):
    command = [sys.executable, "-c", FAKE_WORKER, str(tmp_path), mode]
    env = dict(os.environ, PYTHONPATH=ROOT)
    start = time.monotonic()
    try:
        distributed.launch(command, "torch", 2, environ=env, grace=1.0)
        error = None
    except DistributedError as raised:
        error = str(raised)
    pids = [int((tmp_path / f"pid{index}").read_text()) for index in range(2)]
    return error, time.monotonic() - start, pids


def test_the_launcher_waits_for_every_worker(tmp_path):
    error, _, pids = _fake_job(tmp_path, "ok")
    assert error is None and not any(_alive(pid) for pid in pids)


def test_a_failing_worker_stops_the_others_and_is_named(tmp_path):
    error, seconds, pids = _fake_job(tmp_path, "error")
    assert error == (f"worker 1 of 2 (pid {pids[1]}) exited with status 1: the data set is missing; "
                     f"the other workers were stopped")
    assert seconds < 30 and not any(_alive(pid) for pid in pids)


@pytest.mark.parametrize("code", [0, 3])
def test_a_launched_worker_ends_with_its_status_after_pythons_exit_handlers(code):
    # exit_worker skips the C++ libraries' teardown (os._exit), not Python's: the exit handlers
    # run and buffered output arrives, and the status is the worker's.
    script = ("import atexit, sys\n"
              "from common.distributed import exit_worker\n"
              "atexit.register(lambda: sys.stdout.write('exit handler ran\\n'))\n"
              "sys.stdout.write('buffered, never flushed by hand\\n')\n"
              f"exit_worker({code})\n"
              "sys.stdout.write('not reached\\n')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert done.returncode == code
    assert done.stdout == "buffered, never flushed by hand\nexit handler ran\n"


# --- every backend's engine, through the command line ---------------------------------------

def _launcher_env():
    """This environment for a launcher of ours: the project importable, no job of the caller's."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    for name in distributed.all_engine_variables():
        env.pop(name, None)
    return env


def _cli(*args, timeout=JOB_TIMEOUT):
    """``resnet-fmnist ARGS`` in a process of its own (the launcher), with a time limit."""
    return subprocess.run([sys.executable, "-m", "common", *args], capture_output=True, text=True, cwd=ROOT,
                          env=_launcher_env(), timeout=timeout)


def _train_args(backend_name, out, *extra):
    return ("train", "--backend", backend_name, "--synthetic", "--resize", "none", "--quiet", "--out", str(out),
            *extra)


#: One step's network: ResNet-18's stages, one block each and narrower (XLA compiles ResNet-18 for
#: half a minute per worker on 2 cores; the engines' part of a step does not depend on the depth).
STEP_ARCH = "((1, 16), (1, 32), (1, 64), (1, 128))"


def test_two_workers_take_the_oracles_sharded_step(backend, backend_name, tmp_path):
    """2 workers, one step on a batch of 16 (8 each)."""
    out = tmp_path / "run"
    done = _cli(*_train_args(backend_name, out, "--workers", "2", "--arch", STEP_ARCH, "--subset", "16",
                             "--test-subset", "8", "--batch-size", "16", "--epochs", "1"))
    assert done.returncode == 0, done.stderr[-3000:]
    arch = get_spec(STEP_ARCH).name
    weights = load_weights(out / "checkpoint.safetensors", get_spec(arch))
    before = init_weights(arch, 0)
    loader = fashion_mnist_loader("train", 16, synthetic=True, subset=16)
    images, labels = next(iter(loader))
    want_loss, want_after = oracle.sharded_sgd_step(before, images, labels, 0.05, 2, arch=arch)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["engine"] == backend.distributed.ENGINE
    assert metrics["step_losses"] == [pytest.approx(want_loss, abs=1e-3)]
    # The bounds of a single-process step (tests/test_training.py).
    assert _update_norm(weights, want_after) <= 1e-3 * _update_norm(weights, before)
    _, whole = oracle.sgd_step(before, images, labels, 0.05, arch=arch)
    assert _update_norm(weights, whole) > 1e-2 * _update_norm(weights, before)  # not the one-process step


@pytest.mark.backend("torch")
def test_two_workers_take_worker_zeros_memory_layout_and_the_oracles_step(backend, tmp_path, monkeypatch):
    """PyTorch: worker 0 times NCHW against channels_last on its shard (an empty autotuning cache),
    every worker takes its choice before DDP wraps the network, and the step is still the oracle's."""
    cache = tmp_path / "autotune.json"
    monkeypatch.setenv("RESNET_AUTOTUNE_CACHE", str(cache))
    monkeypatch.setenv("RESNET_FAST_PATHS", "auto")
    out = tmp_path / "run"
    done = _cli(*_train_args("torch", out, "--workers", "2", "--arch", STEP_ARCH, "--subset", "16",
                             "--test-subset", "8", "--batch-size", "16", "--epochs", "1"))
    assert done.returncode == 0, done.stderr[-3000:]
    sites = {site: entry for table in json.loads(cache.read_text()).values() for site, entry in table.items()}
    layouts = [site for site in sites if site.startswith("memory format")]
    assert len(layouts) == 1 and "(8, 1, 28, 28)" in layouts[0], layouts  # the shard's shape, measured once
    arch = get_spec(STEP_ARCH).name
    weights = load_weights(out / "checkpoint.safetensors", get_spec(arch))
    before = init_weights(arch, 0)
    images, labels = next(iter(fashion_mnist_loader("train", 16, synthetic=True, subset=16)))
    _, want_after = oracle.sharded_sgd_step(before, images, labels, 0.05, 2, arch=arch)
    assert _update_norm(weights, want_after) <= 1e-3 * _update_norm(weights, before)


def _oracle_epoch(weights, loader, epoch, workers, lr, arch):
    """The oracle's steps over ``loader``'s global batches of ``epoch``; ``(losses, weights)``."""
    loader.set_epoch(epoch)
    losses = []
    for images, labels in loader:
        if len(labels) < workers:
            continue
        used = workers * (len(labels) // workers)
        loss, weights = oracle.sharded_sgd_step(weights, images[:used], labels[:used], lr, workers, arch=arch)
        losses.append(loss)
    return losses, weights


def test_an_epoch_on_two_workers_then_resumed_on_one(backend_name, tmp_path):
    """20 examples in batches of 8: two full batches and a last one of 4 (2 per worker). Then
    epoch 2 on one worker from epoch 1's checkpoint, the global order unchanged."""
    out = tmp_path / "run"
    common_args = ("--arch", TINY_ARCH, "--subset", "20", "--test-subset", "8", "--batch-size", "8", "--lr", "0.02")
    done = _cli(*_train_args(backend_name, out, "--workers", "2", "--epochs", "1", *common_args))
    assert done.returncode == 0, done.stderr[-3000:]
    arch = get_spec(TINY_ARCH).name
    loader = fashion_mnist_loader("train", 8, synthetic=True, subset=20)
    start = init_weights(arch, 0)
    losses, want = _oracle_epoch(start, loader, 0, 2, 0.02, arch)
    first = load_weights(out / "checkpoint.safetensors", get_spec(arch))
    metrics = json.loads((out / "metrics.json").read_text())
    np.testing.assert_allclose(metrics["step_losses"], losses, rtol=0, atol=1e-3)
    assert _update_norm(first, want) <= 2e-3 * _update_norm(first, start)

    done = _cli(*_train_args(backend_name, out, "--workers", "1", "--epochs", "2", "--resume", *common_args))
    assert done.returncode == 0, done.stderr[-3000:]
    losses, want = _oracle_epoch(first, loader, 1, 1, 0.02, arch)
    second = load_weights(out / "checkpoint.safetensors", get_spec(arch))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["workers"] == 1 and metrics["epochs_completed"] == 2
    np.testing.assert_allclose(metrics["step_losses"][3:], losses, rtol=0, atol=1e-3)
    assert _update_norm(second, want) <= 2e-3 * _update_norm(second, first)


def _children(pid):
    """Every descendant of ``pid``, with its environment (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().split(")")[-1].split()[1])
        except OSError:
            continue
        if parent == pid:
            found.append(int(entry))
            found.extend(_children(int(entry)))
    return found


def _environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
    except OSError:
        return {}


def test_a_killed_worker_ends_the_job_and_keeps_the_checkpoint(backend_name, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT)
    args = _train_args(backend_name, out, "--workers", "2", "--epochs", "1000", "--arch", TINY_ARCH, "--subset", "16",
                       "--test-subset", "8", "--batch-size", "8")
    launcher = subprocess.Popen([sys.executable, "-m", "common", *args], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not (out / "metrics.json").exists():  # written after the checkpoint and the model
            assert launcher.poll() is None, launcher.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.2)
        workers = {_environ(pid).get(b"RESNET_WORKER_INDEX"): pid for pid in _children(launcher.pid)}
        victim = workers[b"1"]
        family = _children(launcher.pid)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = launcher.communicate(timeout=FAULT_BOUND + 30)
        took = time.monotonic() - killed_at
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 1
    assert stderr.strip().splitlines()[-1] == (f"resnet-fmnist train: error: worker 1 of 2 (pid {victim}) was killed "
                                               f"by SIGKILL; the other workers were stopped")
    assert took <= FAULT_BOUND, f"the job took {took:.1f} s to end"
    assert not any(_alive(pid) for pid in family)
    state = read_metadata(out / "checkpoint.safetensors")["train_state"]  # whole: written atomically by worker 0
    assert state["epoch"] >= 1
    load_weights(out / "checkpoint.safetensors", get_spec(get_spec(TINY_ARCH).name))
    assert sorted(os.listdir(out)) == [".lock", "checkpoint.safetensors", "metrics.json", "model.safetensors"]


def test_bench_reports_the_scaling_against_one_worker(backend_name):
    done = _cli("bench", "--backend", backend_name, "--workers", "2", "--arch", TINY_ARCH, "--resize", "none",
                "--batch-size", "8", "--steps", "2", "--rounds", "1", "--warmup", "1", "--peak-gflops", "100")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["workers"] == 2 and result["one_worker"]["train_examples_per_sec"] > 0
    speedup = result["train_examples_per_sec"] / result["one_worker"]["train_examples_per_sec"]
    assert result["train_speedup_vs_one_worker"] == pytest.approx(speedup, abs=1e-3)
    assert result["scaling_efficiency"] == pytest.approx(speedup / 2, abs=1e-3)


# --- what a job on one machine listens on ------------------------------------------------------

def _listening_sockets():
    """Socket inode -> (address, port) of every TCP socket listening on this machine (/proc/net)."""
    found = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/net/{name}") as table:
                rows = table.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            packed = bytes.fromhex(address)
            packed = b"".join(packed[i:i + 4][::-1] for i in range(0, len(packed), 4))  # host-order words
            found[int(fields[9])] = (socket.inet_ntop(family, packed), int(port, 16))
    return found


def _sockets_of(pids):
    """The socket inodes the processes ``pids`` hold open."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(int(target[len("socket:["):-1]))
    return inodes


def _two_free_ports():
    for _ in range(50):
        port = distributed.free_port()
        if port < 65535:
            with contextlib.suppress(DistributedError):
                distributed.check_port(port + 1)
                return port
    raise AssertionError("no two consecutive free ports")


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net")
def test_a_job_on_one_machine_listens_on_loopback_only(backend_name, tmp_path):
    """Every socket the launcher's job listens on (workers and helper processes, sampled every
    50 ms from /proc/net/tcp and tcp6) is on the loopback address, but for exactly what the
    backend's launch.listeners_beyond_loopback names (an engine with no setting to narrow it)."""
    port = _two_free_ports()
    args = _train_args(backend_name, tmp_path / "run", "--workers", "2", "--port", str(port), "--arch", STEP_ARCH,
                       "--batch-size", "16", "--subset", "64", "--test-subset", "16", "--epochs", "1")
    launcher = subprocess.Popen([sys.executable, "-m", "common", *args], cwd=ROOT, env=_launcher_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = set()
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while launcher.poll() is None and time.monotonic() < deadline:
            listening = _listening_sockets()
            seen |= {listening[inode] for inode in _sockets_of([launcher.pid] + _children(launcher.pid))
                     if inode in listening}
            time.sleep(0.05)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        _, stderr = launcher.communicate()
    assert launcher.returncode == 0, stderr[-2000:]
    assert seen, "the job listened on nothing: the sampling missed it"
    beyond = {(address, number) for address, number in seen if not distributed.is_loopback(address)}
    allowed = backend_part(backend_name, "launch").listeners_beyond_loopback([port, port + 1])

    def named(address, number):
        return any(address in ((want,) if want != "*" else ("::", "0.0.0.0")) and want_port in (None, number)
                   for want, want_port in allowed)

    assert all(named(*listener) for listener in beyond), f"beyond loopback: {sorted(beyond)}; named: {allowed}"
    assert all(any((want == "*" or address == want) and number == want_port for address, number in beyond)
               for want, want_port in allowed if want_port is not None), f"named {allowed}, seen {sorted(beyond)}"


def test_loopback_addresses_and_interface():
    assert all(distributed.is_loopback(host) for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "::ffff:127.0.0.1",
                                                            "localhost"))
    assert not any(distributed.is_loopback(host) for host in ("::", "0.0.0.0", "10.0.0.1", "::ffff:10.0.0.1", "vm"))
    assert distributed.loopback_interface() in {name for _, name in socket.if_nameindex()}
