"""Per-task Jacobian and Gramian of T losses over an MLP encoder: the workbench's engine against peers.

Peers, all measured in the same run on the same model and batch:
- ``naive``: one forward, then one ``torch.autograd.grad`` per task (``retain_graph``);
- ``torchjd.jac``: ``torchjd.autojac.jac`` on the stacked losses;
- ``torchjd.autogram`` (Gramian only): torchjd's Gramian engine, which never forms the Jacobian.
Every timing includes the forward pass. Memory is the peak of the bytes held by tensors allocated
during the call (torch's profiler, counted between operators), result included.

Run: ``make benchmark`` (or ``python benchmarks/bench_gradients.py [--quick]``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from workbench.gradients import model_task_jacobian
from workbench.tasks import MultiTaskModel, mlp_encoder, regression_task

# (input features, hidden widths, batch): the size the notebooks probe, and a wider encoder
ENCODERS = {"small": (16, (64, 64), 64), "wide": (64, (256, 256, 256), 256)}


def setup(encoder: str, n_tasks: int, seed: int = 0):
    in_features, hidden, batch = ENCODERS[encoder]
    torch.manual_seed(seed)
    tasks = [regression_task(f"t{i}") for i in range(n_tasks)]
    model = MultiTaskModel(mlp_encoder(in_features, hidden), tasks, representation_dim=hidden[-1])
    x = torch.randn(batch, in_features)
    targets = {t.name: torch.randn(batch) for t in tasks}
    return model, x, targets


def engine_jacobian(model, x, targets):
    return model_task_jacobian(model, x, targets).matrix()


def engine_gramian(model, x, targets):
    return model_task_jacobian(model, x, targets).gramian()


def naive_jacobian(model, x, targets):
    losses = list(model.losses(x, targets).values())
    params = [p for _, p in model.shared_parameters()]
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)]) for loss in losses]
    return torch.stack(rows)


def naive_gramian(model, x, targets):
    j = naive_jacobian(model, x, targets)
    return j @ j.T


def torchjd_jacobian(model, x, targets):
    from torchjd.autojac import jac

    losses = torch.stack(list(model.losses(x, targets).values()))
    blocks = jac(losses, [p for _, p in model.shared_parameters()])
    return torch.cat([b.reshape(len(targets), -1) for b in blocks], dim=1)


def torchjd_gramian(model, x, targets):
    j = torchjd_jacobian(model, x, targets)
    return j @ j.T


def autogram_gramian_factory(model):
    from torchjd.autogram import Engine

    engine = Engine(model.encoder, batch_dim=None)

    def autogram_gramian(model, x, targets):
        losses = torch.stack(list(model.losses(x, targets).values()))
        return engine.compute_gramian(losses)

    return autogram_gramian


JACOBIAN = {"workbench": engine_jacobian, "naive": naive_jacobian, "torchjd.jac": torchjd_jacobian}
GRAMIAN = {"workbench": engine_gramian, "naive": naive_gramian, "torchjd.jac": torchjd_gramian, "torchjd.autogram": None}


def method(kind: str, name: str, model):
    table = JACOBIAN if kind == "jacobian" else GRAMIAN
    return autogram_gramian_factory(model) if name == "torchjd.autogram" else table[name]


def median_seconds(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds per method; the methods take turns in every round so that drifts in machine speed hit all alike."""
    for fn, args in calls.values():
        fn(*args)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            start = time.perf_counter()
            fn(*args)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory_mib(fn, model, x, targets) -> float:
    """Peak MiB held by tensors allocated during ``fn`` (allocations minus frees, in order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(model, x, targets)
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    held = peak = 0
    for event in events:
        held += event.self_cpu_memory_usage
        peak = max(peak, held)
    return peak / 2**20


def check_agreement(model, x, targets) -> None:
    reference = naive_gramian(model, x, targets)
    for name in GRAMIAN:
        got = method("gramian", name, model)(model, x, targets)
        torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-5, msg=f"{name} disagrees with the naive Gramian")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, T = 2 and 8 only")
    args = parser.parse_args()
    task_counts = (2, 8) if args.quick else (2, 8, 32)
    repeats = 5 if args.quick else 30
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; encoders (in, hidden, batch): {ENCODERS}")
    print(f"median of {repeats} runs, forward included; ratio = peer time / workbench time (> 1: the workbench is faster)\n")
    rows = []
    header = f"{'encoder':7} {'quantity':9} {'T':>3} {'method':17} {'ms':>9} {'ratio':>7} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for encoder in ENCODERS:
        for kind, table in (("jacobian", JACOBIAN), ("gramian", GRAMIAN)):
            for n_tasks in task_counts:
                if kind == "gramian":
                    check_agreement(*setup(encoder, n_tasks))
                calls = {}
                for name in table:
                    model, x, targets = setup(encoder, n_tasks)  # a fresh model each: the autogram engine hooks its modules
                    calls[name] = (method(kind, name, model), (model, x, targets))
                timings = median_seconds(calls, repeats)
                memory = {name: peak_memory_mib(fn, *args) for name, (fn, args) in calls.items()}
                for name, seconds in timings.items():
                    ratio = seconds / timings["workbench"]
                    rows.append(dict(encoder=encoder, quantity=kind, tasks=n_tasks, method=name, ms=seconds * 1e3, ratio=ratio, peak_mib=memory[name]))
                    print(f"{encoder:7} {kind:9} {n_tasks:>3} {name:17} {seconds * 1e3:9.2f} {ratio:7.2f} {memory[name]:9.2f}")
    with open("benchmarks/latest_gradients.json", "w") as stream:
        json.dump(rows, stream, indent=1)


if __name__ == "__main__":
    main()
