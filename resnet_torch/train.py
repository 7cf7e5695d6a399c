"""Training with PyTorch: the :class:`Trainer` that :mod:`common.training` drives, and the chapter's API."""
from __future__ import annotations

import time
import warnings
from typing import Dict, List, Mapping, Tuple

import numpy as np
import torch
from torch import nn

from common import contract, training
from common.backend import device_label
from common.heap import keep_freed_memory
from common.hparams import check_precision
from common.naming import trainable_parameter_names
from common.optim import MOMENTUM_PREFIX, STEP_STATE, WARMUP_START_FACTOR, Recipe, resolve_recipe
from common.spec import ResNetSpec

from . import kernels
from .data import to_tensor
from .model import architecture, canonical_variables, export_weights, import_weights, resnet

__all__ = ["try_gpu", "set_precision", "make_optimizer", "Trainer", "loss_and_gradients", "train", "evaluate",
           "train_ch6"]


def try_gpu(i=0):
    """Return gpu(i) if exists, otherwise return cpu()."""
    if torch.cuda.device_count() >= i + 1:
        return torch.device(f"cuda:{i}")
    return torch.device("cpu")


def set_precision(precision: str = "fp32", deterministic: bool = True, device=None) -> None:
    """PyTorch's process-wide switches for :data:`common.hparams.PRECISIONS` and determinism.

    TF32 rounds fp32 convolutions and matmuls to a 10-bit mantissa on Ampere and later GPUs;
    PyTorch allows it for cuDNN convolutions by default. ``fp32`` and ``bf16`` turn it off
    everywhere (bf16's float32 parts stay exact), ``tf32`` turns it on for both. On a GPU,
    ``deterministic`` asks for PyTorch's deterministic algorithms and cuDNN's (an operation
    without one raises instead of running) and no cuDNN autotuning; otherwise cuDNN may pick
    faster, non-deterministic kernels. A CPU run is deterministic either way.
    """
    check_precision(precision)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if device is not None and torch.device(device).type == "cuda":
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = False  # decided per input size by the Trainer


def make_optimizer(parameters, recipe: Recipe):
    """``(optimizer, scheduler)`` of ``recipe``: ``torch.optim.SGD`` and PyTorch's own schedulers,
    whose math :mod:`common.optim` writes down (``scheduler`` is None for a constant rate).

    cosine: ``LinearLR`` for the warm-up, then ``CosineAnnealingLR`` to zero (``SequentialLR``);
    onecycle: ``OneCycleLR`` without its momentum cycling, its ``pct_start`` putting the peak on
    step ``warmup_steps``; step: ``MultiStepLR``. Step the scheduler after every optimizer step.
    """
    schedule = recipe.schedule
    # foreach updates all tensors at once.
    optimizer = torch.optim.SGD(parameters, lr=schedule.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                                weight_decay=recipe.weight_decay, foreach=True)
    lr_scheduler = torch.optim.lr_scheduler
    if schedule.kind == "constant":
        return optimizer, None
    if schedule.kind == "step":
        return optimizer, lr_scheduler.MultiStepLR(optimizer, list(schedule.milestones), gamma=schedule.gamma)
    if schedule.kind == "onecycle":
        return optimizer, lr_scheduler.OneCycleLR(optimizer, schedule.lr, total_steps=schedule.total_steps,
                                                  pct_start=schedule.onecycle_pct_start, anneal_strategy="cos",
                                                  cycle_momentum=False)
    warmup = schedule.warmup_steps
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=schedule.total_steps - warmup, eta_min=0.0)
    if not warmup:
        return optimizer, cosine
    linear = lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0, total_iters=warmup)
    return optimizer, lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


