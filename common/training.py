"""The training loop, checkpoints and metrics: written once, driven through a backend's Trainer.

A backend supplies a ``Trainer`` (see :mod:`common.backend`): it converts a batch, runs one
SGD step and one evaluation step, and reads scalars back from the device. Everything else —
which batches in which order, when to synchronise, how examples/sec is measured, what a
checkpoint holds, what happens when the loss becomes NaN — is decided here, so it is the same
in every backend.

How examples/sec is measured (the same for every backend): wall-clock time of one epoch's
training loop — taking each batch from the input pipeline, moving it to the device, the
forward and backward pass and the SGD update, and the final wait for the device — divided by
the number of training examples. Evaluation is not counted; neither is the checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import socket
import sys
import time
from datetime import datetime, timezone
from typing import Dict, List, Optional

import numpy as np

from . import distributed
from .backend import BACKENDS, backend_part
from .data import DataConfig, build_transforms, fashion_mnist_loader, fashion_mnist_loaders
from .files import TEMPORARY_PREFIX, atomic_write
from .hparams import D2L, PRESETS, TrainConfig, check_precision
from .optim import STEP_STATE, chapter_recipe, describe
from .sharding import check_shardable
from .spec import arch_name, get_spec
from .tensorboard import TensorBoardLog, open_log
from .weights import init_weights, load_weights, read_metadata, read_optimizer_state, read_spec, save_weights

__all__ = [
    "CHECKPOINT_NAME",
    "MODEL_NAME",
    "LEGACY_CHECKPOINT_NAME",
    "METRICS_NAME",
    "find_checkpoint",
    "run_directory_lock",
    "TrainingDiverged",
    "CheckpointError",
    "run_epoch",
    "evaluate_loader",
    "fit",
    "train",
    "evaluate",
    "train_ch6",
]

#: A run directory's checkpoint: weights, BatchNorm statistics, optimizer and training state (what
#: ``--resume`` reads), a safetensors file (:func:`common.weights.save_weights`).
CHECKPOINT_NAME = "checkpoint.safetensors"
#: The same file without the optimizer's tensors: the trained network, for the ecosystem's models.
MODEL_NAME = "model.safetensors"
#: The checkpoint of runs written before safetensors: still resumed, never written.
LEGACY_CHECKPOINT_NAME = "checkpoint.npz"
METRICS_NAME = "metrics.json"
LOCK_NAME = ".lock"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed, or one that would be overwritten."""


def _progress(total, description, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, unit="batch")


def _batch_size(labels) -> int:
    shape = getattr(labels, "shape", None)
    return int(shape[0]) if shape is not None else len(labels)


def run_epoch(trainer, loader, *, epoch: int = 0, train: bool = True, progress: bool = False,
              description: str = "") -> Dict[str, float]:
    """One pass over ``loader``: SGD steps if ``train`` else evaluation steps.

    Returns ``{"loss", "accuracy", "examples", "seconds", "step_losses"}`` (mean loss,
    fraction correct, and each step's mean loss in order). A data-parallel trainer's steps take
    its shard of each batch and return the sums over all workers' shards, which count here.
    Scalars are read back every
    ``trainer.sync_every`` steps; a non-finite training loss raises :class:`TrainingDiverged`
    naming the (1-based) epoch and step where it first appeared.
    """
    step_fn = trainer.train_step if train else trainer.eval_step
    sync_every = trainer.sync_every if train else 10**9
    workers = trainer.world_size if train else 1
    bar = _progress(len(loader) if hasattr(loader, "__len__") else None, description, progress)
    loss_sum = correct = 0.0
    examples = 0
    pending: List[tuple] = []
    step_losses: List[float] = []

    def flush():
        nonlocal loss_sum, correct
        if not pending:
            return
        values = trainer.to_host([v for _, _, pair in pending for v in pair])
        for index, (step, size, _) in enumerate(pending):
            step_loss, step_correct = values[2 * index], values[2 * index + 1]
            if train and not math.isfinite(step_loss):
                raise TrainingDiverged(
                    f"loss became {step_loss} at epoch {epoch + 1}, step {step + 1}; "
                    f"lower the learning rate (--lr) or check the data"
                )
            loss_sum += step_loss
            correct += step_correct
            step_losses.append(step_loss / size)
        if bar is not None:
            bar.update(len(pending))
            bar.set_postfix(loss=f"{loss_sum / max(examples, 1):.3f}", acc=f"{correct / max(examples, 1):.3f}")
        pending.clear()

    start = time.perf_counter()
    try:
        for step, (images, labels) in enumerate(loader):
            x, y = trainer.to_batch(images, labels)
            size = _batch_size(labels) * workers
            pending.append((step, size, step_fn(x, y)))
            examples += size
            if len(pending) >= sync_every:
                flush()
        flush()
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    if examples == 0:
        raise ValueError("the data loader yielded no batches; is the subset smaller than one batch with drop_last?")
    return {"loss": loss_sum / examples, "accuracy": correct / examples, "examples": examples, "seconds": seconds,
            "step_losses": step_losses}


