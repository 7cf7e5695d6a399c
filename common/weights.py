"""Initial weights and the canonical weights file, shared by every backend.

Weights are a ``dict`` of canonical name -> float32 NumPy array (see
:func:`common.naming.parameter_shapes`). :func:`init_weights` makes them from a seed in NumPy,
so every backend starts from bit-identical numbers; :func:`save_weights` /
:func:`load_weights` read and write them as a `safetensors <https://huggingface.co/docs/safetensors>`_
file (the format the ecosystem reads: no pickle, a JSON header, readers for every framework),
which carries the architecture's name, style and stem in its header (:func:`read_spec`) and is
replaced atomically. The ``.npz`` files of earlier versions still load: every reader tells the two
formats apart by their content, and :func:`save_weights` writes one for a path ending in ``.npz``.
"""
from __future__ import annotations

import contextlib
import json
import os
import zipfile
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import safetensors
import safetensors.numpy

from .files import atomic_write
from .naming import parameter_shapes
from .spec import RESNET_SPECS, STEMS, ResNetSpec, get_spec

__all__ = [
    "WeightsError",
    "FORMAT_TAG",
    "SAFETENSORS_FORMAT",
    "OPTIMIZER_PREFIX",
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

#: The ``format`` of a safetensors file's header; bumped if the layout of the file ever changes.
SAFETENSORS_FORMAT = "resnet-fmnist-safetensors/1"
#: Written into every ``.npz`` file (the format before safetensors, still read and written).
FORMAT_TAG = "resnet-fmnist-weights/1"
#: + a canonical name of :mod:`common.optim`: a tensor of the optimizer's state (both formats).
OPTIMIZER_PREFIX = "__optimizer__."
_META_FORMAT = "__format__"
_META_ARCH = "__arch__"
_META_STYLE = "__style__"  # absent in files written before styles existed: "d2l"
_META_STEM = "__stem__"  # absent in files written before stems existed: "imagenet"
_META_EXTRA = "__metadata__"
#: What ``npz`` (the zip of an ``.npz`` file) begins with; anything else is read as safetensors.
_ZIP_MAGIC = b"PK\x03\x04"
#: safetensors' own limit on the size of a header.
_HEADER_LIMIT = 100_000_000


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


def _optimizer_arrays(path, optimizer_state) -> Dict[str, np.ndarray]:
    """``optimizer_state`` under the file's names, checked: finite float or integer arrays."""
    arrays = {}
    for name, value in (optimizer_state or {}).items():
        value = np.asarray(value)
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)) or not np.all(
                np.isfinite(value)):
            raise WeightsError(f"{path}: optimizer state '{name}' is not a finite number array")
        arrays[OPTIMIZER_PREFIX + name] = np.array(value, order="C")  # a 0-d step stays 0-d
    return arrays


def save_weights(path, weights: Mapping[str, np.ndarray], arch="resnet18", metadata: Optional[dict] = None,
                 optimizer_state: Optional[Mapping[str, np.ndarray]] = None) -> None:
    """Write ``weights`` (checked first) to ``path``, atomically: a safetensors file, or, for a
    path ending in ``.npz``, an uncompressed ``.npz`` (the format of earlier versions).

    The safetensors file holds the weights as float32 tensors under their canonical names
    (for style torchvision: torchvision's and timm's ``state_dict`` keys, less
    ``num_batches_tracked``), ``optimizer_state`` (canonical names of :mod:`common.optim`,
    float64 buffers and the 0-d int64 step) as tensors named ``__optimizer__.<name>``, and in its
    header's ``__metadata__`` (text to text): ``format`` (:data:`SAFETENSORS_FORMAT`), ``arch``,
    ``style``, ``stem``, ``in_channels``, ``num_classes`` and ``metadata``, the JSON text of
    ``metadata`` (training state, say). :func:`read_metadata` and :func:`read_optimizer_state`
    read them back; ``safetensors.numpy.load_file`` reads the tensors with nothing of this project.
    """
    spec = get_spec(arch)
    path = os.fspath(path)
    check_weights(weights, spec, source=path)
    arrays = {name: np.ascontiguousarray(np.asarray(value, dtype=np.float32)) for name, value in weights.items()}
    text = json.dumps(metadata or {}, sort_keys=True)
    optimizer = _optimizer_arrays(path, optimizer_state)
    if path.endswith(".npz"):
        arrays[_META_FORMAT] = np.array(FORMAT_TAG)
        arrays[_META_ARCH] = np.array(spec.name)
        arrays[_META_STYLE] = np.array(spec.style)
        arrays[_META_STEM] = np.array(spec.stem)
        arrays[_META_EXTRA] = np.array(text)
        arrays.update(optimizer)
        atomic_write(path, lambda handle: np.savez(handle, **arrays))
        return
    in_channels, num_classes = _infer_io(weights)
    header = {"format": SAFETENSORS_FORMAT, "arch": spec.name, "style": spec.style, "stem": spec.stem,
              "in_channels": str(in_channels), "num_classes": str(num_classes), "metadata": text}
    data = safetensors.numpy.save({**arrays, **optimizer}, metadata=header)
    atomic_write(path, lambda handle: handle.write(data))


