"""This project's model files in the ecosystem's own ResNets: torchvision's and timm's, not written by us.

For every architecture of style "torchvision", weights written as a run writes its model file
(:func:`common.weights.save_weights` to ``model.safetensors``) are read with
``safetensors.torch.load_file`` and nothing of ours, and load with ``strict=True`` into
``torchvision.models.<arch>(num_classes=10)`` (its ``conv1`` replaced by a one-channel convolution)
and into ``timm.create_model(<arch>, in_chans=1, num_classes=10)``; both give resnet_torch's logits
within 1e-5 of the largest, in eval mode and in train mode (batch statistics). So does ResNet-18 with
the small stem once both models' ``conv1`` and ``maxpool`` are replaced (:func:`small_stem`). A
checkpoint, which also holds the optimizer's state, is not such a file: torchvision refuses it.

The weights leave no term trivial (:func:`helpers.disturbed_weights`: random BatchNorm scales, shifts
and statistics), have every residual branch damped at its end as trained networks have
(:func:`helpers.damped_residuals`; a deep random ResNet in train mode amplifies rounding block by block,
see ``BRANCH_SCALE`` in test_torchvision.py), and a classifier scaled so that the logits spread by about
1. The three models compute with PyTorch's float32 kernels: on a 2-core x86-64 CPU they differed by 4e-7
of the largest logit at most (undamped too), so the damping is a margin here, not a necessity.

Runs in the ``torchvision`` tox environment (torch, torchvision and timm); skipped where torchvision or
timm does not import or the backend is not PyTorch.
"""
import os

import numpy as np
import pytest

if os.environ.get("RESNET_BACKEND") != "torch":
    pytest.skip("torchvision's and timm's models are checked with RESNET_BACKEND=torch (tox -e torchvision)",
                allow_module_level=True)
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

import safetensors.torch  # noqa: E402
import torch  # noqa: E402

import resnet_torch  # noqa: E402
from common.naming import parameter_shapes, trainable_parameter_names  # noqa: E402
from common.optim import MOMENTUM_PREFIX, STEP_STATE  # noqa: E402
from common.spec import get_spec  # noqa: E402
from common.weights import save_weights  # noqa: E402

from helpers import damped_residuals, disturbed_weights  # noqa: E402

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d"]
NUM_CLASSES = 10
#: Two one-channel 40 x 40 images: layer4 runs on 2 x 2 maps, so each train-mode BatchNorm sees at
#: least 8 values per channel.
BATCH, SIZE = 2, 40


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(24).uniform(0.0, 1.0, (BATCH, 1, SIZE, SIZE)).astype(np.float32)


def small_stem(net):
    """``net`` (torchvision's or timm's ResNet) with our small stem, as the docs' recipe makes it: a one-channel
    3 x 3 convolution with stride 1, and no max pool."""
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = torch.nn.Identity()
    return net


def torchvision_model(arch, stem="imagenet"):
    """torchvision's ``arch`` for 10 classes, made one-channel as the docs' recipe does."""
    net = getattr(torchvision.models, arch)(weights=None, num_classes=NUM_CLASSES)
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return small_stem(net) if stem == "small" else net


def timm_model(arch, stem="imagenet"):
    net = timm.create_model(arch, pretrained=False, in_chans=1, num_classes=NUM_CLASSES)
    return small_stem(net) if stem == "small" else net


def their_logits(net, path, images, training):
    """``net`` loaded (strictly) from the file at ``path``, run in that mode."""
    net.load_state_dict(safetensors.torch.load_file(path), strict=True)
    net.train(training)
    with torch.no_grad():
        return net(torch.from_numpy(images)).numpy()


def our_logits(net, weights, images, training):
    resnet_torch.import_weights(net, weights)  # again each time: a train-mode pass moves the running statistics
    return resnet_torch.forward(net, images, training=training)


def unit_logits(net, weights, images, training):
    """``weights`` with the classifier's weight scaled so that resnet_torch's logits (in that mode)
    spread by about 1: the bound, 1e-5 of the largest logit, is then about 1e-5 absolute."""
    spread = np.std(our_logits(net, weights, images, training) - weights["fc.bias"])
    return dict(weights, **{"fc.weight": (weights["fc.weight"] / max(float(spread), 1e-6)).astype(np.float32)})


#: (architecture, stem): every architecture with the imagenet stem (the ecosystem's own), and the small
#: stem once (its two layers replaced in the models, as docs/ecosystem.md says).
CASES = [(arch, "imagenet") for arch in ARCHS] + [("resnet18", "small")]
CASE_IDS = [arch + ("" if stem == "imagenet" else f"-{stem}") for arch, stem in CASES]


@pytest.mark.parametrize("arch, stem", CASES, ids=CASE_IDS)
def test_model_file_loads_into_torchvision_and_timm(arch, stem, images, tmp_path):
    spec = get_spec(arch, "torchvision", stem)
    ours = resnet_torch.resnet(spec, num_classes=NUM_CLASSES, in_channels=1, style="torchvision")
    assert ours.spec == spec
    start = damped_residuals(disturbed_weights(spec, seed=4, in_channels=1, num_classes=NUM_CLASSES), spec)
    models = {"torchvision": torchvision_model(arch, stem), "timm": timm_model(arch, stem)}
    for mode in ("eval", "train"):
        training = mode == "train"
        weights = unit_logits(ours, start, images, training)
        path = tmp_path / mode / "model.safetensors"
        save_weights(path, weights, spec, metadata={"train_state": {"epoch": 1}})
        expected = our_logits(ours, weights, images, training)
        assert 0.5 < np.std(expected) < 2.0
        bound = 1e-5 * np.max(np.abs(expected))
        for source, model in models.items():
            got = their_logits(model, path, images, training)
            np.testing.assert_allclose(got, expected, rtol=0, atol=bound, err_msg=f"{source}, {mode}")


def test_a_checkpoint_is_not_the_model_file(images, tmp_path):
    """The model file holds exactly the state dict's tensors; the checkpoint beside it also holds the
    optimizer's, which a strict ``load_state_dict`` refuses."""
    spec = get_spec("resnet18", "torchvision")
    weights = disturbed_weights(spec, seed=5, in_channels=1, num_classes=NUM_CLASSES)
    optimizer = {STEP_STATE: np.array(7, dtype=np.int64)}
    optimizer.update({MOMENTUM_PREFIX + name: np.zeros(weights[name].shape, np.float64)
                      for name in trainable_parameter_names(spec, 1, NUM_CLASSES)})
    save_weights(tmp_path / "checkpoint.safetensors", weights, spec, optimizer_state=optimizer)
    save_weights(tmp_path / "model.safetensors", weights, spec)

    net = torchvision_model("resnet18")
    state_dict_keys = {key for key in net.state_dict() if not key.endswith("num_batches_tracked")}
    model = safetensors.torch.load_file(tmp_path / "model.safetensors")
    assert set(model) == state_dict_keys == set(parameter_shapes(spec, 1, NUM_CLASSES))
    assert all(value.dtype == torch.float32 for value in model.values())
    net.load_state_dict(model, strict=True)

    checkpoint = safetensors.torch.load_file(tmp_path / "checkpoint.safetensors")
    assert set(checkpoint) - state_dict_keys == {"__optimizer__." + name for name in optimizer}
    with pytest.raises(RuntimeError, match="Unexpected key.*__optimizer__"):
        net.load_state_dict(checkpoint, strict=True)
