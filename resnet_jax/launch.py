"""How ``jax.distributed`` describes a job, for the launcher (:mod:`common.distributed`): the
coordinator's address, the number of processes and this one's id. Imports no framework (see
:class:`common.contract.Launch`)."""
from __future__ import annotations

from typing import Dict, List, Sequence

from common.distributed import integer_variable

__all__ = ["ENGINE", "ENGINE_VARIABLES", "THREAD_VARIABLES", "job_size", "ports_needed", "worker_environments",
           "helper_processes"]

ENGINE = "jax.distributed (gloo)"
ENGINE_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")

#: Besides ``OMP_NUM_THREADS``, none.
THREAD_VARIABLES = ()


def job_size(environ) -> int:
    return integer_variable(environ, "JAX_NUM_PROCESSES") if "JAX_COORDINATOR_ADDRESS" in environ else 1


def ports_needed(workers: int) -> int:
    """The coordinator's."""
    return 1


def worker_environments(workers: int, host: str, ports: Sequence[int]) -> List[Dict[str, str]]:
    return [{"JAX_COORDINATOR_ADDRESS": f"{host}:{ports[0]}", "JAX_NUM_PROCESSES": str(workers),
             "JAX_PROCESS_ID": str(rank)} for rank in range(workers)]


def helper_processes(workers: int, host: str, port: int) -> list:
    return []
