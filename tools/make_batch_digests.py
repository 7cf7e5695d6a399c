"""Write tests/expected/batch_digests.json and augment_digests.json: SHA-256 of the first batches every backend sees.

    python tools/make_batch_digests.py            # rewrite both files (needs the real data)
    python tools/make_batch_digests.py --check    # exit 1 if a checked-in file is out of date

batch_digests.json: the first training batch (epoch 0, seed 0) and the first test batch, at
28 x 28 and resized to 96 x 96, batch 256, from the real Fashion-MNIST: the float32 NCHW images
and the int64 labels as bytes. ``tests/test_data.py`` recomputes them in every environment
(numpy 1.23 in mx's, 2.x in the others'), so the pipeline is pinned bit for bit on every numpy
and CPU.

augment_digests.json: the first training batch with the augmentation of
``common/data/augment.py`` (seed 0, batch 256): all three transforms at 28 and 96 px, and each
alone at 28 px, from the real data and from the synthetic stand-in (1,024 images), which needs
no files; ``tests/test_augment.py`` recomputes them.

Regenerate only after a deliberate change to the preprocessing, the order or the augmentation.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from common.data import DataConfig, build_transforms, fashion_mnist_loader, fashion_mnist_loaders  # noqa: E402
from common.files import atomic_write  # noqa: E402

OUTPUT = os.path.join(REPO, "tests", "expected", "batch_digests.json")
AUGMENT_OUTPUT = os.path.join(REPO, "tests", "expected", "augment_digests.json")
BATCH_SIZE, SEED, SIZES = 256, 0, (28, 96)
#: The augmentation pinned in augment_digests.json: all three options (common.data.TRANSFORM_OPTIONS)
#: and each alone, ``(name, size, transforms)``.
AUGMENT_ALL = (("crop_padding", 4), ("flip", True), ("erase", 0.5))
AUGMENT_CASES = (("all", 28, AUGMENT_ALL), ("all", 96, AUGMENT_ALL),
                 *((name, 28, ((name, value),)) for name, value in AUGMENT_ALL))
#: The synthetic stand-in's training images augment_digests.json pins (no files needed).
SYNTHETIC_SUBSET = 1024


def batch_digests(data_dir=None) -> dict:
    """``{"<split>_<size>px": {"images": sha256, "labels": sha256}}`` for the first batches."""
    digests = {}
    for size in SIZES:
        loaders = fashion_mnist_loaders(DataConfig(BATCH_SIZE, resize=None if size == 28 else size, seed=SEED,
                                                   data_dir=data_dir, prefetch=0))
        for split, loader in zip(("train", "test"), loaders):
            images, labels = next(iter(loader))
            digests[f"{split}_{size}px"] = {"images": hashlib.sha256(images.tobytes()).hexdigest(),
                                            "labels": hashlib.sha256(labels.tobytes()).hexdigest()}
    return digests


def augment_digests(data_dir=None, synthetic: bool = False) -> dict:
    """``{"train_<size>px_<case>": {"images": sha256, "labels": sha256}}``: the first augmented
    training batch of each of :data:`AUGMENT_CASES`, from the real data (in ``data_dir``, or where
    it is found) or the synthetic stand-in."""
    source = dict(synthetic=True, subset=SYNTHETIC_SUBSET) if synthetic else dict(data_dir=data_dir)
    digests = {}
    for case, size, transforms in AUGMENT_CASES:
        loader = fashion_mnist_loader("train", DataConfig(BATCH_SIZE, resize=None if size == 28 else size, seed=SEED,
                                                          transforms=build_transforms(transforms), prefetch=0,
                                                          **source))
        images, labels = next(iter(loader))
        digests[f"train_{size}px_{case}"] = {"images": hashlib.sha256(images.tobytes()).hexdigest(),
                                             "labels": hashlib.sha256(labels.tobytes()).hexdigest()}
    return digests


def payloads() -> dict:
    """The two files' contents, path -> JSON value."""
    return {
        OUTPUT: {"batch_size": BATCH_SIZE, "seed": SEED, "data": "Fashion-MNIST", "digests": batch_digests(),
                 "regenerate": "python tools/make_batch_digests.py"},
        AUGMENT_OUTPUT: {"batch_size": BATCH_SIZE, "seed": SEED,
                         "cases": {f"train_{size}px_{case}": [list(pair) for pair in transforms]
                                   for case, size, transforms in AUGMENT_CASES},
                         "synthetic_subset": SYNTHETIC_SUBSET,
                         "digests": {"real": augment_digests(), "synthetic": augment_digests(synthetic=True)},
                         "regenerate": "python tools/make_batch_digests.py"},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the checked-in files instead of writing")
    args = parser.parse_args(argv)
    code = 0
    for path, payload in payloads().items():
        if args.check:
            with open(path) as handle:
                same = json.load(handle) == payload
            print(f"{path} is up to date" if same else f"{path} is out of date: run python tools/make_batch_digests.py")
            code = code or (0 if same else 1)
            continue
        text = json.dumps(payload, indent=2) + "\n"
        atomic_write(path, lambda handle, text=text: handle.write(text.encode()))
        print(f"wrote {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
