"""Hyperparameters: the chapter's recipe and the quick CPU default, written down once."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Optional, Tuple

from .data.transforms import check_requested
from .optim import ONECYCLE_PCT_START, SCHEDULES, TTA, Recipe, Schedule
from .spec import STEMS, get_spec

__all__ = ["PRECISIONS", "check_precision", "TrainConfig", "D2L", "QUICK", "MODERN", "PRESETS", "PRESET_HELP"]

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

    The defaults are the chapter's: SGD without momentum or weight decay at a constant rate, mean
    softmax cross-entropy, the ImageNet stem. ``momentum``, ``nesterov``, ``weight_decay``,
    ``label_smoothing``, ``schedule`` (:data:`common.optim.SCHEDULES`), ``warmup_epochs`` (cosine's
    linear warm-up, onecycle's rise; ``None``: none for cosine, 30% of the run for onecycle),
    ``milestones`` (the step schedule's epochs, ``()``: half and three quarters of the run) and
    ``gamma`` make the :class:`common.optim.Recipe` of :meth:`recipe`; ``tta`` is the evaluation's
    views (:data:`common.optim.TTA`); ``stem`` the network's (:data:`common.spec.STEMS`).
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
    stem: str = "imagenet"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    schedule: str = "constant"
    warmup_epochs: Optional[float] = None
    milestones: Tuple[int, ...] = ()
    gamma: float = 0.1
    tta: str = "none"

    def __post_init__(self):
        # metrics.json holds the pairs as JSON lists: the same config read back compares equal.
        object.__setattr__(self, "transforms", tuple(tuple(pair) for pair in self.transforms))
        object.__setattr__(self, "milestones", tuple(self.milestones))

    def replace(self, **changes) -> "TrainConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def spec(self):
        """The network: :func:`common.spec.get_spec` of ``arch``, ``style`` and ``stem``."""
        return get_spec(self.arch, self.style, self.stem)

    def recipe(self, steps_per_epoch: int) -> Recipe:
        """The optimizer, schedule, loss and evaluation of a run of ``steps_per_epoch`` steps per epoch."""
        total = self.epochs * steps_per_epoch
        if self.warmup_epochs is not None:
            warmup = round(self.warmup_epochs * steps_per_epoch)
        else:  # OneCycleLR's pct_start: the peak at step 0.3 * total - 1
            warmup = max(1, round(ONECYCLE_PCT_START * total) - 1) if self.schedule == "onecycle" else 0
        milestones = self.milestones or ((self.epochs // 2, self.epochs * 3 // 4) if self.schedule == "step" else ())
        milestones = tuple(sorted({m * steps_per_epoch for m in milestones if 0 < m < self.epochs}))
        schedule = Schedule(self.schedule, self.lr, total, warmup, milestones if self.schedule == "step" else (),
                            self.gamma)
        return Recipe(schedule, momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay,
                      label_smoothing=self.label_smoothing, tta=self.tta)

    def validate(self) -> "TrainConfig":
        """Raise ValueError with a one-line reason for any value that cannot train."""
        get_spec(self.arch, self.style)
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; choose one of: {', '.join(STEMS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.tta not in TTA:
            raise ValueError(f"unknown test-time augmentation {self.tta!r}; choose one of: {', '.join(TTA)}")
        if self.warmup_epochs is not None:
            if self.schedule not in ("cosine", "onecycle"):
                raise ValueError(f"--warmup belongs to the cosine and onecycle schedules, not to {self.schedule}")
            if not (isinstance(self.warmup_epochs, (int, float)) and 0 <= self.warmup_epochs < self.epochs):
                raise ValueError(f"warmup must be a number of epochs in [0, {self.epochs}), got {self.warmup_epochs!r}")
        if self.milestones:
            if self.schedule != "step":
                raise ValueError(f"--milestones belong to the step schedule, not to {self.schedule}")
            if any(not isinstance(m, int) or isinstance(m, bool) or not 0 < m < self.epochs for m in self.milestones):
                raise ValueError(f"milestones must be epochs between 1 and {self.epochs - 1}, got "
                                 f"{','.join(map(str, self.milestones))}")
        check_precision(self.precision)
        check_requested(self.transforms)
        for key in ("nesterov", "deterministic"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be True or False, got {getattr(self, key)!r}")
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
        self.recipe(1000)  # the optimizer's values, checked by the Recipe (the schedule again by the run)
        return self


#: The chapter's exact recipe: lr 0.05, 10 epochs, batch 256, images resized to 96.
D2L = TrainConfig()

#: What the README's main job runs (once per seed): 2 epochs on 2,048 images at 28 x 28, tested
#: on 1,024, well under a minute per backend on a 2-core CPU. Whole batches only, so XLA
#: compiles one training and one evaluation step.
QUICK = TrainConfig(epochs=2, batch_size=64, resize=None, subset=2048, test_subset=1024)

#: Beyond the book (issue 23): the book's ResNet-18 at 28 x 28 with the recipe of the published
#: >= 0.93 results: random crops (padding 2) and flips, SGD with Nesterov momentum 0.9 and weight
#: decay 5e-4, label smoothing 0.1, PyTorch's one-cycle schedule to a peak of 0.1, batch 128, and
#: the mean of each test image's and its mirror image's logits, 25 epochs (24 minutes on two
#: CPU cores). docs/training.md has its figures.
MODERN = TrainConfig(epochs=25, batch_size=128, lr=0.1, resize=None, transforms=(("crop_padding", 2), ("flip", True)),
                     momentum=0.9, nesterov=True, weight_decay=5e-4, label_smoothing=0.1, schedule="onecycle",
                     tta="flip")

PRESETS = {"d2l": D2L, "quick": QUICK, "modern": MODERN}
#: One line per preset, for ``--help``.
PRESET_HELP = {
    "d2l": "the chapter's (the default values below)",
    "quick": "2 epochs on 2,048 images at 28 x 28 for a CPU",
    "modern": "the book's network at 28 x 28 with crops, flips, Nesterov momentum, weight decay, label smoothing, "
              "one-cycle and flipped test views, 25 epochs",
}
