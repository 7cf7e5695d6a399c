"""Data-parallel training on ``torch.distributed``: one process per worker, gloo on CPUs, NCCL on GPUs.

The engine is PyTorch's own: a process group (:func:`torch.distributed.init_process_group`) and
:class:`torch.nn.parallel.DistributedDataParallel`, which averages the gradients with the group's
all-reduce while the backward pass runs.

A job is described by torchrun's environment variables, read by :func:`initialize`:
``MASTER_ADDR`` and ``MASTER_PORT`` (where rank 0 listens for the rendezvous: a TCP store),
``RANK`` (0 .. ``WORLD_SIZE`` - 1, unique in the job), ``WORLD_SIZE`` (number of workers),
``LOCAL_RANK`` (the worker's index on its host: its GPU ``cuda:LOCAL_RANK``) and
``LOCAL_WORLD_SIZE``. ``resnet-fmnist train --workers N`` sets them over loopback (and
``GLOO_SOCKET_IFNAME`` to the loopback interface); across hosts set them by hand (one
``MASTER_ADDR:MASTER_PORT`` reachable from every host), or start the command under ``torchrun
--nnodes H --nproc-per-node N --rdzv-endpoint ...``, which sets them too. Rank 0's store listens on
``MASTER_ADDR`` only (:func:`_store`; torchrun's agent store is torchrun's). Gloo picks its network
interface from the host name unless ``GLOO_SOCKET_IFNAME`` names one (NCCL: ``NCCL_SOCKET_IFNAME``):
on a multi-host job, set it to the interface the hosts reach each other on.

One training step (:meth:`DistributedTrainer.train_step`, the oracle's ``sharded_sgd_step``) on
this worker's shard of the global batch: forward and backward in train mode through the DDP
wrapper (mean cross-entropy over the shard; BatchNorm normalises with the shard's own statistics
and updates its running statistics locally; DDP does not broadcast buffers), the gradients
averaged over the workers by DDP's all-reduce, the same plain-SGD update on every worker; then one
all-reduce (sum) of the BatchNorm running means and variances, divided by the number of workers,
together with the shard's ``(loss sum, number correct)``, so every worker holds the mean of the
workers' running statistics and returns the global batch's sums. Evaluation, export and import
are the local :class:`~resnet_torch.train.Trainer`'s: every worker holds the same weights.
"""
from __future__ import annotations

import datetime
import inspect
import os
import socket
from typing import Optional, Tuple

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import kernels
from .launch import ENGINE  # noqa: F401  (the contract's: this module's too)
from .train import Trainer

__all__ = ["ENGINE", "initialize", "DistributedTrainer", "shutdown"]


#: Seconds the rendezvous and any one collective may wait for the other workers before raising
#: (a worker that died, or never started). A dead peer's closed connection fails at once; this
#: bounds the wait for one that hangs.
TIMEOUT_S = 300

#: The environment torchrun sets and :func:`initialize` reads (``LOCAL_RANK`` only on a GPU).
REQUIRED_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")

#: DDP's keyword for "no buffer broadcast in forward": ``broadcast_buffers=False`` until PyTorch
#: 2.13 deprecated it for ``forward_sync_buffers=False`` (which still syncs at construction, harmless
#: here: every worker imports the same weights afterwards).
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
                   else {"broadcast_buffers": False})

_job: Optional[Tuple[int, int, str, torch.device]] = None  # (rank, world_size, engine, device) once joined


def _engine_name(process_group_backend: str) -> str:
    return f"torch.distributed ({process_group_backend})"


def _env_int(name: str, low: int = 0, high: Optional[int] = None) -> int:
    value = os.environ.get(name)
    if value is None or not value.strip():
        raise RuntimeError(f"torch.distributed: the environment variable {name} is not set "
                           f"(a job needs {', '.join(REQUIRED_ENV)}; torchrun sets them)")
    try:
        number = int(value)
    except ValueError:
        raise RuntimeError(f"torch.distributed: {name}={value!r} is not an integer") from None
    if number < low or (high is not None and number > high):
        limit = f"{low}..{high}" if high is not None else f">= {low}"
        raise RuntimeError(f"torch.distributed: {name}={number} is out of range ({limit})")
    return number


