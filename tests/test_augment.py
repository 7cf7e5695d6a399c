"""Training-set augmentation (common/data/augment.py): each transform against a per-example reference
of torchvision's semantics, the seeding contract of the transform hook (shards, resumes, the number
of draws), the options, and the augmented batches pinned bit for bit on numpy 1.23 and 2.x."""
import hashlib
import importlib.util
import math
import os

import numpy as np
import pytest

from common.data import (
    TRANSFORM_OPTIONS,
    Batch,
    BatchLoader,
    ConvertedLoader,
    DataConfig,
    build_transforms,
    check_requested,
    fashion_mnist_loader,
    fashion_mnist_loaders,
    synthetic_fashion_mnist,
    to_float,
)
from common.data.augment import (
    ERASE_ATTEMPTS,
    ERASE_LOG_RATIO,
    ERASE_RATIO,
    ERASE_SCALE,
    HorizontalFlip,
    RandomCrop,
    RandomErasing,
    crop_offsets,
    erasing_boxes,
    exp,
    flip_choices,
)

from helpers import assert_same_batches, epoch_batches, load_expected

ALL = (("crop_padding", 4), ("flip", True), ("erase", 0.5))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def whole_batch(images, labels=None):
    labels = np.arange(len(images)) if labels is None else labels
    return Batch(images, labels, slice(0, len(images)), len(images))


def distinct_images(count, height, width, seed=0, channels=1):
    """float32 images in [0.05, 1] with no zero and (almost surely) no two equal pixels."""
    rng = np.random.default_rng(seed)
    return (np.float32(0.05) + np.float32(0.95) * rng.random((count, channels, height, width), dtype=np.float32))


# --------------------------------------------------------------------------- the options


def test_the_three_options_in_their_order():
    assert [(name, option.kind) for name, option in TRANSFORM_OPTIONS.items()][:3] == [
        ("crop_padding", int), ("flip", bool), ("erase", float)]
    for name, option in TRANSFORM_OPTIONS.items():
        assert option.name == name and option.help
    # applied in the registry's order whatever the order asked in; an int probability is a float
    assert check_requested([("erase", 1), ("flip", True), ("crop_padding", 2)]) == (
        ("crop_padding", 2), ("flip", True), ("erase", 1.0))
    assert build_transforms(dict(ALL[::-1])) == (RandomCrop(4), HorizontalFlip(), RandomErasing(0.5))
    # equal options make equal (and hashable) configurations
    config = DataConfig(32, synthetic=True, transforms=build_transforms(ALL))
    assert config == DataConfig(32, synthetic=True, transforms=build_transforms(ALL)) and hash(config) == hash(
        DataConfig(32, synthetic=True, transforms=build_transforms(ALL)))


@pytest.mark.parametrize("pairs, message", [
    ([("crop_padding", 0)], r"crop_padding must be a positive integer .*got 0$"),
    ([("crop_padding", -2)], r"crop_padding must be a positive integer .*got -2$"),
    ([("crop_padding", 1.5)], r"transform crop_padding takes a int, got 1.5"),
    ([("crop_padding", True)], r"transform crop_padding takes a int, got True"),
    ([("flip", False)], r"flip is a switch: ask for it with True or leave it out, got False"),
    ([("flip", 1)], r"transform flip takes a bool, got 1"),
    ([("erase", 0.0)], r"erase must be a probability in \(0, 1\] .*got 0.0$"),
    ([("erase", -0.1)], r"erase must be a probability in \(0, 1\] .*got -0.1$"),
    ([("erase", 1.5)], r"erase must be a probability in \(0, 1\] .*got 1.5$"),
    ([("erase", float("nan"))], r"erase must be a probability in \(0, 1\] .*got nan$"),
    ([("erase", "0.5")], r"transform erase takes a float, got '0.5'"),
])
def test_bad_values_are_one_line_errors(pairs, message):
    from common.hparams import TrainConfig

    for check in (lambda: check_requested(pairs), lambda: TrainConfig(transforms=pairs).validate()):
        with pytest.raises(ValueError, match=message) as info:
            check()
        assert "\n" not in str(info.value)


