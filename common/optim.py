"""The optimizer and the learning-rate schedule, defined once: what every backend's framework
objects are configured to compute.

The math is PyTorch's (``torch.optim.SGD`` and its ``lr_scheduler``s, the conventions of the
book's PyTorch code), written out in :meth:`Schedule.lr_at` and :func:`common.oracle.optimizer_step`.
Per step ``k`` (0-based), for every trainable array ``w`` with gradient ``g`` of the mean loss::

    g   = g + weight_decay * w              # L2 on the gradient (coupled), every trainable array
    buf = momentum * buf + g                # buf starts at 0 (PyTorch's first buf = g: the same)
    d   = g + momentum * buf if nesterov else buf
    w   = w - lr_at(k) * d

The learning rate sits outside the momentum buffer (as in PyTorch and optax; Keras and MXNet's SGD
keep ``v = momentum * v - lr * g``, which agrees only while the rate is constant: their backends
rescale ``v`` by ``lr_at(k) / lr_at(k - 1)`` before each step, see each ``train.py``). The loss is
softmax cross-entropy with label smoothing ``eps`` (PyTorch's ``CrossEntropyLoss(label_smoothing=)``:
targets ``(1 - eps) * one_hot + eps / classes``), averaged over the batch; evaluation's loss has no
smoothing. ``tta="flip"`` averages, at evaluation, the logits of each image and of its mirror image.

A :class:`Recipe` with all defaults is the chapter's: plain SGD at a constant rate, no smoothing.

The optimizer state a checkpoint holds (:func:`canonical_state_names`): ``step`` (the number of
steps taken: where the schedule stands) and, with momentum, ``momentum_buffer.<name>`` per trainable
array: PyTorch's ``buf``, in float64 so that a backend whose own state is ``v = -lr * buf`` gets
its float32 ``v`` back bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, Optional, Tuple

__all__ = [
    "SCHEDULES",
    "TTA",
    "WARMUP_START_FACTOR",
    "ONECYCLE_DIV_FACTOR",
    "ONECYCLE_FINAL_DIV_FACTOR",
    "ONECYCLE_PCT_START",
    "STEP_STATE",
    "MOMENTUM_PREFIX",
    "Schedule",
    "Recipe",
    "chapter_recipe",
    "resolve_recipe",
    "canonical_state_names",
    "describe",
]

#: Learning-rate schedules, per optimizer step: ``constant`` (the chapter's), ``cosine`` (linear
#: warm-up, then cosine annealing to zero), ``onecycle`` (PyTorch's ``OneCycleLR``: cosine up from
#: ``lr / 25`` to ``lr``, then cosine down to ``lr / 25e4``), ``step`` (times ``gamma`` at each
#: milestone).
SCHEDULES = ("constant", "cosine", "onecycle", "step")
#: Evaluation views: ``none``, or ``flip`` (the mean of the logits of the image and its mirror image).
TTA = ("none", "flip")
#: A cosine schedule's linear warm-up starts at this fraction of ``lr`` (PyTorch's ``LinearLR``
#: needs a start above zero, and a backend that rescales its momentum by the ratio of two rates
#: needs every rate it divides by above zero).
WARMUP_START_FACTOR = 0.1
#: ``OneCycleLR``'s defaults: it starts at ``lr / div``, ends at ``lr / (div * final_div)``, and
#: rises over 30% of the steps when the recipe names no warm-up.
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4
ONECYCLE_PCT_START = 0.3
#: Canonical names of the optimizer state (see the module docstring).
STEP_STATE = "step"
MOMENTUM_PREFIX = "momentum_buffer."


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Schedule:
    """The learning rate of every step ``k`` in ``0 .. total_steps - 1`` (:meth:`lr_at`).

    ``lr`` is the constant rate, the peak of ``cosine`` and ``onecycle``, the start of ``step``.
    ``warmup_steps``: ``cosine``'s linear warm-up from ``WARMUP_START_FACTOR * lr`` (the rate
    reaches ``lr`` at step ``warmup_steps``); ``onecycle``'s rising phase (the peak at step
    ``warmup_steps``). ``milestones``: the steps at which ``step`` multiplies the rate by ``gamma``.
    """

    kind: str = "constant"
    lr: float = 0.05
    total_steps: int = 1
    warmup_steps: int = 0
    milestones: Tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "milestones", tuple(self.milestones))
        self.check()

    def check(self) -> "Schedule":
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; choose one of: {', '.join(SCHEDULES)}")
        if not (_is_number(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ValueError(f"a schedule needs at least one step, got total_steps={self.total_steps!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warm-up steps must be a non-negative integer, got {self.warmup_steps!r}")
        if self.warmup_steps and self.kind not in ("cosine", "onecycle"):
            raise ValueError(f"a warm-up belongs to the cosine and onecycle schedules, not to {self.kind}")
        if self.kind == "cosine" and self.warmup_steps >= self.total_steps:
            raise ValueError(f"the warm-up ({self.warmup_steps} steps) must be shorter than the training "
                             f"({self.total_steps} steps)")
        if self.kind == "onecycle" and self.total_steps < 3:
            raise ValueError(f"the onecycle schedule needs at least 3 steps, the run has {self.total_steps}; "
                             f"train longer (more --epochs or a smaller --batch-size)")
        if self.kind == "onecycle" and not 1 <= self.warmup_steps <= self.total_steps - 2:
            raise ValueError(f"onecycle's rise must take 1 to {self.total_steps - 2} of the {self.total_steps} "
                             f"steps, got {self.warmup_steps}; change --warmup-epochs")
        if self.milestones and self.kind != "step":
            raise ValueError(f"milestones belong to the step schedule, not to {self.kind}")
        if any(not isinstance(m, int) or m < 1 for m in self.milestones) or list(self.milestones) != sorted(
                set(self.milestones)):
            raise ValueError(f"milestones must be increasing positive step numbers, got {self.milestones!r}")
        if not (_is_number(self.gamma) and 0 < self.gamma <= 1):
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma!r}")
        return self

    def lr_at(self, step: int) -> float:
        """The rate of step ``step`` (0-based), PyTorch's closed forms in float64."""
        k, lr = int(step), float(self.lr)
        if self.kind == "constant":
            return lr
        if self.kind == "step":
            return lr * float(self.gamma) ** sum(1 for m in self.milestones if m <= k)
        w, total = self.warmup_steps, self.total_steps
        if self.kind == "cosine":
            if k < w:  # LinearLR(start_factor=WARMUP_START_FACTOR, total_iters=w)
                return lr * (WARMUP_START_FACTOR + (1 - WARMUP_START_FACTOR) * k / w)
            return lr * (1 + math.cos(math.pi * min(k - w, total - w) / (total - w))) / 2  # CosineAnnealingLR
        # OneCycleLR(max_lr=lr, total_steps=total, pct_start=(w + 1) / total, anneal_strategy="cos")
        initial = lr / ONECYCLE_DIV_FACTOR
        if k <= w:
            start, end, pct = initial, lr, k / w
        else:
            start, end, pct = lr, initial / ONECYCLE_FINAL_DIV_FACTOR, (k - w) / (total - 1 - w)
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    def rates(self, steps: Optional[Iterable[int]] = None):
        """``lr_at`` of each step (all ``total_steps`` by default), as a list."""
        return [self.lr_at(k) for k in (range(self.total_steps) if steps is None else steps)]

    @property
    def onecycle_pct_start(self) -> float:
        """``OneCycleLR``'s ``pct_start`` whose peak falls on step ``warmup_steps``."""
        return (self.warmup_steps + 1) / self.total_steps