def evaluate_loader(trainer, loader, progress: bool = False) -> Dict[str, float]:
    """Mean loss and accuracy of ``trainer``'s network over ``loader`` (eval mode)."""
    return run_epoch(trainer, loader, train=False, progress=progress, description="evaluate")


def _environment(trainer) -> dict:
    return {
        "backend": trainer.backend,
        "framework": trainer.framework,
        "device": trainer.device_name,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "workers": trainer.world_size,
        "engine": trainer.engine,
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path, payload) -> None:
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def find_checkpoint(out_dir) -> Optional[str]:
    """The path of the checkpoint in run directory ``out_dir``: :data:`CHECKPOINT_NAME`, or for a
    run written before safetensors :data:`LEGACY_CHECKPOINT_NAME`; None if it has neither."""
    for name in (CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME):
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            return path
    return None


def _kept_checkpoint(error: TrainingDiverged, out_dir) -> TrainingDiverged:
    """``error``, telling where the last good checkpoint is when there is one."""
    kept = find_checkpoint(out_dir) if out_dir is not None else None
    if kept:
        return TrainingDiverged(f"{error}; the last good checkpoint is kept in {kept}")
    return error


def _check_finite(epoch: int, evaluation: Dict[str, float], weights: Dict[str, np.ndarray]) -> None:
    """Refuse an epoch whose end state cannot be used: its weights or test loss are not finite.

    A finite training loss does not prove a usable network: weights or running statistics can
    overflow only in the last step, or the eval-mode forward can (running statistics in place
    of batch statistics) while the train-mode one does not.
    """
    broken = next((name for name, value in weights.items() if not np.all(np.isfinite(value))), None)
    if broken is not None:
        problem = f"{broken} is not finite"
    elif not math.isfinite(evaluation["loss"]):
        problem = f"the test loss is {evaluation['loss']}"
    else:
        return
    raise TrainingDiverged(f"{problem} after epoch {epoch + 1}; lower the learning rate (--lr) or check the data")


