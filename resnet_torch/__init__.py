"""ResNet-18 on Fashion-MNIST with PyTorch (see :mod:`common.backend`)."""
import os

# Deterministic cuBLAS (Trainer(deterministic=True) on a GPU) needs this before cuBLAS starts;
# it only sizes cuBLAS's workspaces, so it is set here, before anything touches CUDA.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from . import kernels  # noqa: F401
from .model import *  # noqa: F401,F403
from .data import *  # noqa: F401,F403
from .train import *  # noqa: F401,F403
from . import distributed  # noqa: F401  (data-parallel training: resnet_torch.distributed)
