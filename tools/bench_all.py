"""Benchmark every backend at 28 x 28 and 96 x 96, this project's code and the chapter's.

    python tools/bench_all.py                 # writes docs/benchmarks.md (and .json)
    python tools/bench_all.py --steps 3 --rounds 3 --backends torch mx

Each figure comes from one `resnet-fmnist bench` process, run in the backend's own tox
environment (`tox exec -e <backend>`), so training GFLOP/s and the framework's own matmul
GFLOP/s are measured side by side in the same process; quote the ratios, which survive a
noisy machine better than the absolute numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from common.backend import BACKENDS  # noqa: E402  (framework-free)

SIZES = [("96", 64), ("none", 256)]  # (resize, batch size): the two settings


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_one(backend, resize, batch_size, steps, warmup, rounds, reference):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    command = ["tox", "exec", "-qq", "-e", backend, "--", "resnet-fmnist", "bench", "--backend", backend,
               "--resize", resize, "--batch-size", str(batch_size), "--steps", str(steps), "--warmup", str(warmup),
               "--rounds", str(rounds), "--out", out]
    if reference:
        command.append("--reference")
    print("$", " ".join(command), file=sys.stderr, flush=True)
    completed = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        if completed.returncode != 0:
            return {"backend": backend, "resize": resize, "batch_size": batch_size, "error": completed.returncode,
                    "code": "chapter (reference)" if reference else "resnet-fmnist"}
        with open(out) as handle:
            return json.load(handle)
    finally:
        os.unlink(out)


def _size(r) -> str:
    resize = r.get("resize")
    return f"{resize} x {resize}, {r['batch_size']}" if resize not in (None, "none") else f"28 x 28, {r['batch_size']}"


def markdown(results, steps, warmup, rounds) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs, no GPU. One `resnet-fmnist bench` process per row, "
        f"on one fixed batch: {warmup} warm-up steps, then {rounds} rounds of {steps} timed steps, of which the "
        f"median round counts. Each training round follows its own matmul measurement, and \"of matmul\" "
        f"is the median of the rounds' ratios.",
        "Train GFLOP/s counts the convolutions and the dense layer once from `common/spec.py` "
        "(forward x 3); \"of matmul\" divides it by the framework's own 2048 x 2048 fp32 matmul "
        "GFLOP/s measured in the same process (the median is shown). \"of fastest\" is the row's training img/s over the "
        "fastest backend's (this project's code) at that size; \"x chapter\" over the chapter's own "
        "code for the same framework.",
        "",
        "| backend | code | input, batch | train img/s | of fastest | x chapter | train GFLOP/s | matmul GFLOP/s "
        "| of matmul | inference img/s | peak MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
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
            lines.append(f"| {r['backend']} | {r['code']} | {size} | failed (exit {r['error']}) | | | | | | | |")
            continue
        eps = r["train_examples_per_sec"]
        of_fastest = f"{eps / fastest[size]:.2f}" if r["code"] == "resnet-fmnist" and fastest.get(size) else ""
        vs_chapter = (f"{eps / chapter[r['backend'], size]:.2f}"
                      if r["code"] == "resnet-fmnist" and (r["backend"], size) in chapter else "")
        lines.append(
            f"| {r['backend']} | {r['code']} | {size} | {eps:.1f} | {of_fastest} | {vs_chapter} "
            f"| {r['train_gflops']:.1f} | {r['matmul_gflops']:.1f} | {100 * r['fraction_of_matmul']:.0f}% "
            f"| {r['inference_examples_per_sec']:.1f} | {r['peak_memory_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the median counts")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true", help="skip the chapter's own code")
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks.md"))
    args = parser.parse_args(argv)
    results = []
    for resize, batch_size in SIZES:
        for backend in args.backends:
            for reference in ([False] if args.no_reference else [False, True]):
                results.append(run_one(backend, resize, batch_size, args.steps, args.warmup, args.rounds, reference))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    kept = ""  # the file's own sections ("## ...") after the table are kept as they are
    if os.path.exists(args.out):
        with open(args.out) as handle:
            text = handle.read()
        kept = text[text.index("\n## "):] if "\n## " in text else ""
    with open(args.out, "w") as handle:
        handle.write(markdown(results, args.steps, args.warmup, args.rounds) + kept)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as handle:
        json.dump(results, handle, indent=2)
    print(open(args.out).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
