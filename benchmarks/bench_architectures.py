"""Milliseconds per training step of every registered architecture against hard sharing, and of MMoE, CGC and
DSelect-k against LibMTL 1.1.5's implementations on the same inputs (its PLE and Cross-stitch are built on a
ResNet's stages, not on this CNN, and are not timed here).

Backbone: MultiDigits' CNN (``load_problem("multidigits")``, its backbone and its two default tasks), a
batch of 64 images. A step is forward, the summed loss's backward and Adam's step (equal weighting). Each
architecture is built with its registered defaults, its experts MLPs on the CNN as a trunk; against LibMTL
both are built with ``experts="backbone"`` (each expert a CNN on the image, LibMTL's only form), LibMTL's
model holding the same weights and the same linear heads. LibMTL's DSelect-k runs in eval mode there: in
training mode its forward calls ``backward`` for its regulariser (which the workbench does not apply),
so its loss is backpropagated as the others' are, without that. Every call takes turns with its peer in
every round (median of the rounds).

Run: ``python benchmarks/bench_architectures.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from workbench.models import ARCHITECTURES
from workbench.studies import load_problem

from timing import median_seconds  # benchmarks/timing.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
BATCH = 64


def _step(model, forward, x, targets, optimizer):
    def step():
        optimizer.zero_grad()
        outputs = forward(x)
        sum(model_task.loss(outputs[name], targets[name]) for name, model_task in model.tasks.items()).backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds = 3 if args.quick else 41
    problem = load_problem("multidigits")
    tasks = problem.splits.tasks
    x, targets = problem.splits.train.batch(0, BATCH)
    rows = []
    calls = {}
    for name in ARCHITECTURES:
        torch.manual_seed(0)
        model = problem.make_model(tasks, architecture=name)
        calls[name] = _step(model, model, x, targets, torch.optim.Adam(model.parameters(), lr=1e-6))
        rows.append({"architecture": name, "parameters": sum(p.numel() for p in model.parameters())})
    seconds = median_seconds(calls, rounds)
    print(f"{'architecture':14s} {'parameters':>11s} {'ms/step':>8s} {'/ hps':>6s}")
    for row in rows:
        row["ms"] = 1000 * seconds[row["architecture"]]
        row["ratio_to_hps"] = seconds[row["architecture"]] / seconds["hps"]
        print(f"{row['architecture']:14s} {row['parameters']:11d} {row['ms']:8.2f} {row['ratio_to_hps']:6.2f}")

    from test_libmtl import _reference, libmtl_architectures  # the same weights loaded into LibMTL's model, as the equality test does

    with libmtl_architectures() as package:
        rows += _against_libmtl(package, _reference, problem, tasks, x, targets, rounds)
    Path(__file__).with_name("latest_architectures.json").write_text(json.dumps(rows, indent=1))


def _against_libmtl(package, reference_of, problem, tasks, x, targets, rounds: int) -> list[dict]:
    rows = []
    print(f"\n{'experts on the image':22s} {'workbench ms':>13s} {'LibMTL ms':>10s} {'ratio':>6s}")
    options = {"mmoe": {"n_experts": 4}, "cgc": {"n_experts": 2, "own_experts": 1}, "dselect_k": {"n_experts": 4, "k": 2}}
    for name, chosen in options.items():
        torch.manual_seed(0)
        model = problem.make_model(tasks, architecture=name, experts="backbone", **chosen)
        reference = reference_of(package, name, model, problem.backbone)
        if name == "dselect_k":
            reference.eval()  # its binary codes put right by reference_of, as in the equality test
        pair = median_seconds({
            "workbench": _step(model, model, x, targets, torch.optim.Adam(model.parameters(), lr=1e-6)),
            "libmtl": _step(model, reference, x, targets, torch.optim.Adam(reference.parameters(), lr=1e-6)),
        }, rounds)
        ratio = pair["workbench"] / pair["libmtl"]
        rows.append({"architecture": name, "experts": "backbone", "ms": 1000 * pair["workbench"], "libmtl_ms": 1000 * pair["libmtl"], "ratio_to_libmtl": ratio})
        print(f"{name:22s} {1000 * pair['workbench']:13.2f} {1000 * pair['libmtl']:10.2f} {ratio:6.2f}")
    return rows


if __name__ == "__main__":
    main()