@dataclass(frozen=True)
class Recipe:
    """What a training step computes beyond the network: the optimizer, its schedule, the loss
    and the evaluation's views (see the module docstring). The defaults are the chapter's."""

    schedule: Schedule = field(default_factory=Schedule)
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    tta: str = "none"

    def __post_init__(self):
        self.check()

    def check(self) -> "Recipe":
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be a common.optim.Schedule, got {type(self.schedule).__name__}")
        if not (_is_number(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"nesterov must be True or False, got {self.nesterov!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs a momentum above 0 (--momentum 0.9, say)")
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight decay must be a number >= 0, got {self.weight_decay!r}")
        if not (_is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise ValueError(f"label smoothing must lie in [0, 1), got {self.label_smoothing!r}")
        if self.tta not in TTA:
            raise ValueError(f"unknown test-time augmentation {self.tta!r}; choose one of: {', '.join(TTA)}")
        return self

    @property
    def lr(self) -> float:
        """The schedule's base rate (the constant rate, or the peak)."""
        return self.schedule.lr

    @property
    def is_chapter(self) -> bool:
        """Plain SGD at a constant rate, the chapter's mean cross-entropy, one view."""
        return (self.schedule.kind == "constant" and self.momentum == 0 and self.weight_decay == 0
                and self.label_smoothing == 0 and self.tta == "none")

    def replace(self, **changes) -> "Recipe":
        return replace(self, **changes)


def chapter_recipe(lr: float = 0.05) -> Recipe:
    """The chapter's: plain SGD at the constant rate ``lr``."""
    return Recipe(Schedule("constant", lr))


def resolve_recipe(lr, recipe: Optional[Recipe]) -> Recipe:
    """What a Trainer built with ``lr=`` and ``recipe=`` trains with: ``recipe`` (whose schedule has
    its own rate), or without one the chapter's at ``lr``."""
    if recipe is None:
        return chapter_recipe(lr)
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a common.optim.Recipe, got {type(recipe).__name__}")
    return recipe


def canonical_state_names(trainable: Iterable[str], recipe: Recipe) -> Tuple[str, ...]:
    """The names of the optimizer state of a network whose trainable arrays are ``trainable``."""
    names = [STEP_STATE]
    if recipe.momentum:
        names += [MOMENTUM_PREFIX + name for name in trainable]
    return tuple(names)


def describe(recipe: Recipe) -> Dict[str, object]:
    """The recipe as plain values (what metrics.json records beside the training options)."""
    schedule = recipe.schedule
    return {"schedule": schedule.kind, "lr": schedule.lr, "total_steps": schedule.total_steps,
            "warmup_steps": schedule.warmup_steps, "milestones": list(schedule.milestones), "gamma": schedule.gamma,
            "momentum": recipe.momentum, "nesterov": recipe.nesterov, "weight_decay": recipe.weight_decay,
            "label_smoothing": recipe.label_smoothing, "tta": recipe.tta}