def test_the_command_line_offers_the_three_options(capsys):
    from common.cli import _requested_transforms, build_parser, main

    parser = build_parser()
    args = parser.parse_args(["train", "--backend", "torch", "--erase", "0.25", "--flip", "--crop-padding", "4"])
    assert _requested_transforms(args) == (("crop_padding", 4), ("flip", True), ("erase", 0.25))
    assert check_requested(_requested_transforms(args)) == (("crop_padding", 4), ("flip", True), ("erase", 0.25))
    assert _requested_transforms(parser.parse_args(["train", "--backend", "torch"])) == ()
    assert _requested_transforms(parser.parse_args(["train", "--backend", "torch", "--flip"])) == (("flip", True),)
    for flag, value in (("--crop-padding", "two"), ("--crop-padding", "1.5"), ("--erase", "half")):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["train", "--backend", "torch", flag, value])
        assert info.value.code == 2
        assert f"{flag}: invalid" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--crop-padding CROP_PADDING" in text and "--flip" in text and "--erase ERASE" in text
    assert "RandomCrop" in text and "RandomHorizontalFlip" in text and "RandomErasing" in text


# --------------------------------------------------------------------------- each transform's semantics


@pytest.mark.parametrize("shape, padding", [((28, 28), 4), ((96, 96), 4), ((28, 28), 1), ((5, 7), 3), ((6, 4), 9)])
def test_crop_is_a_window_of_the_zero_padded_image(shape, padding):
    height, width = shape
    images = distinct_images(48, height, width, seed=1, channels=2)
    before = images.copy()
    out = RandomCrop(padding)(whole_batch(images), np.random.default_rng(3)).images
    np.testing.assert_array_equal(images, before)  # the input is left alone
    assert out.shape == images.shape and out.dtype == np.float32 and out.flags.c_contiguous
    offsets = np.random.default_rng(3).integers(0, 2 * padding + 1, size=(48, 2))  # the documented draw
    np.testing.assert_array_equal(crop_offsets(np.random.default_rng(3), 48, padding), offsets)
    for k in range(48):
        # torchvision's pad(img, P, fill=0) then crop(img, top, left, H, W), written out
        padded = np.zeros((2, height + 2 * padding, width + 2 * padding), np.float32)
        padded[:, padding:padding + height, padding:padding + width] = images[k]
        top, left = offsets[k]
        np.testing.assert_array_equal(out[k], padded[:, top:top + height, left:left + width])
        # and pixel by pixel: the output's (y, x) is the input's (y + top - P, x + left - P), 0 outside
        y, x = np.mgrid[:height, :width]
        source_y, source_x = y + top - padding, x + left - padding
        inside = (source_y >= 0) & (source_y < height) & (source_x >= 0) & (source_x < width)
        expected = np.where(inside, images[k][:, np.clip(source_y, 0, height - 1), np.clip(source_x, 0, width - 1)], 0)
        np.testing.assert_array_equal(out[k], expected)


def test_crop_offsets_are_uniform_over_every_place():
    padding, count = 4, 81 * 200
    offsets = crop_offsets(np.random.default_rng(0), count, padding)
    assert offsets.min() == 0 and offsets.max() == 2 * padding
    counts = np.bincount(offsets[:, 0] * 9 + offsets[:, 1], minlength=81)
    assert counts.min() > 120 and counts.max() < 280  # 200 expected each, sd 14
    assert abs(np.corrcoef(offsets[:, 0], offsets[:, 1])[0, 1]) < 0.03  # top and left independent


@pytest.mark.parametrize("shape", [(28, 28), (96, 96), (3, 5)])
def test_flip_reverses_the_width_of_half_the_images(shape):
    images = distinct_images(64, *shape, seed=2)
    before = images.copy()
    out = HorizontalFlip()(whole_batch(images), np.random.default_rng(4)).images
    np.testing.assert_array_equal(images, before)
    flips = np.random.default_rng(4).random(64) < 0.5  # the documented draw
    np.testing.assert_array_equal(flip_choices(np.random.default_rng(4), 64), flips)
    assert 0 < flips.sum() < 64
    for k in range(64):
        np.testing.assert_array_equal(out[k], images[k][:, :, ::-1] if flips[k] else images[k])
    # over many examples, half are flipped
    many = distinct_images(10000, 2, 3, seed=3)
    flipped = HorizontalFlip()(whole_batch(many), np.random.default_rng(5)).images
    changed = np.any(flipped != many, axis=(1, 2, 3))
    assert abs(changed.mean() - 0.5) < 0.02  # sd 0.005


