"""Floating-point operations per example: what the benchmark's ratios to a machine's peak need."""
from __future__ import annotations

from .spec import conv_output_size, get_spec, iter_convs

__all__ = ["forward_flops_per_example", "training_flops_per_example"]


def forward_flops_per_example(arch="resnet18", in_channels=1, height=96, width=96, num_classes=10) -> int:
    """Multiply-adds x 2 of the convolutions and the dense layer for one example.

    BatchNorm, ReLU, pooling and additions are left out (a few percent); the count is the
    same for every backend, which is what the benchmark's ratios need. It is nominal: every
    output pixel times every kernel tap, the products with zero padding included (on layer4's
    3 x 3 maps at 96 x 96, 32 of 81), which some kernels skip. Half of it is what
    torchvision's tables call GFLOPS (multiply-adds).
    """
    spec = get_spec(arch)
    flops = 0
    for conv, (h, w) in iter_convs(spec, in_channels, height, width):
        out_h, out_w = conv_output_size((h, w), conv.kernel, conv.stride, conv.padding)
        flops += 2 * conv.in_channels // conv.groups * conv.out_channels * conv.kernel ** 2 * out_h * out_w
    flops += 2 * spec.feature_channels * num_classes
    return flops


def training_flops_per_example(arch="resnet18", in_channels=1, height=96, width=96, num_classes=10) -> int:
    """Forward plus backward (input and weight gradients): three times the forward count."""
    return 3 * forward_flops_per_example(arch, in_channels, height, width, num_classes)
