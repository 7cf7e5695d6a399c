"""Write tests/expected/batch_digests.json: SHA-256 of the first batches every backend sees.

    python tools/make_batch_digests.py            # rewrite the file (needs the real data)
    python tools/make_batch_digests.py --check    # exit 1 if the checked-in file is out of date

The first training batch (epoch 0, seed 0) and the first test batch, at 28 x 28 and resized
to 96 x 96, batch 256, from the real Fashion-MNIST: the float32 NCHW images and the int64
labels as bytes. ``tests/test_data.py`` recomputes them in every environment (numpy 1.23 in
mx's, 2.x in the others'), so the pipeline is pinned bit for bit on every numpy and CPU.
Regenerate only after a deliberate change to the preprocessing or the order.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from common.data import DataConfig, fashion_mnist_loaders  # noqa: E402
from common.files import atomic_write  # noqa: E402

OUTPUT = os.path.join(REPO, "tests", "expected", "batch_digests.json")
BATCH_SIZE, SEED, SIZES = 256, 0, (28, 96)


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the checked-in file instead of writing")
    args = parser.parse_args(argv)
    payload = {"batch_size": BATCH_SIZE, "seed": SEED, "data": "Fashion-MNIST", "digests": batch_digests(),
               "regenerate": "python tools/make_batch_digests.py"}
    if args.check:
        with open(OUTPUT) as handle:
            same = json.load(handle) == payload
        print("up to date" if same else f"{OUTPUT} is out of date: run python tools/make_batch_digests.py")
        return 0 if same else 1
    text = json.dumps(payload, indent=2) + "\n"
    atomic_write(OUTPUT, lambda handle: handle.write(text.encode()))
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