def fit(trainer, train_loader, test_loader, config: TrainConfig, *, out_dir=None, start_epoch: int = 0,
        history: Optional[List[dict]] = None, step_losses: Optional[List[float]] = None, quiet: bool = False,
        progress: Optional[bool] = None, print_fn=print, tensorboard: Optional[TensorBoardLog] = None) -> List[dict]:
    """Train ``trainer`` for epochs ``start_epoch .. config.epochs - 1``.

    After every epoch: one summary line (unless ``quiet``), and, with ``out_dir``, the
    checkpoint (:data:`CHECKPOINT_NAME`: canonical weights plus the state needed to resume),
    the model (:data:`MODEL_NAME`: the checkpoint less the optimizer's tensors) and
    ``metrics.json`` (with every step's training loss, ``step_losses``, continuing those
    given), each replaced atomically; with ``tensorboard``, the epoch's steps and its record as
    TensorBoard scalars (:mod:`common.tensorboard`). A non-finite training loss, test loss, weight or running statistic
    raises :class:`TrainingDiverged` and leaves the last good checkpoint as it was. Returns
    the per-epoch history (a list of dicts with ``epoch, train_loss, train_acc, test_acc,
    test_loss, examples_per_sec, seconds, eval_seconds``).
    """
    if progress is None:
        progress = not quiet and sys.stderr.isatty()
    shard = getattr(train_loader, "shard", (0, 1))
    if shard != (trainer.rank, trainer.world_size):
        raise ValueError(f"the training loader gives shard {shard[0]} of {shard[1]}, but the trainer is worker "
                         f"{trainer.rank} of {trainer.world_size}; build the loader with shard=(rank, world_size)")
    history = list(history or [])
    step_losses = list(step_losses or [])
    schedule = trainer.recipe.schedule
    wall_start = time.perf_counter() - sum(h["seconds"] + h["eval_seconds"] for h in history)
    started = _now()
    for epoch in range(start_epoch, config.epochs):
        train_loader.set_epoch(epoch)
        try:
            stats = run_epoch(trainer, train_loader, epoch=epoch, train=True, progress=progress,
                              description=f"epoch {epoch + 1}/{config.epochs}")
            evaluation = evaluate_loader(trainer, test_loader)
            weights = trainer.export_weights()
            _check_finite(epoch, evaluation, weights)
        except TrainingDiverged as error:
            raise _kept_checkpoint(error, out_dir) from None
        record = {
            "epoch": epoch + 1,
            "train_loss": stats["loss"],
            "train_acc": stats["accuracy"],
            "test_acc": evaluation["accuracy"],
            "test_loss": evaluation["loss"],
            "examples_per_sec": stats["examples"] / stats["seconds"],
            "seconds": stats["seconds"],
            "eval_seconds": evaluation["seconds"],
        }
        history.append(record)
        if tensorboard is not None:
            done = len(step_losses)
            tensorboard.epoch(done, stats["step_losses"], schedule.rates(range(done, done + len(stats["step_losses"]))),
                              record)
        step_losses.extend(stats["step_losses"])
        if not quiet:
            print_fn(
                f"[{trainer.backend}] epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.3f}, "
                f"train acc {record['train_acc']:.3f}, test acc {record['test_acc']:.3f}, "
                f"{record['examples_per_sec']:.1f} examples/sec on {trainer.device_name}"
            )
        if out_dir is not None:
            optimizer_state = trainer.export_optimizer_state()  # the buffers to the host: only to write them
            steps_done = int(optimizer_state[STEP_STATE])
            state = {"epoch": epoch + 1, "config": config.to_dict(), "backend": trainer.backend, "history": history,
                     "step_losses": step_losses, "recipe": describe(trainer.recipe)}
            save_weights(os.path.join(out_dir, CHECKPOINT_NAME), weights, config.spec,
                         metadata={"train_state": state}, optimizer_state=optimizer_state)
            save_weights(os.path.join(out_dir, MODEL_NAME), weights, config.spec, metadata={"train_state": state})
            metrics = dict(_environment(trainer))
            peak_memory = trainer.peak_memory_bytes()
            metrics.update({
                "peak_device_memory_mb": None if peak_memory is None else round(peak_memory / 2**20, 1),
                "hyperparameters": config.to_dict(),
                "recipe": describe(trainer.recipe),
                "seed": config.seed,
                "epochs_completed": epoch + 1,
                "finished": epoch + 1 == config.epochs,
                "history": history,
                "step_losses": step_losses,
                "step_lrs": schedule.rates(range(steps_done)),
                "wall_seconds": time.perf_counter() - wall_start,
                "started": started,
                "updated": _now(),
            })
            _write_json(os.path.join(out_dir, METRICS_NAME), metrics)
    return history


@contextlib.contextmanager
def run_directory_lock(out_dir):
    """Hold ``out_dir`` for one training run: a second run (or ``--resume``) into the same
    directory while this one lives is refused with a one-line :class:`CheckpointError`.

    An exclusive ``flock`` on ``out_dir/.lock``, which the kernel releases when the holder exits
    however it ends, so a dead run's lock is never stale. A directory this creates and leaves
    empty (the run failed before its first epoch) is removed again.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    created = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK_NAME)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise CheckpointError(f"{out_dir} is in use by another training run ({owner}); wait for it to end or "
                              f"choose another --out") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        _remove_stale_temporaries(out_dir)
        handle.seek(0)
        handle.truncate()
        handle.close()  # releases the lock
        if created and os.listdir(out_dir) == [LOCK_NAME]:
            with contextlib.suppress(OSError):
                os.remove(path)
                os.rmdir(out_dir)


def _remove_stale_temporaries(out_dir) -> None:
    """Remove what a writer killed mid-write left in ``out_dir``: :func:`common.files.atomic_write`'s
    temporary files (a worker stopped by SIGTERM or SIGKILL cannot remove its own). Called by the
    lock's holder when the run ends, when nothing else may write there."""
    for name in os.listdir(out_dir):
        if name.startswith(TEMPORARY_PREFIX):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(out_dir, name))


