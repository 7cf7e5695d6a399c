"""Data-parallel training: N worker processes on each framework's own distributed engine.

What a step means (the same in every backend; :func:`common.oracle.sharded_sgd_step` computes it):
a global batch of B examples, in the single-process order, is split into N contiguous shards of
B / N (:func:`common.sharding.shard_slices`), shard r to worker r. Each worker runs the train-mode
pass on its shard (BatchNorm with its own shard's statistics, as each engine does by default),
the gradients are averaged over the workers by the engine's all-reduce, and every worker applies
the same SGD update. BatchNorm's running statistics become the mean of the workers' updated
ones, so every worker holds the same network. The data order depends only on seed and epoch,
never on N, so a run may resume with another number of workers. A full batch must divide by N
(a one-line error otherwise); of a last, partial batch of b examples, the first
``N * (b // N)`` are used, and none when b < N.

How a job is described: by each engine's own environment variables, so the engines' own tools
and multi-host set-ups work unchanged (see docs/distributed.md). Which variables, and what else an
engine needs to start (ports, helper processes), each backend says in its framework-free
``launch`` module (:class:`common.contract.Launch`); this module only manages processes.

A process whose environment describes a job of more than one worker trains as one of its
workers (:func:`job_size`): each backend's ``distributed.DistributedTrainer`` joins the job;
worker 0 alone writes the checkpoint and ``metrics.json`` and shows progress.

:func:`launch` (``resnet-fmnist train --workers N``) starts N such processes on this machine over
loopback, with the engine's variables set as above, and watches them: when one fails or dies,
the others are stopped within :data:`STOP_GRACE_SECONDS` and the job ends with one line naming
the worker; the last good checkpoint stays as it was.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Sequence

__all__ = ["LAUNCHED_ENV", "ERROR_FILE_ENV", "WORKER_INDEX_ENV", "STOP_GRACE_SECONDS",
           "DistributedError", "integer_variable", "all_engine_variables", "job_size", "launched",
           "is_loopback", "host_address", "loopback_interface", "worker_environments", "free_port", "check_port",
           "cpu_groups", "report_error", "exit_worker", "launch"]

#: Set by :func:`launch` in its workers: the launcher holds the run directory's lock.
LAUNCHED_ENV = "RESNET_LAUNCHED"
#: Set by :func:`launch`: where a worker writes its one-line error for the launcher to report.
ERROR_FILE_ENV = "RESNET_ERROR_FILE"
#: Set by :func:`launch`: the launcher's index of the worker (its rank, except in MXNet, whose
#: scheduler assigns ranks).
WORKER_INDEX_ENV = "RESNET_WORKER_INDEX"
#: How long stopped workers get to exit after SIGTERM before SIGKILL.
STOP_GRACE_SECONDS = 5.0
#: How often the launcher looks at its processes.
POLL_SECONDS = 0.1


class DistributedError(RuntimeError):
    """A data-parallel job that cannot start or did not finish; the message is one line."""


def integer_variable(environ, name) -> int:
    """The integer value of the environment variable ``name``, or a one-line :class:`DistributedError`."""
    text = environ.get(name, "")
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"{name} must be an integer, got {text!r}") from None


def _launch_facts(backend: str):
    from .backend import backend_part

    return backend_part(backend, "launch")


def job_size(backend: str, environ=None) -> int:
    """The number of workers of the job ``environ`` (default ``os.environ``) describes to
    ``backend``'s engine; 1 when it describes none (a single-process run)."""
    return _launch_facts(backend).job_size(os.environ if environ is None else environ)


def launched(environ=None) -> bool:
    """Whether this process is a worker that :func:`launch` started."""
    return (os.environ if environ is None else environ).get(LAUNCHED_ENV) == "1"


def worker_environments(backend: str, workers: int, host: str, ports: Sequence[int]) -> List[Dict[str, str]]:
    """The engine's variables for each of ``workers`` processes on ``host`` (``ports``: as many as
    the backend's ``launch.ports_needed`` says, the first one the coordinator's)."""
    return _launch_facts(backend).worker_environments(workers, host, ports)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is this machine's loopback (127.0.0.0/8, ::1, localhost)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, as an IPv6 socket shows 127.0.0.1
    return (mapped or address).is_loopback


def host_address():
    """The IPv4 address this machine's host name resolves to (what gloo binds without an interface
    named), or None where it does not resolve."""
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return None


