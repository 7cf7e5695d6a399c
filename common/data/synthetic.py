"""A learnable stand-in for Fashion-MNIST, for tests and offline demos: the same bytes on every NumPy."""
from __future__ import annotations

import functools
from typing import Tuple

import numpy as np

from .config import check_seed
from .files import IMAGE_SIZE, NUM_CLASSES

__all__ = ["SYNTHETIC_SIZES", "synthetic_fashion_mnist", "synthetic_split"]

#: Examples in the synthetic stand-ins for the two splits (the real sizes).
SYNTHETIC_SIZES = {"train": 60000, "test": 10000}
#: The data seeds of the synthetic splits (fixed: the training seed does not change the data).
_SYNTHETIC_SEEDS = {"train": 0, "test": 1}


@functools.lru_cache(maxsize=1)
def _synthetic_templates() -> np.ndarray:
    """Ten fixed silhouettes (0/1 masks, 28 x 28), one per class, loosely after the real ones."""
    y, x = np.mgrid[0:28, 0:28]
    box = lambda top, bottom, left, right: (y >= top) & (y <= bottom) & (x >= left) & (x <= right)  # noqa: E731
    masks = [
        box(6, 22, 9, 18) | box(6, 10, 3, 24),                                # T-shirt: T shape
        box(4, 7, 8, 19) | box(4, 24, 8, 11) | box(4, 24, 16, 19),            # trouser: two legs
        box(5, 22, 4, 23) & ~box(12, 22, 8, 8) & ~box(12, 22, 19, 19),        # pullover: wide, seams
        (y >= 4) & (y <= 24) & (np.abs(x - 13.5) <= 1.5 + (y - 4) * 0.45),    # dress: widening
        box(3, 24, 5, 22) & ~box(3, 24, 13, 14),                              # coat: open front
        box(14, 22, 3, 24) & (y % 3 == 0),                                    # sandal: straps
        box(5, 23, 7, 20) & ~((y <= 11) & (np.abs(x - 13.5) < 12 - y)),       # shirt: V collar
        (y <= 22) & (y >= 22 - (x - 3) * 0.4) & box(12, 22, 3, 24),          # sneaker: wedge
        box(11, 24, 5, 22) | (box(4, 10, 9, 18) & ~box(6, 10, 11, 16)),       # bag: handle
        box(4, 22, 14, 21) | box(17, 22, 4, 21),                              # ankle boot: L
    ]
    return np.stack(masks).astype(np.int16)


@functools.lru_cache(maxsize=1)
def _shifted_templates() -> np.ndarray:
    """``[5 * (dy + 2) + (dx + 2), label]``: the templates shifted by (dy, dx), each in -2..2."""
    templates = _synthetic_templates()
    shifted = [np.roll(templates, (dy, dx), axis=(1, 2)) for dy in range(-2, 3) for dx in range(-2, 3)]
    return np.stack(shifted)  # no template comes within 2 pixels of the border: roll == shift


def synthetic_fashion_mnist(num_examples: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """A learnable stand-in for Fashion-MNIST: uint8 images ``(N, 28, 28)``, int64 labels ``(N,)``.

    Each class is a fixed silhouette (:func:`_synthetic_templates`) at a random brightness,
    shifted by up to 2 pixels, plus uniform noise; classes are balanced (counts differ by at
    most one) in random order. Only integer arithmetic and ``Generator.integers`` /
    ``Generator.random`` draws, so the same seed gives the same bytes on NumPy 1.23 and 2.x.
    For tests and offline demos; a network learns it to near 100% quickly.
    """
    if not isinstance(num_examples, (int, np.integer)) or isinstance(num_examples, bool) or num_examples < 0:
        raise ValueError(f"num_examples must be a non-negative integer, got {num_examples!r}")
    check_seed(seed)
    rng = np.random.default_rng(seed)
    labels = (np.arange(num_examples) % NUM_CLASSES)[np.argsort(rng.random(num_examples), kind="stable")]
    brightness = rng.integers(140, 256, size=num_examples).astype(np.int16)
    shifts = rng.integers(0, 25, size=num_examples)  # (dy, dx) in -2..2, as 5 * (dy + 2) + (dx + 2)
    noise = rng.integers(0, 81, size=(num_examples, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    silhouettes = _shifted_templates()
    images = np.empty((num_examples, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for start in range(0, num_examples, 4096):  # in chunks that stay in cache
        part = slice(start, start + 4096)
        pixels = silhouettes[shifts[part], labels[part]] * brightness[part, None, None]
        pixels += noise[part]
        pixels -= 40
        np.clip(pixels, 0, 255, out=pixels)
        images[part] = pixels
    return images, labels.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _synthetic_cached(num_examples: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    images, labels = synthetic_fashion_mnist(num_examples, seed)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def synthetic_split(split: str, num_examples=None) -> Tuple[np.ndarray, np.ndarray]:
    """Read-only synthetic ``split`` of ``num_examples`` (default: the real split's size), shared between callers."""
    return _synthetic_cached(SYNTHETIC_SIZES[split] if num_examples is None else int(num_examples),
                             _SYNTHETIC_SEEDS[split])
