"""Transforms of a batch: the preprocessing every batch gets, and the hook for seeded random transforms.

**Preprocessing** (:func:`preprocessing`, chosen once per loader): uint8 -> float32 in [0, 1]
(``/ 255``, as ``ToTensor`` does, :func:`to_float`) or, with a size, a bilinear resize equal to
PyTorch's ``interpolate(mode="bilinear", align_corners=False)`` (:func:`resize_images`).

**The transform hook**: a :data:`Transform` is ``transform(batch: Batch, rng: np.random.Generator)
-> Batch``, applied to the training split only, after preprocessing. Its result is the same in
every backend, on every NumPy and after a resume, because it may depend on nothing but

- its generator: transform ``i`` of the list gets ``default_rng(SeedSequence([seed, epoch,
  index]).spawn(len(transforms))[i])`` (:func:`transform_generators`), ``index`` the batch's
  number in the epoch, so batch ``index`` draws the same numbers whenever and wherever it is
  made (a run resumed mid-epoch, a prefetch thread, another backend);
- the batch's examples, and their places in the global batch: under data-parallel sharding a
  worker's batch is rows ``batch.part`` of a global batch of ``batch.global_size`` examples. A
  transform draws its per-example values for the *whole* global batch and applies its rows,
  ``batch.take(values)``, so each worker's shard gets exactly its slice of what one process
  would compute for the whole batch, whatever the number of workers.

Draw with ``Generator.random``, ``integers``, ``permutation`` and the like, whose streams NumPy
1.23 and 2.x share (synthetic data relies on them too), and compute in float32 element by
element (no BLAS): then every result is bit-identical on every CPU.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import numpy as np

from .augment import horizontal_flip, random_crop, random_erasing

__all__ = ["Batch", "Transform", "transform_generators", "apply_transforms", "TransformOption", "TRANSFORM_OPTIONS",
           "check_requested", "build_transforms", "Resize", "preprocessing",
           "interpolation_taps", "interpolation_matrix", "to_float", "resize_images", "check_size"]


# --------------------------------------------------------------------------- the hook


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """One training batch, or a data-parallel worker's shard of it, as a :data:`Transform` sees it.

    ``images`` float32 ``(n, 1, H, W)`` in [0, 1] (preprocessed), ``labels`` int64 ``(n,)``;
    they are rows ``part`` of the global batch of ``global_size`` examples (``slice(0, n)`` of
    ``n`` without sharding).
    """

    images: np.ndarray
    labels: np.ndarray
    part: slice
    global_size: int

    def take(self, per_example) -> np.ndarray:
        """This batch's rows of ``per_example``: values drawn for every example of the global batch."""
        per_example = np.asarray(per_example)
        if len(per_example) != self.global_size:
            raise ValueError(f"draw per-example values for the whole global batch ({self.global_size} examples), "
                             f"then take this batch's rows; got {len(per_example)}")
        return per_example[self.part]

    def replace(self, **changes) -> "Batch":
        return dataclasses.replace(self, **changes)


#: ``transform(batch, rng) -> batch``: see the module docstring for what it may depend on.
Transform = Callable[[Batch, np.random.Generator], Batch]


def transform_generators(seed: int, epoch: int, index: int, count: int) -> List[np.random.Generator]:
    """The generators of the ``count`` transforms of batch ``index`` of ``epoch``, in order.

    Children of ``SeedSequence([seed, epoch, index])``: independent of each other and of the
    shuffle's ``default_rng([seed, epoch])``, so adding a transform at the end changes no other's draws.
    """
    return [np.random.default_rng(child) for child in np.random.SeedSequence([seed, epoch, index]).spawn(count)]


def apply_transforms(transforms: Sequence[Transform], batch: Batch, seed: int, epoch: int, index: int) -> Batch:
    """``batch`` through ``transforms`` in order, each with its generator (:func:`transform_generators`)."""
    for transform, rng in zip(transforms, transform_generators(seed, epoch, index, len(transforms))):
        result = transform(batch, rng)
        if not isinstance(result, Batch) or len(result.images) != len(batch.images):
            raise TypeError(f"the transform {getattr(transform, '__name__', transform)!r} must return a Batch of "
                            f"{len(batch.images)} examples (batch.replace(images=...)), got {type(result).__name__}")
        batch = result
    return batch


# --------------------------------------------------------------------------- transforms a run asks for


@dataclasses.dataclass(frozen=True)
class TransformOption:
    """A transform a training run can ask for by name: one entry of :data:`TRANSFORM_OPTIONS`.

    The command line offers it as ``--<name with dashes>`` (a switch where ``kind`` is bool, else
    an option taking a ``kind`` value), :class:`common.hparams.TrainConfig` records it in
    ``transforms`` as ``(name, value)`` (so ``metrics.json`` holds it and ``--resume`` keeps it),
    and the training run builds it with ``make(value)``, a :data:`Transform` (a ValueError from
    ``make`` is the user's one-line error).
    """

    name: str
    kind: type
    help: str
    make: Callable[[Any], Transform]