def reference_erasing_box(u, height, width, p):
    """torchvision's RandomErasing.get_params, per example, on its 41 numbers ``u`` (math, not numpy):
    None (unchanged) or ``(top, left, h, w)``."""
    if not u[0] < p:
        return None
    area = height * width
    for attempt in range(ERASE_ATTEMPTS):
        scale_u, log_ratio_u, top_u, left_u = (u[1 + k * ERASE_ATTEMPTS + attempt] for k in range(4))
        erase_area = area * (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * scale_u)
        aspect_ratio = math.exp(math.log(ERASE_RATIO[0]) + (math.log(ERASE_RATIO[1]) - math.log(ERASE_RATIO[0]))
                                * log_ratio_u)
        h = int(round(math.sqrt(erase_area * aspect_ratio)))
        w = int(round(math.sqrt(erase_area / aspect_ratio)))
        if not (h < height and w < width):
            continue
        return int(top_u * (height - h + 1)), int(left_u * (width - w + 1)), h, w
    return None


@pytest.mark.parametrize("shape, p", [((28, 28), 0.5), ((96, 96), 1.0), ((28, 28), 1.0), ((9, 4), 0.8)])
def test_erasing_is_torchvisions_get_params(shape, p):
    height, width = shape
    count = 400
    boxes = erasing_boxes(np.random.default_rng(6), count, height, width, p)
    draws = np.random.default_rng(6).random((count, 41))  # the documented draw
    for k in range(count):
        expected = reference_erasing_box(draws[k].tolist(), height, width, p)
        assert boxes[k].tolist() == ([0] * 5 if expected is None else [1, *expected])
    images = distinct_images(count, height, width, seed=4, channels=2)
    before = images.copy()
    out = RandomErasing(p)(whole_batch(images), np.random.default_rng(6)).images
    np.testing.assert_array_equal(images, before)
    for k, (erase, top, left, h, w) in enumerate(boxes.tolist()):
        expected = images[k].copy()
        if erase:
            expected[:, top:top + h, left:left + w] = 0
        np.testing.assert_array_equal(out[k], expected)


@pytest.mark.parametrize("shape", [(28, 28), (96, 96)])
def test_an_erased_region_is_a_rectangle_of_zeros_within_scale_and_ratio(shape):
    height, width = shape
    count = 2000
    images = distinct_images(count, height, width, seed=5)  # no zeros before erasing
    out = RandomErasing(1.0)(whole_batch(images), np.random.default_rng(7)).images
    zeros = out[:, 0] == 0
    area = height * width
    sizes = []
    for k in range(count):
        rows, cols = np.flatnonzero(zeros[k].any(axis=1)), np.flatnonzero(zeros[k].any(axis=0))
        assert len(rows), "with p = 1 an attempt fits in practically every image"
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert zeros[k].sum() == h * w and zeros[k][rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # a rectangle
        assert np.array_equal(out[k, 0][~zeros[k]], images[k, 0][~zeros[k]])  # the rest unchanged
        assert h < height and w < width
        # h and w are round(sqrt(area * s * a)) and round(sqrt(area * s / a)): some s and a in range round to them
        assert (h - 0.5) * (w - 0.5) <= ERASE_SCALE[1] * area and (h + 0.5) * (w + 0.5) >= ERASE_SCALE[0] * area
        assert (h - 0.5) / (w + 0.5) <= ERASE_RATIO[1] and (h + 0.5) / (w - 0.5) >= ERASE_RATIO[0]
        sizes.append((h * w / area, h / w))
    fractions, aspects = np.array(sizes).T
    # roughly uniform area fractions over (0.02, 0.33) and log-uniform aspect ratios around 1
    assert abs(fractions.mean() - 0.175) < 0.01 and fractions.min() < 0.04 and fractions.max() > 0.3
    assert abs(np.median(np.log(aspects))) < 0.1 and aspects.min() < 0.4 and aspects.max() > 2.5


def test_erasing_probability_and_the_image_left_alone_when_no_attempt_fits():
    images = distinct_images(4000, 28, 28, seed=6)
    out = RandomErasing(0.3)(whole_batch(images), np.random.default_rng(8)).images
    erased = np.any(out == 0, axis=(1, 2, 3))
    assert abs(erased.mean() - 0.3) < 0.025  # sd 0.007

    class Largest:
        """Every number 0.999: the largest area at the widest-tall ratio, which fits no attempt."""

        def random(self, size):
            return np.full(size, 0.999)

    images = distinct_images(8, 28, 28)
    assert not erasing_boxes(Largest(), 8, 28, 28, 1.0).any()
    np.testing.assert_array_equal(RandomErasing(1.0)(whole_batch(images), Largest()).images, images)


def test_exp_is_exp_without_libm():
    x = np.concatenate([np.linspace(-2, 2, 4001), ERASE_LOG_RATIO, [0.0, -0.0, 1e-300]])
    got = exp(x)
    expected = np.array([math.exp(value) for value in x])
    assert np.all(np.abs(got - expected) <= 4 * np.spacing(expected))
    assert exp(0.0) == 1.0
    assert ERASE_LOG_RATIO == (math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]))
    with pytest.raises(ValueError, match=r"\|x\| <= 2"):
        exp(3.0)


