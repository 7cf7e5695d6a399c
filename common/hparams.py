"""Hyperparameters: the chapter's recipe and the quick CPU default, written down once."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Tuple

from .data.transforms import check_requested
from .spec import get_spec

__all__ = ["PRECISIONS", "check_precision", "TrainConfig", "D2L", "QUICK", "PRESETS"]

#: Arithmetic a run may use (``--precision``): ``fp32`` (the default) is exact float32 everywhere,
#: TF32 off; ``tf32`` lets a GPU round convolution and matmul inputs to TF32's 10-bit mantissa
#: (Ampere and later; a CPU computes it as fp32); ``bf16`` is mixed precision: convolutions and
#: dense layers in bfloat16, float32 master weights, BatchNorm and the loss in float32.
PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run computes.

    SGD without momentum or weight decay and mean softmax cross-entropy, as in the chapter.
    ``subset``/``test_subset`` take that many examples (a seeded, class-stratified sample);
    ``None`` uses the whole split. ``arch`` and ``style`` name the network (see
    :func:`common.spec.get_spec`; an arch tuple is kept as its text, which reads back).
    ``precision`` is one of :data:`PRECISIONS`; ``deterministic`` (the default) turns on the
    framework's own switches for bit-identical reruns on a GPU (a CPU run is deterministic anyway);
    ``False`` lets it pick faster, non-deterministic GPU kernels. ``transforms`` are the training
    batches' transforms, ``(name, value)`` pairs of :data:`common.data.TRANSFORM_OPTIONS` (none: the
    chapter's batches).
    """

    arch: str = "resnet18"
    style: str = "d2l"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.05
    resize: int | None = 96
    seed: int = 0
    subset: int | None = None
    test_subset: int | None = None
    drop_last: bool = False
    precision: str = "fp32"
    deterministic: bool = True
    transforms: Tuple[Tuple[str, Any], ...] = ()

    def __post_init__(self):
        # metrics.json holds the pairs as JSON lists: the same config read back compares equal.
        object.__setattr__(self, "transforms", tuple(tuple(pair) for pair in self.transforms))

    def replace(self, **changes) -> "TrainConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> "TrainConfig":
        """Raise ValueError with a one-line reason for any value that cannot train."""
        get_spec(self.arch, self.style)
        check_precision(self.precision)
        check_requested(self.transforms)
        if not isinstance(self.deterministic, bool):
            raise ValueError(f"deterministic must be True or False, got {self.deterministic!r}")
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key.replace('_', '-')} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and self.lr < float("inf")):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.resize is not None and (not isinstance(self.resize, int) or self.resize < 16):
            # ResNet-18's stem and three stride-2 stages need some room.
            raise ValueError(f"resize must be an integer >= 16 (or omitted for 28 x 28), got {self.resize!r}")
        for key in ("subset", "test_subset"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{key.replace('_', '-')} must be a positive integer, got {value!r}")
        return self


#: The chapter's exact recipe: lr 0.05, 10 epochs, batch 256, images resized to 96.
D2L = TrainConfig()

#: What the README's main job runs (once per seed): 2 epochs on 2,048 images at 28 x 28, tested
#: on 1,024, well under a minute per backend on a 2-core CPU. Whole batches only, so XLA
#: compiles one training and one evaluation step.
QUICK = TrainConfig(epochs=2, batch_size=64, resize=None, subset=2048, test_subset=1024)

PRESETS = {"d2l": D2L, "quick": QUICK}
