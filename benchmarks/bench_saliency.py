"""Task saliency against a training step and the full per-task Jacobian; Rep-MTL's cost per step.

The saliency (``saliency_tensor``: one forward and one backward through the heads; ``task_saliency``
wraps it in a labelled Dataset, about a millisecond more) against a
plain training step (forward, backward of the summed losses, Adam step) and the engine's per-task
Jacobian of every shared parameter (what a parameter-level probe pays), on the MLP, the MultiDigits
CNN and MiniLM with its top two blocks trainable (batch 64; the models of ``bench_methods.py``),
T = 2, 8, 32. Then seconds per training step of ``rep_mtl`` (equal weighting with the regulariser)
against ``ew`` and ``nash_mtl`` (the paper claims Rep-MTL is about 26% faster than Nash-MTL), T = 2 and 8.

Run: ``make benchmark`` (or ``python benchmarks/bench_saliency.py [--quick] [--encoders mlp cnn]``).
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

from workbench.gradients import model_task_jacobian
from workbench.probes.saliency import saliency_tensor

from bench_methods import ENCODERS, setup, workbench_step  # benchmarks/bench_methods.py
from timing import median_seconds, plain_step  # benchmarks/timing.py


def probe_costs(encoder: str, n_tasks: int, repeats: int) -> dict:
    model, x, targets = setup(encoder, n_tasks)
    stepped = setup(encoder, n_tasks, seed=1)
    seconds = median_seconds(
        {
            "saliency": lambda: saliency_tensor(model, x, targets),
            "jacobian": lambda: model_task_jacobian(model, x, targets),
            "plain step": plain_step(*stepped),
        },
        repeats,
        warmup={"jacobian": 8},  # until the engine's "auto" strategy has settled
    )
    return dict(
        encoder=encoder, tasks=n_tasks, saliency_ms=seconds["saliency"] * 1e3, jacobian_ms=seconds["jacobian"] * 1e3,
        step_ms=seconds["plain step"] * 1e3, in_steps=seconds["saliency"] / seconds["plain step"], jacobian_over_saliency=seconds["jacobian"] / seconds["saliency"],
    )


def method_costs(encoder: str, n_tasks: int, repeats: int) -> dict:
    calls = {name: workbench_step(name, *setup(encoder, n_tasks))[0] for name in ("ew", "rep_mtl", "nash_mtl")}
    seconds = median_seconds(calls, repeats)
    return dict(
        encoder=encoder, tasks=n_tasks, **{f"{name}_ms": value * 1e3 for name, value in seconds.items()},
        rep_over_ew=seconds["rep_mtl"] / seconds["ew"], rep_over_nash=seconds["rep_mtl"] / seconds["nash_mtl"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--encoders", nargs="+", choices=ENCODERS, default=list(ENCODERS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="You are solving a parameterized problem that is not DPP")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median seconds per call")
    header = f"{'encoder':11} {'T':>3} {'saliency ms':>12} {'in steps':>9} {'Jacobian ms':>12} {'Jacobian/saliency':>18}"
    print(header + "\n" + "-" * len(header))
    rows = []
    for encoder in args.encoders:
        transformer = encoder.startswith("minilm")
        repeats = (3 if args.quick else 7) if transformer else (10 if args.quick else 30)
        for n_tasks in (2, 8, 32):
            row = probe_costs(encoder, n_tasks, repeats)
            rows.append(row)
            print(f"{encoder:11} {n_tasks:>3} {row['saliency_ms']:12.2f} {row['in_steps']:9.2f} {row['jacobian_ms']:12.2f} {row['jacobian_over_saliency']:18.1f}", flush=True)
    header = f"{'encoder':11} {'T':>3} {'ew ms':>8} {'rep_mtl ms':>11} {'nash_mtl ms':>12} {'rep/ew':>7} {'rep/nash':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    for encoder in args.encoders:
        repeats = (3 if args.quick else 7) if encoder.startswith("minilm") else (10 if args.quick else 30)
        for n_tasks in (2, 8):
            row = method_costs(encoder, n_tasks, repeats)
            rows.append(row)
            print(f"{encoder:11} {n_tasks:>3} {row['ew_ms']:8.2f} {row['rep_mtl_ms']:11.2f} {row['nash_mtl_ms']:12.2f} {row['rep_over_ew']:7.2f} {row['rep_over_nash']:9.2f}", flush=True)
    with open("benchmarks/latest_saliency.json", "w") as stream:
        json.dump(rows, stream, indent=1)


if __name__ == "__main__":
    main()
