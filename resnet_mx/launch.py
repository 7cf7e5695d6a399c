"""How MXNet's ``dist_sync`` kvstore describes a job, for the launcher (:mod:`common.distributed`):
ps-lite's ``DMLC_*`` variables, and a scheduler and a server process beside the workers. Imports
no framework (see :class:`common.contract.Launch`)."""
from __future__ import annotations

import sys
from typing import Dict, List, Sequence, Tuple

from common.distributed import DistributedError, integer_variable

__all__ = ["ENGINE", "ENGINE_VARIABLES", "THREAD_VARIABLES", "job_size", "ports_needed", "worker_environments",
           "helper_processes", "listeners_beyond_loopback"]

ENGINE = "MXNet kvstore dist_sync (ps-lite)"
#: The process's role (worker, server or scheduler), the scheduler's address, the job's numbers
#: of workers and servers.
ENGINE_VARIABLES = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_WORKER", "DMLC_NUM_SERVER")

#: Besides ``OMP_NUM_THREADS``: MXNet's own cap on its operators' threads, which wins over it (and
#: which importing ``resnet_mx`` sets to the process's cores: the launcher's, not a worker's share).
THREAD_VARIABLES = ("MXNET_OMP_MAX_THREADS",)


def job_size(environ) -> int:
    role = environ.get("DMLC_ROLE")
    if role is None:
        return 1
    if role != "worker":
        raise DistributedError(f"DMLC_ROLE={role}: MXNet's {role} is not a training process; start it with "
                               f"python -c 'import mxnet' (see docs/distributed.md)")
    return integer_variable(environ, "DMLC_NUM_WORKER")


def ports_needed(workers: int) -> int:
    """The scheduler's."""
    return 1


def _dmlc(host: str, port: int, workers: int) -> Dict[str, str]:
    return {"DMLC_PS_ROOT_URI": host, "DMLC_PS_ROOT_PORT": str(port), "DMLC_NUM_WORKER": str(workers),
            "DMLC_NUM_SERVER": "1", "DMLC_NODE_HOST": host}


def worker_environments(workers: int, host: str, ports: Sequence[int]) -> List[Dict[str, str]]:
    return [dict(_dmlc(host, ports[0], workers), DMLC_ROLE="worker") for _ in range(workers)]


def helper_processes(workers: int, host: str, port: int) -> List[Tuple[str, List[str], Dict[str, str]]]:
    """ps-lite's scheduler and one parameter server (importing mxnet with ``DMLC_ROLE`` set runs
    them); they only route and sum, so one thread each leaves the cores to the workers."""
    command = [sys.executable, "-c", "import mxnet"]
    return [(f"MXNet {role}", command, dict(_dmlc(host, port, workers), DMLC_ROLE=role, OMP_NUM_THREADS="1"))
            for role in ("scheduler", "server")]


def listeners_beyond_loopback(ports: Sequence[int]) -> list:
    return []