def resolve_config(preset, config, overrides) -> TrainConfig:
    if preset is not None and config is not None:
        raise ValueError("pass either preset or config, not both")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        config = PRESETS[preset]
    config = config or D2L
    unknown = [key for key in overrides if not hasattr(config, key)]
    if unknown:
        raise TypeError(f"unknown training option(s): {', '.join(unknown)}")
    config = config.replace(**{k: v for k, v in overrides.items()}).validate()
    return config.replace(arch=arch_name(config.arch))  # a tuple as its text, as files and the CLI write it


def _resume_state(out_dir, config: TrainConfig):
    path = find_checkpoint(out_dir)
    if path is None:
        raise CheckpointError(f"--resume: no checkpoint at {os.path.join(out_dir, CHECKPOINT_NAME)}; "
                              f"start without --resume")
    weights = load_weights(path, config.spec)
    state = read_metadata(path).get("train_state")
    if not state:
        raise CheckpointError(f"{path}: holds weights but no training state; it cannot be resumed")
    saved = TrainConfig(**state["config"])
    # What the run computes; a schedule's rates also depend on the number of epochs.
    keys = ("arch", "style", "stem", "precision", "batch_size", "lr", "resize", "seed", "subset", "test_subset",
            "drop_last", "transforms", "momentum", "nesterov", "weight_decay", "label_smoothing", "schedule",
            "warmup_epochs", "milestones", "gamma") + (("epochs",) if config.schedule != "constant" else ())
    differs = [k for k in keys if getattr(saved, k) != getattr(config, k)]
    if differs:
        pairs = ", ".join(f"{k}={getattr(saved, k)!r} (now {getattr(config, k)!r})" for k in differs)
        raise CheckpointError(f"{path}: was trained with {pairs}; resume with the same settings or use another --out")
    if state["epoch"] > config.epochs:
        raise CheckpointError(f"{path}: already has {state['epoch']} epochs, more than --epochs {config.epochs}")
    state["optimizer_state"] = read_optimizer_state(path)
    return weights, state


def _trainer_class(backend):
    """A backend's short name ("torch") or its Trainer class -> the class."""
    return backend_part(backend, "train").Trainer if isinstance(backend, str) else backend


def train(backend, *, net=None, preset: Optional[str] = None, config: Optional[TrainConfig] = None,
          out_dir=None, resume: bool = False, quiet: bool = False, progress: Optional[bool] = None,
          device=None, data_dir=None, synthetic: bool = False, print_fn=print, tensorboard=None,
          **overrides) -> List[dict]:
    """Train ResNet on Fashion-MNIST with one backend (its short name, or its ``Trainer`` class).

    The recipe is ``config`` or ``preset`` ("d2l": the chapter's; the default) with
    ``overrides`` (``epochs=1, resize=None, ...``, see :class:`common.hparams.TrainConfig`).
    Initial weights come from :func:`common.weights.init_weights` for the seed, the data order
    from :mod:`common.data` for the seed, so every backend computes the same run. With
    ``out_dir``, a checkpoint, the model and ``metrics.json`` are written after every epoch; an
    existing checkpoint or model is never overwritten unless ``resume`` continues the run (which
    resumes a run written before safetensors from its ``checkpoint.npz`` and writes safetensors
    from then on, leaving the ``.npz`` as it was). With ``tensorboard`` (a folder), the run's
    scalars are written there too (:mod:`common.tensorboard`).

    In a process whose environment describes a data-parallel job (:mod:`common.distributed`),
    this trains as one of its workers, with the backend's ``distributed.DistributedTrainer`` on
    its shard of every batch; worker 0 alone writes, prints and shows progress, and every
    worker returns the same history.
    """
    config = resolve_config(preset, config, overrides)
    if out_dir is None and resume:
        raise CheckpointError("--resume needs --out DIR (the run's directory)")
    name = backend if isinstance(backend, str) else backend.backend
    workers = distributed.job_size(name) if name in BACKENDS else 1
    if workers > 1:
        check_shardable(config.batch_size, workers)
        module = backend_part(name, "distributed")
        try:
            return _train(module.DistributedTrainer, net, config, out_dir, resume, quiet, progress, device, data_dir,
                          synthetic, print_fn, tensorboard)
        finally:
            module.shutdown()
    lock = run_directory_lock(out_dir) if out_dir is not None else contextlib.nullcontext()
    with lock:
        return _train(_trainer_class(backend), net, config, out_dir, resume, quiet, progress, device, data_dir,
                      synthetic, print_fn, tensorboard)


