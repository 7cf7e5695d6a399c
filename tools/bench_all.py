"""Benchmark every backend at 28 x 28 and 96 x 96, this project's code and the chapter's.

    python tools/bench_all.py                 # writes docs/benchmarks.md (and .json)
    python tools/bench_all.py --steps 3 --rounds 3 --backends torch mx

Each figure comes from one `resnet-fmnist bench` process, run in the backend's own tox
environment (`tox exec -e <backend>`), against one yardstick: the machine's fp32 peak,
measured once at the start (`resnet-fmnist peak` in every environment, the best wins).
docs/benchmarks.md keeps one section per machine (CPU model, cores, vector extensions).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from common.backend import BACKENDS  # noqa: E402  (framework-free)
from common.machine import describe  # noqa: E402

SIZES = [("96", 64), ("none", 256)]  # (resize, batch size): the two settings


def measure_peak(backend):
    """``resnet-fmnist peak`` in the backend's environment: NumPy's and the framework's best matmul."""
    command = ["tox", "exec", "-qq", "-e", backend, "--", "resnet-fmnist", "peak", "--backend", backend]
    print("$", " ".join(command), file=sys.stderr, flush=True)
    completed = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if completed.returncode != 0:
        return None
    return json.loads(completed.stdout)


def _mb(value) -> str:
    return "" if value is None else f"{value:.0f}"


def machine_peak(peaks):
    """The best of every environment's measured peak: the one yardstick of the run."""
    peaks = [p for p in peaks if p]
    best = max(peaks, key=lambda p: p["gflops"])
    table = {}
    for peak in peaks:
        table.update(peak["table"])
    return {"gflops": best["gflops"], "by": best["by"], "size": best["size"], "table": table,
            "theoretical_gflops": best.get("theoretical_gflops")}


def chapter_row(result, settings="framework_defaults"):
    """The chapter's code as timed in the same ``bench --reference`` process, as a row of its own
    (its GFLOP/s from this project's FLOP count: the same network)."""
    chapter = result["chapter"][settings]
    scale = chapter["train_examples_per_sec"] / result["train_examples_per_sec"]
    infer_scale = chapter["inference_examples_per_sec"] / result["inference_examples_per_sec"]
    row = dict(result, code="chapter (reference)", train_examples_per_sec=chapter["train_examples_per_sec"],
               inference_examples_per_sec=chapter["inference_examples_per_sec"],
               train_examples_per_sec_rounds=chapter["train_examples_per_sec_rounds"],
               train_gflops=round(result["train_gflops"] * scale, 2),
               inference_gflops=round(result["inference_gflops"] * infer_scale, 2),
               train_share_of_peak=round(result["train_share_of_peak"] * scale, 3),
               inference_share_of_peak=round(result["inference_share_of_peak"] * infer_scale, 3),
               precision=chapter["precision"])
    for key in ("chapter", "train_speedup_vs_chapter"):
        row.pop(key, None)
    return row


