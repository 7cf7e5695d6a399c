"""Fast paths: how every backend runs faster than its framework's own layers, computing the same function.

This is the one place that says how fast paths are bound into a network, for all four backends.

**A layer variant is a constructor argument.** Each backend's ``kernels.py`` defines two
:class:`Layers`: ``PLAIN``, the framework's own layers (padded and normalised as the project
computes), and ``FAST``, the same layers with fast paths: the same parameters under the same
names, the same function, another computation where it is measured to be faster. A network is
built with one of them and keeps it:

* ``ResNet(arch, num_classes, in_channels, style, layers=PLAIN)`` builds its stem, pools and
  blocks from ``layers``; every block comes from ``BLOCK_BUILDERS[spec.block_kind](block, spec,
  layers)``, which hands ``conv=layers.conv`` to the block's constructor. The chapter's blocks
  (``Residual``, ...) take ``conv=`` as a keyword, default the plain layer, so the chapter's
  signatures and cells run unchanged.
* ``resnet(arch, ..., plain=None)`` and the builders (``resnet18``, ...) pass ``FAST`` unless
  :func:`plain_layers` says plain (``plain=True``, or ``RESNET_PLAIN_LAYERS=1``).
* Nothing is swapped after construction: no layer's or network's class changes behind its
  user's back, and ``type(layer)`` is the class that built it (a fast convolution is a subclass
  of the framework's convolution with no state of its own).
* A ``Trainer`` given a network trains it as built: the chapter's own network, built by a user
  from the chapter's blocks, runs the framework's layers, as the book's does; ``Trainer(net=None)``
  builds ``resnet(...)``, with fast paths.

Why this way: it is how the anchors make a layer variable (torchvision's ``norm_layer=``, Flax's
``conv: ModuleDef`` fields and ``functools.partial(ResNet, conv=...)``); a reader of ``model.py``
sees every layer a network is made of; one argument switches a whole network, and the tests run
both values against the NumPy oracle.

Where a fast path may apply is set by the thresholds below (shapes where a framework's own
kernels are known to be slow); whether it does on this machine, :mod:`common.autotune` measures
once per machine, framework and shape (``RESNET_FAST_PATHS=auto|fast|native``).

The NumPy pieces the backends' fast paths share live here too: :func:`tap_selection` (a
convolution on a tiny map as one dense layer), :func:`visible_taps` (the kernel taps that
meet the input at all) and :func:`tap_windows` (where each tap meets it).
"""
from __future__ import annotations

import os
from typing import Any, List, NamedTuple, Optional

import numpy as np

from .spec import conv_output_size

__all__ = [
    "Layers",
    "PLAIN_LAYERS_ENV",
    "plain_layers",
    "DENSE_CONV_MAX_PIXEL_PAIRS",
    "MATMUL_CONV_MAX_OUTPUT_PIXELS",
    "MATMUL_CONV_MAX_IN_CHANNELS",
    "tap_selection",
    "visible_taps",
    "tap_windows",
]


class Layers(NamedTuple):
    """The layers a network is built from (each backend's ``kernels.PLAIN`` and ``kernels.FAST``).

    Each field is what the backend's ``model.py`` calls to make that layer, with the same
    arguments whichever :class:`Layers` it holds.
    """

    #: ``"plain"`` or ``"fast"``: how messages and ``repr`` name the set.
    name: str
    #: The convolutions a fast path may take over: the blocks' in every backend, and the stem's and
    #: the shortcuts' where the backend has a path for them (PyTorch, TensorFlow and JAX do; MXNet
    #: keeps Gluon's there, and in a grouped block, in both sets).
    conv: Any
    #: The stem's max pool.
    max_pool: Any
    #: The global average pool before the classifier.
    global_pool: Any


#: Set to 1, every backend builds its networks from the framework's own layers only.
PLAIN_LAYERS_ENV = "RESNET_PLAIN_LAYERS"


