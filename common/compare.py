"""Side by side: read several runs' ``metrics.json``, write a table and a plot."""
from __future__ import annotations

import json
import os
from typing import List, Sequence

from .training import METRICS_NAME
from .weights import atomic_write

__all__ = ["CompareError", "load_run", "comparison_rows", "markdown_table", "first_divergent_step", "agreement_lines",
           "plot_runs", "compare"]

#: Two runs take "the same step" while their step losses differ by at most this, relative.
SAME_STEP_RTOL = 1e-3

COLUMNS = [
    ("backend", "backend"),
    ("framework", "framework"),
    ("device", "device"),
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
            "epochs": last["epoch"],
            "train_loss": last["train_loss"],
            "train_acc": last["train_acc"],
            "test_acc": last["test_acc"],
            "examples_per_sec": last["examples_per_sec"],
            "wall_seconds": run.get("wall_seconds", float("nan")),
        })
    return rows


def _format(key, value):
    if isinstance(value, float):
        if key in ("examples_per_sec", "wall_seconds"):
            return f"{value:.1f}"
        return f"{value:.4f}"
    return str(value)


def markdown_table(rows: Sequence[dict]) -> str:
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" if key in ("backend", "framework", "device") else "---:" for key, _ in COLUMNS) + "|"
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


def agreement_lines(runs: Sequence[dict], rtol: float = SAME_STEP_RTOL) -> List[str]:
    """Per pair of runs with step losses: for how many steps they took the same steps."""
    lines = []
    for index, run_a in enumerate(runs):
        for run_b in runs[index + 1:]:
            losses_a, losses_b = run_a.get("step_losses"), run_b.get("step_losses")
            if not losses_a or not losses_b:
                continue
            pair = f"{run_a['backend']} and {run_b['backend']}"
            common = min(len(losses_a), len(losses_b))
            step = first_divergent_step(losses_a, losses_b, rtol)
            if step is None:
                lines.append(f"{pair}: same steps for all {common} steps (losses within {rtol:g} relative)")
            else:
                lines.append(f"{pair}: same steps until step {step - 1} of {common} "
                             f"(step {step}: loss {losses_a[step - 1]:.6g} vs {losses_b[step - 1]:.6g})")
    return lines


def plot_runs(runs: Sequence[dict], path) -> None:
    """Loss per step (log scale), then train loss, train accuracy and test accuracy per epoch.

    One line per run; each panel's axes are shared by every run.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("train_loss", "train loss"), ("train_acc", "train accuracy"), ("test_acc", "test accuracy")]
    figure, axes = plt.subplots(1, 4, figsize=(17, 3.8), gridspec_kw={"width_ratios": [1.6, 1, 1, 1]})
    steps_axis, epoch_axes = axes[0], axes[1:]
    for run in runs:
        epochs = [h["epoch"] for h in run["history"]]
        label = f"{run['backend']} ({run['framework']}, {run['device']})"
        losses = run.get("step_losses") or []
        steps_axis.plot(range(1, len(losses) + 1), losses, linewidth=1, label=label)
        for axis, (key, _) in zip(epoch_axes, panels):
            axis.plot(epochs, [h[key] for h in run["history"]], marker="o", label=label)
    steps_axis.set_yscale("log")
    steps_axis.set_title("training loss per step")
    steps_axis.set_xlabel("step")
    steps_axis.grid(True, which="both", alpha=0.3)
    for axis, (_, title) in zip(epoch_axes, panels):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(True, alpha=0.3)
    epoch_axes[0].sharex(epoch_axes[1])
    epoch_axes[2].sharex(epoch_axes[1])
    epoch_axes[1].sharey(epoch_axes[2])
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
    table = markdown_table(rows) + "".join(f"\n{line}" for line in agreement) + ("\n" if agreement else "")
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
