"""Training with PyTorch: the :class:`Trainer` that :mod:`common.training` drives, and the chapter's API."""
from __future__ import annotations

import time
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from common import backend, training
from common.backend import device_label
from common.spec import ResNetSpec, trainable_parameter_names

from .data import to_tensor
from .model import architecture, canonical_variables, export_weights, import_weights, resnet

__all__ = ["try_gpu", "Trainer", "loss_and_gradients", "train", "evaluate", "train_ch6"]


def try_gpu(i=0):
    """Return gpu(i) if exists, otherwise return cpu()."""
    if torch.cuda.device_count() >= i + 1:
        return torch.device(f"cuda:{i}")
    return torch.device("cpu")


def _full_precision() -> None:
    # TF32 rounds fp32 convolutions and matmuls to a 10-bit mantissa on Ampere and later GPUs;
    # off, so every backend computes in the same fp32 (PyTorch enables it for cuDNN by default).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


class Trainer(backend.Trainer):
    """One network, its SGD optimizer and loss on one device; see :class:`common.backend.Trainer`.

    Plain NCHW memory and eager mode: channels_last and ``torch.compile`` were slower here on the CPU.
    """

    backend = "torch"
    framework = f"PyTorch {torch.__version__.split('+')[0]}"

    def __init__(self, net=None, *, arch="resnet18", style="d2l", num_classes=10, in_channels=1, lr=0.05,
                 device=None):
        _full_precision()
        self.device = self.resolve_device(device)
        self.device_name = device_label(self.device.type, self.device.index or 0)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        self.net = (resnet(arch, num_classes, in_channels, style) if net is None else net).to(self.device)
        self.loss = nn.CrossEntropyLoss()  # mean over the batch, as in the chapter
        # No momentum, no weight decay: the chapter's plain SGD. foreach updates all tensors at once.
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=lr, foreach=True)

    @staticmethod
    def resolve_device(device) -> torch.device:
        """``None`` (the first GPU if any, else the CPU), a torch.device, or "cpu" / "cuda[:N]" / "gpu[:N]"."""
        if device is None:
            return try_gpu()
        if isinstance(device, torch.device):
            resolved = device
        else:
            text = str(device).strip().lower()
            if text.startswith("gpu"):
                text = "cuda" + text[3:]
            try:
                resolved = torch.device(text)
            except RuntimeError:
                raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
        if resolved.type == "cuda":
            index = 0 if resolved.index is None else resolved.index
            if index >= torch.cuda.device_count():
                raise ValueError(f"device {device!r} is not available: PyTorch sees {torch.cuda.device_count()} "
                                 "CUDA device(s); use --device cpu")
            return torch.device(f"cuda:{index}")
        if resolved.type != "cpu":
            raise ValueError(f"device {device!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")
        return resolved

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def to_batch(self, images, labels) -> Tuple[torch.Tensor, torch.Tensor]:
        """NCHW NumPy (or tensors from :mod:`resnet_torch.data`) -> tensors on the device."""
        if isinstance(images, torch.Tensor):
            images = images.to(self.device, non_blocking=True)
        else:
            images = to_tensor(images, self.device)
        if isinstance(labels, torch.Tensor):
            labels = labels.to(self.device, non_blocking=True)
        else:
            labels = to_tensor(labels, self.device)
        return images, labels

    def train_step(self, x, y):
        """One SGD step; (loss summed over the batch, number correct) as device scalars."""
        self.net.train()
        logits = self.net(x)
        loss = self.loss(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            return loss.detach() * y.shape[0], (logits.argmax(dim=1) == y).sum()

    def eval_step(self, x, y):
        """(loss summed over the batch, number correct) in eval mode, as device scalars."""
        self.net.eval()
        with torch.inference_mode():
            logits = self.net(x)
            return self.loss(logits, y) * y.shape[0], (logits.argmax(dim=1) == y).sum()

    def to_host(self, values) -> List[float]:
        """Python floats; the one place that waits for the device (a single transfer)."""
        if not values:
            return []
        return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values]).cpu().tolist()

    def export_weights(self) -> Dict[str, np.ndarray]:
        return export_weights(self.net)

    def import_weights(self, weights) -> None:
        import_weights(self.net, weights)

    def architecture(self) -> Tuple[ResNetSpec, int, int]:
        return architecture(self.net)

    def matmul_gflops(self, size: int = 2048, repeats: int = 5) -> float:
        """PyTorch's own fp32 ``size x size`` matrix multiply on the device, in GFLOP/s (bench's peak)."""
        a = torch.rand(size, size, device=self.device)
        b = torch.rand(size, size, device=self.device)
        torch.mm(a, b).sum().item()  # warm-up, and wait for it
        start = time.perf_counter()
        for _ in range(repeats):
            c = torch.mm(a, b)
        c.sum().item()
        return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9

    def peak_memory_bytes(self):
        """Peak device memory on a GPU; ``None`` on the CPU (bench then reports the process's)."""
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None


def loss_and_gradients(net, images, labels) -> Tuple[float, Dict[str, np.ndarray]]:
    """Mean softmax cross-entropy of a train-mode forward pass and its gradient per canonical name.

    Like a training step's first half: batch statistics (running ones updated), no update.
    """
    device = next(net.parameters()).device
    was_training = net.training
    net.train()
    try:
        variables = canonical_variables(net)
        trainable = {name: variables[name] for name in trainable_parameter_names(*architecture(net))}
        logits = net(to_tensor(np.asarray(images, np.float32), device))
        loss = nn.CrossEntropyLoss()(logits, to_tensor(np.asarray(labels), device))
        gradients = torch.autograd.grad(loss, list(trainable.values()))
    finally:
        net.train(was_training)
    return loss.item(), {name: g.detach().cpu().contiguous().numpy() for name, g in zip(trainable, gradients)}


def train(**kwargs):
    """:func:`common.training.train` with PyTorch (same options, same history)."""
    return training.train(Trainer, **kwargs)


def evaluate(**kwargs):
    """:func:`common.training.evaluate` with PyTorch."""
    return training.evaluate(Trainer, **kwargs)


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device=None):
    """Train a model with a GPU (defined in Chapter 6): :func:`common.training.train_ch6` with PyTorch."""
    return training.train_ch6(Trainer, net, train_iter, test_iter, num_epochs, lr, device)
