"""``resnet-fmnist export``: a checkpoint (safetensors, or an older run's ``.npz``) as a file that
programs outside this project read.

- ``safetensors``: the trained network alone (a run directory's ``model.safetensors``,
  :data:`common.training.MODEL_NAME`): weights and BatchNorm statistics under their canonical
  names and the header's metadata, without the optimizer's tensors. For style torchvision it
  loads with ``strict=True`` into torchvision's and timm's ResNets (docs/ecosystem.md).
- ``onnx``: an ONNX graph with the weights in it (:func:`common.onnx_model.export_onnx`).
- ``gluon``: a ``.params`` file for Gluon's model zoo (:func:`common.gluon_zoo.export_gluon`).

Each exporter takes ``(weights, spec, path, metadata=None)``, writes ``path`` atomically
(:func:`common.files.atomic_write`) and refuses what it cannot export in one line. The optional
packages an exporter needs are imported only when it runs; a missing one is a one-line
:class:`ExportError` saying what to install.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from .spec import ResNetSpec
from .weights import load_weights, read_metadata, read_spec, save_weights

__all__ = ["FORMATS", "DEFAULT_NAMES", "INSTALL", "ExportError", "export", "export_safetensors", "optional_packages"]

#: The formats ``export`` writes.
FORMATS = ("safetensors", "onnx", "gluon")
#: Where each format goes without ``out``: this name in the checkpoint's directory.
DEFAULT_NAMES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "gluon": "model.params"}
#: Format -> (module of this package, function) that writes it.
_EXPORTERS: Dict[str, Tuple[str, str]] = {
    "safetensors": ("export", "export_safetensors"),
    "onnx": ("onnx_model", "export_onnx"),
    "gluon": ("gluon_zoo", "export_gluon"),
}
#: What to install for the formats that need an optional package (and ONNX Runtime's evaluation).
INSTALL = {"onnx": "pip install 'resnet-fmnist[onnx]'", "gluon": "pip install mxnet==1.9.1 'numpy<1.24' (Python 3.11)"}


class ExportError(ValueError):
    """A checkpoint that cannot be exported as asked (one-line message)."""


@contextlib.contextmanager
def optional_packages(what: str, format: str):
    """Turn a missing optional package (outside this project) inside the block into a one-line
    :class:`ExportError`: ``what`` needs it, and :data:`INSTALL` ``[format]`` installs it (for a
    format without an entry: the package itself)."""
    try:
        yield
    except ModuleNotFoundError as error:
        if not error.name or error.name.split(".")[0] == __package__:
            raise
        raise ExportError(f"{what} needs the Python package '{error.name}', which is not installed here; "
                          f"{INSTALL.get(format, 'pip install ' + error.name)}") from None


def export_safetensors(weights: Mapping[str, np.ndarray], spec: ResNetSpec, path,
                       metadata: Optional[dict] = None) -> None:
    """The model file: ``weights`` and ``metadata`` as :func:`common.weights.save_weights` writes
    them, without optimizer state (a path ending in ``.npz`` gets the older format)."""
    save_weights(path, weights, spec, metadata=metadata)


def export(checkpoint, format: str, out=None) -> str:
    """Write the network in ``checkpoint`` (any backend's, either format) as ``format`` to ``out``
    (default: :data:`DEFAULT_NAMES` ``[format]`` beside the checkpoint) and return that path.

    An ``out`` that exists is refused (:class:`FileExistsError`, nothing written), as is a file
    that is not a checkpoint (:class:`common.weights.WeightsError`); the exporter refuses in one
    line what it cannot express (a network with no Gluon model zoo equal, say).
    """
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    checkpoint = os.fspath(checkpoint)
    spec = read_spec(checkpoint)
    out = os.path.join(os.path.dirname(checkpoint), DEFAULT_NAMES[format]) if out is None else os.fspath(out)
    if os.path.lexists(out):
        raise FileExistsError(f"{out} exists; remove it or pass another --out")
    weights = load_weights(checkpoint, spec)
    metadata = read_metadata(checkpoint)
    module, name = _EXPORTERS[format]
    with optional_packages(f"export --format {format}", format):
        exporter = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        exporter(weights, spec, out, metadata=metadata)
    return out
