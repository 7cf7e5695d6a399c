"""A checkpoint as an ONNX model, and ONNX Runtime to run it: a network without its framework.

:func:`build_model` writes the network of a :class:`common.spec.ResNetSpec` with its canonical
weights as an ONNX graph (eval mode: BatchNorm with the running statistics); :func:`export_onnx`
writes it to a file; :class:`OnnxRuntimeModel` runs one on ONNX Runtime's CPU provider and
:func:`evaluate` scores a checkpoint on the test set with it, as :func:`common.training.evaluate`
does with a backend.

The graph is built from the spec and the weights, not through a framework's exporter, because:

* **it is the oracle's network.** The graph is walked by :func:`common.oracle._network` itself,
  with a pass whose ``conv``, ``bn``, ``relu``, ... calls each add an ONNX node where the
  oracle's pass computes (:class:`_GraphPass`): the exported model and the NumPy oracle that every
  backend is held to cannot disagree about which layers there are, in which order, with which
  strides, paddings, groups and shortcuts. ONNX Runtime, which nobody here wrote, then checks the
  arithmetic (tests/test_onnx.py: its logits against the oracle's for every architecture, style
  and stem).
* **it needs no framework.** A checkpoint of any backend exports with only ``onnx`` installed
  (``pip install 'resnet-fmnist[onnx]'``), and :mod:`common` imports no framework.
* **the file reads like the checkpoint.** Initializers carry the canonical names
  (``layer2.0.downsample.0.weight``), each node and its output the layer's (``layer2.0.bn1``,
  ``layer2.0.add``); a traced export names them after the framework's tracer, and what it writes
  changes with the framework's version and exporter (TorchScript or dynamo, folded BatchNorms).

The model has one input, ``images`` (float32, NCHW, any batch size, height and width), and one
output, ``logits`` (float32, ``(batch, num_classes)``), in opset :data:`OPSET` (ONNX Runtime 1.12
and later run it). Its ``metadata_props`` say what it is, like a checkpoint's header: ``format``
(:data:`ONNX_FORMAT`), ``arch``, ``style``, ``stem``, ``in_channels``, ``num_classes`` and
``metadata`` (JSON text: a checkpoint's training state, say).
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Dict, List, Mapping, Optional

import numpy as np

from .spec import BN_EPSILON, check_input_shape, get_spec
from .weights import check_weights

__all__ = [
    "ONNX_FORMAT",
    "OPSET",
    "IR_VERSION",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "INSTALL_HINT",
    "build_model",
    "export_onnx",
    "OnnxRuntimeModel",
    "onnx_logits",
    "evaluate",
]

#: ``metadata_props["format"]`` of every model written here.
ONNX_FORMAT = "resnet-fmnist-onnx/1"
#: The operator set: every operator used here has its current definition in it, and ONNX Runtime
#: runs it since 1.12.
OPSET = 17
#: The IR version that goes with :data:`OPSET` (onnx 1.12's); a newer onnx would write its own,
#: which older ONNX Runtimes refuse to load.
IR_VERSION = 8
#: The graph's input (float32 NCHW images) and output (float32 logits).
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
INSTALL_HINT = "pip install 'resnet-fmnist[onnx]'"


def _require(module: str):
    """Import ``onnx`` or ``onnxruntime``, or raise a one-line ``ModuleNotFoundError`` saying what
    to install (which the command line's :func:`common.export.optional_packages` words as its own)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ModuleNotFoundError(f"ONNX export and ONNX Runtime need the Python packages onnx and onnxruntime, "
                                  f"and {module} does not import here ({error}); {INSTALL_HINT}", name=module) from None


# --- the graph: the oracle's walk, emitting nodes ----------------------------------------------

