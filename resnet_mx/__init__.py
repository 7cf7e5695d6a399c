"""ResNet-18 on Fashion-MNIST with MXNet Gluon (the contract: :mod:`common.contract`)."""
import os
import sys
import warnings

from common.backend import physical_cpu_cores

# MXNet 1.x gives each operator half the CPUs it sees on x86 (it assumes two hyper-threads
# per core), so without hyper-threading half the cores sit idle: matrix products and
# convolutions run at half speed. Give it the physical cores, unless the user chose a number
# (OMP_NUM_THREADS or MXNET_OMP_MAX_THREADS). MXNet reads this once, at its first import.
if "OMP_NUM_THREADS" not in os.environ and "MXNET_OMP_MAX_THREADS" not in os.environ:
    _cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if "mxnet" not in sys.modules:
        os.environ["MXNET_OMP_MAX_THREADS"] = str(physical_cpu_cores())
    elif physical_cpu_cores() != max(1, _cpus // 2):
        warnings.warn(f"mxnet was imported before resnet_mx, so its operators use half of the {_cpus} CPUs; "
                      f"import resnet_mx first or set MXNET_OMP_MAX_THREADS={physical_cpu_cores()}",
                      RuntimeWarning, stacklevel=2)

from common.backend import lazy_exports  # noqa: E402

# The names of model, data and train, and the framework with them, load on first use (PEP 562):
# resnet_mx.launch, which the launcher needs, imports without the framework.
__getattr__, __dir__ = lazy_exports(__name__)