def plain_layers(plain: Optional[bool] = None) -> bool:
    """Whether to build a network from ``PLAIN`` layers (``True``) or ``FAST`` ones.

    ``None``: ``RESNET_PLAIN_LAYERS=1`` in the environment says plain; anything but 0, 1 or
    empty there is a one-line error.
    """
    if plain is None:
        value = os.environ.get(PLAIN_LAYERS_ENV, "0").strip()
        if value not in ("0", "1", ""):
            raise ValueError(f"{PLAIN_LAYERS_ENV} must be 0 or 1, got {value!r}")
        return value == "1"
    return bool(plain)


#: A convolution whose input pixels times output pixels are at most this (2 x 2 -> 2 x 2,
#: 2 x 2 -> 1 x 1, 1 x 1 -> 1 x 1: layer3/layer4 at 28 x 28) runs as one dense layer with
#: the kernel unfolded by :func:`tap_selection`.
DENSE_CONV_MAX_PIXEL_PAIRS = 16
#: A convolution with at most this many output pixels per map (layer4 at 96 x 96) takes a
#: matrix-product (im2col) path: for its weight gradient in PyTorch, for the whole layer in
#: TensorFlow, MXNet and JAX.
MATMUL_CONV_MAX_OUTPUT_PIXELS = 9
#: ... and so does one with at most this many input channels (the one-channel stem).
MATMUL_CONV_MAX_IN_CHANNELS = 4


def tap_selection(size, kernel, stride, padding) -> np.ndarray:
    """The 0/1 matrix that turns a convolution on a tiny map into one dense layer.

    Shape ``(kh * kw, Ho * Wo * H * W)``: column ``(i, j, a, b)`` (row-major) has a 1 in the
    row of the kernel tap joining output pixel ``(i, j)`` to input pixel ``(a, b)`` of an
    ``H x W`` map, and none where no tap joins them (the window misses that pixel). The
    kernel ``(O, C, kh * kw)`` times this matrix is, rearranged to ``(O * Ho * Wo, C * H * W)``,
    the weight of a dense layer on the flattened input map that computes the convolution:
    the same terms, summed in another order. ``size``, ``kernel``, ``stride`` and
    ``padding`` are (height, width) pairs.
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw) = size, kernel, stride, padding
    out_h, out_w = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    i, j, a, b = np.meshgrid(np.arange(out_h), np.arange(out_w), np.arange(h), np.arange(w), indexing="ij")
    row, col = (a - i * sh + ph).ravel(), (b - j * sw + pw).ravel()
    valid = (row >= 0) & (row < kh) & (col >= 0) & (col < kw)
    selection = np.zeros((kh * kw, out_h * out_w * h * w), dtype=np.float32)
    selection[(row * kw + col)[valid], np.flatnonzero(valid)] = 1.0
    return selection


def visible_taps(kernel: int, in_size: int, stride: int, padding: int) -> List[int]:
    """The kernel offsets along one axis that meet the input for some output pixel; the others
    only ever meet padding (8 of a 3 x 3 kernel's 9 taps on a 1 x 1 map) and contribute exact
    zeros, which an im2col product may leave out (their gradient is exactly zero too)."""
    out_size = conv_output_size(in_size, kernel, stride, padding)
    return [tap for tap in range(kernel)
            if any(0 <= stride * o + tap - padding < in_size for o in range(out_size))]


def tap_windows(kernel: int, in_size: int, stride: int, padding: int) -> List[tuple]:
    """Along one axis, for each kernel offset that meets the input (:func:`visible_taps`),
    ``(tap, first_out, stop_out, first_in)``: the output pixels ``first_out .. stop_out - 1``
    whose window meets the input at that offset, reading input pixels ``first_in``,
    ``first_in + stride``, ... (``stride * out + tap - padding``). Elsewhere the offset meets
    padding only, a zero product: a convolution computed as one matrix product per tap over these
    pixels alone (JAX's and TensorFlow's ``taps`` path) has exactly the convolution's nonzero terms."""
    out_size = conv_output_size(in_size, kernel, stride, padding)
    windows = []
    for tap in range(kernel):
        outs = [o for o in range(out_size) if 0 <= stride * o + tap - padding < in_size]
        if outs:  # the pixels meeting the input at one offset are contiguous
            windows.append((tap, outs[0], outs[-1] + 1, stride * outs[0] + tap - padding))
    return windows