def check_start(out_dir, resume: bool, config: TrainConfig):
    """Where a run into ``out_dir`` starts: ``(start_epoch, history, step_losses, weights,
    optimizer_state)`` (``weights`` None and the state empty for a new run); a one-line
    :class:`CheckpointError` when it cannot (a checkpoint or model there without ``resume``, or
    a checkpoint ``resume`` cannot continue)."""
    if out_dir is not None:
        if resume:
            weights, state = _resume_state(out_dir, config)
            return (state["epoch"], state.get("history", []), state.get("step_losses", []), weights,
                    state["optimizer_state"])
        checkpoint = find_checkpoint(out_dir)
        if checkpoint is not None:
            raise CheckpointError(
                f"{checkpoint} already exists; pass --resume to continue it, or choose another --out"
            )
        model = os.path.join(out_dir, MODEL_NAME)
        if os.path.exists(model):
            raise CheckpointError(f"{model} already exists; remove it or choose another --out")
    return 0, [], [], None, {}


def _train(trainer_class, net, config, out_dir, resume, quiet, progress, device, data_dir, synthetic, print_fn,
           tensorboard=None):
    start_epoch, history, step_losses, weights, optimizer_state = check_start(out_dir, resume, config)
    data = DataConfig(config.batch_size, resize=config.resize, seed=config.seed, subset=config.subset,
                      test_subset=config.test_subset, data_dir=data_dir, drop_last=config.drop_last,
                      synthetic=synthetic, transforms=build_transforms(config.transforms))
    train_loader, test_loader = fashion_mnist_loaders(data)  # every shard has the same number of steps
    recipe = config.recipe(len(train_loader))
    trainer = trainer_class(net, arch=config.spec, style=config.style, lr=config.lr, device=device,
                            precision=config.precision, deterministic=config.deterministic, recipe=recipe)
    spec, in_channels, num_classes = trainer.architecture()
    if spec != config.spec:
        raise ValueError(f"the network passed in is {spec.label}, the run's is {config.spec.label}; "
                         f"pass arch=, style= and stem= to match it")
    if weights is None:
        weights = init_weights(spec, config.seed, in_channels, num_classes)
    trainer.import_weights(weights)
    if optimizer_state:
        trainer.import_optimizer_state(optimizer_state)
    rank, world_size = trainer.rank, trainer.world_size
    writer = rank == 0
    # A data-parallel job's worker 0 holds the run directory, unless the launcher does already.
    lock = (run_directory_lock(out_dir) if world_size > 1 and writer and out_dir is not None
            and not distributed.launched() else contextlib.nullcontext())
    log = open_log(tensorboard, len(step_losses)) if writer else None
    with lock, log if log is not None else contextlib.nullcontext():
        if world_size > 1:
            train_loader = fashion_mnist_loader("train", data.replace(shard=(rank, world_size)))
        quiet = quiet or not writer
        if start_epoch and not quiet:
            print_fn(f"[{trainer.backend}] resuming after epoch {start_epoch} from {find_checkpoint(out_dir)}")
        return fit(trainer, train_loader, test_loader, config, out_dir=out_dir if writer else None,
                   start_epoch=start_epoch, history=history, step_losses=step_losses, quiet=quiet,
                   progress=False if not writer else progress, print_fn=print_fn, tensorboard=log)


