"""ResNet-18 on Fashion-MNIST with PyTorch (the contract: :mod:`common.contract`)."""
import os

# Deterministic cuBLAS (Trainer(deterministic=True) on a GPU) needs this before cuBLAS starts;
# it only sizes cuBLAS's workspaces, so it is set here, before anything touches CUDA.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from common.backend import lazy_exports  # noqa: E402

# The names of model, data and train, and the framework with them, load on first use (PEP 562):
# resnet_torch.launch, which the launcher needs, imports without the framework.
__getattr__, __dir__ = lazy_exports(__name__)