def _not_readable(path, error) -> str:
    """Why the safetensors reader refused ``path`` (``error``), in words: not a weights file at
    all, a truncated one (the header promises more bytes than the file has), or a corrupt one."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else None
        opening = handle.read(1)
        if length is None or opening != b"{" or length > _HEADER_LIMIT:  # a safetensors header is a JSON object
            return "not a safetensors or .npz weights file"
        if 8 + length > size:
            return f"truncated: its safetensors header needs {8 + length} bytes, the file has {size}"
        handle.seek(8)
        try:
            header = json.loads(handle.read(length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return f"a corrupt safetensors file ({error})"
    if 8 + length + end > size:
        return f"truncated: its tensors need {8 + length + end} bytes, the file has {size}"
    return f"a corrupt safetensors file ({error})"


def _torchvision_match(shapes: Mapping[str, Tuple[int, ...]]) -> Optional[ResNetSpec]:
    """The torchvision-style spec whose ``state_dict`` (less ``num_batches_tracked``) has exactly
    these names and shapes, if one has."""
    shapes = {name: tuple(shape) for name, shape in shapes.items() if not name.endswith(".num_batches_tracked")}
    conv1, fc = shapes.get("conv1.weight", ()), shapes.get("fc.weight", ())
    if len(conv1) != 4 or len(fc) != 2:
        return None
    in_channels, num_classes = conv1[1], fc[0]
    for arch in RESNET_SPECS:
        for stem in STEMS:
            spec = get_spec(arch, "torchvision", stem)
            if parameter_shapes(spec, in_channels, num_classes) == shapes:
                return spec
    return None


class _WeightsFile(contextlib.AbstractContextManager):
    """One open weights file of either format, told apart by its first bytes (an ``.npz`` is a
    zip): the text of its header's fields and its arrays by name. Every failure is a one-line
    :class:`WeightsError` naming the file."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise WeightsError(f"{self.path}: no such file")
        with open(self.path, "rb") as handle:
            self.is_npz = handle.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        self._stack = contextlib.ExitStack()
        try:
            self._open()
        except BaseException:
            self._stack.close()
            raise

    def _open(self) -> None:
        if self.is_npz:
            self.format = FORMAT_TAG
            try:
                self._npz = self._stack.enter_context(np.load(self.path, allow_pickle=False))
            except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
                raise WeightsError(f"{self.path}: not a readable .npz weights file ({error})") from None
            self.names = [key for key in self._npz.files
                          if not key.startswith("__") or key.startswith(OPTIMIZER_PREFIX)]
            return
        self.format = SAFETENSORS_FORMAT
        try:
            self._file = self._stack.enter_context(safetensors.safe_open(self.path, framework="numpy"))
            self._header = self._file.metadata() or {}
            self.names = list(self._file.keys())
        except (safetensors.SafetensorError, OSError, ValueError) as error:
            raise WeightsError(f"{self.path}: {_not_readable(self.path, error)}") from None
        if "format" not in self._header:
            raise WeightsError(self._foreign())

    def _foreign(self) -> str:
        """What a safetensors file without this project's header gets: what it is, and for a
        torchvision ResNet's ``state_dict``, how to make one of this project's files from it."""
        message = f"{self.path}: a safetensors file, but not one of resnet-fmnist's (its header has no 'format')"
        shapes = {name: tuple(self._file.get_slice(name).get_shape()) for name in self.names}
        spec = _torchvision_match(shapes)
        if spec is None:
            return message
        stem = f", stem={spec.stem!r}" if spec.stem != "imagenet" else ""
        return (f"{message}; its tensors are torchvision's {spec.name}: drop the num_batches_tracked entries and "
                f"write them with common.weights.save_weights(path, weights, "
                f"get_spec({spec.name!r}, 'torchvision'{stem}))")

    def __exit__(self, *exc_info):
        self._stack.close()
        return None

    def text(self, field: str, default: Optional[str] = None) -> str:
        """The header's ``field`` (see :func:`save_weights`; in an ``.npz``, the text array
        ``__<field>__``): a one-line error if it is absent and has no ``default``."""
        if not self.is_npz:
            value = self._header.get(field, default)
            if value is None:
                raise WeightsError(f"{self.path}: its header has no '{field}'; not a resnet-fmnist weights file")
            return value
        key = "__" + field + "__"
        if key not in self._npz.files:
            if default is None:
                raise WeightsError(f"{self.path}: no '{key}' entry; not a resnet-fmnist weights file")
            return default
        try:
            return str(self._npz[key][()])
        except ValueError as error:  # an object array that would need pickle
            raise WeightsError(f"{self.path}: entry '{key}' is not plain text ({error})") from None

    def tags(self) -> Tuple[str, str, str]:
        """``(arch, style, stem)``; ``.npz`` files older than styles or stems have the defaults."""
        if not self.is_npz:
            return self.text("arch"), self.text("style"), self.text("stem")
        return self.text("arch"), self.text("style", "d2l"), self.text("stem", "imagenet")

    def array(self, name: str) -> np.ndarray:
        try:
            return self._npz[name] if self.is_npz else self._file.get_tensor(name)
        except (ValueError, TypeError, OSError, zipfile.BadZipFile, EOFError, safetensors.SafetensorError) as error:
            raise WeightsError(f"{self.path}: array '{name}' cannot be read ({error})") from None