@pytest.mark.parametrize("transform, draw", [
    (RandomCrop(4), lambda rng, n: rng.integers(0, 9, size=(n, 2))),
    (HorizontalFlip(), lambda rng, n: rng.random(n)),
    (RandomErasing(0.5), lambda rng, n: rng.random((n, 41))),
    (RandomErasing(1.0), lambda rng, n: rng.random((n, 41))),
])
@pytest.mark.parametrize("shape", [(28, 28), (96, 96)])
def test_a_fixed_number_of_draws_per_example(transform, draw, shape):
    # whatever the outcomes, the generator is left where the documented draw for the global batch leaves it
    images = distinct_images(12, *shape)
    used, reference = np.random.default_rng(9), np.random.default_rng(9)
    transform(Batch(images[4:8], np.arange(4), slice(4, 8), 12), used)
    draw(reference, 12)
    assert used.random() == reference.random()


def test_equals_torchvision_at_the_drawn_parameters():
    # Only where torchvision imports: tox -e torchvision -- tests/test_augment.py
    torchvision = pytest.importorskip("torchvision")
    import torch
    from torchvision.transforms import functional

    for height, width in ((28, 28), (96, 96), (13, 16)):
        images = distinct_images(32, height, width, seed=height)
        batch = whole_batch(images)
        tensors = [torch.from_numpy(image) for image in images]
        for padding in (1, 4, 30):
            out = RandomCrop(padding)(batch, np.random.default_rng(7)).images
            offsets = crop_offsets(np.random.default_rng(7), 32, padding).tolist()
            expected = [functional.crop(functional.pad(tensor, [padding], fill=0), top, left, height, width)
                        for tensor, (top, left) in zip(tensors, offsets)]
            np.testing.assert_array_equal(out, torch.stack(expected).numpy())
        out = HorizontalFlip()(batch, np.random.default_rng(7)).images
        flips = flip_choices(np.random.default_rng(7), 32)
        expected = [functional.hflip(tensor) if flip else tensor for tensor, flip in zip(tensors, flips)]
        np.testing.assert_array_equal(out, torch.stack(expected).numpy())
        out = RandomErasing(0.7)(batch, np.random.default_rng(7)).images
        boxes = erasing_boxes(np.random.default_rng(7), 32, height, width, 0.7).tolist()
        expected = [functional.erase(tensor, top, left, h, w, torch.tensor(0.0)) if erase else tensor
                    for tensor, (erase, top, left, h, w) in zip(tensors, boxes)]
        np.testing.assert_array_equal(out, torch.stack(expected).numpy())
    # the rectangles are distributed as RandomErasing.get_params' (its own random stream)
    torch.manual_seed(0)
    count = 20000
    for size in (28, 96):
        theirs = np.array([torchvision.transforms.RandomErasing.get_params(
            torch.zeros(1, size, size), scale=ERASE_SCALE, ratio=ERASE_RATIO, value=[0])[:4] for _ in range(count)],
            dtype=np.float64)
        ours = erasing_boxes(np.random.default_rng(0), count, size, size, 1.0)
        assert ours[:, 0].all() and (theirs[:, 2] < size).all()  # an attempt fits, in practice always
        for column in range(4):  # top, left, h, w: means within 4 standard errors
            spread = math.sqrt(theirs[:, column].var() / count + ours[:, column + 1].var() / count)
            assert abs(theirs[:, column].mean() - ours[:, column + 1].mean()) < 4 * spread


