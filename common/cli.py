"""``resnet-fmnist``: train, evaluate, export, compare and benchmark the backends
(:data:`common.backend.BACKENDS`).

Every failure a user can cause (a bad argument, a framework that is not installed, missing or
corrupt data, an unreadable checkpoint) ends with one line on stderr and a non-zero exit,
never a traceback, and never an overwritten checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .backend import BACKENDS, BackendUnavailable, check_installed, load_backend
from .data.transforms import TRANSFORM_OPTIONS
from .export import DEFAULT_NAMES as EXPORT_NAMES
from .export import FORMATS as EXPORT_FORMATS
from .hparams import D2L, PRESET_HELP, PRESETS

__all__ = ["main", "build_parser"]

PROG = "resnet-fmnist"
#: "--resize not given" (None means "given as none": keep 28 x 28).
UNSET = object()


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (with where to look) instead of the whole usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _bounded(convert, kind, accept):
    """An argparse ``type``: ``convert`` the text, then require ``accept(value)``."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text}")
        return value

    return parse


_positive_int = _bounded(int, "a positive integer", lambda value: value >= 1)
_non_negative_int = _bounded(int, "a non-negative integer", lambda value: value >= 0)
_positive_float = _bounded(float, "a positive number", lambda value: 0 < value < float("inf"))


def _resize(text):
    if text.lower() in ("none", "0", "28"):
        return None  # the native 28 x 28
    value = _positive_int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"resize must be 16 or more (or 'none' for 28 x 28), got {value}")
    return value


def _add_data_options(parser):
    parser.add_argument("--data-dir", help="directory with the four Fashion-MNIST IDX files "
                        "(default: $FASHION_MNIST_DIR, the cache, /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--synthetic", action="store_true",
                        help="use a small synthetic stand-in for Fashion-MNIST (offline demos and tests)")


def _arch(text):
    """An argparse ``type`` for --arch: a known name or the book's tuple, checked (with the style later)."""
    from .spec import get_spec

    try:
        return get_spec(text).name
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_network(parser, default_hint):
    from .spec import RESNET_SPECS, STEMS, STYLES

    parser.add_argument("--arch", type=_arch, default=None,
                        help=f"{', '.join(RESNET_SPECS)}, or the book's tuple of (num_residuals, num_channels) "
                             f"pairs, e.g. '((2, 64), (2, 128))' ({default_hint})")
    parser.add_argument("--style", choices=STYLES, default=None,
                        help=f"d2l: the chapter's blocks; torchvision: torchvision's ResNet exactly; preact: "
                             f"pre-activation blocks ({default_hint})")
    parser.add_argument("--stem", choices=STEMS, default=None,
                        help=f"imagenet: the chapter's 7 x 7 / 2 convolution and 3 x 3 / 2 max pool; small: a "
                             f"3 x 3 / 1 convolution and no pool, for small images ({default_hint})")


def _add_precision(parser, determinism=True):
    from .hparams import PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="fp32: exact float32, TF32 off (the default); tf32: a GPU's TF32 convolutions and "
                             "matmuls (a CPU computes fp32); bf16: mixed precision, bfloat16 convolutions and "
                             "dense layers with float32 weights, BatchNorm and loss")
    if determinism:
        parser.add_argument("--nondeterministic", action="store_true",
                            help="let a GPU pick faster kernels that are not bit-identical from run to run "
                                 "(cuDNN autotuning, atomics); a resumed run then differs from an uninterrupted one")


def _add_workers(parser):
    parser.add_argument("--workers", type=_positive_int, default=1,
                        help="data-parallel worker processes on this machine, joined by the framework's own "
                             "distributed engine; each takes batch-size / N examples of every batch and a share of "
                             "the CPU cores (or one GPU each). Default 1")
    parser.add_argument("--port", type=_bounded(int, "a port number", lambda value: 1 <= value <= 65535),
                        default=None, help="the workers' coordinator port on 127.0.0.1 (default: a free one)")


def _add_backend(parser, onnx=False):
    """--backend (and --device); with ``onnx``, ONNX Runtime too, which runs an exported graph."""
    choices = sorted(BACKENDS) + (["onnx"] if onnx else [])
    runtimes = [f"{name} ({row.framework})" for name, row in BACKENDS.items()]
    if onnx:
        runtimes.append("onnx (ONNX Runtime on the CPU, the checkpoint exported to ONNX; pip install "
                        "'resnet-fmnist[onnx]')")
    parser.add_argument("--backend", required=True, choices=choices, help="framework to run: " + ", ".join(runtimes))
    parser.add_argument("--device", default=None,
                        help="device to use, e.g. cpu, gpu, gpu:1 (default: the first GPU if there is one, else cpu)")


