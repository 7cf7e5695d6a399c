"""ResNet-18 on Fashion-MNIST with MXNet Gluon (see :mod:`common.backend`)."""
from .model import *  # noqa: F401,F403
from .data import *  # noqa: F401,F403
from .train import *  # noqa: F401,F403