def loopback_interface() -> str:
    """The name of this machine's loopback network interface ("lo" on Linux), for engines that pick
    their interface by name (gloo's ``GLOO_SOCKET_IFNAME``)."""
    for _, name in socket.if_nameindex():
        with contextlib.suppress(OSError, ValueError):
            with open(f"/sys/class/net/{name}/flags") as flags:
                if int(flags.read().strip(), 16) & 0x8:  # IFF_LOOPBACK
                    return name
    return "lo"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_port(port: int, host: str = "127.0.0.1") -> int:
    """``port`` if it can be listened on, else a one-line :class:`DistributedError`."""
    if not 1 <= port <= 65535:
        raise DistributedError(f"--port must lie in 1..65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise DistributedError(f"port {port} on {host} is not free ({error.strerror}); choose another --port "
                                   f"or leave it out to take a free one") from None
    return port


def cpu_groups(workers: int, cpus=None) -> List[List[int]]:
    """The CPUs this process may use, split into ``workers`` contiguous groups (the cores are
    divided between the workers); with fewer CPUs than workers, the workers share them in turn."""
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cpus = sorted(cpus)
    if len(cpus) < workers:
        return [[cpus[rank % len(cpus)]] for rank in range(workers)]
    size, extra = divmod(len(cpus), workers)
    groups, start = [], 0
    for rank in range(workers):
        end = start + size + (1 if rank < extra else 0)
        groups.append(cpus[start:end])
        start = end
    return groups


def report_error(message: str) -> bool:
    """In a launched worker, hand the one-line ``message`` to the launcher (which names the
    worker when it reports it) and return True; elsewhere return False (print it yourself)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path or not launched():
        return False
    with contextlib.suppress(OSError):
        with open(path, "w") as handle:
            handle.write(message.strip().splitlines()[0] if message.strip() else "failed")
        return True
    return False


def exit_worker(code: int) -> None:
    """End a launched worker with exit status ``code``: Python's exit handlers and buffered
    output as at any exit, then :func:`os._exit`, as :mod:`multiprocessing`'s children end.

    What this skips is the C++ libraries' own teardown after the interpreter has finalized: there
    PyTorch 2.13 aborted a gloo worker about one exit in fifteen ("terminate called without an
    active exception", SIGABRT, with no Python frame), after the worker had done its work and left
    the job, and the launcher then reported the whole job as failed."""
    import atexit
    import sys

    try:
        atexit._run_exitfuncs()  # what sys.exit would run: TensorBoard writers, logging, ...
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _gpu_count() -> int:
    """NVIDIA GPUs the driver reports, without importing a framework."""
    with contextlib.suppress(OSError):
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    return 0


def _prctl():
    """libc's ``prctl``, looked up in the launcher (a child between fork and exec must not import)."""
    with contextlib.suppress(Exception):
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    return None


def _preexec(cpus):
    prctl = _prctl()

    def setup():
        # Die with the launcher, whatever kills it (Linux); never outlive the job.
        if prctl is not None:
            prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if cpus is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)
        os.setpgrp()  # its own process group: a terminal's Ctrl-C reaches the launcher only
    return setup


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class _Process:
    def __init__(self, name, command, env, cpus, stdout=None):
        self.name = name
        self.popen = subprocess.Popen(command, env=env, preexec_fn=_preexec(cpus), stdout=stdout)
        self.returncode = None
        self.ended_at = None

    def poll(self, round_=None):
        if self.returncode is None:
            self.returncode = self.popen.poll()
            if self.returncode is not None:
                self.ended_at = round_
        return self.returncode