def _milestones(text):
    """An argparse ``type`` for --milestones: epochs separated by commas."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs separated by commas (e.g. 15,25), got {text!r}") from None
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"milestones are epochs from 1 on, got {text}")
    return values


_fraction = _bounded(float, "a number in [0, 1)", lambda value: 0 <= value < 1)


def _add_optimizer(parser):
    """The optimizer, schedule and loss (:mod:`common.optim`); the defaults are the chapter's."""
    from .optim import SCHEDULES

    group = parser.add_argument_group("optimizer and schedule (PyTorch's conventions; default: the chapter's "
                                      "plain SGD at a constant rate)")
    group.add_argument("--momentum", type=_fraction, help=f"SGD momentum (default {D2L.momentum})")
    group.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum")
    group.add_argument("--weight-decay", type=_bounded(float, "a number >= 0", lambda value: 0 <= value < 1),
                       help="L2 weight decay on every trainable array, added to the gradient (default 0)")
    group.add_argument("--label-smoothing", type=_fraction, help="label smoothing of the training loss (default 0)")
    group.add_argument("--schedule", choices=SCHEDULES,
                       help="learning rate per step: constant (default); cosine: linear warm-up, then cosine to "
                            "zero; onecycle: PyTorch's OneCycleLR; step: times --gamma at each --milestones epoch")
    group.add_argument("--warmup-epochs", type=_bounded(float, "a number of epochs >= 0", lambda value: value >= 0),
                       help="cosine's linear warm-up (default none) or onecycle's rise (default 30%% of the run)")
    group.add_argument("--milestones", type=_milestones, help="the step schedule's epochs (default: half and "
                                                                "three quarters of the run)")
    group.add_argument("--gamma", type=_bounded(float, "a number in (0, 1]", lambda value: 0 < value <= 1),
                       help="the step schedule's factor (default 0.1)")
    _add_tta(group)


def _add_tta(parser):
    from .optim import TTA

    parser.add_argument("--tta", choices=TTA, default=None,
                        help="test-time views: none (default); flip: the mean logits of each image and its mirror")


def _add_transforms(parser):
    """One option per transform a run can ask for (:data:`common.data.TRANSFORM_OPTIONS`)."""
    for option in TRANSFORM_OPTIONS.values():
        flag = "--" + option.name.replace("_", "-")
        if option.kind is bool:
            parser.add_argument(flag, dest=f"transform_{option.name}", action="store_true", help=option.help)
        else:
            parser.add_argument(flag, dest=f"transform_{option.name}", type=option.kind, default=None,
                                metavar=option.name.upper(), help=option.help)


