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

Run: ``python benchmarks/bench_data.py [--quick]``.
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
from workbench.models import conv_encoder, representation_shape
from workbench.tasks import MultiTaskModel
from workbench.train import train

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, steps and rounds")
    args = parser.parse_args()
    n, steps, repeats = (1000, 30, 3) if args.quick else (6000, 200, 5)
    rows = []
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
    Path(__file__).with_name("latest_data.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