def read_architecture(path) -> Tuple[str, str]:
    """``(arch, style)`` recorded in a weights file (for :func:`common.spec.get_spec`); its stem is
    :func:`read_spec`'s."""
    with _WeightsFile(path) as file:
        arch, style, _ = file.tags()
    return arch, style


def read_spec(path) -> ResNetSpec:
    """The spec recorded in a weights file: its architecture, style and stem."""
    with _WeightsFile(path) as file:
        arch, style, stem = file.tags()
    try:
        return get_spec(arch, style, stem)
    except ValueError as error:
        raise WeightsError(f"{os.fspath(path)}: {error}") from None


def _header_int(file: _WeightsFile, field: str) -> Optional[int]:
    """A safetensors header's ``in_channels`` or ``num_classes`` (None in an ``.npz``)."""
    if file.is_npz:
        return None
    text = file.text(field)
    if not text.isdigit():
        raise WeightsError(f"{file.path}: its header's '{field}' is {text!r}, not a number")
    return int(text)


def load_weights(path, arch="resnet18") -> Dict[str, np.ndarray]:
    """Read a file written by :func:`save_weights` (either format) and check it against ``arch``
    (a name or a spec with its style and stem).

    Refuses (with :class:`WeightsError` naming the file and the key) a missing, truncated or
    corrupt file, one that is not this project's (a foreign safetensors file, an npz that needs
    pickle), one with another architecture, style or stem, and one with a missing, extra,
    wrongly shaped, non-float or non-finite array. Returns the arrays in the order of
    :func:`common.naming.parameter_shapes`.
    """
    spec = get_spec(arch)
    path = os.fspath(path)
    with _WeightsFile(path) as file:
        tag = file.text("format")
        if tag != file.format:
            raise WeightsError(f"{path}: format '{tag}' is not '{file.format}'")
        file_arch, file_style, file_stem = file.tags()
        if (file_arch, file_style, file_stem) != (spec.name, spec.style, spec.stem):
            stems = (file_stem, spec.stem) != ("imagenet", "imagenet")  # named where either is not the default
            have = f"{file_arch} (style {file_style}" + (f", stem {file_stem})" if stems else ")")
            want = f"{spec.name} (style {spec.style}" + (f", stem {spec.stem})" if stems else ")")
            flags = f"--arch {file_arch} --style {file_style}" + (f" --stem {file_stem}" if stems else "")
            raise WeightsError(f"{path}: holds weights for {have}, not {want}; pass {flags}")
        in_channels, num_classes = _header_int(file, "in_channels"), _header_int(file, "num_classes")
        weights = {name: file.array(name) for name in file.names if not name.startswith(OPTIMIZER_PREFIX)}
    check_weights(weights, spec, source=path, in_channels=in_channels, num_classes=num_classes)
    order = parameter_shapes(spec, *_infer_io(weights))
    return {name: np.asarray(weights[name], dtype=np.float32) for name in order}


def read_optimizer_state(path) -> Dict[str, np.ndarray]:
    """The optimizer state stored by :func:`save_weights` under its canonical names (empty if none)."""
    with _WeightsFile(path) as file:
        return {name[len(OPTIMIZER_PREFIX):]: file.array(name) for name in file.names
                if name.startswith(OPTIMIZER_PREFIX)}


def read_metadata(path) -> dict:
    """The ``metadata`` dict stored by :func:`save_weights` (empty if none)."""
    with _WeightsFile(path) as file:
        text = file.text("metadata", "")
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise WeightsError(f"{os.fspath(path)}: metadata is not valid JSON ({error})") from None
