"""Initial weights and the canonical weights file, shared by every backend.

Weights are a ``dict`` of canonical name -> float32 NumPy array (see
:func:`common.naming.parameter_shapes`). :func:`init_weights` makes them from a seed in NumPy,
so every backend starts from bit-identical numbers; :func:`save_weights` /
:func:`load_weights` read and write them as an ``.npz`` file that needs no pickle, carries
the architecture's name, style and stem (:func:`read_spec`), and is replaced atomically.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from .files import atomic_write
from .naming import parameter_shapes
from .spec import ResNetSpec, get_spec

__all__ = [
    "WeightsError",
    "FORMAT_TAG",
    "init_weights",
    "jittered_weights",
    "check_weights",
    "save_weights",
    "load_weights",
    "read_metadata",
    "read_optimizer_state",
    "read_architecture",
    "read_spec",
]

#: Written into every file; bumped if the layout of the file ever changes.
FORMAT_TAG = "resnet-fmnist-weights/1"
_META_FORMAT = "__format__"
_META_ARCH = "__arch__"
_META_STYLE = "__style__"  # absent in files written before styles existed: "d2l"
_META_STEM = "__stem__"  # absent in files written before stems existed: "imagenet"
_META_EXTRA = "__metadata__"
_META_OPTIMIZER = "__optimizer__."  # + a canonical name of common.optim: the optimizer's state


class WeightsError(ValueError):
    """A weights file or dict that does not fit the architecture (one-line message)."""


def _xavier_uniform(rng: np.random.Generator, shape) -> np.ndarray:
    # PyTorch's fan convention: fan_in = in * kh * kw, fan_out = out * kh * kw.
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def init_weights(arch="resnet18", seed: int = 0, in_channels: int = 1, num_classes: int = 10) -> Dict[str, np.ndarray]:
    """The initial weights for ``seed``, identical in every backend and on every NumPy.

    As the chapter's training function initialises: Xavier-uniform convolution and dense
    weights, zero biases; BatchNorm gamma 1, beta 0, running mean 0, running variance 1.
    Each array draws from its own stream, ``SeedSequence([seed, index])``, so one array's
    values do not depend on how many numbers the others used.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    weights = {}
    shapes = parameter_shapes(arch, in_channels, num_classes)
    for index, (name, shape) in enumerate(shapes.items()):
        kind = name.rsplit(".", 1)[1]
        if kind == "weight" and len(shape) > 1:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), index])))
            weights[name] = _xavier_uniform(rng, shape)
        elif kind in ("weight", "running_var"):  # BatchNorm gamma and variance
            weights[name] = np.ones(shape, np.float32)
        else:  # biases, beta, running mean
            weights[name] = np.zeros(shape, np.float32)
    return weights


def jittered_weights(weights: Mapping[str, np.ndarray], relative: float = 1e-6, seed: int = 0) -> Dict[str, np.ndarray]:
    """``weights`` with every value multiplied by ``1 + relative * N(0, 1)`` (float32, seeded).

    At ``relative`` 1e-6 that is what float32 rounding differences between CPUs, libraries and
    frameworks amount to: a result that changes much under it depends on rounding, not on the
    computation, and no test may hold a backend to it.
    """
    rng = np.random.default_rng([int(seed), 0x6A17])
    return {name: (value * (1 + relative * rng.standard_normal(value.shape))).astype(np.float32)
            for name, value in weights.items()}


def _infer_io(weights: Mapping[str, np.ndarray]) -> Tuple[int, int]:
    try:
        return int(np.shape(weights["conv1.weight"])[1]), int(np.shape(weights["fc.weight"])[0])
    except (KeyError, IndexError):
        raise WeightsError("weights have no 'conv1.weight' / 'fc.weight' of the expected rank") from None


def check_weights(weights: Mapping[str, np.ndarray], arch="resnet18", source: str = "weights",
                  in_channels: Optional[int] = None, num_classes: Optional[int] = None) -> None:
    """Raise :class:`WeightsError` unless ``weights`` has exactly the arrays ``arch`` needs.

    ``in_channels`` and ``num_classes`` default to what the weights themselves say
    (``conv1.weight`` and ``fc.weight``); every other shape must then match the spec.
    The message names ``source`` (a file name, say) and the offending key.
    """
    spec = get_spec(arch)
    inferred = _infer_io(weights) if "conv1.weight" in weights and "fc.weight" in weights else (1, 10)
    in_channels = inferred[0] if in_channels is None else in_channels
    num_classes = inferred[1] if num_classes is None else num_classes
    expected = parameter_shapes(spec, in_channels, num_classes)
    missing = [k for k in expected if k not in weights]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightsError(f"{source}: missing array '{missing[0]}'{more} for {spec.label}")
    extra = [k for k in weights if k not in expected]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise WeightsError(f"{source}: unexpected array '{extra[0]}'{more}: not part of {spec.label}")
    for name, shape in expected.items():
        value = weights[name]
        if tuple(np.shape(value)) != tuple(shape):
            raise WeightsError(f"{source}: '{name}' has shape {tuple(np.shape(value))}, "
                               f"{spec.label} needs {tuple(shape)}")
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.floating):
            raise WeightsError(f"{source}: '{name}' has dtype {array.dtype}, expected float32")
        if not np.all(np.isfinite(array)):
            raise WeightsError(f"{source}: '{name}' contains NaN or infinite values")
        if name.endswith(".running_var") and np.any(array < 0):
            raise WeightsError(f"{source}: '{name}' has negative variances")