def _job_device(device) -> torch.device:
    """The worker's device. A GPU without an index (or none given where CUDA exists) is
    ``cuda:LOCAL_RANK`` among the GPUs this process sees (torchrun's convention: every GPU of
    the host visible), or the one GPU it sees (the launcher's: ``CUDA_VISIBLE_DEVICES`` one per
    worker)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, str) and device.strip().lower() in ("cuda", "gpu"):
        local_rank, count = _env_int("LOCAL_RANK"), torch.cuda.device_count()
        if local_rank >= count > 1:
            raise RuntimeError(f"torch.distributed: LOCAL_RANK={local_rank}, but PyTorch sees {count} GPUs on this "
                               f"host: start at most {count} workers per host, or use --device cpu")
        device = f"cuda:{local_rank if count > 1 else 0}"
    return Trainer.resolve_device(device)


def initialize(device=None) -> Tuple[int, int]:
    """Join the job the environment describes; returns ``(rank, world_size)``.

    ``device``: as :class:`~resnet_torch.train.Trainer` takes it; ``None`` or ``"cuda"`` on a GPU
    machine means ``cuda:LOCAL_RANK`` and NCCL, a CPU gloo. Idempotent: a second call returns the
    same (the process group is not rebuilt). Raises a one-line :class:`RuntimeError` naming the
    variable when the environment is incomplete.
    """
    global _job
    if _job is not None and dist.is_initialized():
        return _job[0], _job[1]
    if dist.is_initialized():  # joined by someone else (a user's own init_process_group)
        resolved = _job_device(device)
        _job = (dist.get_rank(), dist.get_world_size(), _engine_name(dist.get_backend()), resolved)
        return _job[0], _job[1]
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    for name in REQUIRED_ENV:
        if not os.environ.get(name, "").strip():
            raise RuntimeError(f"torch.distributed: the environment variable {name} is not set "
                               f"(a job needs {', '.join(REQUIRED_ENV)}; torchrun sets them)")
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0, world_size - 1)
    _env_int("MASTER_PORT", 1, 65535)  # torchrun --master-port 0 hands its workers port 0: they hang
    resolved = _job_device(device)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
        backend_name = "nccl"
    else:
        backend_name = "gloo"
    timeout = datetime.timedelta(seconds=TIMEOUT_S)
    store = _store(rank, world_size, timeout)
    if store is None:  # torchrun's agent holds the store
        dist.init_process_group(backend_name, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timeout)
    else:
        dist.init_process_group(backend_name, store=store, rank=rank, world_size=world_size, timeout=timeout)
    _job = (rank, world_size, _engine_name(backend_name), resolved)
    return rank, world_size


def _store(rank: int, world_size: int, timeout: datetime.timedelta):
    """The job's rendezvous store (``torch.distributed.TCPStore``), whose server, rank 0's, listens
    on ``MASTER_ADDR:MASTER_PORT`` only; None under torchrun's agent, whose store its workers join.

    PyTorch's TCPStore server binds every interface (``[::]``) unless it is handed a socket that
    already listens (``master_listen_fd``): so rank 0 binds one to the address the job names (the
    loopback address on one machine) and hands it over.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return None
    host, port = os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 1, 65535)
    if rank != 0:
        return dist.TCPStore(host, port, world_size, False, timeout)
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(max(128, world_size))
    except OSError as error:
        raise RuntimeError(f"torch.distributed: rank 0 cannot listen on MASTER_ADDR:MASTER_PORT = {host}:{port} "
                           f"({error.strerror or error}); MASTER_ADDR must be an address of rank 0's machine and "
                           f"the port free") from None
    # The store owns the socket from here (detach: Python must not close it under the store).
    return dist.TCPStore(host, port, world_size, True, timeout, master_listen_fd=listener.detach())