#: The transforms a run can ask for, name -> option, in the order they apply to a batch. A new
#: transform is its module, its test and its entry here.
TRANSFORM_OPTIONS: Dict[str, TransformOption] = {option.name: option for option in (
    # common/data/augment.py, tests/test_augment.py: torchvision's RandomCrop(padding=P),
    # RandomHorizontalFlip and RandomErasing(p), seeded as the hook says
    TransformOption("crop_padding", int, "augment the training images: pad each with this many zeros on every side, "
                    "then crop a window of its size at a random place (torchvision's RandomCrop(size, padding))",
                    random_crop),
    TransformOption("flip", bool, "augment the training images: flip each left-right with probability 0.5 "
                    "(torchvision's RandomHorizontalFlip)", horizontal_flip),
    TransformOption("erase", float, "augment the training images: with this probability, in (0, 1], set a random "
                    "rectangle of each to 0 (torchvision's RandomErasing(p), scale 0.02-0.33, ratio 0.3-3.3)",
                    random_erasing),
)}


def check_requested(requested) -> Tuple[Tuple[str, Any], ...]:
    """``requested`` (pairs of name and value, or a mapping) as a tuple of ``(name, value)`` in the
    order of :data:`TRANSFORM_OPTIONS`, each value of its option's kind and accepted by its
    ``make``; a one-line ValueError naming what is wrong otherwise."""
    pairs = list(requested.items()) if isinstance(requested, dict) else [tuple(pair) for pair in requested]
    names = [name for name, _ in pairs]
    unknown = [name for name in names if name not in TRANSFORM_OPTIONS]
    if unknown:
        known = ", ".join(TRANSFORM_OPTIONS) or "none yet"
        raise ValueError(f"unknown transform {', '.join(map(repr, unknown))}; the transforms a run can ask for: "
                         f"{known}")
    if len(set(names)) != len(names):
        raise ValueError(f"each transform at most once, got {', '.join(names)}")
    values = dict(pairs)
    for name, value in values.items():
        kind = TRANSFORM_OPTIONS[name].kind
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = values[name] = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"transform {name} takes a {kind.__name__}, got {value!r}")
        TRANSFORM_OPTIONS[name].make(value)
    return tuple((name, values[name]) for name in TRANSFORM_OPTIONS if name in values)


def build_transforms(requested) -> Tuple[Transform, ...]:
    """The transforms ``requested`` (see :func:`check_requested`) asks for, in order."""
    return tuple(TRANSFORM_OPTIONS[name].make(value) for name, value in check_requested(requested))


# --------------------------------------------------------------------------- preprocessing


def check_size(size) -> Tuple[int, int]:
    """``(height, width)`` of a resize to ``size`` (an integer or a pair), or a one-line ValueError."""
    pair = (size, size) if np.ndim(size) == 0 else tuple(size)
    if len(pair) != 2 or not all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
                                 for value in pair):
        raise ValueError(f"size must be a positive integer or a pair of them, got {size!r}")
    return int(pair[0]), int(pair[1])


@dataclasses.dataclass(frozen=True)
class Resize:
    """The preprocessing with a resize: uint8 images -> float32 ``(N, 1, *size)``, :func:`resize_images`."""

    size: Union[int, Tuple[int, int]]

    def __call__(self, images) -> np.ndarray:
        return resize_images(images, self.size)


def preprocessing(resize=None) -> Callable[[np.ndarray], np.ndarray]:
    """The step that makes a batch's images the float32 NCHW a network takes: :func:`to_float`,
    or with ``resize`` (an integer or ``(height, width)``) :class:`Resize`."""
    if resize is None:
        return to_float
    check_size(resize)
    return Resize(resize)


