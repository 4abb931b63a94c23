"""Training streamed from disk against the same samples in memory, on MultiDigits, and the memory it holds as the data grow.

A MultiDigits training split is written as an image folder (8-bit PNGs and ``labels.csv``) and
trained on three ways with the same model (the notebooks' CNN, two digit tasks, equal weighting, batch
64): from memory (the images quantised to 8 bits, as in the files), streamed from the folder with 0
workers (read in the training process) and with 2 worker processes reading ahead. Each run is a full
``train`` call (evaluation off: one evaluation of 64 samples at the ends); the three take turns in
every round (median of the rounds). Ratio = in-memory seconds / streamed seconds (≥ 1: streaming is
as fast).

Memory: a fresh process trains 50 steps streamed from a folder of N and of 10 N images (2 workers),
evaluating on all of them, and reports its peak resident memory (``VmHWM``, which starts anew with
the program; ``ru_maxrss`` would carry over the peak of the benchmark that started it) and its
workers' largest (they are separate processes).

Tasks on their own samples: the per-task Jacobian of the same CNN (``load_problem("multidigits")``, its
default tasks) on a step's batch of 64 samples in three forms: shared (one batch, every task labelled
on every sample), per task (``TaskInputs`` of T batches of 64 / T samples, one per task: T encoder
forwards and backwards) and mixed (one batch of 64, each task routed to its 64 / T samples), by each
of the engine's strategies (``model_task_jacobian(..., strategy=...)``), and a whole ``ew`` training
step on each form. Every call takes turns with the others (median of the rounds); ``steps`` = its time
/ that of the ``ew`` step on the shared batch.

Run: ``python benchmarks/bench_data.py [--quick] [--only streaming|routing]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from workbench.data import image_folder_data, make_multidigits, write_image_folder
from workbench.gradients import STRATEGIES, model_task_jacobian
from workbench.models import conv_encoder, representation_shape
from workbench.studies import load_problem
from workbench.tasks import MultiTaskData, MultiTaskModel, TaskInputs
from workbench.train import make_method, train

from timing import median_seconds  # benchmarks/timing.py

TASKS = ("left", "right")
BATCH = 64

_MEMORY_RUN = """
import resource, sys, torch
from workbench.data import image_folder_data, make_multidigits
from workbench.models import conv_encoder, representation_shape
from workbench.tasks import MultiTaskModel
from workbench.train import train
tasks = make_multidigits({tasks!r}, n_train=1, n_validation=1, n_test=1).tasks
data = image_folder_data(sys.argv[1], tasks, num_workers=2)
net = conv_encoder(1, (16, 32, 32))
model = MultiTaskModel(net, tasks, representation_dim=representation_shape(net, torch.zeros(1, 1, 12, 16)))
train(model, data, 50, batch_size={batch}, eval_data=data, eval_every=1000, eval_batch_size=64, progress=False)
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]  # kB, this program's own
print(int(peak) / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def _model(tasks):
    torch.manual_seed(0)
    net = conv_encoder(1, (16, 32, 32))
    return MultiTaskModel(net, tasks, representation_dim=representation_shape(net, torch.zeros(1, 1, 12, 16)))


def training_seconds(n: int, steps: int, repeats: int, folder: Path) -> dict[str, float]:
    """Median seconds of ``steps`` training steps from memory and streamed from an image folder of ``n`` samples."""
    split = make_multidigits(TASKS, n_train=n, n_validation=64, n_test=64).train
    write_image_folder(split, folder)
    in_memory = split.with_inputs((split.x * 255).round() / 255)
    sources = {
        "memory": in_memory,
        "folder, 0 workers": image_folder_data(folder, split.tasks),
        "folder, 2 workers": image_folder_data(folder, split.tasks, num_workers=2),
    }
    small_eval = in_memory.head(64)

    def run(source):
        return lambda: train(_model(split.tasks), source, steps, batch_size=BATCH, eval_data=small_eval, eval_every=10 * steps, progress=False)

    return median_seconds({name: run(source) for name, source in sources.items()}, repeats, warmup=1)


def peak_memory(n: int, folder: Path) -> tuple[float, float]:
    """Peak resident MiB of a process training streamed from a folder of ``n`` images: its own, and its workers' largest."""
    write_image_folder(make_multidigits(TASKS, n_train=n, n_validation=1, n_test=1).train, folder)
    code = _MEMORY_RUN.format(tasks=TASKS, batch=BATCH)
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    own, workers = done.stdout.split()
    return float(own), float(workers)


def routing_batches(split: MultiTaskData, batch: int) -> dict[str, tuple]:
    """A step's batch of ``batch`` samples as a shared batch, a batch per task (each task its own ``batch / T`` samples)
    and a mixed batch (those samples in one group, each task routed to its own)."""
    names = split.task_names
    per = batch // len(names)
    own = {name: torch.arange(t * per, (t + 1) * per) for t, name in enumerate(names)}
    targets = {name: split.targets[name][own[name]] for name in names}
    return {
        "shared": (split.x[:batch], {name: y[:batch] for name, y in split.targets.items()}),
        "per task": (TaskInputs(tuple(split.x[own[name]] for name in names), {name: (t, None) for t, name in enumerate(names)}), targets),
        "mixed": (TaskInputs((split.x[: per * len(names)],), {name: (0, own[name]) for name in names}), targets),
    }


def ew_step(model: MultiTaskModel, x, targets):
    """One training step of equal weighting (Adam at a negligible rate, so the model stays put)."""
    method = make_method("ew", len(model.task_names))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        method.backward(model, x, targets)
        optimizer.step()

    return step


def routing_seconds(rounds: int) -> dict[tuple[str, str], float]:
    """Median seconds of the Jacobian by each strategy, and of an ``ew`` step, on each form of a MultiDigits batch."""
    problem = load_problem("multidigits", n_train=BATCH, n_validation=1, n_test=1)
    split = problem.splits.train
    torch.manual_seed(0)
    model = problem.make_model(split.tasks).train()
    calls = {}
    for form, (x, targets) in routing_batches(split, BATCH).items():
        calls[form, "ew step"] = ew_step(model, x, targets)
        for strategy in STRATEGIES:
            calls[form, strategy] = lambda x=x, targets=targets, strategy=strategy: model_task_jacobian(model, x, targets, strategy=strategy)
    return median_seconds(calls, rounds, warmup=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, steps and rounds")
    parser.add_argument("--only", choices=["streaming", "routing"], help="one part only (default: both)")
    args = parser.parse_args()
    n, steps, repeats = (1000, 30, 3) if args.quick else (6000, 200, 5)
    rows = []
    if args.only != "routing":
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            seconds = training_seconds(n, steps, repeats, scratch / "speed")
            print(f"{'source':20s} {'steps/s':>8s} {'ratio':>6s}")
            for name, value in seconds.items():
                ratio = seconds["memory"] / value
                print(f"{name:20s} {steps / value:8.1f} {ratio:6.2f}")
                rows.append({"source": name, "samples": n, "steps": steps, "seconds": value, "ratio_to_memory": ratio})
            print(f"\n{'images':>8s} {'peak MiB':>9s} {'workers MiB':>12s}")
            for size in (n, 10 * n):
                own, workers = peak_memory(size, scratch / f"memory-{size}")
                print(f"{size:8d} {own:9.1f} {workers:12.1f}")
                rows.append({"images": size, "peak_mib": own, "worker_peak_mib": workers})
    if args.only != "streaming":
        seconds = routing_seconds(10 if args.quick else 60)
        unit = seconds["shared", "ew step"]
        print(f"\n{'batch':10s} {'computation':12s} {'ms':>7s} {'steps':>6s}")
        for (form, computation), value in seconds.items():
            print(f"{form:10s} {computation:12s} {1000 * value:7.2f} {value / unit:6.2f}")
            rows.append({"batch": form, "computation": computation, "samples": BATCH, "seconds": value, "steps": value / unit})
    Path(__file__).with_name("latest_data.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
