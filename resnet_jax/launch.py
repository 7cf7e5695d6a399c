"""How ``jax.distributed`` describes a job, for the launcher (:mod:`common.distributed`): the
coordinator's address, the number of processes and this one's id. Imports no framework (see
:class:`common.contract.Launch`)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from common.distributed import host_address, integer_variable, is_loopback

__all__ = ["ENGINE", "ENGINE_VARIABLES", "THREAD_VARIABLES", "job_size", "ports_needed", "worker_environments",
           "helper_processes", "listeners_beyond_loopback"]

ENGINE = "jax.distributed (gloo)"
#: The coordinator's address, the number of processes and this one's id; and the address the
#: coordinator binds (JAX's own variable; resnet_jax.distributed defaults it to the coordinator's).
ENGINE_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_COORDINATOR_BIND_ADDRESS")

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


def listeners_beyond_loopback(ports: Sequence[int]) -> List[Tuple[str, Optional[int]]]:
    """gloo's connections between the workers (XLA's CPU collectives), on the address this
    machine's host name resolves to, any port: JAX offers no setting for gloo's interface (its
    coordination service binds the coordinator address, see resnet_jax.distributed). Where the host
    name resolves to a loopback address, as on most single machines, nothing listens beyond it."""
    address = host_address()
    return [] if address is None or is_loopback(address) else [(address, None)]