def _requested_transforms(args):
    """``(name, value)`` of every transform option given on the command line, in their order."""
    given = ((name, getattr(args, f"transform_{name}")) for name in TRANSFORM_OPTIONS)
    return tuple((name, value) for name, value in given if value is not None and value is not False)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="ResNet on Fashion-MNIST (the D2L chapter: ResNet-18; its exercises: ResNet-34 to 152, "
                                 "ResNeXt, three styles) with "
                                 + ", ".join(row.framework for row in BACKENDS.values()) + ".")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train one backend; writes a checkpoint, the model and metrics.json")
    _add_backend(train)
    train.add_argument("--preset", choices=sorted(PRESETS),
                       help="a whole recipe, which the options below change: " + "; ".join(
                           f"{name} = {PRESET_HELP[name]}" for name in PRESETS))
    _add_network(train, "default resnet18, d2l")
    _add_precision(train)
    train.add_argument("--epochs", type=_positive_int, help=f"default {D2L.epochs}")
    train.add_argument("--batch-size", type=_positive_int, help=f"default {D2L.batch_size}")
    train.add_argument("--lr", type=_positive_float, help=f"SGD learning rate, default {D2L.lr}")
    train.add_argument("--resize", type=_resize, default=UNSET,
                       help=f"resize images to R x R (bilinear); 'none' keeps 28 x 28; default {D2L.resize}")
    train.add_argument("--subset", type=_positive_int, help="train on a seeded, class-stratified sample of N images")
    train.add_argument("--test-subset", type=_positive_int, help="evaluate on a stratified sample of N test images")
    train.add_argument("--seed", type=_non_negative_int, help="initial weights and data order (default 0)")
    _add_transforms(train)
    _add_optimizer(train)
    train.add_argument("--out", help="run directory for checkpoint.safetensors (what --resume reads), "
                       "model.safetensors (the network alone) and metrics.json (default: runs/<backend>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished epoch")
    train.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                       help="also write TensorBoard scalars (each step's loss and rate, each epoch's losses, "
                            "accuracies and examples/sec) to DIR (default: the run's tensorboard/); "
                            "needs tensorboardX")
    train.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    _add_workers(train)
    _add_data_options(train)

    evaluate = commands.add_parser("evaluate", help="test accuracy of a weights or checkpoint file")
    _add_backend(evaluate, onnx=True)
    evaluate.add_argument("--weights", required=True, help="a checkpoint.safetensors or model.safetensors written "
                          "by any backend (or an older run's checkpoint.npz)")
    _add_network(evaluate, "default: the file's")
    _add_precision(evaluate, determinism=False)
    _add_tta(evaluate)
    evaluate.add_argument("--resize", type=_resize, default=UNSET, help=f"as in training, default {D2L.resize}")
    evaluate.add_argument("--batch-size", type=_positive_int, default=256)
    evaluate.add_argument("--test-subset", type=_positive_int, help="a stratified sample of N test images")
    _add_data_options(evaluate)

    export = commands.add_parser("export", help="a checkpoint as a file other programs read: safetensors "
                                 "(torchvision, timm), ONNX, Gluon's model zoo")
    export.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint or weights file written by any "
                        "backend (safetensors, or an older run's .npz)")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                        help="safetensors: the network without the optimizer's state (a run's model.safetensors); "
                             "onnx: an ONNX graph for ONNX Runtime (pip install 'resnet-fmnist[onnx]'); gluon: "
                             "parameters for Gluon's resnet18_v1 / resnet34_v1 (style torchvision, needs mxnet)")
    export.add_argument("--out", default=None, help="the file to write, which must not exist (default: "
                        + ", ".join(f"{name} for {fmt}" for fmt, name in EXPORT_NAMES.items())
                        + ", beside the checkpoint)")

    compare = commands.add_parser("compare", help="table and plot of several runs side by side")
    compare.add_argument("runs", nargs="+", metavar="DIR", help="run directories (or metrics.json files)")
    compare.add_argument("--out", default=None, help="where to write comparison.md and comparison.png "
                         "(default: the parent of the first run)")

    bench = commands.add_parser("bench", help="training and inference examples/sec as JSON")
    _add_backend(bench)
    _add_network(bench, "default resnet18, d2l")
    _add_precision(bench)
    bench.add_argument("--batch-size", type=_positive_int, default=64)
    bench.add_argument("--resize", type=_resize, default=96, help="image size; 'none' for 28 x 28 (default 96)")
    bench.add_argument("--steps", type=_positive_int, default=5, help="timed steps per round (default 5)")
    bench.add_argument("--rounds", type=_positive_int, default=3,
                       help="timed rounds; the median round counts (default 3)")
    bench.add_argument("--warmup", type=_non_negative_int, default=2, help="untimed steps first (default 2)")
    bench.add_argument("--reference", action="store_true",
                       help="also time the chapter's own code for this framework, twice: with the framework's "
                            "defaults and with this run's precision settings, and report both ratios")
    bench.add_argument("--peak-gflops", type=_positive_float, default=None,
                       help="the machine's fp32 peak to measure against (default: measured, see 'peak')")
    bench.add_argument("--out", default=None, help="also write the JSON to this file")
    _add_workers(bench)

    peak = commands.add_parser("peak", help="the machine's fp32 peak GFLOP/s (measured and theoretical) as JSON")
    _add_backend(peak)
    return parser


def _checkpoint_resize(args, weights_path):
    """The resize a checkpoint was trained with, unless the user said otherwise."""
    if args.resize is not UNSET:
        return args.resize
    from .weights import read_metadata

    state = read_metadata(weights_path).get("train_state") or {}
    return state.get("config", {}).get("resize", D2L.resize)


def _job_size(args) -> int:
    """The number of workers the environment describes (1: none); one line if ``--workers`` says otherwise."""
    from . import distributed

    job = distributed.job_size(args.backend)
    if job > 1 and args.workers not in (1, job):
        raise distributed.DistributedError(f"--workers {args.workers}, but the environment describes a job of {job} "
                                           f"workers; give one or the other")
    return job