class _GraphPass:
    """A pass through :func:`common.oracle._network` that builds the graph instead of computing.

    It has the oracle pass's layer calls; each takes the name of its input tensor(s) and returns
    the name of the one it adds, which is the layer's canonical name (``layer2.0.bn1``). An
    array ``{layer}.{weight,bias,...}`` becomes an initializer of that name.
    """

    training = False  # eval mode: BatchNorm with the running statistics

    def __init__(self, onnx, weights: Mapping[str, np.ndarray]):
        self.helper, self.numpy_helper = onnx.helper, onnx.numpy_helper
        self.weights = weights
        self.nodes: List = []
        self.initializers: List = []

    def _array(self, name: str) -> str:
        value = np.ascontiguousarray(np.asarray(self.weights[name], dtype=np.float32))
        self.initializers.append(self.numpy_helper.from_array(value, name))
        return name

    def _node(self, op: str, inputs: List[str], name: str, **attributes) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    def conv(self, name: str, x: str, stride: int, padding: int, groups: int = 1) -> str:
        weight = self._array(f"{name}.weight")
        bias = [self._array(f"{name}.bias")] if f"{name}.bias" in self.weights else []
        kernel = list(np.shape(self.weights[weight])[2:])
        return self._node("Conv", [x, weight, *bias], name, kernel_shape=kernel, strides=[stride, stride],
                          pads=[padding] * 4, group=groups)

    def bn(self, name: str, x: str) -> str:
        arrays = [self._array(f"{name}.{part}") for part in ("weight", "bias", "running_mean", "running_var")]
        return self._node("BatchNormalization", [x, *arrays], name, epsilon=BN_EPSILON)

    def relu(self, name: str, x: str) -> str:
        return self._node("Relu", [x], name)

    def max_pool(self, name: str, x: str, kernel: int, stride: int, padding: int) -> str:
        # ONNX's MaxPool, like PyTorch's, never picks a padded position.
        return self._node("MaxPool", [x], name, kernel_shape=[kernel, kernel], strides=[stride, stride],
                          pads=[padding] * 4)

    def add(self, name: str, x: str, y: str) -> str:
        return self._node("Add", [x, y], name)

    def avg_pool(self, name: str, x: str) -> str:
        """Global average pooling to (N, C): ONNX's keeps the 1 x 1 map, which ``{name}.flatten`` drops."""
        return self._node("Flatten", [self._node("GlobalAveragePool", [x], name)], f"{name}.flatten", axis=1)

    def dense(self, name: str, x: str) -> str:
        weight, bias = self._array(f"{name}.weight"), self._array(f"{name}.bias")
        return self._node("Gemm", [x, weight, bias], name, transB=1)  # x @ weight.T + bias


def _metadata_props(spec, in_channels: int, num_classes: int, metadata: Optional[dict]) -> Dict[str, str]:
    return {"format": ONNX_FORMAT, "arch": spec.name, "style": spec.style, "stem": spec.stem,
            "in_channels": str(in_channels), "num_classes": str(num_classes),
            "metadata": json.dumps(metadata or {}, sort_keys=True)}


def build_model(weights: Mapping[str, np.ndarray], spec, metadata: Optional[dict] = None):
    """The ONNX model (an ``onnx.ModelProto``) of ``spec`` (a spec or anything
    :func:`common.spec.get_spec` reads) with ``weights`` (canonical names; checked against the
    spec first, :class:`common.weights.WeightsError` if they do not fit), in eval mode.

    :func:`export_onnx` runs ONNX's checker on it before writing it; tests/test_onnx.py does for
    every architecture, style and stem."""
    from .oracle import _network  # the oracle's walk of the network (see the module docstring)

    onnx = _require("onnx")
    spec = get_spec(spec)
    check_weights(weights, spec, source="ONNX export")
    num_classes, _ = np.shape(weights["fc.weight"])
    in_channels = np.shape(weights["conv1.weight"])[1]
    run = _GraphPass(onnx, weights)
    last = _network(run, INPUT_NAME, spec)
    assert run.nodes[-1].output[0] == last, "the walk ends in the classifier"
    run.nodes[-1].output[0] = OUTPUT_NAME
    images = onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT,
                                                ["batch", in_channels, "height", "width"])
    logits = onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["batch", num_classes])
    graph = onnx.helper.make_graph(run.nodes, spec.label, [images], [logits], initializer=run.initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   ir_version=IR_VERSION, producer_name="resnet-fmnist",
                                   doc_string=f"{spec.label}, eval mode: float32 NCHW images -> logits")
    onnx.helper.set_model_props(model, _metadata_props(spec, in_channels, num_classes, metadata))
    return model


