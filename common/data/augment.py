"""Training-set augmentation (issue 23): random crop with zero padding, horizontal flip, random
erasing, as seeded :data:`~common.data.transforms.Transform` s.

Each is torchvision's transform of the same name, to the letter of its semantics (not of its
random stream), on float32 ``(N, C, H, W)`` images of whatever size the preprocessing made:

- :class:`RandomCrop` ``(padding=P)``: ``RandomCrop(size, padding=P)`` with ``size`` the image's
  own: pad every image with ``P`` zeros on each side, then take the ``H x W`` window whose top
  left corner is at ``(top, left)``, each drawn uniformly from ``0 .. 2P``;
- :class:`HorizontalFlip`: ``RandomHorizontalFlip(0.5)``: reverse the width axis of each image
  with probability 0.5;
- :class:`RandomErasing` ``(p)``: ``RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3),
  value=0)``: with probability ``p`` per image, up to 10 attempts each draw an area
  ``s * H * W`` (``s`` uniform in ``scale``) and an aspect ratio ``a`` (log-uniform in
  ``ratio``), ``h = round(sqrt(s H W a))``, ``w = round(sqrt(s H W / a))`` (rounding half to
  even, as Python's ``round``); the first attempt with ``h < H`` and ``w < W`` sets the ``h x w``
  rectangle at ``(top, left)``, uniform in ``0 .. H - h`` and ``0 .. W - w``, to 0 in every
  channel; if none fits, the image is unchanged.

**The seeding contract** (:mod:`common.data.transforms`): each transform draws its values for
every example of the *global* batch from its generator, a fixed number per example whatever
the outcomes, in one vectorized call, and applies only its batch's rows (``batch.take``), so a
data-parallel worker's shard is exactly its rows of the single-process result, and a batch is
the same after a resume, in a prefetch thread and in every backend. Per global batch of ``n``:

- RandomCrop: ``rng.integers(0, 2P + 1, size=(n, 2))``, columns (top, left);
- HorizontalFlip: ``rng.random(n) < 0.5``;
- RandomErasing: ``rng.random((n, 41))``, per example (row): column 0 decides whether it is
  erased (``< p``), columns 1-10 the 10 attempts' scales, 11-20 their log aspect ratios, 21-30
  their tops and 31-40 their lefts (``floor(u * (H - h + 1))``).

Those streams are the same on NumPy 1.23 and 2.x. The pixels are only moved or set to zero (no
arithmetic on them), and the erasing rectangles are computed in float64 from basic operations
alone, each correctly rounded by IEEE 754 (the exponential is a fixed polynomial, :func:`exp`,
not libm's or NumPy's SIMD one, which differ in the last bit between libraries and CPUs), so
every result is bit-identical on every NumPy and CPU.

A transform returns new arrays; the batch it is given is not modified. ``value`` of an option
(:data:`~common.data.transforms.TRANSFORM_OPTIONS`) that would change nothing is refused rather
than made a no-op (``crop_padding`` 0, ``erase`` 0, ``flip`` False): a no-op would still take a
generator, changing the draws of the transforms after it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:  # only for annotations: transforms.py imports this module
    from .transforms import Batch

__all__ = ["RandomCrop", "HorizontalFlip", "RandomErasing", "random_crop", "horizontal_flip", "random_erasing",
           "crop_offsets", "flip_choices", "erasing_boxes", "exp", "ERASE_SCALE", "ERASE_RATIO",
           "ERASE_LOG_RATIO", "ERASE_ATTEMPTS"]

#: RandomErasing's defaults, as torchvision's: the erased fraction of the area, the aspect ratio
#: (height / width) range, and the attempts at a rectangle that fits.
ERASE_SCALE: Tuple[float, float] = (0.02, 0.33)
ERASE_RATIO: Tuple[float, float] = (0.3, 3.3)
ERASE_ATTEMPTS = 10
#: ``log(ERASE_RATIO)``, correctly rounded (written out: libm's log may differ in the last bit).
ERASE_LOG_RATIO: Tuple[float, float] = (-1.2039728043259361, 1.1939224684724346)


def _images(batch) -> np.ndarray:
    images = batch.images
    if images.ndim != 4:
        raise ValueError(f"augmentation takes images (N, C, H, W), got shape {images.shape}")
    return images


# --------------------------------------------------------------------------- random crop


def crop_offsets(rng: np.random.Generator, count: int, padding: int) -> np.ndarray:
    """``(count, 2)`` int64: each example's window (top, left) in its padded image, uniform in ``0 .. 2 * padding``."""
    return rng.integers(0, 2 * padding + 1, size=(count, 2))


@dataclasses.dataclass(frozen=True)
class RandomCrop:
    """torchvision's ``RandomCrop(size=the image's, padding=padding)`` with zeros (see the module docstring)."""

    padding: int

    def __post_init__(self):
        if not isinstance(self.padding, (int, np.integer)) or isinstance(self.padding, bool) or self.padding < 1:
            raise ValueError(f"crop_padding must be a positive integer (zero pixels added on each side before "
                             f"cropping back to the image's size), got {self.padding!r}")
        object.__setattr__(self, "padding", int(self.padding))

    def __call__(self, batch: "Batch", rng: np.random.Generator) -> "Batch":
        images = _images(batch)
        offsets = batch.take(crop_offsets(rng, batch.global_size, self.padding))
        count, channels, height, width = images.shape
        p = self.padding
        padded = np.zeros((count, channels, height + 2 * p, width + 2 * p), images.dtype)
        padded[:, :, p:p + height, p:p + width] = images
        windows = sliding_window_view(padded, (height, width), axis=(2, 3))  # (n, C, 2p+1, 2p+1, H, W), a view
        # advanced indices around a slice: the example axis comes first, (n, C, H, W); a new array
        cropped = windows[np.arange(count), :, offsets[:, 0], offsets[:, 1]]
        return batch.replace(images=cropped)