def _train(args, argv):
    overrides = {
        key: value for key, value in {
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
            "subset": args.subset, "test_subset": args.test_subset, "arch": args.arch, "style": args.style,
            "stem": args.stem, "precision": args.precision, "momentum": args.momentum, "nesterov": args.nesterov,
            "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing, "schedule": args.schedule,
            "warmup_epochs": args.warmup_epochs, "milestones": args.milestones, "gamma": args.gamma, "tta": args.tta,
        }.items() if value is not None
    }
    if args.nondeterministic:
        overrides["deterministic"] = False
    transforms = _requested_transforms(args)
    if transforms:
        overrides["transforms"] = transforms
    if args.resize is not UNSET:
        overrides["resize"] = args.resize
    out_dir = args.out or os.path.join("runs", args.backend)
    preset = args.preset or "d2l"
    job = _job_size(args)
    if args.workers > 1 and job == 1:
        _launch_workers(args, argv, preset, overrides, out_dir)
    else:  # one process, or one worker of a job (ours, torchrun's, or one started by hand on several hosts)
        load_backend(args.backend).train(preset=preset, out_dir=out_dir, resume=args.resume, quiet=args.quiet,
                                         device=args.device, data_dir=args.data_dir, synthetic=args.synthetic,
                                         tensorboard=_tensorboard_dir(args, out_dir), **overrides)
        if job > 1:
            return 0  # worker 0 printed its epochs; the launcher (if any) says what was written
    if not args.quiet:
        from .training import CHECKPOINT_NAME, METRICS_NAME, MODEL_NAME

        print(f"[{args.backend}] wrote {os.path.join(out_dir, CHECKPOINT_NAME)}, {os.path.join(out_dir, MODEL_NAME)} "
              f"and {os.path.join(out_dir, METRICS_NAME)}")
    return 0


def _tensorboard_dir(args, out_dir):
    """``--tensorboard``'s folder: the one given, the run's ``tensorboard/`` without one, or None."""
    if args.tensorboard is None:
        return None
    return args.tensorboard or os.path.join(out_dir, "tensorboard")


def _launch_workers(args, argv, preset, overrides, out_dir):
    """``--workers N``: refuse once what every worker would refuse, hold the run directory, and
    run this same command line as N worker processes (:func:`common.distributed.launch`)."""
    from . import distributed
    from .sharding import check_shardable
    from .training import check_start, resolve_config, run_directory_lock

    check_installed(args.backend)  # one line here rather than one per worker
    config = resolve_config(preset, None, overrides)
    check_shardable(config.batch_size, args.workers)
    with run_directory_lock(out_dir):
        check_start(out_dir, args.resume, config)
        distributed.launch([sys.executable, "-m", "common", *argv], args.backend, args.workers, port=args.port)


def _evaluate(args):
    options = dict(weights=args.weights, arch=args.arch, style=args.style, stem=args.stem, tta=args.tta or "none",
                   resize=_checkpoint_resize(args, args.weights), batch_size=args.batch_size,
                   test_subset=args.test_subset, data_dir=args.data_dir, synthetic=args.synthetic)
    if args.backend == "onnx":  # not a backend: ONNX Runtime, running the checkpoint exported to ONNX
        result = _evaluate_onnx(args, options)
    else:
        result = load_backend(args.backend).evaluate(device=args.device, precision=args.precision or "fp32",
                                                     **options)
    print(f"[{args.backend}] {args.weights}: test loss {result['loss']:.4f}, test acc {result['accuracy']:.4f} "
          f"on {result['examples']} images")
    return 0


def _evaluate_onnx(args, options):
    from .export import optional_packages

    if (args.precision or "fp32") != "fp32":
        raise ValueError(f"--backend onnx evaluates in fp32; leave out --precision {args.precision}")
    if args.device not in (None, "cpu"):
        raise ValueError(f"--backend onnx runs ONNX Runtime on the CPU; leave out --device {args.device}")
    with optional_packages("evaluate --backend onnx", "onnx"):
        from .onnx_model import evaluate

        return evaluate(progress=False, **options)


def _export(args):
    from .export import export

    out = export(args.checkpoint, args.format, args.out)
    print(f"wrote {out}")
    return 0


def _compare(args):
    from .compare import compare

    out_dir = args.out or os.path.dirname(os.path.abspath(args.runs[0].rstrip("/")))
    compare(args.runs, out_dir=out_dir)
    return 0


