"""Gluon's model zoo (``mxnet.gluon.model_zoo.vision``): which of our networks it holds, and its names.

The zoo's ``resnet18_v1`` and ``resnet34_v1``, written by MXNet's authors, are style "torchvision"
with the imagenet stem exactly (bias-free convolutions, the stride on a block's first 3 x 3
convolution and on its 1 x 1 shortcut, BatchNorm after the shortcut, epsilon 1e-5); only their
parameters' names differ (:func:`zoo_to_canonical`). Nothing else of ours has an equal there: the
zoo's ``resnet50_v1`` and deeper put a bottleneck's stride on its first 1 x 1 convolution (torchvision's
is on the 3 x 3), it has no ResNeXt and no pre-activation network of our layout, and its
``thumbnail`` stem (a 3 x 3 convolution, no BatchNorm) is not our small stem.

:func:`export_gluon` writes canonical weights as the file the zoo's own ``load_parameters`` reads:
``mx.nd.save`` of the zoo's structural names (what ``save_parameters`` writes). The zoo's first
convolution learns its input channels from the file, so a one-channel network loads into
``vision.resnet18_v1(classes=10)`` as it is. MXNet is imported only to write the file.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Dict, Mapping, Optional

import numpy as np

from .files import TEMPORARY_PREFIX, atomic_write
from .spec import get_spec, iter_blocks
from .weights import check_weights

__all__ = ["ZOO_MODELS", "GluonZooError", "zoo_model_name", "zoo_to_canonical", "export_gluon"]

#: Our architecture (style torchvision, imagenet stem) -> the zoo's builder of the same network.
ZOO_MODELS = {"resnet18": "resnet18_v1", "resnet34": "resnet34_v1"}

#: Gluon's names inside a BatchNorm -> the canonical ones.
BN_PARTS = {"gamma": "weight", "beta": "bias", "running_mean": "running_mean", "running_var": "running_var"}

#: What to install where MXNet is missing (its last release, 1.9.1, imports with numpy < 1.24 only).
MXNET_INSTALL = "pip install mxnet==1.9.1 'numpy<1.24' (Python 3.11 at most), or pip install 'resnet-fmnist[mx]'"


class GluonZooError(ValueError):
    """What cannot be written for Gluon's model zoo (one line: why, and what would fit)."""


def zoo_model_name(arch) -> str:
    """The zoo's builder (``"resnet18_v1"``) of ``arch`` (a name or spec with its style and stem), or a
    one-line :class:`GluonZooError` saying what the zoo holds and why ``arch`` is not it."""
    spec = get_spec(arch)
    name = ZOO_MODELS.get(spec.name)
    if name is not None and spec == get_spec(spec.name, "torchvision"):
        return name
    if name is None and spec.block == "bottleneck":
        why = ("its resnet50_v1 and deeper put a bottleneck's stride on the first 1 x 1 convolution, "
               "torchvision's on the 3 x 3, and it has no ResNeXt")
    elif name is None:
        why = "it has no other depth"
    elif spec.style != "torchvision":
        why = "train with --style torchvision for a network it loads"
    else:
        why = "its thumbnail stem has no BatchNorm: train with the imagenet stem for a network it loads"
    raise GluonZooError(f"{spec.label} has no equal in Gluon's model zoo, which holds resnet18 and resnet34 "
                        f"in style torchvision with the imagenet stem (resnet18_v1, resnet34_v1): {why}; "
                        f"export --format onnx or safetensors instead")


def zoo_to_canonical(arch) -> Dict[str, str]:
    """The zoo's structural parameter names (``features.5.0.body.3.weight``) -> canonical names, for a
    network the zoo holds (:func:`zoo_model_name`; anything else is refused).

    ``ResNetV1.features`` is [conv, BatchNorm, ReLU, max pool, stage 1, ..., stage 4, global pool]; a
    ``BasicBlockV1`` is ``body`` = [conv, BatchNorm, ReLU, conv, BatchNorm] and, where the shape changes,
    ``downsample`` = [1 x 1 conv, BatchNorm]; the classifier is ``output``. (Gluon's flat names,
    ``resnetv10_stage2_conv2_weight``, number the layers of a stage in one sequence and take a prefix
    counted per process, so they are not used.)
    """
    spec = get_spec(arch)
    zoo_model_name(spec)
    names = {"features.0.weight": "conv1.weight"}
    names.update({f"features.1.{part}": f"bn1.{canonical}" for part, canonical in BN_PARTS.items()})
    for block in iter_blocks(spec):
        zoo = f"features.{3 + block.stage}.{block.index}"
        layers = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2"}
        if block.use_1x1conv:
            layers.update({"downsample.0": "downsample.0", "downsample.1": "downsample.1"})
        for zoo_layer, layer in layers.items():
            if layer.startswith("conv") or layer == "downsample.0":
                names[f"{zoo}.{zoo_layer}.weight"] = f"{block.name}.{layer}.weight"
            else:
                names.update({f"{zoo}.{zoo_layer}.{part}": f"{block.name}.{layer}.{canonical}"
                              for part, canonical in BN_PARTS.items()})
    names.update({"output.weight": "fc.weight", "output.bias": "fc.bias"})
    return names


def _mxnet():
    try:
        import mxnet
    except ImportError:
        raise GluonZooError(f"export --format gluon needs mxnet, which is not installed here: {MXNET_INSTALL}") \
            from None
    except AttributeError as error:  # mxnet 1.9.1 under numpy >= 1.24 (np.bool)
        raise GluonZooError(f"export --format gluon: mxnet does not import here ({error}): {MXNET_INSTALL}") \
            from None
    return mxnet


def export_gluon(weights: Mapping[str, np.ndarray], spec, path, metadata: Optional[dict] = None) -> None:
    """Write ``weights`` (canonical, checked first) to ``path`` as the file Gluon's
    ``vision.resnet18_v1(classes=N)`` / ``resnet34_v1`` reads with its own ``load_parameters``,
    atomically: ``mx.nd.save`` of float32 arrays under the zoo's structural names, nothing else.

    ``metadata`` is not written: ``load_parameters`` refuses a file with any entry that is not one of
    the network's parameters. A one-line :class:`GluonZooError` where ``spec`` has no equal in the zoo
    (:func:`zoo_model_name`) or MXNet does not import.
    """
    spec = get_spec(spec)
    path = os.fspath(path)
    zoo_model_name(spec)
    check_weights(weights, spec, source=path)
    names = zoo_to_canonical(spec)
    mx = _mxnet()
    arrays = {zoo: mx.nd.array(np.asarray(weights[canonical], dtype=np.float32), ctx=mx.cpu(), dtype=np.float32)
              for zoo, canonical in names.items()}

    folder = os.path.dirname(os.path.abspath(path))

    def write(handle):
        # mx.nd.save writes to a file name only: it writes a temporary file beside ``path`` (named
        # as atomic_write's, so a run directory's lock removes one a killed process leaves), copied here.
        fd, saved = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=".params", dir=folder)
        os.close(fd)
        try:
            mx.nd.save(saved, arrays)
            with open(saved, "rb") as source:
                shutil.copyfileobj(source, handle)
        finally:
            os.unlink(saved)

    atomic_write(path, write)
