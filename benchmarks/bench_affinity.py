"""TAG's lookahead affinity: the workbench's batched probe against the reference loop, in plain training steps.

The reference algorithm (TAG's code) copies the model and the optimizer's state, steps with one
task's gradient, evaluates every task and restores, once per task (``tag_affinity_loop``). The
workbench takes every task's gradient from the gradient engine at once and evaluates the T
looked-ahead parameter sets in one batched call (``tag_affinity``). Both run on the MLP the
notebooks probe (16 -> 64 -> 64, batch 64) with T regression tasks, after a few Adam or SGD
(momentum) steps so that the optimizer has state; both must give the same affinity (1e-5). A plain
training step (forward, backward of the summed losses, optimizer step) is the unit of cost.

Run: ``make benchmark`` (or ``python benchmarks/bench_affinity.py [--quick]``).
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch

from workbench.probes import tag_affinity, tag_affinity_loop
from workbench.models import mlp_encoder
from workbench.tasks import MultiTaskModel, regression_task
from workbench.train.loop import summed_step

from timing import median_seconds  # benchmarks/timing.py

OPTIMIZERS = {"adam": partial(torch.optim.Adam, lr=1e-3), "sgd": partial(torch.optim.SGD, lr=0.02, momentum=0.9)}


def setup(n_tasks: int, optimizer: str, seed: int = 0):
    """The MLP with ``n_tasks`` heads, its optimizer after three steps, and a batch."""
    torch.manual_seed(seed)
    model = MultiTaskModel(mlp_encoder(16, (64, 64)), [regression_task(f"t{i}") for i in range(n_tasks)], representation_dim=64)
    opt = OPTIMIZERS[optimizer](model.parameters())
    x = torch.randn(64, 16)
    targets = {name: torch.randn(64) for name in model.task_names}
    for _ in range(3):
        summed_step(model, opt, x, targets)
    return model, opt, (x, targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 10 if args.quick else 50
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median seconds per call")
    header = f"{'optimizer':9} {'T':>3} {'batched ms':>11} {'loop ms':>9} {'loop/batched':>13} {'batched steps':>14} {'loop steps':>11} {'max |ΔZ|':>9}"
    print(header)
    print("-" * len(header))
    rows = []
    for optimizer in OPTIMIZERS:
        for n_tasks in (2, 8, 16):
            model, opt, batch = setup(n_tasks, optimizer)
            difference = float(abs(tag_affinity(model, batch, opt).affinity - tag_affinity_loop(model, batch, opt).affinity).max())
            if difference > 1e-5:
                raise AssertionError(f"batched and looped affinities differ by {difference:.2e} ({optimizer}, T={n_tasks})")
            stepped, stepped_opt, _ = setup(n_tasks, optimizer, seed=1)  # a model of its own: plain steps change it
            seconds = median_seconds(
                {
                    "batched": lambda: tag_affinity(model, batch, opt),
                    "loop": lambda: tag_affinity_loop(model, batch, opt),
                    "plain step": lambda: summed_step(stepped, stepped_opt, *batch),
                },
                repeats,
            )
            row = dict(
                optimizer=optimizer, tasks=n_tasks, batched_ms=seconds["batched"] * 1e3, loop_ms=seconds["loop"] * 1e3,
                speedup=seconds["loop"] / seconds["batched"], batched_steps=seconds["batched"] / seconds["plain step"],
                loop_steps=seconds["loop"] / seconds["plain step"], max_difference=difference,
            )
            rows.append(row)
            print(
                f"{optimizer:9} {n_tasks:>3} {row['batched_ms']:11.2f} {row['loop_ms']:9.2f} {row['speedup']:13.2f} "
                f"{row['batched_steps']:14.1f} {row['loop_steps']:11.1f} {difference:9.1e}",
                flush=True,
            )
    with open("benchmarks/latest_affinity.json", "w") as stream:
        json.dump(rows, stream, indent=1)


if __name__ == "__main__":
    main()