# --------------------------------------------------------------------------- the seeding contract


def augmented_loader(count=37, batch_size=16, resize=None, transforms=ALL, **kwargs):
    images, labels = synthetic_fashion_mnist(count, seed=5)
    return BatchLoader(images, labels.astype(np.int64), batch_size, seed=3, resize=resize,
                       transforms=build_transforms(transforms), **kwargs)


@pytest.mark.parametrize("transforms", [ALL, ALL[:1], ALL[1:2], ALL[2:]], ids=["all", "crop", "flip", "erase"])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_a_shard_is_its_slice_of_the_augmented_global_batch(workers, transforms):
    whole = augmented_loader(transforms=transforms)
    shards = [augmented_loader(transforms=transforms, shard=(rank, workers)) for rank in range(workers)]
    for _ in range(2):  # two epochs
        expected = epoch_batches(whole)
        got = [epoch_batches(shard) for shard in shards]
        for step, (images, labels) in enumerate(expected):
            used = workers * (len(labels) // workers)  # the last batch (5) leaves some out
            np.testing.assert_array_equal(np.concatenate([batches[step][1] for batches in got]), labels[:used])
            np.testing.assert_array_equal(np.concatenate([batches[step][0] for batches in got]), images[:used])


def test_augmented_batches_survive_resuming_and_prefetching():
    continuous = augmented_loader(resize=40)
    epochs = [epoch_batches(continuous) for _ in range(3)]
    assert not np.array_equal(epochs[0][0][0], epochs[1][0][0])  # each epoch draws anew
    resumed = augmented_loader(resize=40, prefetch=2)
    resumed.set_epoch(1)
    assert_same_batches(epoch_batches(resumed), epochs[1])
    mid_epoch = augmented_loader(resize=40)
    mid_epoch.set_epoch(1, first_batch=2)  # a run resumed after batch 2 of epoch 1
    assert_same_batches(epoch_batches(mid_epoch), epochs[1][2:])
    assert_same_batches(epoch_batches(mid_epoch), epochs[2])
    sharded = augmented_loader(resize=40, shard=(1, 2), prefetch=1)
    sharded.set_epoch(2, first_batch=1)
    got = epoch_batches(ConvertedLoader(sharded, lambda images, labels: (images, labels)))
    assert_same_batches(got, [(images[len(images) // 2:2 * (len(images) // 2)],
                               labels[len(labels) // 2:2 * (len(labels) // 2)]) for images, labels in epochs[2][1:]])


def test_augmentation_is_deterministic_and_follows_the_seed():
    first, second = augmented_loader(), augmented_loader()
    for _ in range(2):
        assert_same_batches(epoch_batches(first), epoch_batches(second))
    images, _ = synthetic_fashion_mnist(37, seed=5)
    ids = np.arange(37)  # labels that name the examples

    def whole_epoch(seed, transforms):
        (batch_images, batch_ids), = epoch_batches(BatchLoader(images, ids, 37, seed=seed,
                                                               transforms=build_transforms(transforms)))
        return batch_images[np.argsort(batch_ids)]  # by example

    plain = whole_epoch(3, ())
    np.testing.assert_array_equal(plain, to_float(images))
    augmented, other_seed = whole_epoch(3, ALL), whole_epoch(4, ALL)
    assert not np.array_equal(augmented, plain) and not np.array_equal(augmented, other_seed)
    np.testing.assert_array_equal(whole_epoch(3, ALL), augmented)


def test_the_test_split_is_never_augmented():
    config = DataConfig(32, subset=64, test_subset=40, synthetic=True, prefetch=0, transforms=build_transforms(ALL))
    train, test = fashion_mnist_loaders(config)
    plain_train, plain_test = fashion_mnist_loaders(config.replace(transforms=()))
    assert test.transforms == () and len(train.transforms) == 3
    assert_same_batches(epoch_batches(test), epoch_batches(plain_test))
    assert_same_batches(epoch_batches(fashion_mnist_loader("test", config)), epoch_batches(plain_test))
    assert not np.array_equal(next(iter(train))[0], next(iter(plain_train))[0])


# --------------------------------------------------------------------------- pinned on every numpy


def digest_tool():
    spec = importlib.util.spec_from_file_location("make_batch_digests", os.path.join(REPO, "tools",
                                                                                      "make_batch_digests.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_the_pinned_cases_are_the_documented_ones():
    expected = load_expected("augment_digests.json")
    tool = digest_tool()
    assert (expected["batch_size"], expected["seed"], expected["synthetic_subset"]) == (256, 0, 1024)
    assert expected["cases"] == {f"train_{size}px_{case}": [list(pair) for pair in transforms]
                                 for case, size, transforms in tool.AUGMENT_CASES}
    assert expected["cases"]["train_28px_all"] == [["crop_padding", 4], ["flip", True], ["erase", 0.5]]


def test_augmented_synthetic_batches_are_pinned_on_every_numpy():
    # numpy 2.x in the torch environment, 1.23 in mx's: the same bytes (tools/make_batch_digests.py)
    expected = load_expected("augment_digests.json")["digests"]["synthetic"]
    assert digest_tool().augment_digests(synthetic=True) == expected


@pytest.mark.real_data
def test_augmented_first_batches_are_bit_identical_on_every_numpy_and_cpu(real_data):
    assert digest_tool().augment_digests(real_data) == load_expected("augment_digests.json")["digests"]["real"]


def test_the_pinned_batch_is_the_augmented_plain_batch():
    # the pinned 28 px batch really is the plain batch through the three transforms, each with its generator
    from common.data.transforms import transform_generators

    config = DataConfig(256, seed=0, synthetic=True, subset=1024, prefetch=0)
    plain_images, labels = next(iter(fashion_mnist_loader("train", config)))
    images, augmented_labels = next(iter(fashion_mnist_loader("train", config.replace(
        transforms=build_transforms(ALL)))))
    np.testing.assert_array_equal(augmented_labels, labels)
    crop_rng, flip_rng, erase_rng = transform_generators(0, 0, 0, 3)
    offsets, flips = crop_offsets(crop_rng, 256, 4), flip_choices(flip_rng, 256)
    boxes = erasing_boxes(erase_rng, 256, 28, 28, 0.5)
    padded = np.pad(plain_images, ((0, 0), (0, 0), (4, 4), (4, 4)))
    for k in range(256):
        expected = padded[k, :, offsets[k, 0]:offsets[k, 0] + 28, offsets[k, 1]:offsets[k, 1] + 28]
        expected = expected[:, :, ::-1].copy() if flips[k] else expected.copy()
        erase, top, left, h, w = boxes[k]
        if erase:
            expected[:, top:top + h, left:left + w] = 0
        np.testing.assert_array_equal(images[k], expected)
    assert hashlib.sha256(images.tobytes()).hexdigest() == \
        load_expected("augment_digests.json")["digests"]["synthetic"]["train_28px_all"]["images"]


def test_a_padding_or_probability_of_zero_on_the_command_line_is_refused():
    from common.cli import _requested_transforms, build_parser

    for flag, value, message in (("--crop-padding", "0", "crop_padding"), ("--erase", "0", "erase")):
        args = build_parser().parse_args(["train", "--backend", "torch", flag, value])
        with pytest.raises(ValueError, match=message):
            check_requested(_requested_transforms(args))
