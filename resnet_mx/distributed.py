"""Data-parallel training on MXNet's distributed key-value store, ``dist_sync`` (ps-lite).

The engine: MXNet 1.x's parameter server. A job is one *scheduler*, one or more *servers* and N
*workers*, all processes of the same ``mxnet`` wheel (which is built with the distributed kvstore;
MXNet's ``tools/launch.py`` is not in it). Scheduler and server are plain ``python -c "import
mxnet"`` with ``DMLC_ROLE=scheduler`` / ``server``: importing mxnet with that role runs the node
and exits when the job ends. A worker creates ``mx.kv.create("dist_sync")``; each key's ``pushpull``
sends the worker's array to the server, which sums the N workers' arrays of that round and, as
no optimizer runs on it (none is set), stores the sum in place of the key's value and sends it
back to every worker: an all-reduce SUM, the same bits for every worker.

How a job is described (every process, the same values): ``DMLC_PS_ROOT_URI`` and
``DMLC_PS_ROOT_PORT`` (the scheduler's address, which it binds; a busy port ends the scheduler
with "bind failed"), ``DMLC_NUM_WORKER``, ``DMLC_NUM_SERVER``, and ``DMLC_ROLE`` (``worker``
here). Optional: ``DMLC_NODE_HOST``, the address this worker or server is reached at (else
ps-lite takes the first non-loopback interface's, or ``DMLC_INTERFACE``'s; over loopback set it
to ``127.0.0.1``); each worker and server listens on a free port of its own (``PORT`` fixes it,
for a firewall). The processes may start in any order: each waits for the scheduler (no
timeout). The scheduler, not the launcher, numbers the workers (by address and port): :func:`initialize`
returns ``kv.rank``, and the worker trains shard ``rank``.

One step of :class:`DistributedTrainer` (the meaning of :func:`common.oracle.sharded_sgd_step`):
forward and backward on this worker's shard as :class:`resnet_mx.train.Trainer` does (the shard's
batch statistics; running statistics updated locally, PyTorch's way); the gradients pushpulled
(summed over workers) and applied by the same optimizer step (:meth:`resnet_mx.train.Trainer.update`:
the recipe's optimizer, schedule and momentum handling) with ``1 / (N * shard size)`` as the
gradient scale, so every worker steps with the mean of the workers' mean gradients (plain SGD:
its weights move by ``lr`` times it); then every BatchNorm running mean and variance pushpulled
and divided by N (the mean of the workers' updated statistics); and ``(loss sum, number correct)`` pushpulled as
one array, so the step returns the global batch's. All of it is queued on MXNet's engine; the
step returns without waiting. Evaluation, weights I/O and ``to_host`` stay local.

Collectives block until every worker has joined them, with no timeout: a worker that dies
leaves the others (and the scheduler and server) waiting for ever, so whatever starts the job
ends it when any worker fails. :func:`shutdown` is collective too (a barrier of all workers,
then the servers and the scheduler stop); a worker that exits without it, or calls it while an
exception propagates, leaves without the barrier, so it ends at once, and the scheduler and
server are left for the launcher to end.
"""
from __future__ import annotations

import atexit
import ctypes
import gc
import os
import sys
from typing import List, Tuple

import mxnet as mx
from mxnet import autograd

from .kernels import legacy_operators
from .launch import ENGINE, ENGINE_VARIABLES
from .train import Trainer, _correct

__all__ = ["ENGINE", "initialize", "DistributedTrainer", "shutdown"]


_kv = None          # this process's dist_sync kvstore, while it is in a job
_left = False       # True once shutdown() has left the job: ps-lite cannot start again in a process
_next_key = 0       # kvstore keys handed out so far (every worker hands them out in the same order)


def _check_environment() -> None:
    for name in ENGINE_VARIABLES:
        if not os.environ.get(name, "").strip():
            raise RuntimeError(f"{name} is not set: a dist_sync worker needs {', '.join(ENGINE_VARIABLES)} "
                               "(see resnet_mx.distributed)")
    if os.environ["DMLC_ROLE"].strip() != "worker":
        raise RuntimeError(f"DMLC_ROLE={os.environ['DMLC_ROLE']!r}: a trainer is a worker (DMLC_ROLE=worker); the "
                           "scheduler and servers are separate processes (python -c 'import mxnet')")
    for name, least in (("DMLC_PS_ROOT_PORT", 1), ("DMLC_NUM_WORKER", 1), ("DMLC_NUM_SERVER", 1)):
        value = os.environ[name].strip()
        if not value.isdigit() or int(value) < least:
            raise RuntimeError(f"{name}={value!r}: expected an integer of at least {least}")


def initialize(device=None) -> Tuple[int, int]:
    """Join the job the ``DMLC_*`` environment describes; returns ``(rank, world_size)``.

    Blocks until the scheduler has heard from every worker and server (ps-lite's start-up
    barrier; there is no timeout). ``rank`` is the scheduler's numbering of the workers. A
    second call returns the same. ``device`` is accepted for the common signature: the kvstore
    works on host copies whatever the device. Raises a one-line RuntimeError naming the variable
    when the environment is incomplete, and after :func:`shutdown` (ps-lite starts once per process).
    """
    global _kv
    if _kv is None:
        if _left:
            raise RuntimeError("this process has left its dist_sync job (shutdown()); ps-lite cannot join another")
        _check_environment()
        _kv = mx.kv.create("dist_sync")
        if _kv.num_workers != int(os.environ["DMLC_NUM_WORKER"]):
            raise RuntimeError(f"DMLC_NUM_WORKER={os.environ['DMLC_NUM_WORKER']} but the scheduler counts "
                               f"{_kv.num_workers} workers")
    return _kv.rank, _kv.num_workers


