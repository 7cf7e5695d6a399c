"""How ``tf.distribute.MultiWorkerMirroredStrategy`` describes a job, for the launcher
(:mod:`common.distributed`): ``TF_CONFIG``. Imports no framework (see :class:`common.contract.Launch`)."""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

from common.distributed import DistributedError

__all__ = ["ENGINE", "ENGINE_VARIABLES", "THREAD_VARIABLES", "job_size", "ports_needed", "worker_environments",
           "helper_processes", "listeners_beyond_loopback"]

#: What ``metrics.json`` records on CPUs (``distributed.ENGINE_GPU`` on GPUs).
ENGINE = "tf.distribute.MultiWorkerMirroredStrategy (collective ring over gRPC)"
#: ``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}``.
ENGINE_VARIABLES = ("TF_CONFIG",)

#: Besides ``OMP_NUM_THREADS``, none.
THREAD_VARIABLES = ()


def job_size(environ) -> int:
    if not environ.get("TF_CONFIG"):
        return 1
    try:
        cluster = json.loads(environ["TF_CONFIG"]).get("cluster", {})
    except (ValueError, AttributeError):
        raise DistributedError("TF_CONFIG is not a JSON object; see docs/distributed.md") from None
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def ports_needed(workers: int) -> int:
    """Every worker runs a gRPC server of its own."""
    return workers


def worker_environments(workers: int, host: str, ports: Sequence[int]) -> List[Dict[str, str]]:
    cluster = {"worker": [f"{host}:{ports[rank]}" for rank in range(workers)]}
    return [{"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": rank}})}
            for rank in range(workers)]


def helper_processes(workers: int, host: str, port: int) -> list:
    return []


def listeners_beyond_loopback(ports: Sequence[int]) -> List[Tuple[str, Optional[int]]]:
    """Each worker's gRPC server on its ``TF_CONFIG`` port, on every interface: TensorFlow binds
    ``[::]:port`` (or ``0.0.0.0:port``) whatever address ``TF_CONFIG`` gives, and has no setting
    for it (see docs/distributed.md for fencing it)."""
    return [("*", port) for port in ports]
