"""Seconds per training step of every method, relative to equal weighting, and the workbench's wrapper
against torchjd called directly on the same model.

Encoders: the MLP the notebooks probe (16 -> 64 -> 64, batch 64), the MultiDigits CNN (batch 64 of
12 x 16 images) and MiniLM with its top 2 blocks trainable (64 words of 8 tokens, all blocks run);
T regression tasks with linear heads, T = 2 and 8. A step is everything between two optimizer
steps: forward, the method's backward, Adam's step and the method's after-step work.

"torchjd" is the same method called directly: a scalarizer's combined loss backpropagated, or
``mtl_backward`` then ``jac_to_grad`` with the aggregator. Every method and its peer take turns in
every round (median of the rounds). Ratio > 1: the workbench is slower than torchjd.

Run: ``make benchmark`` (or ``python benchmarks/bench_methods.py [--quick] [--encoders mlp cnn]``).
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

from workbench.models import conv_encoder, representation_shape
from workbench.models import mlp_encoder
from workbench.tasks import MultiTaskModel, regression_task
from workbench.registry import REQUIRED
from workbench.train import METHODS, comparable_methods, make_method
from workbench.train.aggregated import Aggregated
from workbench.train.scalarized import Scalarized

from timing import median_seconds  # benchmarks/timing.py

ENCODERS = ("mlp", "cnn", "minilm-top2")


def setup(encoder: str, n_tasks: int, seed: int = 0):
    """A fresh model with ``n_tasks`` regression heads, a batch and its targets (eval mode: no dropout)."""
    torch.manual_seed(seed)
    tasks = [regression_task(f"t{i}") for i in range(n_tasks)]
    if encoder == "mlp":
        model, x = MultiTaskModel(mlp_encoder(16, (64, 64)), tasks, representation_dim=64), torch.randn(64, 16)
    elif encoder == "cnn":
        net = conv_encoder(1, (16, 32, 32))
        model = MultiTaskModel(net, tasks, representation_dim=representation_shape(net, torch.zeros(1, 1, 12, 16)))
        x = torch.rand(64, 1, 12, 16)
    else:
        from workbench.models import minilm_encoder

        model = MultiTaskModel(minilm_encoder(trainable_layers=2), tasks, representation_dim=384)
        ids = torch.randint(1000, 30000, (64, 8))
        ids[:, 0], ids[:, -1] = 101, 102
        x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    targets = {t.name: torch.randn(64) for t in tasks}
    return model.eval(), x, targets


def workbench_step(name: str, model, x, targets):
    method = make_method(name, len(targets))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad] + method.parameters(), lr=1e-6)

    def step():
        optimizer.zero_grad(set_to_none=True)
        method.backward(model, x, targets)
        optimizer.step()
        method.after_step(model, x, targets)

    return step, method


def torchjd_step(method, model, x, targets):
    """The same method's torchjd object, called as torchjd's documentation shows."""
    from torchjd.autojac import jac_to_grad, mtl_backward

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad] + method.parameters(), lr=1e-6)
    shared = [p for _, p in model.shared_parameters()]

    def step():
        optimizer.zero_grad(set_to_none=True)
        losses = model.losses(x, targets)
        if isinstance(method, Scalarized):
            method.scalarizer(torch.stack(list(losses.values()))).backward()
            optimizer.step()
            update = getattr(method.scalarizer, "update", None)
            if update is not None:
                with torch.no_grad():
                    update(torch.stack(list(model.losses(x, targets).values())))
            return
        z = model.represent(x)
        outputs = model.heads_forward(z)
        mtl_backward(list(model.losses_from_outputs(outputs, targets).values()), features=z)
        jac_to_grad(shared, method.aggregator)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a few methods")
    parser.add_argument("--encoders", nargs="+", choices=ENCODERS, default=list(ENCODERS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="You are solving a parameterized problem that is not DPP")
    buildable = [name for name, entry in METHODS.items() if REQUIRED not in entry.options().values()]  # constant needs its weights
    names = comparable_methods(per_family=2) if args.quick else buildable
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median step, forward included")
    header = f"{'encoder':11} {'T':>2} {'method':14} {'ms':>9} {'× ew':>7} {'torchjd ms':>11} {'× torchjd':>10}"
    print(header)
    print("-" * len(header))
    rows = []
    for encoder in args.encoders:
        repeats = (3 if args.quick else 7) if encoder.startswith("minilm") else (10 if args.quick else 40)
        for n_tasks in (2, 8):
            calls, peers = {}, {}
            for name in names:
                step, method = workbench_step(name, *setup(encoder, n_tasks))
                calls[name] = step
                if isinstance(method, (Scalarized, Aggregated)):
                    peer = make_method(name, n_tasks)
                    peers[name] = f"{name} (torchjd)"
                    calls[peers[name]] = torchjd_step(peer, *setup(encoder, n_tasks))
            seconds = median_seconds(calls, repeats)
            for name in names:
                theirs = seconds.get(peers.get(name, ""), float("nan"))
                row = dict(encoder=encoder, tasks=n_tasks, method=name, ms=seconds[name] * 1e3, relative_to_ew=seconds[name] / seconds["ew"], torchjd_ms=theirs * 1e3, over_torchjd=seconds[name] / theirs)
                rows.append(row)
                print(f"{encoder:11} {n_tasks:>2} {name:14} {row['ms']:9.2f} {row['relative_to_ew']:7.2f} {row['torchjd_ms']:11.2f} {row['over_torchjd']:10.2f}", flush=True)
    with open("benchmarks/latest_methods.json", "w") as stream:
        json.dump(rows, stream, indent=1)


if __name__ == "__main__":
    main()