def random_crop(padding: int) -> RandomCrop:
    """The ``crop_padding`` option: :class:`RandomCrop` ``(padding)``."""
    return RandomCrop(padding)


# --------------------------------------------------------------------------- horizontal flip


def flip_choices(rng: np.random.Generator, count: int) -> np.ndarray:
    """``(count,)`` bool: which examples are flipped, each with probability 0.5."""
    return rng.random(count) < 0.5


@dataclasses.dataclass(frozen=True)
class HorizontalFlip:
    """torchvision's ``RandomHorizontalFlip(0.5)``: the width axis reversed in half the images."""

    def __call__(self, batch: "Batch", rng: np.random.Generator) -> "Batch":
        images = _images(batch)
        flips = batch.take(flip_choices(rng, batch.global_size))
        flipped = images.copy()
        flipped[flips] = images[flips, ..., ::-1]
        return batch.replace(images=flipped)


def horizontal_flip(on: bool) -> HorizontalFlip:
    """The ``flip`` option: :class:`HorizontalFlip` for True (False is refused: leave the option out)."""
    if on is not True and not (isinstance(on, np.bool_) and on):
        raise ValueError(f"flip is a switch: ask for it with True or leave it out, got {on!r}")
    return HorizontalFlip()


# --------------------------------------------------------------------------- random erasing


#: 1/k! for k = 0..28, correctly rounded (Python divides integers exactly, then rounds once): exp's Taylor coefficients.
_EXP_COEFFICIENTS = tuple(1 / math.factorial(k) for k in range(29))


def exp(x) -> np.ndarray:
    """``e ** x`` in float64 for ``|x| <= 2``, within 4 units in the last place, from additions,
    multiplications and one division only (each correctly rounded in IEEE 754), so bit-identical
    on every NumPy, libm and CPU, unlike ``np.exp``: the Taylor series of ``exp(|x|)`` to degree 28
    (truncation below 1e-21) by Horner's rule, inverted for negative ``x``."""
    x = np.asarray(x, np.float64)
    if np.any(np.abs(x) > 2):
        raise ValueError("exp is written for |x| <= 2 (log aspect ratios)")
    t = np.abs(x)
    result = np.full_like(t, _EXP_COEFFICIENTS[-1])
    for coefficient in reversed(_EXP_COEFFICIENTS[:-1]):
        result = result * t + coefficient
    return np.where(x < 0, 1.0 / result, result)


def erasing_boxes(rng: np.random.Generator, count: int, height: int, width: int, p: float) -> np.ndarray:
    """``(count, 5)`` int64 per example: ``erase`` (0 or 1), ``top``, ``left``, ``h``, ``w`` (all 0
    where ``erase`` is 0): RandomErasing's choice for ``count`` images of ``height x width``
    (see the module docstring), from one draw of ``rng.random((count, 41))``."""
    draws = rng.random((count, 1 + 4 * ERASE_ATTEMPTS))
    scale_u, log_ratio_u, top_u, left_u = (draws[:, 1 + k * ERASE_ATTEMPTS:1 + (k + 1) * ERASE_ATTEMPTS]
                                           for k in range(4))
    area = float(height * width) * (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * scale_u)
    aspect = exp(ERASE_LOG_RATIO[0] + (ERASE_LOG_RATIO[1] - ERASE_LOG_RATIO[0]) * log_ratio_u)
    h = np.rint(np.sqrt(area * aspect)).astype(np.int64)  # rint: half to even, as Python's round
    w = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    fits = (h < height) & (w < width)
    chosen = np.argmax(fits, axis=1)  # the first attempt that fits
    rows = np.arange(count)
    erase = (draws[:, 0] < p) & fits[rows, chosen]
    h, w = h[rows, chosen], w[rows, chosen]
    top_places, left_places = height - h + 1, width - w + 1  # >= 2 where the attempt fits
    top = np.minimum(np.floor(top_u[rows, chosen] * top_places).astype(np.int64), top_places - 1)
    left = np.minimum(np.floor(left_u[rows, chosen] * left_places).astype(np.int64), left_places - 1)
    return np.stack([erase, top, left, h, w], axis=1).astype(np.int64) * erase[:, None]


@dataclasses.dataclass(frozen=True)
class RandomErasing:
    """torchvision's ``RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)`` (see the module docstring)."""

    p: float

    def __post_init__(self):
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float, np.integer, np.floating)) \
                or not 0 < self.p <= 1:
            raise ValueError(f"erase must be a probability in (0, 1] (the chance each training image has a "
                             f"rectangle set to 0), got {self.p!r}")
        object.__setattr__(self, "p", float(self.p))

    def __call__(self, batch: "Batch", rng: np.random.Generator) -> "Batch":
        images = _images(batch)
        boxes = batch.take(erasing_boxes(rng, batch.global_size, images.shape[2], images.shape[3], self.p))
        erased = images.copy()
        # a slice per erased image: faster than a mask over the whole batch
        for index, (_, top, left, h, w) in zip(np.flatnonzero(boxes[:, 0]).tolist(),
                                               boxes[boxes[:, 0] == 1].tolist()):
            erased[index, :, top:top + h, left:left + w] = 0
        return batch.replace(images=erased)


def random_erasing(p: float) -> RandomErasing:
    """The ``erase`` option: :class:`RandomErasing` ``(p)``."""
    return RandomErasing(p)