def save_weights(path, weights: Mapping[str, np.ndarray], arch="resnet18", metadata: Optional[dict] = None,
                 optimizer_state: Optional[Mapping[str, np.ndarray]] = None) -> None:
    """Write ``weights`` (checked first) to ``path`` as an uncompressed ``.npz``, atomically.

    ``metadata`` (JSON-serialisable: training state, say) is stored beside the arrays and
    read back by :func:`read_metadata`; ``optimizer_state`` (canonical names of
    :mod:`common.optim`, float64 buffers and the int64 step) beside them too, read back by
    :func:`read_optimizer_state`.
    """
    spec = get_spec(arch)
    check_weights(weights, spec, source=os.fspath(path))
    arrays = {name: np.ascontiguousarray(np.asarray(value, dtype=np.float32)) for name, value in weights.items()}
    arrays[_META_FORMAT] = np.array(FORMAT_TAG)
    arrays[_META_ARCH] = np.array(spec.name)
    arrays[_META_STYLE] = np.array(spec.style)
    arrays[_META_STEM] = np.array(spec.stem)
    arrays[_META_EXTRA] = np.array(json.dumps(metadata or {}, sort_keys=True))
    for name, value in (optimizer_state or {}).items():
        value = np.asarray(value)
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)) or not np.all(
                np.isfinite(value)):
            raise WeightsError(f"{os.fspath(path)}: optimizer state '{name}' is not a finite number array")
        arrays[_META_OPTIMIZER + name] = np.array(value, order="C")  # a 0-d step stays 0-d
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def _open_npz(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise WeightsError(f"{path}: not a readable .npz weights file ({error})") from None


def _read_string(npz, key, path):
    try:
        return str(npz[key][()])
    except KeyError:
        raise WeightsError(f"{path}: no '{key}' entry; not a resnet-fmnist weights file") from None
    except ValueError as error:  # an object array that would need pickle
        raise WeightsError(f"{path}: entry '{key}' is not plain text ({error})") from None


def _read_tags(npz, path) -> Tuple[str, str, str]:
    """``(arch, style, stem)`` of an open weights file; files older than styles or stems have the defaults."""
    arch = _read_string(npz, _META_ARCH, path)
    style = _read_string(npz, _META_STYLE, path) if _META_STYLE in npz.files else "d2l"
    stem = _read_string(npz, _META_STEM, path) if _META_STEM in npz.files else "imagenet"
    return arch, style, stem


def read_architecture(path) -> Tuple[str, str]:
    """``(arch, style)`` recorded in a weights file (for :func:`common.spec.get_spec`); its stem is
    :func:`read_spec`'s."""
    path = os.fspath(path)
    with _open_npz(path) as npz:
        arch, style, _ = _read_tags(npz, path)
    return arch, style


def read_spec(path) -> ResNetSpec:
    """The spec recorded in a weights file: its architecture, style and stem."""
    path = os.fspath(path)
    with _open_npz(path) as npz:
        arch, style, stem = _read_tags(npz, path)
    try:
        return get_spec(arch, style, stem)
    except ValueError as error:
        raise WeightsError(f"{path}: {error}") from None


def load_weights(path, arch="resnet18") -> Dict[str, np.ndarray]:
    """Read a file written by :func:`save_weights` and check it against ``arch`` (a name or a spec
    with its style and stem).

    Refuses (with :class:`WeightsError` naming the file and the key) anything that is not
    an npz, needs pickle, has another architecture, style or stem tag, or has a missing, extra,
    wrongly shaped or non-finite array.
    """
    spec = get_spec(arch)
    path = os.fspath(path)
    with _open_npz(path) as npz:
        tag = _read_string(npz, _META_FORMAT, path)
        if tag != FORMAT_TAG:
            raise WeightsError(f"{path}: format '{tag}' is not '{FORMAT_TAG}'")
        file_arch, file_style, file_stem = _read_tags(npz, path)
        if (file_arch, file_style, file_stem) != (spec.name, spec.style, spec.stem):
            stems = (file_stem, spec.stem) != ("imagenet", "imagenet")  # named where either is not the default
            have = f"{file_arch} (style {file_style}" + (f", stem {file_stem})" if stems else ")")
            want = f"{spec.name} (style {spec.style}" + (f", stem {spec.stem})" if stems else ")")
            flags = f"--arch {file_arch} --style {file_style}" + (f" --stem {file_stem}" if stems else "")
            raise WeightsError(f"{path}: holds weights for {have}, not {want}; pass {flags}")
        weights = {}
        for key in npz.files:
            if key.startswith("__"):
                continue
            try:
                weights[key] = npz[key]
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
                raise WeightsError(f"{path}: array '{key}' cannot be read ({error})") from None
    check_weights(weights, spec, source=path)
    return {name: np.asarray(value, dtype=np.float32) for name, value in weights.items()}


def read_optimizer_state(path) -> Dict[str, np.ndarray]:
    """The optimizer state stored by :func:`save_weights` under its canonical names (empty if none)."""
    path = os.fspath(path)
    state = {}
    with _open_npz(path) as npz:
        for key in npz.files:
            if key.startswith(_META_OPTIMIZER):
                try:
                    state[key[len(_META_OPTIMIZER):]] = npz[key]
                except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
                    raise WeightsError(f"{path}: optimizer state '{key}' cannot be read ({error})") from None
    return state


def read_metadata(path) -> dict:
    """The ``metadata`` dict stored by :func:`save_weights` (empty if none)."""
    path = os.fspath(path)
    with _open_npz(path) as npz:
        if _META_EXTRA not in npz.files:
            return {}
        text = _read_string(npz, _META_EXTRA, path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path}: metadata is not valid JSON ({error})") from None