def run_one(backend, resize, batch_size, steps, warmup, rounds, reference, peak_gflops):
    """One ``bench`` process: this project's row and, with ``reference``, the chapter's (framework defaults)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    command = ["tox", "exec", "-qq", "-e", backend, "--", "resnet-fmnist", "bench", "--backend", backend,
               "--resize", resize, "--batch-size", str(batch_size), "--steps", str(steps), "--warmup", str(warmup),
               "--rounds", str(rounds), "--peak-gflops", str(peak_gflops), "--out", out]
    if reference:
        command.append("--reference")
    print("$", " ".join(command), file=sys.stderr, flush=True)
    completed = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        if completed.returncode != 0:
            failed = {"backend": backend, "resize": resize, "batch_size": batch_size, "error": completed.returncode}
            return ([dict(failed, code="resnet-fmnist")]
                    + ([dict(failed, code="chapter (reference)")] if reference else []))
        with open(out) as handle:
            result = json.load(handle)
        return [result] + ([chapter_row(result)] if reference else [])
    finally:
        os.unlink(out)


def _size(r) -> str:
    resize = r.get("resize")
    return f"{resize} x {resize}, {r['batch_size']}" if resize not in (None, "none") else f"28 x 28, {r['batch_size']}"


METHOD = """\
One `resnet-fmnist bench --reference` process per backend and size, on one fixed batch: this
project's code, then the chapter's own code with the framework's default settings (the
"chapter" rows; on a CPU the same arithmetic as this project's fp32), each with warm-up steps,
then rounds of timed steps, of which the median round counts. Train GFLOP/s counts the convolutions and the
dense layer once from `common/flops.py` (forward x 3), the same for every backend. "of peak"
divides it by the machine's fp32 peak, one number per machine for every row: the best
matrix product found at sizes 512 to 3072 by NumPy's BLAS and by each framework
(`resnet-fmnist peak`), measured once at the start of the run; the theoretical peak (cores x
fp32 lanes x 2 x 2 FMA units x clock, `common/machine.py`) is shown beside it. "of fastest" is
the row's training img/s over the fastest backend's (this project's code) at that size, "x
chapter" over the chapter's own code for the same framework. The count is nominal: it includes
the products with a convolution's zero padding, which oneDNN's convolutions and the taps path
(tiny maps) skip, so a row can show more than the peak (TensorFlow at 28 x 28). Fast paths are autotuned
(`RESNET_FAST_PATHS=auto`, see `common/autotune.py`): each bench process measures its choices
first if the machine's cache does not hold them yet, outside the timed steps.

`python tools/bench_all.py` adds or replaces the section of the machine it runs on and keeps
every other machine's.
"""


def section(results, peak, steps, warmup, rounds) -> str:
    cpu = results[0].get("cpu") or describe()
    theoretical = f", theoretical {peak['theoretical_gflops']:.0f}" if peak.get("theoretical_gflops") else ""
    lines = [
        f"<!-- machine: {cpu} -->",
        f"### {cpu}",
        "",
        f"Measured {time.strftime('%Y-%m-%d')}; {warmup} warm-up steps, {rounds} rounds of {steps} steps. "
        f"Machine fp32 peak {peak['gflops']:.0f} GFLOP/s ({peak['by']}, {peak['size']} x {peak['size']}){theoretical}.",
        "Best matmul GFLOP/s by size: " + "; ".join(
            f"{name} " + ", ".join(f"{size}: {g:.0f}" for size, g in row.items())
            for name, row in peak["table"].items())
        + ".",
        "",
        "| backend | code | input, batch | train img/s | of fastest | x chapter | train GFLOP/s | of peak "
        "| inference img/s | peak MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ok = [r for r in results if "error" not in r]
    fastest = {}
    for r in ok:
        if r["code"] == "resnet-fmnist":
            fastest[_size(r)] = max(fastest.get(_size(r), 0.0), r["train_examples_per_sec"])
    chapter = {(r["backend"], _size(r)): r["train_examples_per_sec"] for r in ok if r["code"] != "resnet-fmnist"}
    for r in results:
        size = _size(r)
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['code']} | {size} | failed (exit {r['error']}) | | | | | | |")
            continue
        eps = r["train_examples_per_sec"]
        of_fastest = f"{eps / fastest[size]:.2f}" if r["code"] == "resnet-fmnist" and fastest.get(size) else ""
        vs_chapter = (f"{eps / chapter[r['backend'], size]:.2f}"
                      if r["code"] == "resnet-fmnist" and (r["backend"], size) in chapter else "")
        lines.append(
            f"| {r['backend']} | {r['code']} | {size} | {eps:.1f} | {of_fastest} | {vs_chapter} "
            f"| {r['train_gflops']:.1f} | {100 * r['train_share_of_peak']:.0f}% "
            f"| {r['inference_examples_per_sec']:.1f} | {_mb(r['peak_memory_mb'])} |"
        )
    lines.append("<!-- /machine -->")
    return "\n".join(lines) + "\n"


_SECTION = re.compile(r"<!-- machine: (.*?) -->\n.*?<!-- /machine -->\n", re.S)


def merge(text: str, new_section: str) -> str:
    """``text`` (the current file) with ``new_section`` in place of its machine's, every other
    machine's section and the sections after the tables (``## ...``) kept."""
    key = _SECTION.match(new_section).group(1)
    sections = [m.group(0) for m in _SECTION.finditer(text) if m.group(1) != key]
    last = max([m.end() for m in _SECTION.finditer(text)] or [0])
    rest = text[last:]
    kept = rest[rest.index("\n## ") + 1:] if "\n## " in rest else ""
    return "# Benchmarks\n\n" + METHOD + "\n" + "\n".join([new_section] + sections) + "\n" + kept


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the median counts")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true", help="skip the chapter's own code")
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks.md"))
    args = parser.parse_args(argv)
    peak = machine_peak([measure_peak(backend) for backend in args.backends])
    results = []
    for resize, batch_size in SIZES:
        for backend in args.backends:
            results += run_one(backend, resize, batch_size, args.steps, args.warmup, args.rounds,
                               not args.no_reference, peak["gflops"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    text = open(args.out).read() if os.path.exists(args.out) else ""
    with open(args.out, "w") as handle:
        handle.write(merge(text, section(results, peak, args.steps, args.warmup, args.rounds)))
    with open(os.path.splitext(args.out)[0] + ".json", "w") as handle:
        json.dump({"peak": peak, "results": results}, handle, indent=2)
    print(open(args.out).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