def export_onnx(weights: Mapping[str, np.ndarray], spec, path, metadata: Optional[dict] = None) -> None:
    """Write the ONNX model of ``spec`` with ``weights`` (:func:`build_model`) to ``path``,
    atomically, once ONNX's checker (``full_check``: types and shapes inferred too) passes it.

    An existing ``path`` is refused (``FileExistsError``, nothing written); ``metadata`` (a
    checkpoint's, JSON-serialisable) goes into the model's ``metadata_props``.
    """
    from .files import atomic_write

    path = os.fspath(path)
    if os.path.lexists(path):
        raise FileExistsError(f"{path} exists; remove it or export to another path")
    data = build_model(weights, spec, metadata).SerializeToString()
    _require("onnx").checker.check_model(data, full_check=True)
    atomic_write(path, lambda handle: handle.write(data))


# --- running it: ONNX Runtime on the CPU --------------------------------------------------------

class OnnxRuntimeModel:
    """An ONNX model (a file's path, an ``onnx.ModelProto`` or its serialized bytes) on ONNX
    Runtime's CPU provider: ``model(images)`` takes NCHW images and returns float32 logits."""

    def __init__(self, model):
        onnxruntime = _require("onnxruntime")
        if isinstance(model, (str, os.PathLike)):
            source = os.fspath(model)
        else:
            source = model if isinstance(model, bytes) else model.SerializeToString()
        self.session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
        self.in_channels = self.session.get_inputs()[0].shape[1]

    def __call__(self, images) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        check_input_shape(images.shape, self.in_channels, data_format="NCHW")
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def onnx_logits(weights: Mapping[str, np.ndarray], spec, images) -> np.ndarray:
    """Eval-mode logits of ``spec`` with ``weights`` on NCHW ``images``, computed by ONNX Runtime."""
    return OnnxRuntimeModel(build_model(weights, spec))(images)


class _Evaluator:
    """What :func:`common.training.evaluate_loader` asks of a trainer, for an ONNX Runtime model:
    each step's (loss summed over the batch, number correct) in eval mode, the loss the softmax
    cross-entropy of :mod:`common.oracle` and, with ``tta="flip"``, the logits the mean of the
    image's and its mirror image's (:func:`common.oracle.evaluation_logits`)."""

    def __init__(self, model: OnnxRuntimeModel, tta: str):
        self.model, self.tta = model, tta

    def to_batch(self, images, labels):
        return np.asarray(images, dtype=np.float32), np.asarray(labels)

    def eval_step(self, images, labels):
        from .oracle import softmax_cross_entropy

        logits = self.model(images).astype(np.float64)
        if self.tta == "flip":
            logits = (logits + self.model(images[..., ::-1]).astype(np.float64)) / 2
        loss, _ = softmax_cross_entropy(logits, labels)
        return loss * len(labels), int((logits.argmax(axis=1) == labels).sum())

    def to_host(self, values) -> List[float]:
        return [float(value) for value in values]


def evaluate(weights, *, arch=None, style=None, stem=None, resize: Optional[int] = 96, batch_size: int = 256,
             test_subset: Optional[int] = None, data_dir=None, synthetic: bool = False, tta: str = "none",
             progress: bool = False) -> Dict[str, float]:
    """Test loss and accuracy of ``weights`` (a dict, or a weights/checkpoint file) run by ONNX
    Runtime: :func:`common.training.evaluate`'s arguments and result (``{"loss", "accuracy",
    "examples", "seconds"}``, the same data and loss), with ONNX Runtime in place of a backend.
    ``arch``, ``style`` and ``stem`` default to the file's (for a dict: ResNet-18, style d2l, the
    ImageNet stem); given and different from the file's, a one-line error names both."""
    from .optim import TTA
    from .training import evaluate_loader, evaluation_inputs

    if tta not in TTA:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose one of: {', '.join(TTA)}")
    spec, weights, test_loader = evaluation_inputs(weights, arch, style, stem, resize=resize, batch_size=batch_size,
                                                   test_subset=test_subset, data_dir=data_dir, synthetic=synthetic)
    evaluator = _Evaluator(OnnxRuntimeModel(build_model(weights, spec)), tta)
    result = evaluate_loader(evaluator, test_loader, progress=progress)
    return {key: result[key] for key in ("loss", "accuracy", "examples", "seconds")}
