"""Side by side: read several runs' ``metrics.json``, write a table and a plot.

Runs of one backend with different seeds are summarised per backend (mean and standard
deviation of the final figures), since one run of the chapter's recipe says little: its
trajectory is chaotic, so two correct implementations (or one on two CPUs) take the same
steps only for the first few. Runs of different backends with the same seed and settings
are compared step by step.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Sequence

from .files import atomic_write
from .training import METRICS_NAME

__all__ = ["CompareError", "load_run", "comparison_rows", "markdown_table", "seed_summary", "first_divergent_step",
           "agreement_lines", "plot_runs", "compare"]

#: Two runs take "the same step" while their step losses differ by at most this, relative.
SAME_STEP_RTOL = 1e-3

COLUMNS = [
    ("backend", "backend"),
    ("framework", "framework"),
    ("device", "device"),
    ("network", "network"),
    ("seed", "seed"),
    ("epochs", "epochs"),
    ("train_loss", "train loss"),
    ("train_acc", "train acc"),
    ("test_acc", "test acc"),
    ("examples_per_sec", "examples/sec"),
    ("wall_seconds", "wall time (s)"),
]


class CompareError(ValueError):
    """A run directory or metrics file that cannot be compared."""


def load_run(path) -> dict:
    """Read a run: a directory holding ``metrics.json``, or the file itself."""
    path = os.fspath(path)
    file = os.path.join(path, METRICS_NAME) if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise CompareError(f"{file}: no such file; pass run directories written by 'resnet-fmnist train --out DIR'")
    try:
        with open(file) as handle:
            run = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CompareError(f"{file}: not a readable metrics.json ({error})") from None
    for key in ("backend", "framework", "device", "history"):
        if key not in run:
            raise CompareError(f"{file}: has no '{key}'; not a metrics.json written by resnet-fmnist train")
    if not run["history"]:
        raise CompareError(f"{file}: no finished epoch to compare")
    run["_source"] = file
    return run


def comparison_rows(runs: Sequence[dict]) -> List[dict]:
    """One row per run with the final epoch's figures.

    examples/sec is the last epoch's too: the first epoch also pays for compiling the step
    (XLA, hybridization, oneDNN kernel choice), which says little about steady speed.
    """
    rows = []
    for run in runs:
        history = run["history"]
        last = history[-1]
        rows.append({
            "backend": run["backend"],
            "framework": run["framework"],
            "device": run["device"],
            "network": _network(run.get("hyperparameters") or {}),
            "seed": run.get("seed", ""),
            "epochs": last["epoch"],
            "train_loss": last["train_loss"],
            "train_acc": last["train_acc"],
            "test_acc": last["test_acc"],
            "examples_per_sec": last["examples_per_sec"],
            "wall_seconds": run.get("wall_seconds", float("nan")),
        })
    return rows


def _network(hyperparameters) -> str:
    """``resnet18 (d2l)``, ``resnet18 (d2l, stem small)``: the arch, style and stem a run trained
    (runs from before styles: d2l; before stems: imagenet)."""
    stem = hyperparameters.get("stem", "imagenet")
    return (f"{hyperparameters.get('arch', 'resnet18')} ({hyperparameters.get('style', 'd2l')}"
            + (f", stem {stem})" if stem != "imagenet" else ")"))


def _format(key, value):
    if isinstance(value, float):
        if key in ("examples_per_sec", "wall_seconds"):
            return f"{value:.1f}"
        return f"{value:.4f}"
    return str(value)


_TEXT_COLUMNS = ("backend", "framework", "device", "network")


def markdown_table(rows: Sequence[dict]) -> str:
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" if key in _TEXT_COLUMNS else "---:" for key, _ in COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_format(key, row[key]) for key, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def first_divergent_step(losses_a: Sequence[float], losses_b: Sequence[float], rtol: float = SAME_STEP_RTOL):
    """The first (1-based) step whose losses differ by more than ``rtol`` relative, or None.

    Only the steps both runs have are compared; a non-finite loss differs from everything.
    """
    for step, (a, b) in enumerate(zip(losses_a, losses_b), start=1):
        if not (abs(a - b) <= rtol * max(abs(a), abs(b))):
            return step
    return None


def _by_backend(runs: Sequence[dict]) -> Dict[str, List[dict]]:
    """Runs (or their table rows) grouped by backend, in order of first appearance."""
    groups: Dict[str, List[dict]] = {}
    for run in runs:
        groups.setdefault(run["backend"], []).append(run)
    return groups


def _mean_std(values: Sequence[float]):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


#: The final figures summarised over seeds.
SUMMARY_COLUMNS = [("train_loss", "train loss"), ("train_acc", "train acc"), ("test_acc", "test acc")]


def seed_summary(rows: Sequence[dict]) -> str:
    """Per backend: runs, then mean ± sample standard deviation of each final figure; and per
    pair of backends how far apart their mean test accuracies are, in standard errors of that
    difference. Empty unless some backend has runs with two or more seeds."""
    groups = _by_backend(rows)
    if all(len(group) < 2 for group in groups.values()):
        return ""
    lines = ["| backend | runs (seeds) | " + " | ".join(f"{title}, mean ± std" for _, title in SUMMARY_COLUMNS) + " |",
             "|---|---|" + "---:|" * len(SUMMARY_COLUMNS)]
    for backend, group in groups.items():
        seeds = ", ".join(str(row["seed"]) for row in group)
        cells = []
        for key, _ in SUMMARY_COLUMNS:
            mean, std = _mean_std([row[key] for row in group])
            cells.append(f"{mean:.4f} ± {std:.4f}")
        lines.append(f"| {backend} | {len(group)} ({seeds}) | " + " | ".join(cells) + " |")
    names = list(groups)
    for index, name_a in enumerate(names):
        for name_b in names[index + 1:]:
            (mean_a, std_a), (mean_b, std_b) = (_mean_std([row["test_acc"] for row in groups[name]])
                                                for name in (name_a, name_b))
            error = math.sqrt(std_a ** 2 / len(groups[name_a]) + std_b ** 2 / len(groups[name_b]))
            spread = f"{abs(mean_a - mean_b) / error:.1f} standard errors" if error > 0 else "no spread to compare with"
            lines.append(f"\n{name_a} and {name_b}: mean test acc {mean_a:.4f} and {mean_b:.4f}, "
                         f"{mean_a - mean_b:+.4f} apart ({spread})")
    return "\n".join(lines) + "\n"


def agreement_lines(runs: Sequence[dict], rtol: float = SAME_STEP_RTOL) -> List[str]:
    """Per pair of runs of different backends with the same seed and settings, for how many
    steps they took the same steps (runs written before ``step_losses`` existed are left out)."""
    lines = []
    for index, run_a in enumerate(runs):
        for run_b in runs[index + 1:]:
            losses_a, losses_b = run_a.get("step_losses"), run_b.get("step_losses")
            if (not losses_a or not losses_b or run_a["backend"] == run_b["backend"]
                    or run_a.get("hyperparameters") != run_b.get("hyperparameters")):
                continue
            seed = f" (seed {run_a['hyperparameters']['seed']})" if run_a.get("hyperparameters") else ""
            pair = f"{run_a['backend']} and {run_b['backend']}{seed}"
            common = min(len(losses_a), len(losses_b))
            step = first_divergent_step(losses_a, losses_b, rtol)
            if step is None:
                lines.append(f"{pair}: same steps for all {common} steps (losses within {rtol:g} relative)")
            else:
                lines.append(f"{pair}: same steps until step {step - 1} of {common} "
                             f"(step {step}: loss {losses_a[step - 1]:.6g} vs {losses_b[step - 1]:.6g})")
    return lines


def plot_runs(runs: Sequence[dict], path) -> None:
    """Loss per step (log scale), the learning rate per step beside it (where a run recorded its
    rates, ``step_lrs``), then train loss, train accuracy and test accuracy per epoch.

    One line per run; each panel's axes are shared by every run.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("train_loss", "train loss"), ("train_acc", "train accuracy"), ("test_acc", "test accuracy")]
    with_rates = any(run.get("step_lrs") for run in runs)
    figure = plt.figure(figsize=(21 if with_rates else 17, 3.8))
    ratios = [1.6, 1.2, 1, 1, 1] if with_rates else [1.6, 1, 1, 1]
    grid = figure.add_gridspec(1, len(ratios), width_ratios=ratios)
    steps_axis = figure.add_subplot(grid[0])
    rate_axis = figure.add_subplot(grid[1], sharex=steps_axis) if with_rates else None
    first = 2 if with_rates else 1
    loss_axis = figure.add_subplot(grid[first])
    train_acc_axis = figure.add_subplot(grid[first + 1], sharex=loss_axis)
    epoch_axes = [loss_axis, train_acc_axis,
                  figure.add_subplot(grid[first + 2], sharex=loss_axis, sharey=train_acc_axis)]
    for colour, (backend, group) in enumerate(_by_backend(runs).items()):
        for index, run in enumerate(group):
            epochs = [h["epoch"] for h in run["history"]]
            label = f"{backend} ({run['framework']}, {run['device']})" if index == 0 else None
            style = dict(color=f"C{colour}", label=label, alpha=1.0 if len(group) == 1 else 0.7)
            losses = run.get("step_losses") or []
            steps_axis.plot(range(1, len(losses) + 1), losses, linewidth=1, **style)
            rates = run.get("step_lrs") or []
            if rate_axis is not None and rates:
                rate_axis.plot(range(1, len(rates) + 1), rates, linewidth=1, **style)
            for axis, (key, _) in zip(epoch_axes, panels):
                axis.plot(epochs, [h[key] for h in run["history"]], marker="o", **style)
    steps_axis.set_yscale("log")
    steps_axis.set_title("training loss per step"
                         + (" (one line per seed)" if len(runs) > len(_by_backend(runs)) else ""))
    steps_axis.set_xlabel("step")
    steps_axis.grid(True, which="both", alpha=0.3)
    if rate_axis is not None:
        rate_axis.set_title("learning rate per step")
        rate_axis.set_xlabel("step")
        rate_axis.grid(True, alpha=0.3)
    for axis, (_, title) in zip(epoch_axes, panels):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(True, alpha=0.3)
    steps_axis.legend(fontsize=8)
    figure.tight_layout()

    def write(handle):
        figure.savefig(handle, format="png", dpi=110)

    atomic_write(path, write)
    plt.close(figure)


def compare(paths: Sequence, out_dir=None, print_fn=print) -> dict:
    """Print the comparison table; with ``out_dir``, write ``comparison.md`` and ``comparison.png``."""
    if not paths:
        raise CompareError("compare needs at least one run directory")
    runs = [load_run(p) for p in paths]
    rows = comparison_rows(runs)
    agreement = agreement_lines(runs)
    summary = seed_summary(rows)
    table = markdown_table(rows) + (f"\n{summary}" if summary else "")
    table += "".join(f"\n{line}" for line in agreement) + ("\n" if agreement else "")
    print_fn(table.rstrip("\n"))
    written = {}
    if out_dir is not None:
        table_path = os.path.join(out_dir, "comparison.md")
        atomic_write(table_path, lambda handle: handle.write(table.encode()))
        plot_path = os.path.join(out_dir, "comparison.png")
        plot_runs(runs, plot_path)
        written = {"table": table_path, "plot": plot_path}
        print_fn(f"wrote {table_path} and {plot_path}")
    return {"rows": rows, "table": table, "agreement": agreement, **written}
