"""The chapter's own PyTorch code, kept only as the baseline of ``resnet-fmnist bench --reference``.

``Residual``, the ``nn.Sequential`` of b1..b5 and the training step are the book's, unmodified:
d2l-en ``chapter_convolutional-modern/resnet.md`` (PyTorch tab) and ``train_ch6`` of
``d2l/torch.py`` (Xavier-uniform re-initialisation, ``torch.optim.SGD``, ``nn.CrossEntropyLoss``,
``d2l.accuracy`` turning the count into a Python float every step). :class:`ReferenceTrainer`
only wraps them in the Trainer contract :mod:`common.bench` drives. Nothing else uses this module.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.backend import device_label
from common.spec import ResNetSpec, get_spec

from .model import export_weights, import_weights
from .train import Trainer, set_precision

__all__ = ["ReferenceTrainer"]


class Residual(nn.Module):  #@save
    """The Residual block of ResNet models."""
    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk


def chapter_net():
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    return nn.Sequential(b1, b2, b3, b4, b5,
                         nn.AdaptiveAvgPool2d((1, 1)),
                         nn.Flatten(), nn.Linear(512, 10))


def accuracy(y_hat, y):  #@save
    """Compute the number of correct predictions."""
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


class ReferenceTrainer(Trainer):
    """The book's net and ``train_ch6`` step behind the Trainer contract (see :mod:`common.backend`).

    Inherits the device choice, the learning-rate property and the yardsticks (matmul peak, peak
    memory); its own constructor keeps the book's network, initialisation and optimizer.
    ``precision=None`` runs it with PyTorch's defaults (TF32 for cuDNN convolutions, not for
    matmuls; no deterministic algorithms); a precision of :data:`common.hparams.PRECISIONS` runs
    it with this project's settings for it (:func:`resnet_torch.train.set_precision`, autocast
    for bf16), for a comparison at equal arithmetic.
    """

    def __init__(self, device=None, lr=0.05, precision=None):
        self.device = self.resolve_device(device)
        self.device_name = device_label(self.device.type, self.device.index or 0)
        if precision is None:  # PyTorch's defaults, whatever a Trainer set before
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.deterministic = torch.backends.cudnn.benchmark = False
        else:
            set_precision(precision, False, self.device)
        self.precision = precision
        self._autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        net = chapter_net()

        # train_ch6, as the book writes it.
        def init_weights(m):
            if type(m) == nn.Linear or type(m) == nn.Conv2d:
                nn.init.xavier_uniform_(m.weight)
        net.apply(init_weights)
        net.to(self.device)
        self.net = net
        self.optimizer = torch.optim.SGD(net.parameters(), lr=lr)
        self.loss = nn.CrossEntropyLoss()

    def to_batch(self, images, labels):
        # The book's loader yields CPU tensors; train_ch6 moves them with X.to(device).
        return torch.from_numpy(images).to(self.device), torch.from_numpy(labels).to(self.device)

    def train_step(self, X, y):
        self.net.train()
        self.optimizer.zero_grad()
        with self._autocast:
            y_hat = self.net(X)
            l = self.loss(y_hat, y)
        l.backward()
        self.optimizer.step()
        with torch.no_grad():
            return l * X.shape[0], accuracy(y_hat, y)

    def eval_step(self, X, y):
        # evaluate_accuracy_gpu: eval mode, no_grad; the loss is added for the contract.
        self.net.eval()
        with torch.no_grad(), self._autocast:
            y_hat = self.net(X)
            return self.loss(y_hat, y) * X.shape[0], accuracy(y_hat, y)

    def to_host(self, values):
        return [float(v) for v in values]

    def export_weights(self) -> Dict[str, np.ndarray]:
        return export_weights(self.net)

    def import_weights(self, weights) -> None:
        import_weights(self.net, weights)

    def architecture(self) -> Tuple[ResNetSpec, int, int]:
        return get_spec("resnet18"), 1, 10