class Trainer(contract.Trainer):
    """One network, its optimizer, schedule and loss on one device; see :class:`common.contract.Trainer`.

    Memory layout: a network the Trainer builds trains in NCHW or ``channels_last`` memory, one more
    autotuned choice (:func:`resnet_torch.kernels.choose_memory_format`), made on the first batch
    (:meth:`to_batch`): the parameters, the optimizer's state and every batch from then on are laid
    out in :attr:`memory_format`, the batches once, as they arrive. Shapes, weights, checkpoints
    and results are the same either way. A given ``net`` trains in NCHW batches, as the
    chapter's does. Eager mode: ``torch.compile`` was slower here on the CPU.

    ``precision`` (:data:`common.hparams.PRECISIONS`): ``fp32`` exact; ``tf32`` a GPU's TF32
    convolutions and matmuls (a CPU computes fp32); ``bf16`` ``torch.autocast`` to bfloat16 around
    the forward pass and the loss: convolutions and the linear layer in bfloat16, the weights,
    their gradients, the SGD update and BatchNorm's statistics in float32. A network the Trainer
    builds for bf16 has plain layers (the fast paths of :mod:`resnet_torch.kernels` are fp32
    code). ``deterministic``: see :func:`set_precision`; the switches are process-wide, so the
    last Trainer built sets them.
    """

    backend = "torch"
    framework = f"PyTorch {torch.__version__.split('+')[0]}"

    def __init__(self, net=None, *, arch="resnet18", style="d2l", num_classes=10, in_channels=1, lr=0.05,
                 device=None, precision="fp32", deterministic=True, recipe=None):
        self.precision, self.deterministic = check_precision(precision), bool(deterministic)
        self.recipe = resolve_recipe(lr, recipe)
        self.device = self.resolve_device(device)
        self.device_name = device_label(self.device.type, self.device.index or 0)
        set_precision(self.precision, self.deterministic, self.device)
        if self.device.type == "cpu":  # large tensors' pages reused from step to step, not faulted in anew
            keep_freed_memory()
        #: The memory layout of the network and its batches; ``None`` until the first batch chooses it.
        self.memory_format = None if net is None else torch.contiguous_format
        if net is None:
            net = resnet(arch, num_classes, in_channels, style, plain=True if precision == "bf16" else None)
        self.net = net.to(self.device)
        self._autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        # Mean over the batch, as in the chapter; the recipe's smoothing in training only.
        self.loss = nn.CrossEntropyLoss(label_smoothing=self.recipe.label_smoothing)
        self.eval_loss = nn.CrossEntropyLoss()
        self.optimizer, self.scheduler = make_optimizer(self.net.parameters(), self.recipe)
        self.steps = 0

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

    def use_memory_format(self, memory_format: torch.memory_format) -> None:
        """Lay out the network, the optimizer's state and from now on the batches in ``memory_format``
        (``torch.contiguous_format`` or ``torch.channels_last``), whatever the autotuning would choose."""
        kernels.to_memory_format(self.net, self.optimizer, memory_format)
        self.memory_format = memory_format

    def _choose_memory_format(self, shape) -> torch.memory_format:
        """The layout to train in on batches of ``shape``: :func:`resnet_torch.kernels.choose_memory_format`'s."""
        return kernels.choose_memory_format(self.net, self.architecture()[0].label, shape, self.precision,
                                            self._autocast)

    def to_batch(self, images, labels) -> Tuple[torch.Tensor, torch.Tensor]:
        """NCHW NumPy (or tensors from :mod:`resnet_torch.data`) -> tensors on the device, the
        images in :attr:`memory_format` (chosen here, on the first batch)."""
        if self.device.type == "cuda" and not self.deterministic:
            # cuDNN's autotuning pays at 96 x 96 and cost time at 28 x 28 (H200, issue 13).
            torch.backends.cudnn.benchmark = images.shape[-1] >= 64
        if self.memory_format is None:
            self.use_memory_format(self._choose_memory_format(tuple(images.shape)))
        if isinstance(images, torch.Tensor):
            images = images.to(self.device, non_blocking=True)
        else:
            images = to_tensor(images, self.device)
        images = images.contiguous(memory_format=self.memory_format)  # no copy for one channel
        if isinstance(labels, torch.Tensor):
            labels = labels.to(self.device, non_blocking=True)
        else:
            labels = to_tensor(labels, self.device)
        return images, labels

    def train_step(self, x, y):
        """One SGD step; (loss summed over the batch, number correct) as device scalars."""
        self.net.train()
        with self._autocast:
            logits = self.net(x)
        loss = self.loss(logits.float(), y)  # the loss in float32 (a no-op unless bf16)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.update()
        with torch.no_grad():
            return loss.detach() * y.shape[0], (logits.argmax(dim=1) == y).sum()

    def update(self) -> None:
        """The optimizer's step with the gradients in place, then the schedule's."""
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps += 1

    def eval_step(self, x, y):
        """(loss summed over the batch, number correct) in eval mode, as device scalars; with the
        recipe's ``tta="flip"`` the logits are the mean of the image's and its mirror image's."""
        self.net.eval()
        with torch.inference_mode():
            with self._autocast:
                logits = self.net(x).float()
                if self.recipe.tta == "flip":
                    logits = (logits + self.net(torch.flip(x, dims=[3])).float()) / 2
            return self.eval_loss(logits, y) * y.shape[0], (logits.argmax(dim=1) == y).sum()

    def _trainable(self) -> Dict[str, torch.Tensor]:
        variables = canonical_variables(self.net)
        return {name: variables[name] for name in trainable_parameter_names(*self.architecture())}

    def export_optimizer_state(self) -> Dict[str, np.ndarray]:
        """``step`` and each parameter's ``momentum_buffer`` (torch's own: the canonical form)."""
        state = {STEP_STATE: np.int64(self.steps)}
        if self.recipe.momentum:
            for name, parameter in self._trainable().items():
                buffer = self.optimizer.state.get(parameter, {}).get("momentum_buffer")
                state[MOMENTUM_PREFIX + name] = (np.zeros(tuple(parameter.shape)) if buffer is None else
                                                 buffer.detach().cpu().double().contiguous().numpy())
        return state

    def import_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        """A fresh optimizer and scheduler, stepped to ``state["step"]`` (the rates computed as an
        uninterrupted run computes them), with the given momentum buffers."""
        self.optimizer, self.scheduler = make_optimizer(self.net.parameters(), self.recipe)
        self.steps = int(state[STEP_STATE])
        if self.scheduler is not None:
            with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": on purpose
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(self.steps):
                    self.scheduler.step()
        if self.recipe.momentum:
            for name, parameter in self._trainable().items():
                buffer = state.get(MOMENTUM_PREFIX + name)
                # zeros_like and empty_like keep the parameter's memory layout.
                self.optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter) if buffer is None \
                    else torch.empty_like(parameter).copy_(torch.as_tensor(np.asarray(buffer), dtype=parameter.dtype))

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

    def reset_peak_memory(self) -> bool:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return True
        return super().reset_peak_memory()


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
