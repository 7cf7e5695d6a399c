"""ResNet-18 on Fashion-MNIST with JAX and Flax linen (the contract: :mod:`common.contract`)."""
import os

# Deterministic GPU kernels (Trainer(deterministic=True) on a GPU): XLA reads its flags once, when
# JAX starts its backend, so the switch is added here, before anything imports JAX, unless
# XLA_FLAGS already names it (--xla_gpu_deterministic_ops=false there lets XLA pick faster,
# non-deterministic GPU kernels). A CPU ignores it: XLA on the CPU is deterministic anyway.
if "--xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()

from common.backend import lazy_exports  # noqa: E402

# The names of model, data and train, and the framework with them, load on first use (PEP 562):
# resnet_jax.launch, which the launcher needs, imports without the framework.
__getattr__, __dir__ = lazy_exports(__name__)
