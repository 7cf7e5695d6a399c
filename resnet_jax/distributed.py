"""Data-parallel training on JAX's own distributed engine: ``jax.distributed`` with XLA's
cross-process collectives (gloo over TCP between CPUs, NCCL between GPUs).

JAX is multi-controller: every worker is a process running the same program. ``initialize()``
joins the job through ``jax.distributed.initialize``: process 0 starts JAX's coordination service
at the coordinator address, every process connects to it, and JAX then builds its backends with
all the processes' devices (``jax.devices()`` is global, ``jax.local_devices()`` this process's).
On CPUs the collectives are gloo's (``jax_cpu_collectives_implementation="gloo"``, JAX's
default, set explicitly), on GPUs NCCL's.

A job is described by three environment variables, the same for the local launcher and for a
user starting workers by hand on several hosts:

``JAX_COORDINATOR_ADDRESS``
    ``host:port`` of process 0's coordination service, reachable from every worker; the same in
    every worker. Process 0 binds exactly this address (JAX's default would be every interface),
    or ``JAX_COORDINATOR_BIND_ADDRESS`` (JAX's own variable) where set, e.g. ``[::]:port`` behind
    NAT, where the address others reach is not one of rank 0's.
``JAX_NUM_PROCESSES``
    The number of workers N; the same in every worker.
``JAX_PROCESS_ID``
    This worker's rank, 0 .. N - 1; rank 0 hosts the coordination service.

On a host with several GPUs, give each worker its own: ``CUDA_VISIBLE_DEVICES=<gpu index>`` (as
the local launcher does), ``JAX_LOCAL_DEVICE_IDS=<gpu index>`` (which JAX itself reads), or
``device="gpu:<index>"``. The mesh has one device per worker: each
process's first device of the platform it trains on.

``initialize()`` must run before any other JAX computation in the process, since JAX builds its
backends once, on first use (``jax.devices()``, ``jax.device_put``, any computation, a Trainer):
a backend built before it knows nothing of the other processes, and ``initialize()`` then raises.
:class:`DistributedTrainer` calls it first thing; importing :mod:`resnet_jax` builds no backend.

One step (:meth:`DistributedTrainer.train_step`) is one ``jax.jit``-compiled ``jax.shard_map``
over a one-axis mesh of the workers' devices (axis ``"workers"``), which takes the weights,
running statistics and optimizer state replicated and the batch sharded (each worker's shard,
made a global array without a copy): each worker runs the forward and backward pass on its own
shard (mean cross-entropy over the shard, with the recipe's label smoothing; BatchNorm with the
shard's batch statistics, its running statistics updated locally), then ``lax.pmean`` averages the
gradients over the workers, every worker applies the same optimizer step (the Trainer's
:func:`~resnet_jax.train.update`: the recipe's optax optimizer, schedule and momentum included, on
the replicated state), ``lax.pmean`` averages the updated running means
and variances, and ``lax.psum`` sums the shards' loss and number correct: the global batch's.
Evaluation, weights in and out, ``to_host`` and ``to_batch`` are the :class:`Trainer`'s, local.

Time limits: a worker waits ``INIT_TIMEOUT_S`` for all the others to connect; the coordination
service declares a worker that sent no heartbeat for ``HEARTBEAT_TIMEOUT_S`` dead and then ends
the others (JAX aborts them); an all-reduce whose peer has exited fails at once ("connection
closed by peer"), one whose peer is alive but elsewhere waits up to XLA's 30 minutes
(``--xla_cpu_collective_timeout_seconds``), except the job's first collective, which gloo gives
30 seconds: :class:`DistributedTrainer` runs it as it is built, while the workers are in step.
"""
from __future__ import annotations

import ctypes
import os
import re
import sys
from functools import lru_cache
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from common import autotune

from . import kernels
from .launch import ENGINE  # noqa: F401  (the contract's: this module's too)
from .train import Trainer, _apply_train, _correct, _losses, update

__all__ = ["ENGINE", "initialize", "DistributedTrainer", "shutdown"]


#: The environment that describes a job (see the module docstring).
COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
#: JAX's own: the address rank 0's coordination service binds (default here: the coordinator address).
BIND_ENV = "JAX_COORDINATOR_BIND_ADDRESS"

#: Seconds a worker waits for all the others to connect before it fails (JAX's default: 300).
INIT_TIMEOUT_S = 120
#: Seconds without a heartbeat after which the coordination service declares a worker dead and
#: stops the others (JAX's default: 100).
HEARTBEAT_TIMEOUT_S = 60
#: Seconds :func:`shutdown` waits for every other worker to shut down too (JAX's default: 300).
SHUTDOWN_TIMEOUT_S = 60

