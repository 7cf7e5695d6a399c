"""ResNet-18 on Fashion-MNIST with PyTorch (see :mod:`common.backend`)."""
from . import kernels  # noqa: F401
from .model import *  # noqa: F401,F403
from .data import *  # noqa: F401,F403
from .train import *  # noqa: F401,F403