def _bench(args, argv):
    from . import distributed
    from .bench import run_bench
    from .files import atomic_write

    job = _job_size(args)
    if args.workers > 1 and job == 1:
        result = _bench_workers(args, argv)
    else:
        result = run_bench(args.backend, batch_size=args.batch_size, resize=args.resize, steps=args.steps,
                           warmup=args.warmup, rounds=args.rounds, device=args.device, reference=args.reference,
                           peak_gflops=args.peak_gflops, arch=_bench_spec(args), style=args.style or "d2l",
                           precision=args.precision or "fp32", deterministic=not args.nondeterministic)
        if result is None:
            return 0  # another worker than worker 0: it reports for the job
    text = json.dumps(result, indent=2) + "\n"
    if not distributed.launched():  # a launched worker 0 hands its figures to the launcher in --out
        sys.stdout.write(text)
    if args.out:
        atomic_write(args.out, lambda handle: handle.write(text.encode()))
    return 0


def _bench_spec(args):
    from .spec import get_spec

    return get_spec(args.arch or "resnet18", args.style or "d2l", args.stem)


def _bench_workers(args, argv):
    """``bench --workers N``: one worker first (the same command, all the cores), then N workers,
    and how N scale against one: ``train_speedup_vs_one_worker`` and ``scaling_efficiency`` (that
    speed-up over N; on CPUs the workers split the cores, so there the ideal is 1 / N)."""
    import subprocess
    import tempfile

    from . import distributed
    from .sharding import check_shardable

    if args.reference:
        raise ValueError("--reference times the chapter's code in one process; leave out --workers")
    check_shardable(args.batch_size, args.workers)
    command = [sys.executable, "-m", "common", *argv]
    with tempfile.TemporaryDirectory(prefix="resnet-bench-") as scratch:
        one_path, many_path = os.path.join(scratch, "one.json"), os.path.join(scratch, "many.json")
        single = subprocess.run(command + ["--workers", "1", "--out", one_path], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if single.returncode != 0:
            lines = single.stderr.strip().splitlines() or ["no output"]
            raise distributed.DistributedError(f"the one-worker run failed: {lines[-1]}")
        with open(one_path) as handle:
            one = json.load(handle)
        # The workers' own output (the engines log to stdout) goes to stderr: stdout is the JSON.
        distributed.launch(command + ["--out", many_path, "--peak-gflops", str(one["peak"]["gflops"])],
                           args.backend, args.workers, port=args.port, stdout=sys.stderr.fileno())
        with open(many_path) as handle:
            many = json.load(handle)
    many["peak"], many["cpu"] = one["peak"], one["cpu"]  # the machine's, not one worker's share
    many["one_worker"] = {key: one[key] for key in ("train_examples_per_sec", "inference_examples_per_sec",
                                                     "train_examples_per_sec_rounds")}
    speedup = many["train_examples_per_sec"] / one["train_examples_per_sec"]
    many["train_speedup_vs_one_worker"] = round(speedup, 3)
    many["scaling_efficiency"] = round(speedup / args.workers, 3)
    return many


def _peak(args):
    from .backend import load_backend
    from .bench import measure_peak

    trainer = load_backend(args.backend).Trainer(device=args.device)
    sys.stdout.write(json.dumps(measure_peak(trainer), indent=2) + "\n")
    return 0


def _expected_errors():
    from .compare import CompareError
    from .data import DataError
    from .distributed import DistributedError
    from .tensorboard import TensorBoardError
    from .training import CheckpointError, TrainingDiverged
    from .weights import WeightsError

    return (BackendUnavailable, CheckpointError, CompareError, DataError, DistributedError, TensorBoardError,
            TrainingDiverged,
            WeightsError, ValueError, OSError)


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    handler = {"train": _train, "evaluate": _evaluate, "export": _export, "compare": _compare, "bench": _bench,
               "peak": _peak}[args.command]
    try:
        return handler(args, argv) if args.command in ("train", "bench") else handler(args)
    except KeyboardInterrupt:
        hint = " (continue with --resume)" if args.command == "train" else ""
        print(f"{PROG}: interrupted{hint}", file=sys.stderr)
        return 130
    except _expected_errors() as error:
        if os.environ.get("RESNET_FMNIST_DEBUG") == "1":
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        from .distributed import report_error

        if not report_error(message):  # a launched worker's error is the launcher's to print, naming the worker
            print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