#: The mesh axis of the workers.
AXIS = "workers"

_joined: Optional[Tuple[int, int]] = None
_left = False  # whether this process has left a job (JAX cannot join another)
_abandoned: list = []  # the connection of a job left on an error (see shutdown)


def _job_from_environment():
    """(coordinator address, number of processes, process id) from the environment, or a one-line
    RuntimeError naming the variable that is missing or wrong."""
    def need(name):
        value = os.environ.get(name, "").strip()
        if not value:
            raise RuntimeError(f"{name} is not set: a distributed JAX worker needs {COORDINATOR_ENV}=host:port, "
                               f"{NUM_PROCESSES_ENV}=N and {PROCESS_ID_ENV}=0..N-1")
        return value

    address = need(COORDINATOR_ENV)
    well_formed = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):\d{1,5}", address)
    if not well_formed or not 0 < int(address.rsplit(":", 1)[1]) < 65536:
        raise RuntimeError(f"{COORDINATOR_ENV} must be host:port (port 1..65535), got {address!r}")
    numbers = {}
    for name in (NUM_PROCESSES_ENV, PROCESS_ID_ENV):
        value = need(name)
        if not re.fullmatch(r"\d+", value):
            raise RuntimeError(f"{name} must be a non-negative integer, got {value!r}")
        numbers[name] = int(value)
    world_size, rank = numbers[NUM_PROCESSES_ENV], numbers[PROCESS_ID_ENV]
    if world_size < 1:
        raise RuntimeError(f"{NUM_PROCESSES_ENV} must be at least 1, got {world_size}")
    if rank >= world_size:
        raise RuntimeError(f"{PROCESS_ID_ENV}={rank} must be below {NUM_PROCESSES_ENV}={world_size}")
    return address, world_size, rank


def _gpu_index(device) -> Optional[int]:
    """The GPU index ``device`` names ("gpu:1", "cuda:1"), None for anything else."""
    if isinstance(device, str):
        match = re.fullmatch(r"(?:gpu|cuda):(\d+)", device.strip().lower())
        if match:
            return int(match.group(1))
    return None


def initialize(device=None) -> Tuple[int, int]:
    """Join the job the environment describes (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``); returns ``(rank, world_size)``. Idempotent (a second call returns the
    same). Must run before any other JAX computation in the process. Raises a one-line
    RuntimeError naming the variable when the environment is incomplete.

    ``device="gpu:k"`` ("cuda:k") makes GPU k this process's only GPU (``local_device_ids``);
    otherwise JAX's ``JAX_LOCAL_DEVICE_IDS``, if set, chooses.
    """
    global _joined
    if _joined is not None:
        return _joined
    if _abandoned or _left:
        raise RuntimeError("this process has left its JAX job already; JAX cannot join another (start a new process)")
    from jax._src import distributed as jax_distributed
    from jax._src import xla_bridge
    state = jax_distributed.global_state
    if state.client is not None:  # someone else called jax.distributed.initialize in this process
        _joined = (int(state.process_id), int(state.num_processes))
        return _joined
    address, world_size, rank = _job_from_environment()
    if xla_bridge.backends_are_initialized():
        raise RuntimeError("resnet_jax.distributed.initialize() must run before any other JAX computation in the "
                           "process (JAX has already built its backends); call it first")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    gpu = _gpu_index(device)
    try:
        # Rank 0's coordination service binds the coordinator address itself, not JAX's default of
        # every interface ([::]:port), unless JAX's own JAX_COORDINATOR_BIND_ADDRESS says otherwise.
        bind = os.environ.get(BIND_ENV, "").strip() or address
        jax.distributed.initialize(address, world_size, rank, local_device_ids=None if gpu is None else [gpu],
                                   coordinator_bind_address=bind,
                                   cluster_detection_method="deactivate", initialization_timeout=INIT_TIMEOUT_S,
                                   heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                                   shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    except Exception as error:  # the coordination service's errors are pages long
        shutdown()
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if rank == 0 and "Failed to start RPC server" in first:
            first += f" (is port {address.rsplit(':', 1)[1]} in use? choose another in {COORDINATOR_ENV})"
        raise RuntimeError(f"worker {rank} of {world_size} could not join the JAX job at {address}: {first}") from None
    _joined = (rank, world_size)
    return _joined


@lru_cache(maxsize=None)
def _sharded_train_step(mesh, module, fast_paths_mode, optimizer_update, label_smoothing):
    """The jitted data-parallel step of ``module`` over ``mesh`` (see the module docstring) with
    the optimizer's ``optimizer_update`` and the loss's ``label_smoothing``; ``fast_paths_mode`` a
    key only, as in :mod:`resnet_jax.train`'s steps: another mode compiles anew."""
    def local(params, batch_stats, opt_state, x, y):
        def loss(params):
            logits, new_stats = _apply_train(module, params, batch_stats, x)
            losses = _losses(logits, y, label_smoothing)
            return jnp.mean(losses), (losses, logits, new_stats)

        (_, (losses, logits, new_stats)), gradients = jax.value_and_grad(loss, has_aux=True)(params)
        gradients = lax.pmean(gradients, AXIS)
        params, opt_state = update(optimizer_update, params, gradients, opt_state)
        new_stats = lax.pmean(new_stats, AXIS)
        loss_sum, correct = lax.psum((jnp.sum(losses), _correct(logits, y)), AXIS)
        return params, new_stats, opt_state, loss_sum, correct

    replicated, sharded = PartitionSpec(), PartitionSpec(AXIS)
    # check_vma=False: the gradients are the shard's own, averaged by the explicit pmean above.
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(replicated, replicated, replicated, sharded, sharded),
                                 out_specs=(replicated,) * 5, check_vma=False))