def _job():
    if _kv is None:
        raise RuntimeError("this process is not in a dist_sync job: initialize() first (or it was shut down)")
    return _kv


def _new_keys(values: List[mx.nd.NDArray]) -> List[int]:
    """Fresh kvstore keys for ``values``, initialised on the servers (a barrier of all workers).

    A key is initialised once per job (worker 0's value; re-initialising a key would count as a
    push of a round that never completes), so each trainer gets keys of its own; every worker
    builds the same trainers in the same order, and so numbers them alike.
    """
    global _next_key
    keys = list(range(_next_key, _next_key + len(values)))
    _next_key += len(values)
    _job().init(keys, values)
    return keys


def _legacy(array):
    """The legacy-NDArray view of a NumPy-mode array (the same memory), for the kvstore."""
    return array.as_nd_ndarray() if isinstance(array, mx.np.ndarray) else array


@legacy_operators
def _global_sums(key: int, loss_sum, correct):
    """``(loss_sum, correct)`` summed over the workers, as one-element arrays (queued, not waited for)."""
    packed = mx.nd.concat(loss_sum.reshape((1,)), correct.reshape((1,)).astype("float32"), dim=0)
    _job().pushpull(key, packed, out=packed)  # a fresh array each step: the values returned stay as they are
    return packed[0:1], packed[1:2]


class DistributedTrainer(Trainer):
    """A :class:`resnet_mx.train.Trainer` whose steps are one data-parallel job's (see the module).

    Constructed exactly like ``Trainer`` (``recipe`` included); it joins the job first (:func:`initialize`). With
    ``device=None`` a worker takes GPU ``rank % GPUs`` where MXNet sees GPUs (not tested: no CUDA
    build of MXNet here), else the CPU. Every worker must construct its trainers in the same
    order (the kvstore keys they initialise are numbered in that order).
    """

    engine = ENGINE

    def __init__(self, net=None, **kwargs):
        self.rank, self.world_size = initialize(kwargs.get("device"))
        if kwargs.get("device") is None and mx.context.num_gpus() > 0:
            kwargs["device"] = mx.gpu(self.rank % mx.context.num_gpus())
        super().__init__(net, **kwargs)
        self.engine = ENGINE
        params = list(self.net.collect_params().values())
        # Trainable: what the optimizer updates. Running statistics: BatchNorm's, the only
        # grad_req="null" parameters of these networks.
        self._trainable = [p for p in params if p.grad_req != "null"]
        self._statistics = [p for p in params if p.grad_req == "null"]
        self._grad_keys = _new_keys([_legacy(p.data(self.device)) for p in self._trainable])
        self._statistics_keys = _new_keys([_legacy(p.data(self.device)) for p in self._statistics])
        self._sums_key = _new_keys([mx.nd.zeros((2,), ctx=self.device)])[0]

    def train_step(self, x, y):
        """One data-parallel SGD step on this worker's shard ``(x, y)``; ``(loss summed over the
        global batch, number correct in it)``, the same on every worker, without waiting for them."""
        kv = _job()
        with autograd.record():
            logits = self.net(x)
            losses = self.loss(logits, y)
        losses.backward()
        # Each gradient is the sum over the shard's examples (backward of the per-example losses);
        # pushpull sums it over the workers, in place (on the CPU the pushed array itself receives
        # the sum), and the step scales by 1 / (N * shard size): the mean of the workers' mean gradients.
        grads = [_legacy(p.grad(self.device)) for p in self._trainable]
        kv.pushpull(self._grad_keys, grads, out=grads)
        self.update(x.shape[0] * self.world_size)
        # The running statistics the forward pass moved locally: the workers' mean.
        statistics = [_legacy(p.data(self.device)) for p in self._statistics]
        if statistics:
            kv.pushpull(self._statistics_keys, statistics, out=statistics)
            with autograd.pause():
                for value in statistics:
                    value /= self.world_size
        return _global_sums(self._sums_key, losses.sum(), _correct(logits, y))


def _leave(barrier: bool) -> None:
    global _kv, _left
    kv, _kv, _left = _kv, None, True
    if not barrier:
        # KVStoreDist's destructor waits at a barrier of all workers unless told not to.
        mx.base.check_call(mx.base._LIB.MXKVStoreSetBarrierBeforeExit(kv.handle, ctypes.c_int(0)))
    del kv
    gc.collect()  # the destructor runs when the last reference goes: ps-lite's finalisation


def shutdown() -> None:
    """Leave the job: wait for this worker's queued work, then a barrier of all workers, after
    which worker 0 stops the servers, and ps-lite ends here (the scheduler and servers exit when
    every worker has left). Collective: every worker calls it after its last step. Safe to call
    twice or without a job.

    Called while an exception propagates (a ``finally`` on the way out of a failed worker), or
    not called before the process exits, it leaves without the barrier, which would wait for
    workers that never come: the process ends, and the scheduler and servers are left waiting
    for the launcher to end them.
    """
    if _kv is not None:
        failing = sys.exc_info()[0] is not None
        if not failing:
            mx.nd.waitall()
        _leave(barrier=not failing)


@atexit.register
def _leave_at_exit() -> None:
    # An exit without shutdown() (an exception, a failed worker): the barrier would wait for
    # workers that may never come, so the process would not end.
    if _kv is not None:
        _leave(barrier=False)
