"""Side by side: read several runs' ``metrics.json``, write a table and a plot."""
from __future__ import annotations

import json
import os
from typing import List, Sequence

from .training import METRICS_NAME
from .weights import atomic_write

__all__ = ["CompareError", "load_run", "comparison_rows", "markdown_table", "plot_runs", "compare"]

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


def plot_runs(runs: Sequence[dict], path) -> None:
    """Train loss, train accuracy and test accuracy per epoch, one line per run, shared axes."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("train_loss", "train loss"), ("train_acc", "train accuracy"), ("test_acc", "test accuracy")]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    for run in runs:
        epochs = [h["epoch"] for h in run["history"]]
        label = f"{run['backend']} ({run['framework']}, {run['device']})"
        for axis, (key, _) in zip(axes, panels):
            axis.plot(epochs, [h[key] for h in run["history"]], marker="o", label=label)
    for axis, (_, title) in zip(axes, panels):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(True, alpha=0.3)
    axes[1].sharey(axes[2])
    axes[0].legend(fontsize=8)
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
    table = markdown_table(rows)
    print_fn(table.rstrip("\n"))
    written = {}
    if out_dir is not None:
        table_path = os.path.join(out_dir, "comparison.md")
        atomic_write(table_path, lambda handle: handle.write(table.encode()))
        plot_path = os.path.join(out_dir, "comparison.png")
        plot_runs(runs, plot_path)
        written = {"table": table_path, "plot": plot_path}
        print_fn(f"wrote {table_path} and {plot_path}")
    return {"rows": rows, "table": table, **written}
