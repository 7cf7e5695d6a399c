"""ONNX export, run by ONNX Runtime, against the NumPy oracle: an outside implementation of
convolution, BatchNorm and pooling that nobody here wrote.

Every architecture (ResNet-18 to 152, ResNeXt-50, a custom arch tuple) in every style and with
both stems, exported by :mod:`common.onnx_model` with disturbed weights (no trivial term, damped
residual branches as trained networks have, the classifier scaled so that the logits spread
about 1), gives ONNX Runtime's eval-mode logits within 1e-5 of the oracle's; the model passes
ONNX's checker (``full_check``), takes any batch size and image size, names its tensors
canonically and carries the checkpoint's metadata; ``evaluate`` scores a checkpoint as the
oracle does. Runs in the ``onnx`` tox environment (RESNET_BACKEND=onnx: onnx and onnxruntime,
no framework).
"""
import json
import os
import sys

import numpy as np
import pytest

if os.environ.get("RESNET_BACKEND") != "onnx":
    pytest.skip("ONNX Runtime's checks run with RESNET_BACKEND=onnx (tox -e onnx)", allow_module_level=True)

import onnx  # noqa: E402
import onnxruntime  # noqa: E402

from common import onnx_model, oracle  # noqa: E402
from common.data import DataConfig, fashion_mnist_loader  # noqa: E402
from common.naming import parameter_shapes  # noqa: E402
from common.onnx_model import OnnxRuntimeModel, build_model, evaluate, export_onnx, onnx_logits  # noqa: E402
from common.spec import STEMS, STYLES, get_spec  # noqa: E402
from common.weights import WeightsError, load_weights, read_spec  # noqa: E402

from helpers import EXPECTED_DIR, damped_residuals, data_source, disturbed_weights  # noqa: E402

# Runs in the onnx environment only (tests/conftest.py): no framework there, numpy 2.x.
pytestmark = pytest.mark.backend("onnx")

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", ((1, 32), (2, 48))]
#: Two images of a size that leaves layer4 a 2 x 2 map with either stem (40 -> 20 -> 10 -> 5 -> 3 -> 2
#: with the imagenet stem's stride 2 and max pool; 16 -> 8 -> 4 -> 2 with the small stem), so every
#: tap of every 3 x 3 kernel reaches the logits.
BATCH = 2
SIZE = {"imagenet": 40, "small": 16}
#: ONNX Runtime (float32) against the oracle (float64): absolute, on logits that spread about 1.
TOLERANCE = 1e-5
#: tests/expected/torch_epoch1: epoch 1 of a small network trained with PyTorch (resize none).
CHECKPOINT = os.path.join(EXPECTED_DIR, "torch_epoch1", "checkpoint.npz")


def _unit_case(spec, size, batch=BATCH):
    """Images, disturbed weights whose eval logits spread about 1, and the oracle's logits for them.

    ``fc.weight`` is scaled by a power of two, which scales each product of the oracle's last layer
    exactly (and float32 holds the scaled weight exactly): so one oracle pass gives the logits
    before and after, to float64's rounding of the bias taken off and put back (1e-15;
    :func:`test_one_oracle_pass_gives_the_scaled_networks_logits` checks it), where
    helpers.scaled_for_unit_logits takes a second pass, the slowest part of the deep cases.
    """
    images, _ = oracle.step_batch(0, batch, size)
    weights = damped_residuals(disturbed_weights(spec), spec)
    logits = oracle.forward(weights, images, arch=spec)
    bias = weights["fc.bias"].astype(np.float64)
    scale = 2.0 ** -np.round(np.log2(np.std(logits - bias)))
    weights["fc.weight"] = weights["fc.weight"] * np.float32(scale)
    return images, weights, (logits - bias) * scale + bias