@lru_cache(maxsize=None)
def _count_workers(mesh):
    """A jitted psum over ``mesh`` of each worker's 1: the number of workers, in every worker."""
    return jax.jit(jax.shard_map(lambda ones: lax.psum(ones, AXIS), mesh=mesh, in_specs=PartitionSpec(AXIS),
                                 out_specs=PartitionSpec(), check_vma=False))


class DistributedTrainer(Trainer):
    """:class:`resnet_jax.train.Trainer` for one worker of a data-parallel job: constructed exactly
    like it (same keywords), it joins the job (:func:`initialize`) first. ``train_step(x, y)``
    takes this worker's shard (every worker's the same size) and returns the global batch's
    ``(summed loss, number correct)``, the same in every worker. Attributes: ``rank``,
    ``world_size``, ``engine``, ``mesh`` (one device per worker)."""

    def __init__(self, net=None, *, arch="resnet18", style="d2l", num_classes=10, in_channels=1, lr=0.05,
                 device=None, precision="fp32", deterministic=True, recipe=None):
        self.rank, self.world_size = initialize(device)
        super().__init__(net, arch=arch, style=style, num_classes=num_classes, in_channels=in_channels, lr=lr,
                         device=device, precision=precision, deterministic=deterministic, recipe=recipe)
        platform = self.device.platform
        self.engine = ENGINE if platform == "cpu" else f"jax.distributed ({'nccl' if platform == 'gpu' else platform})"
        devices = []
        for process in range(self.world_size):
            mine = sorted((d for d in jax.devices(platform) if d.process_index == process), key=lambda d: d.id)
            if not mine:
                raise RuntimeError(f"worker {process} has no {platform} device; every worker must train on the "
                                   f"same platform")
            devices.append(mine[0])
        if devices[self.rank] != self.device:
            raise RuntimeError(f"worker {self.rank} trains on {self.device} but the job's mesh takes its first "
                               f"{platform} device {devices[self.rank]}; give each worker one device "
                               f"(JAX_LOCAL_DEVICE_IDS)")
        self.mesh = Mesh(devices, (AXIS,))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._sharded = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self._mirrors = {}  # slot -> (treedef, local arrays, global tree) of the last step's results
        self._connect()

    def _connect(self):
        """One all-reduce over the mesh now, while the workers are in step (they have just met in
        :func:`initialize`): XLA sets up the workers' gloo connections at the first collective
        and waits there only 30 seconds (gloo's default, not configurable in jaxlib 0.10) for
        every worker to arrive, whereas later collectives wait up to 30 minutes
        (``--xla_cpu_collective_timeout_seconds``). The first training step, compiled
        separately in each worker, may reach its all-reduces further apart than that."""
        ones = jax.device_put(jnp.ones((1,), jnp.float32), self.device)
        ones = self._global(ones, self._sharded, self.world_size)
        total = float(_count_workers(self.mesh)(ones).addressable_data(0)[0])
        if total != self.world_size:
            raise RuntimeError(f"worker {self.rank}: the all-reduce over the job counted {total:g} workers, "
                               f"not {self.world_size}")

    @staticmethod
    def resolve_device(device):
        """This process's device: like :meth:`Trainer.resolve_device`, among the local devices only
        (``jax.devices()`` lists every worker's); "gpu:k" is the GPU :func:`initialize` kept."""
        local = jax.local_devices()
        gpus = [d for d in local if d.platform == "gpu"]
        if device is None:
            return gpus[0] if gpus else jax.local_devices(backend="cpu")[0]
        if isinstance(device, jax.Device):
            if device not in local and device not in jax.local_devices(backend=device.platform):
                raise ValueError(f"device {device} belongs to another worker")
            return device
        kind = str(device).strip().lower()
        if kind == "cpu":
            return jax.local_devices(backend="cpu")[0]
        if kind in ("gpu", "cuda") or _gpu_index(kind) is not None:
            if not gpus:
                raise ValueError(f"device {device!r} is not available: this worker sees no GPU; use --device cpu")
            return gpus[0]
        return Trainer.resolve_device(device)

    def _global(self, local, sharding, rows=None):
        """A global array of the mesh from this worker's single-device array (no copy)."""
        shape = local.shape if rows is None else (rows,) + local.shape[1:]
        return jax.make_array_from_single_device_arrays(shape, sharding, [local])

    def _replicated_tree(self, slot, tree):
        """``tree``'s arrays as replicated global arrays: those the last step returned, if the tree
        still holds the very arrays it gave back (no conversion), else new views of its arrays."""
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        cached = self._mirrors.get(slot)
        if cached is not None and cached[0] == treedef and len(cached[1]) == len(leaves) \
                and all(a is b for a, b in zip(cached[1], leaves)):
            return cached[2]
        return treedef.unflatten([self._global(leaf, self._replicated) for leaf in leaves])

    def _local_tree(self, slot, tree):
        """This worker's arrays of the replicated global ``tree`` a step returned (no copy),
        remembered for :meth:`_replicated_tree`."""
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        local = [leaf.addressable_data(0) for leaf in leaves]
        self._mirrors[slot] = (treedef, local, tree)
        return treedef.unflatten(local)

    def train_step(self, x, y):
        """One data-parallel optimizer step on this worker's shard ``(x, y)``; returns the global batch's
        (summed loss, number correct), the same in every worker, without waiting for them."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"images and labels differ in batch size: {x.shape[0]} and {y.shape[0]}")
        rows = x.shape[0] * self.world_size
        variables = self.net.variables
        step = _sharded_train_step(self.mesh, self.modules[True], autotune.fast_paths_mode(), self.optimizer.update,
                                   self.recipe.label_smoothing)
        with kernels.precision_scope(self.precision):
            params, batch_stats, opt_state, loss, correct = step(
                self._replicated_tree("params", variables["params"]),
                self._replicated_tree("batch_stats", variables["batch_stats"]),
                self._replicated_tree("opt_state", self.opt_state),
                self._global(x, self._sharded, rows), self._global(y, self._sharded, rows))
        self.opt_state = self._local_tree("opt_state", opt_state)
        self.net.variables = {**variables, "params": self._local_tree("params", params),
                              "batch_stats": self._local_tree("batch_stats", batch_stats)}
        return loss.addressable_data(0), correct.addressable_data(0)


def shutdown() -> None:
    """Leave the job; safe to call twice or without a job. JAX cannot rebuild its backends, so a
    process joins at most one job.

    Normally every worker disconnects from the coordination service through JAX's shutdown
    barrier (rank 0 stops the service after it), which waits up to ``SHUTDOWN_TIMEOUT_S`` for
    all the workers. Called while an exception propagates (``try: ... finally: shutdown()``),
    the worker leaves without the barrier: the others, stuck in an all-reduce it will never
    join, would hold it there until the barrier timed out and the coordination service aborted
    the process, before its error is reported. It abandons its connection instead (JAX's exit
    handler then finds no job to shut down), and the other workers learn of its end from
    their closed gloo connections, or from its missing heartbeats within ``HEARTBEAT_TIMEOUT_S``.
    """
    global _joined, _left
    from jax._src import distributed as jax_distributed
    state = jax_distributed.global_state
    _joined = None
    if state.client is None and state.service is None:
        return
    _left = True
    if sys.exc_info()[0] is None:
        state.shutdown()
        return
    parts = [part for part in (state.preemption_sync_manager, state.client, state.service) if part is not None]
    for part in parts:  # never destroyed: their destructors would run the shutdown barrier after all
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(part))
    _abandoned.extend(parts)
    state.preemption_sync_manager = state.client = state.service = None