def _running_statistics(net: nn.Module):
    """The BatchNorm running means and variances of ``net``, in module order."""
    buffers = []
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            buffers += [module.running_mean, module.running_var]
    return buffers


class DistributedTrainer(Trainer):
    """A :class:`~resnet_torch.train.Trainer` that is one worker of a data-parallel job.

    Constructed exactly like ``Trainer`` (same keywords); joins the job first (:func:`initialize`),
    so every worker must construct one (DDP's constructor is itself a collective). ``net`` stays the
    plain network (evaluation, export and import are local); ``ddp`` is its DDP wrapper, which
    the training step runs. Attributes ``rank``, ``world_size`` and ``engine``.
    """

    def __init__(self, net=None, *, arch="resnet18", style="d2l", num_classes=10, in_channels=1, lr=0.05,
                 device=None, precision="fp32", deterministic=True, recipe=None):
        self.rank, self.world_size = initialize(device)
        self.engine = _job[2]
        super().__init__(net, arch=arch, style=style, num_classes=num_classes, in_channels=in_channels, lr=lr,
                         device=_job[3], precision=precision, deterministic=deterministic, recipe=recipe)
        #: The DDP wrapper, made once the memory layout is known: DDP lays out its gradient buckets
        #: as the parameters are then, so the layout is fixed from there on.
        self.ddp = None
        self._statistics = _running_statistics(self.net)
        if self.memory_format is not None:  # a given network: NCHW, as built
            self._wrap()

    def _wrap(self) -> None:
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # No buffer broadcast before each forward pass: each worker's BatchNorm uses and updates its
        # own statistics; train_step averages the running ones after the update.
        self.ddp = DistributedDataParallel(self.net, device_ids=device_ids, **_NO_BUFFER_SYNC)

    def use_memory_format(self, memory_format: torch.memory_format) -> None:
        """As :meth:`Trainer.use_memory_format`, then DDP wraps the network (a collective): DDP lays out
        its gradient buckets as the parameters are then, so the layout is fixed from there on."""
        if self.ddp is not None and memory_format != self.memory_format:
            raise ValueError("a data-parallel worker's memory layout is fixed once DDP wraps its network (at the "
                             "first batch); choose it before, or with RESNET_FAST_PATHS=fast|native")
        super().use_memory_format(memory_format)
        if self.ddp is None:
            self._wrap()

    def _choose_memory_format(self, shape) -> torch.memory_format:
        """Worker 0's autotuned choice on its shard, broadcast: every worker must lay out DDP's
        gradient buckets alike."""
        choice = [None]
        if self.rank == 0:
            chosen = super()._choose_memory_format(shape)
            choice = [next(name for name, value in kernels.MEMORY_FORMATS.items() if value == chosen)]
        dist.broadcast_object_list(choice, src=0, device=self.device if self.device.type == "cuda" else None)
        return kernels.MEMORY_FORMATS[choice[0]]

    def train_step(self, x, y):
        """One SGD step on this worker's shard; the global batch's (loss sum, number correct) as
        device scalars, the same on every worker."""
        self.ddp.train()
        with self._autocast:
            logits = self.ddp(x)
        loss = self.loss(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces the gradients (mean over workers) during the backward pass
        self.update()
        with torch.no_grad():
            local = [loss.detach().reshape(1) * y.shape[0], (logits.argmax(dim=1) == y).sum().reshape(1).float()]
            flat = torch.cat([t.reshape(-1).float() for t in self._statistics] + local)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for tensor in self._statistics:
                count = tensor.numel()
                tensor.copy_(flat[offset:offset + count].view_as(tensor) / self.world_size)
                offset += count
            return flat[offset], flat[offset + 1]


def shutdown() -> None:
    """Leave the job (destroy the process group); safe to call twice, or without a job."""
    global _job
    _job = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
