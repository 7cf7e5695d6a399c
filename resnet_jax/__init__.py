"""ResNet-18 on Fashion-MNIST with JAX and Flax linen (see :mod:`common.backend`)."""
import os

# Deterministic GPU kernels (Trainer(deterministic=True) on a GPU): XLA reads its flags once, when
# JAX starts its backend, so the switch is added here, before anything imports JAX, unless
# XLA_FLAGS already names it (--xla_gpu_deterministic_ops=false there lets XLA pick faster,
# non-deterministic GPU kernels). A CPU ignores it: XLA on the CPU is deterministic anyway.
if "--xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()

from . import kernels  # noqa: E402,F401
from .model import *  # noqa: E402,F401,F403
from .data import *  # noqa: E402,F401,F403
from .train import *  # noqa: E402,F401,F403
from . import distributed  # noqa: E402,F401  (data-parallel training: resnet_jax.distributed)
