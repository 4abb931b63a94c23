"""Model merging: the workbench's presets against mergekit's ``merge_state_dicts`` on the same in-memory state dicts.

A random transformer-shaped model (width 512: per block four 512 × 512 attention matrices, a
512 × 2048 and a 2048 × 512 feed-forward matrix and their biases; 6 blocks, about 19M parameters,
or 2 blocks with ``--quick``) and T = 4 fine-tuned copies in float32. Before timing, task arithmetic
and per-tensor TIES (density 0.2, disjoint mean) are checked equal to mergekit's (1e-5) on all but at
most 1e-5 of the entries: where several |τ| tie at the k-th largest magnitude (float32 differences of
nearby weights often do), torch's topk and mergekit's argsort keep different ones of them; the table
counts those entries. DARE's
random masks differ between the libraries, so it is timed only (drop 0.5; mergekit's ``dare_linear``
at density 0.5). The peer rows are mergekit and a plain copy (``clone``) of the same task-vector
input bytes. Throughput = T × model bytes / median seconds. Ratio = peer time / workbench time.

Run: ``python benchmarks/bench_merge.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json

import torch
from mergekit.merge_methods.api import merge_state_dicts

from workbench.merge import merge, preset

from timing import median_seconds  # benchmarks/timing.py

N_TASKS = 4
WIDTH = 512


def make_models(blocks: int, seed: int = 0):
    """A base state dict and N_TASKS fine-tuned ones (base + 0.01 noise)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {}
    for b in range(blocks):
        shapes.update({f"block{b}.attention.{m}.weight": (WIDTH, WIDTH) for m in "qkvo"})
        shapes.update({f"block{b}.attention.{m}.bias": (WIDTH,) for m in "qkvo"})
        shapes.update({f"block{b}.up.weight": (4 * WIDTH, WIDTH), f"block{b}.down.weight": (WIDTH, 4 * WIDTH)})
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    tasks = {f"t{i}": {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()} for i in range(N_TASKS)}
    return base, tasks


METHODS = {
    # name: (workbench options, mergekit method, mergekit parameters)
    "task_arithmetic": (preset("task_arithmetic"), "task_arithmetic", {"weight": 1.0, "lambda": 0.3}),
    "ties": (preset("ties", trim="tensor"), "ties", {"weight": 1.0, "density": 0.2}),
    "dare": (preset("dare", lam=1.0), "dare_linear", {"weight": 1.0, "density": 0.5}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 blocks instead of 6, fewer repeats")
    args = parser.parse_args()
    base, tasks = make_models(2 if args.quick else 6)
    repeats = 3 if args.quick else 7
    parameters = sum(v.numel() for v in base.values())
    input_bytes = N_TASKS * sum(v.numel() * v.element_size() for v in base.values())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {N_TASKS} tasks of {parameters / 1e6:.1f}M float32 parameters; median of {repeats}")
    header = f"{'method':16} {'workbench s':>12} {'mergekit s':>11} {'copy s':>8} {'workbench GB/s':>15} {'mergekit GB/s':>14} {'mergekit/workbench':>19} {'differing':>10}"
    print(header)
    print("-" * len(header))
    models = {"base": base, **tasks}
    rows = []
    for name, (options, method, mk_parameters) in METHODS.items():
        ours = lambda: merge(tasks, base, options, progress=False)
        theirs = lambda: merge_state_dicts(models, method, base="base", parameters=mk_parameters)
        copy = lambda: [v.clone() for sd in tasks.values() for v in sd.values()]
        differing = -1
        if name != "dare":
            a, b = ours(), theirs()
            differing = sum(int(((a[k] - b[k]).abs() > 1e-5).sum()) for k in a)
            if differing > 1e-5 * parameters:
                raise AssertionError(f"{name}: the workbench and mergekit differ on {differing} of {parameters} entries")
        seconds = median_seconds({"workbench": ours, "mergekit": theirs, "copy": copy}, repeats, warmup=1)
        row = dict(
            method=name, workbench_s=seconds["workbench"], mergekit_s=seconds["mergekit"], copy_s=seconds["copy"],
            workbench_gbs=input_bytes / seconds["workbench"] / 1e9, mergekit_gbs=input_bytes / seconds["mergekit"] / 1e9,
            copy_gbs=input_bytes / seconds["copy"] / 1e9, ratio=seconds["mergekit"] / seconds["workbench"], differing_entries=differing,
        )
        rows.append(row)
        print(
            f"{name:16} {row['workbench_s']:12.3f} {row['mergekit_s']:11.3f} {row['copy_s']:8.3f} {row['workbench_gbs']:15.2f} "
            f"{row['mergekit_gbs']:14.2f} {row['ratio']:19.2f} {differing if differing >= 0 else '-':>10}",
            flush=True,
        )
    with open("benchmarks/latest_merge.json", "w") as stream:
        json.dump(rows, stream, indent=1)


if __name__ == "__main__":
    main()