def test_one_oracle_pass_gives_the_scaled_networks_logits():
    spec = get_spec("resnet18", "torchvision")
    images, weights, expected = _unit_case(spec, SIZE["imagenet"])
    np.testing.assert_allclose(expected, oracle.forward(weights, images, arch=spec), rtol=0, atol=1e-13)
    assert 0.5 < np.std(expected) < 2.0


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("arch", ARCHS, ids=lambda arch: arch if isinstance(arch, str) else "custom")
def test_onnx_runtime_matches_the_oracle(arch, style, stem):
    """ONNX Runtime's logits within 1e-5 of the oracle's, for a checker-clean model."""
    spec = get_spec(arch, style, stem)
    images, weights, expected = _unit_case(spec, SIZE[stem])
    assert 0.5 < np.std(expected) < 2.0
    data = build_model(weights, spec).SerializeToString()
    onnx.checker.check_model(data, full_check=True)
    logits = OnnxRuntimeModel(data)(images)
    assert logits.dtype == np.float32 and logits.shape == expected.shape
    error = float(np.abs(logits - expected).max())
    print(f"{spec.label}: max |ORT - oracle| {error:.2e}, max |logit| {np.abs(expected).max():.2f}",
          file=sys.stderr)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=TOLERANCE)


def test_the_graph_reads_like_the_checkpoint():
    """One input and one output of dynamic batch (and image) size, the opset and IR version said,
    initializers under the canonical names, each node named after its layer."""
    spec = get_spec("resnet50", "torchvision")
    weights = disturbed_weights(spec)
    model = build_model(weights, spec)
    assert model.ir_version == onnx_model.IR_VERSION
    assert [(opset.domain, opset.version) for opset in model.opset_import] == [("", onnx_model.OPSET)]
    (images,), (logits,) = model.graph.input, model.graph.output
    assert images.name == onnx_model.INPUT_NAME and logits.name == onnx_model.OUTPUT_NAME
    assert [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim] == ["batch", 1, "height", "width"]
    assert [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim] == ["batch", 10]
    assert [tensor.name for tensor in model.graph.initializer] == list(parameter_shapes(spec))
    for tensor in model.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(tensor), weights[tensor.name])
    names = [node.name for node in model.graph.node]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert names[-3:] == ["avgpool", "avgpool.flatten", "fc"]
    assert {"layer1.0.downsample.0", "layer1.0.downsample.1", "layer1.0.add", "layer1.0.relu_out"} <= set(names)
    assert len(set(names)) == len(names)
    assert {node.op_type for node in model.graph.node} == {
        "Conv", "BatchNormalization", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    groups = {node.name: attribute.i for node in build_model(disturbed_weights("resnext50_32x4d"),
                                                             "resnext50_32x4d").graph.node
              for attribute in node.attribute if attribute.name == "group"}
    assert groups["layer1.0.conv2"] == 32 and groups["layer1.0.conv1"] == 1
    small = [node.name for node in build_model(disturbed_weights(get_spec("resnet18", stem="small")),
                                               get_spec("resnet18", stem="small")).graph.node]
    assert "maxpool" not in small


def test_one_session_takes_any_batch_and_image_size():
    spec = get_spec("resnet18", "preact")
    _, weights, _ = _unit_case(spec, 40, batch=3)
    model = OnnxRuntimeModel(build_model(weights, spec))
    for batch, size in ((1, 40), (3, 40), (2, 56)):
        images, _ = oracle.step_batch(batch, batch, size)
        np.testing.assert_allclose(model(images), oracle.forward(weights, images, arch=spec), rtol=0, atol=TOLERANCE)


def test_export_writes_a_file_onnx_runtime_loads_with_the_metadata(tmp_path):
    spec = get_spec("resnet18", "torchvision", "small")
    images, weights, expected = _unit_case(spec, SIZE["small"])
    train_state = {"train_state": {"epoch": 3, "config": {"lr": 0.1}}}
    path = tmp_path / "model.onnx"
    export_onnx(weights, spec, path, metadata=train_state)
    assert os.listdir(tmp_path) == ["model.onnx"]
    onnx.checker.check_model(str(path), full_check=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([onnx_model.OUTPUT_NAME], {onnx_model.INPUT_NAME: images})
    np.testing.assert_allclose(logits, expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(logits, onnx_logits(weights, spec, images))
    props = session.get_modelmeta().custom_metadata_map
    assert props == {"format": onnx_model.ONNX_FORMAT, "arch": "resnet18", "style": "torchvision", "stem": "small",
                     "in_channels": "1", "num_classes": "10", "metadata": json.dumps(train_state, sort_keys=True)}
    assert json.loads(props["metadata"]) == train_state
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props} == props


def test_export_refuses_an_existing_path_and_weights_of_another_network(tmp_path):
    spec = get_spec("resnet18")
    weights = disturbed_weights(spec)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="model.onnx exists"):
        export_onnx(weights, spec, path)
    assert path.read_bytes() == b"precious" and os.listdir(tmp_path) == ["model.onnx"]
    other = tmp_path / "other.onnx"
    with pytest.raises(WeightsError, match="resnet34"):
        export_onnx(weights, "resnet34", other)
    with pytest.raises(WeightsError, match="missing array 'layer2.0.downsample.1.weight'"):
        export_onnx(weights, get_spec("resnet18", "torchvision"), other)
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_bad_images_and_a_missing_package_get_one_line(monkeypatch):
    spec = get_spec(((1, 16),))
    model = OnnxRuntimeModel(build_model(disturbed_weights(spec), spec))
    with pytest.raises(ValueError, match="expected 1 input channel"):
        model(np.zeros((2, 28, 28, 1), np.float32))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an import of a missing package raises
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'resnet-fmnist\[onnx\]'") as error:
        onnx_logits(disturbed_weights(spec), spec, np.zeros((1, 1, 28, 28), np.float32))
    assert "\n" not in str(error.value) and error.value.name == "onnxruntime"


def _oracle_evaluation(weights, spec, tta, **data):
    """What ``evaluate`` must give: the oracle's logits over the same test batches, the loss the
    mean softmax cross-entropy, the accuracy the fraction of argmax hits."""
    loader = fashion_mnist_loader("test", DataConfig(16, resize=None, test_subset=48, **data))
    loss = correct = examples = 0
    for images, labels in loader:
        logits = oracle.evaluation_logits(weights, images, tta=tta, arch=spec)
        loss += oracle.softmax_cross_entropy(logits, labels)[0] * len(labels)
        correct += int((logits.argmax(axis=1) == labels).sum())
        examples += len(labels)
    return loss / examples, correct / examples, examples


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_evaluate_scores_a_checkpoint_as_the_oracle_does(tta):
    data = data_source()
    result = evaluate(weights=CHECKPOINT, resize=None, batch_size=16, test_subset=48, tta=tta, **data)
    assert set(result) == {"loss", "accuracy", "examples", "seconds"}
    spec = read_spec(CHECKPOINT)
    loss, accuracy, examples = _oracle_evaluation(load_weights(CHECKPOINT, spec), spec, tta, **data)
    assert result["examples"] == examples == 48
    assert result["accuracy"] == accuracy
    assert result["loss"] == pytest.approx(loss, rel=0, abs=1e-5)
    # A dict of weights, with the network named: the same.
    same = evaluate(weights=load_weights(CHECKPOINT, spec), arch=spec.name, resize=None, batch_size=16,
                    test_subset=48, tta=tta, **data)
    assert (same["loss"], same["accuracy"]) == (result["loss"], result["accuracy"])


def test_evaluate_refuses_another_network_and_an_unknown_tta():
    with pytest.raises(WeightsError, match="resnet18"):
        evaluate(weights=CHECKPOINT, arch="resnet18", synthetic=True, test_subset=16)
    with pytest.raises(ValueError, match="unknown test-time augmentation 'crops'"):
        evaluate(weights=CHECKPOINT, tta="crops", synthetic=True, test_subset=16)