def evaluation_inputs(weights, arch=None, style=None, stem=None, *, resize: Optional[int] = 96, batch_size: int = 256,
                      test_subset: Optional[int] = None, data_dir=None, synthetic: bool = False):
    """What an evaluation scores: ``(spec, weights, test_loader)`` for ``weights`` (a dict, or a
    weights/checkpoint file, checked against the spec) and the test set as :func:`evaluate` reads it.
    ``arch``, ``style`` and ``stem`` default to the file's (for a dict: ResNet-18, style d2l, the
    ImageNet stem); given and different from the file's, a one-line error names both."""
    if not isinstance(weights, dict):
        saved = read_spec(weights)
        spec = get_spec(saved.name if arch is None else arch, style or saved.style, stem or saved.stem)
        weights = load_weights(weights, spec)
    else:
        spec = get_spec(arch or "resnet18", style, stem)
    test_loader = fashion_mnist_loader("test", DataConfig(batch_size, resize=resize, test_subset=test_subset,
                                                          data_dir=data_dir, synthetic=synthetic))
    return spec, weights, test_loader


def evaluate(backend, *, weights, arch=None, style=None, stem=None, resize: Optional[int] = 96,
             batch_size: int = 256, test_subset: Optional[int] = None, data_dir=None, synthetic: bool = False,
             device=None, progress: bool = False, precision: str = "fp32", tta: str = "none") -> Dict[str, float]:
    """Test loss and accuracy of ``weights`` (a dict, or a weights/checkpoint file) with one backend
    (its short name, or its ``Trainer`` class). ``arch``, ``style`` and ``stem`` default to the
    file's (for a dict: ResNet-18, style d2l, the ImageNet stem); given and different from the
    file's, a one-line error names both. ``precision`` is the arithmetic of the evaluation
    (:data:`common.hparams.PRECISIONS`), ``tta`` its views (:data:`common.optim.TTA`)."""
    spec, weights, test_loader = evaluation_inputs(weights, arch, style, stem, resize=resize, batch_size=batch_size,
                                                   test_subset=test_subset, data_dir=data_dir, synthetic=synthetic)
    trainer = _trainer_class(backend)(None, arch=spec, style=spec.style, device=device,
                                      precision=check_precision(precision), recipe=chapter_recipe().replace(tta=tta))
    trainer.import_weights(weights)
    return evaluate_loader(trainer, test_loader, progress=progress)


class _Epochs:
    """Lets the chapter's iterators (which may be plain iterables) be re-run per epoch."""

    def __init__(self, iterable):
        self.iterable = iterable

    def set_epoch(self, epoch):
        if hasattr(self.iterable, "set_epoch"):
            self.iterable.set_epoch(epoch)

    def __iter__(self):
        return iter(self.iterable)

    def __len__(self):
        return len(self.iterable)


def train_ch6(backend, net, train_iter, test_iter, num_epochs: int, lr: float, device=None,
              print_fn=print) -> List[dict]:
    """The chapter's ``train_ch6(net, train_iter, test_iter, num_epochs, lr, device)`` with one
    backend (its short name, or its ``Trainer`` class): train, then print its closing lines.

    The chapter re-initialises the network Xavier-uniform; this imports
    :func:`common.weights.init_weights` for seed 0 (Xavier-uniform too), so every backend
    starts from the same numbers. Prints ``training on <device>``, then ``loss ..., train acc
    ..., test acc ...`` and ``... examples/sec on <device>``, with examples/sec measured as
    everywhere in this project (see the module docstring).
    """
    trainer = _trainer_class(backend)(net, lr=lr, device=device)
    arch, in_channels, num_classes = trainer.architecture()
    trainer.import_weights(init_weights(arch, 0, in_channels, num_classes))
    print_fn("training on", trainer.device_name)
    config = TrainConfig(epochs=num_epochs, lr=trainer.lr)
    history = fit(trainer, _Epochs(train_iter), _Epochs(test_iter), config, quiet=True, progress=False)
    last = history[-1]
    print_fn(f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, test acc {last['test_acc']:.3f}")
    total_examples = sum(h["examples_per_sec"] * h["seconds"] for h in history)
    total_seconds = sum(h["seconds"] for h in history)
    print_fn(f"{total_examples / total_seconds:.1f} examples/sec on {trainer.device_name}")
    return history