@functools.lru_cache(maxsize=64)
def interpolation_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1-D linear interpolation with half-pixel centres as two taps per output pixel.

    Returns ``(first, second, weight_first, weight_second)``: output pixel ``i`` is
    ``weight_first[i] * input[first[i]] + weight_second[i] * input[second[i]]``. It samples
    the input at ``x = (i + 0.5) * in_size / out_size - 0.5`` (clamped at 0), mixing pixels
    ``floor(x)`` and ``floor(x) + 1`` (clamped at the edge) with weights ``1 - frac(x)`` and
    ``frac(x)``, exactly as PyTorch's ``interpolate(mode="bilinear", align_corners=False)``.
    The weights are rounded as PyTorch rounds them (a float32 scale, the source coordinate
    rounded once). Read-only; cached.
    """
    if in_size == out_size:
        first = np.arange(out_size)
        weight_second = np.zeros(out_size, np.float32)
    else:
        scale = float(np.float32(in_size) / np.float32(out_size))
        # float64 holds scale * (i + 0.5) - 0.5 exactly; one rounding to float32, as an FMA does.
        source = (scale * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)
        source = np.maximum(source, np.float32(0))
        first = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
        weight_second = np.clip(source - first.astype(np.float32), 0, 1).astype(np.float32)
    second = np.minimum(first + 1, in_size - 1)
    weight_first = np.float32(1) - weight_second
    taps = (first.astype(np.intp), second.astype(np.intp), weight_first, weight_second)
    for array in taps:
        array.setflags(write=False)
    return taps


@functools.lru_cache(maxsize=64)
def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The ``(out_size, in_size)`` float32 matrix of :func:`interpolation_taps`. Read-only; cached."""
    first, second, weight_first, weight_second = interpolation_taps(in_size, out_size)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    matrix[rows, first] += weight_first
    matrix[rows, second] += weight_second  # at the edge second == first: weights sum to 1
    matrix.setflags(write=False)
    return matrix


def _as_float_images(images) -> np.ndarray:
    """(N, H, W) or (N, 1, H, W), uint8 or float -> a new float32 (N, H, W) array."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W) or (N, 1, H, W), got {images.shape}")
    if images.dtype == np.uint8:
        result = images.astype(np.float32)
        result /= np.float32(255)  # divide, not multiply by 1/255: bit-identical to ToTensor
        return result
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be uint8 (0..255) or floating point (0..1), got {images.dtype}")
    return images.astype(np.float32)  # always a copy


def to_float(images) -> np.ndarray:
    """uint8 images ``(N, H, W)`` -> float32 ``(N, 1, H, W)`` in [0, 1] (``/ 255``, like ``ToTensor``).

    Float input is passed through as float32 without rescaling.
    """
    result = _as_float_images(images)
    return result.reshape(result.shape[0], 1, *result.shape[1:])


def resize_images(images, size: Union[int, Tuple[int, int]]) -> np.ndarray:
    """Images ``(N, H, W)`` -> float32 ``(N, 1, size, size)`` in [0, 1], bilinear, half-pixel centres.

    uint8 input is first scaled by ``/ 255`` (:func:`to_float`); float input is used as is.
    The result equals PyTorch's ``interpolate(x, size, mode="bilinear", align_corners=False,
    antialias=False)`` on the float images to float32 rounding (at most about 1e-7): when
    upscaling, as the chapter does (28 -> 96), that is also torchvision's ``Resize``; when
    downscaling it is plain two-tap bilinear, without antialiasing. ``size`` may be
    ``(height, width)``.

    Bit-identical on every numpy version and x86-64 CPU: each output value is
    ``w0 * a + w1 * b`` in float32 as separate, correctly rounded multiplies and an add (width
    first, then height), never a matrix product, whose summation order and use of FMA depend
    on the BLAS kernel and the vector width.
    """
    out_height, out_width = check_size(size)
    images = _as_float_images(images)
    count, height, width = images.shape
    if (height, width) == (out_height, out_width):
        return images.reshape(count, 1, height, width)
    result = np.empty((count, 1, out_height, out_width), np.float32)
    rows = np.empty((_RESIZE_CHUNK, height, out_width), np.float32)
    rows_second = np.empty_like(rows)
    second = np.empty((_RESIZE_CHUNK, out_height, out_width), np.float32)
    along_width = interpolation_taps(width, out_width)
    along_height = interpolation_taps(height, out_height)
    height_weights = [weight[:, None] for weight in along_height[2:]]
    # Chunks that stay in the cache: the gathers and products over a whole 96 x 96 batch would
    # stream every intermediate through memory.
    for start in range(0, count, _RESIZE_CHUNK):
        chunk = images[start:start + _RESIZE_CHUNK]
        n = len(chunk)
        _two_taps(chunk, along_width[:2], along_width[2:], 2, rows[:n], rows_second[:n])
        _two_taps(rows[:n], along_height[:2], height_weights, 1, result[start:start + n, 0], second[:n])
    return result


#: Images resized at a time: their intermediates fit in a core's L2 cache at 96 x 96.
_RESIZE_CHUNK = 16


def _two_taps(source, indices, weights, axis, out, scratch) -> None:
    """``out = weights[0] * source[.., indices[0], ..] + weights[1] * source[.., indices[1], ..]`` along ``axis``."""
    for index, weight, target in zip(indices, weights, (out, scratch)):
        if axis == source.ndim - 1:  # numpy 1.23's np.take is slow along the last axis; indexing is not
            np.multiply(source[..., index], weight, out=target)
        else:
            np.take(source, index, axis=axis, out=target, mode="clip")
            np.multiply(target, weight, out=target)
    np.add(out, scratch, out=out)