def _stop(processes, grace):
    """SIGTERM every process still running, SIGKILL those left after ``grace`` seconds; reap all."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(p.poll() is None for p in running) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    for process in running:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.popen.kill()
            process.popen.wait()
            process.poll()


def launch(command: Sequence[str], backend: str, workers: int, *, port: Optional[int] = None,
           host: str = "127.0.0.1", grace: float = STOP_GRACE_SECONDS, environ=None, stdout=None) -> None:
    """Run ``command`` (a worker's argv, e.g. ``[python, -m, common, train, ...]``) as ``workers``
    processes of one ``backend`` job over ``host`` and wait for all of them.

    Each worker gets the engine's variables (:func:`worker_environments`), a share of the CPUs
    (:func:`cpu_groups`, with ``OMP_NUM_THREADS`` to match unless set, the backend's
    ``launch.THREAD_VARIABLES`` following it, and no GPU) or, on a
    machine with at least ``workers`` NVIDIA GPUs, one GPU (``CUDA_VISIBLE_DEVICES``). ``port`` is the
    coordinator's (TensorFlow's workers take ``port .. port + workers - 1``); by default free
    ones are picked. Returns when every worker exited with status 0. When one fails or dies,
    the rest are stopped (SIGTERM, then SIGKILL after ``grace`` seconds) and a one-line
    :class:`DistributedError` names the worker and its error; Ctrl-C stops them all too.
    ``stdout``: where the processes' standard output goes (``subprocess.Popen``'s; default this
    process's).
    """
    if workers < 1:
        raise DistributedError(f"--workers must be at least 1, got {workers}")
    facts = _launch_facts(backend)
    count = facts.ports_needed(workers)
    if port is None:
        ports = [free_port(host) for _ in range(count)]
    else:
        ports = [check_port(port + offset, host) for offset in range(count)]
    base = dict(os.environ if environ is None else environ)
    for name in all_engine_variables():  # a job of its own, whatever the caller's environment says
        base.pop(name, None)
    gpus = _gpu_count()
    groups = cpu_groups(workers) if gpus < workers else [None] * workers
    with tempfile.TemporaryDirectory(prefix="resnet-workers-") as scratch:
        processes: List[_Process] = []
        workers_started: List[_Process] = []
        try:
            for name, helper_command, helper_env in facts.helper_processes(workers, host, ports[0]):
                processes.append(_Process(name, helper_command, dict(base, **helper_env), None, stdout))
            for index, engine_env in enumerate(facts.worker_environments(workers, host, ports)):
                env = dict(base, **engine_env)
                env.update({LAUNCHED_ENV: "1", WORKER_INDEX_ENV: str(index),
                            ERROR_FILE_ENV: _error_file(scratch, f"worker {index}")})
                if groups[index] is not None:
                    env.setdefault("OMP_NUM_THREADS", str(len(groups[index])))
                    for name in facts.THREAD_VARIABLES:  # the framework's own count follows it
                        env[name] = env["OMP_NUM_THREADS"]
                    if gpus:  # fewer GPUs than workers: all of them on the CPUs, none fighting over a GPU
                        env["CUDA_VISIBLE_DEVICES"] = ""
                else:
                    env["CUDA_VISIBLE_DEVICES"] = str(index)
                worker = _Process(f"worker {index}", list(command), env, groups[index], stdout)
                processes.append(worker)
                workers_started.append(worker)
            failed = _watch(processes, workers_started, scratch)
        except BaseException:
            _stop(processes, grace)
            raise
        _stop(processes, grace)
        if failed is not None:
            raise DistributedError(_failure_message(failed, scratch, workers))


def all_engine_variables() -> List[str]:
    """Every backend's ``launch.ENGINE_VARIABLES``: what a new job's processes must not inherit."""
    from .backend import BACKENDS

    return [name for backend in BACKENDS for name in _launch_facts(backend).ENGINE_VARIABLES]


#: Signals that come from outside (a user, the OOM killer, a scheduler), not from a crash.
_KILLED_FROM_OUTSIDE = (-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT)


def _watch(processes, workers, scratch):
    """Wait until every worker succeeded (None) or one process failed (the one to blame)."""
    round_ = 0
    while True:
        round_ += 1
        for process in processes:
            process.poll(round_)
        failures = [p for p in processes if p.returncode not in (None, 0)]
        if failures:
            # The first to end is the cause, its peers' broken connections the effect. Seen
            # ending together: a process killed from outside, then one that reported an error,
            # before one that crashed (JAX aborts a worker whose coordinator is gone).
            def blame(process):
                reported = os.path.exists(_error_file(scratch, process.name))
                return (process.ended_at, process.returncode not in _KILLED_FROM_OUTSIDE, not reported)

            return min(failures, key=blame)
        if all(p.returncode == 0 for p in workers):
            return None
        time.sleep(POLL_SECONDS)


def _error_file(scratch, name) -> str:
    return os.path.join(scratch, name.replace(" ", "") + ".error")


def _failure_message(process, scratch, workers) -> str:
    detail = ""
    if process.name.startswith("worker "):
        with contextlib.suppress(OSError):
            with open(_error_file(scratch, process.name)) as handle:
                detail = handle.read().strip()
    what = _describe_exit(process.returncode)
    name = f"{process.name} of {workers}" if process.name.startswith("worker ") else f"the {process.name}"
    return (f"{name} (pid {process.popen.pid}) {what}" + (f": {detail}" if detail else "")
            + "; the other workers were stopped")
