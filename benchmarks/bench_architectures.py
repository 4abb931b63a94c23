"""Milliseconds per training step of every registered architecture against hard sharing, and of every architecture
LibMTL 1.1.5 also has against LibMTL's implementation on the same inputs and weights.

Backbone: MultiDigits' CNN (``load_problem("multidigits")``, its backbone and its two default tasks), a
batch of 64 images. A step is forward, the summed loss's backward and Adam's step (equal weighting). Each
architecture is built with its registered defaults, its experts MLPs on the CNN as a trunk; against LibMTL
both are built with ``experts="backbone"`` (each expert a CNN on the image, LibMTL's only form), LibMTL's
model holding the same weights and the same linear heads. LibMTL's DSelect-k runs in eval mode there: in
training mode its forward calls ``backward`` for its regulariser (which the workbench does not apply),
so its loss is backpropagated as the others' are, without that. LibMTL builds Cross-stitch, PLE and MTAN on a
ResNet's stages: those are timed on the equality tests' ResNets with their weights loaded as the tests load them
(Cross-stitch and PLE on ``TinyResNet``, a batch of 64 images of 1 × 8 × 8; MTAN on LibMTL's ResNet-18, a batch of
16 images of 3 × 32 × 32, the smallest LibMTL's MTAN accepts), the tests' three tasks. Every call takes turns with
its peer in every round (median of the rounds).

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
        try:
            model = problem.make_model(tasks, architecture=name)
        except ValueError as refusal:  # an architecture for other inputs (MultiTab-Net: tabular features)
            print(f"left out: {refusal}")
            continue
        calls[name] = _step(model, model, x, targets, torch.optim.Adam(model.parameters(), lr=1e-6))
        rows.append({"architecture": name, "parameters": sum(p.numel() for p in model.parameters())})
    seconds = median_seconds(calls, rounds)
    print(f"{'architecture':14s} {'parameters':>11s} {'ms/step':>8s} {'/ hps':>6s}")
    for row in rows:
        row["ms"] = 1000 * seconds[row["architecture"]]
        row["ratio_to_hps"] = seconds[row["architecture"]] / seconds["hps"]
        print(f"{row['architecture']:14s} {row['parameters']:11d} {row['ms']:8.2f} {row['ratio_to_hps']:6.2f}")

    import test_libmtl  # the same weights loaded into LibMTL's model, as the equality tests do

    with test_libmtl.libmtl_architectures() as package:
        rows += _against_libmtl(package, test_libmtl._reference, problem, tasks, x, targets, rounds)
        rows += _against_libmtl_on_resnets(package, test_libmtl, rounds)
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


def _against_libmtl_on_resnets(package, reference, rounds: int) -> list[dict]:
    """Cross-stitch, PLE and MTAN against LibMTL's on the ResNets of ``reference`` (the module ``tests/test_libmtl.py``)."""
    from workbench.models import make_architecture

    cases = {
        "cross_stitch": (reference.CROSS_STITCH_STAGES, {}, reference.libmtl_cross_stitch, 64),
        "ple": (reference.PLE_LEVELS, {"n_experts": 2, "own_experts": 1}, reference.libmtl_ple, 64),
        "mtan": (reference.resnet18_backbone(), {}, reference.libmtl_mtan, 16),
    }
    rows = []
    print(f"\n{'on a ResNet':26s} {'workbench ms':>13s} {'LibMTL ms':>10s} {'ratio':>6s}")
    for name, (backbone, chosen, libmtl_model, batch) in cases.items():
        torch.manual_seed(0)
        model = make_architecture(name, reference.TASKS, backbone, **chosen)
        theirs = libmtl_model(package, model)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, *backbone.inputs, generator=g)
        targets = {"a": torch.randn(batch, generator=g), "b": torch.randn(batch, generator=g), "c": torch.randint(0, 3, (batch,), generator=g)}
        pair = median_seconds({
            "workbench": _step(model, model, x, targets, torch.optim.Adam(model.parameters(), lr=1e-6)),
            "libmtl": _step(model, theirs, x, targets, torch.optim.Adam(theirs.parameters(), lr=1e-6)),
        }, rounds)
        ratio = pair["workbench"] / pair["libmtl"]
        rows.append({"architecture": name, "backbone": backbone.name, "ms": 1000 * pair["workbench"], "libmtl_ms": 1000 * pair["libmtl"],
                     "ratio_to_libmtl": ratio})
        print(f"{name + ' (' + backbone.name + ')':26s} {1000 * pair['workbench']:13.2f} {1000 * pair['libmtl']:10.2f} {ratio:6.2f}")
    return rows


if __name__ == "__main__":
    main()
