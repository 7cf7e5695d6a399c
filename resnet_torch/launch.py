"""How ``torch.distributed`` describes a job, for the launcher (:mod:`common.distributed`): torchrun's
variables. Imports no framework (see :class:`common.contract.Launch`)."""
from __future__ import annotations

from typing import Dict, List, Sequence

from common.distributed import integer_variable, is_loopback, loopback_interface

__all__ = ["ENGINE", "ENGINE_VARIABLES", "THREAD_VARIABLES", "job_size", "ports_needed", "worker_environments",
           "helper_processes", "listeners_beyond_loopback"]

#: What ``metrics.json`` records: gloo's on a CPU (``DistributedTrainer.engine`` says ``nccl`` on GPUs).
ENGINE = "torch.distributed (gloo)"
#: torchrun's variables: rank 0's TCP store at ``MASTER_ADDR:MASTER_PORT``, the worker's rank and
#: the job's size, the worker's index on its host and the host's worker count; and gloo's interface.
ENGINE_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                    "GLOO_SOCKET_IFNAME")

#: Besides ``OMP_NUM_THREADS``, none.
THREAD_VARIABLES = ()


def job_size(environ) -> int:
    return integer_variable(environ, "WORLD_SIZE") if "RANK" in environ and "WORLD_SIZE" in environ else 1


def ports_needed(workers: int) -> int:
    return 1


def worker_environments(workers: int, host: str, ports: Sequence[int]) -> List[Dict[str, str]]:
    """torchrun's variables; on loopback also gloo's interface, which gloo otherwise takes from the
    host name (an address other machines may reach)."""
    interface = {"GLOO_SOCKET_IFNAME": loopback_interface()} if is_loopback(host) else {}
    return [{"MASTER_ADDR": host, "MASTER_PORT": str(ports[0]), "RANK": str(rank), "WORLD_SIZE": str(workers),
             "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(workers), **interface} for rank in range(workers)]


def helper_processes(workers: int, host: str, port: int) -> list:
    return []


def listeners_beyond_loopback(ports: Sequence[int]) -> list:
    return []
