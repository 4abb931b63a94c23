"""Wall time of a 16-run sweep of a quick notebook, three ways; and the runner's overhead on one run.

Measured in the same run, on the same notebook and the same 16 parameter sets (seed = 0..15), each
way into a fresh folder:
- ``one after another``: ``run_sweep(workers=1)`` (``workbench sweep --workers 1``), every run in this process;
- ``LocalCluster, 2 workers``: ``run_sweep(workers=2)``, the cluster's start and shutdown included;
- ``papermill shell loop``: ``for seed in ...; do papermill ...; done`` in bash: one papermill process
  per run, which writes the executed notebook only (no HTML report, no record, no index).
Per-run overhead: ``runner.run_notebook`` (parameters checked, record, log, HTML export) against
``papermill.execute_notebook`` of the same notebook in this process, taking turns, median of N.

The quick notebook starts a kernel, imports numpy, xarray and the workbench, does about a second of
matrix work and saves one NetCDF result: what a sweep of small experiments looks like, where
kernel start-up and imports weigh as much as the work.

Run: ``make benchmark`` (or ``python benchmarks/bench_sweeps.py [--runs 16] [--repeats 1] [--quick]``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml

from workbench import runner

QUICK_NOTEBOOK = """\
from pathlib import Path
import numpy as np
import xarray as xr
from workbench import results
rng = np.random.default_rng(seed)
a = rng.standard_normal((size, size))
for _ in range(rounds):
    a = np.tanh(a @ a.T / size)
results.save(xr.Dataset({'value': ('row', a[:8, 0])}, attrs={'seed': seed}), Path(results_dir) / 'metrics.nc')
"""


def write_quick_notebook(path: Path, rounds: int) -> Path:
    cells = [
        nbformat.v4.new_markdown_cell("# A quick experiment"),
        nbformat.v4.new_code_cell(f"seed = 0\nsize = 400\nrounds = {rounds}\nresults_dir = 'out'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(QUICK_NOTEBOOK),
    ]
    metadata = {"kernelspec": {"name": runner.KERNEL_NAME, "display_name": "Python (workbench)", "language": "python"}}
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=metadata), path)
    return path


def load() -> float:
    return os.getloadavg()[0]


def timed(label: str, work) -> dict:
    """Run ``work()``; its wall time and the 1-minute load average before and after (other processes' load shows there)."""
    before = load()
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    return {"mode": label, "seconds": seconds, "load_before": before, "load_after": load()}


def sweep_modes(notebook: Path, runs: int, folder: Path) -> list[dict]:
    folder.mkdir(parents=True)
    sweep_file = folder / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": "bench", "notebooks": [str(notebook)], "grid": {"seed": list(range(runs))}}))

    def sweep(workers: int, output: str):
        def work():
            summary = runner.run_sweep(sweep_file, folder / output, workers=workers, progress=False)
            assert len(summary.outcomes) == runs and not summary.failed, summary

        return work

    loop = (
        'for seed in $(seq 0 $(( RUNS - 1 ))); do mkdir -p "$OUT/$seed" && '
        '"$PAPERMILL" --no-progress-bar -k workbench --cwd "$OUT/$seed" -p seed $seed -p results_dir results '
        '"$NOTEBOOK" "$OUT/$seed/run.ipynb" 2>/dev/null || exit 1; done'
    )
    environment = {**os.environ, "RUNS": str(runs), "OUT": str(folder / "papermill"), "NOTEBOOK": str(notebook),
                   "PAPERMILL": str(Path(sys.executable).parent / "papermill")}

    def papermill_loop():
        subprocess.run(["bash", "-c", loop], env=environment, check=True)

    return [
        timed("one after another", sweep(1, "one_after_another")),
        timed("LocalCluster, 2 workers", sweep(2, "cluster")),
        timed("papermill shell loop", papermill_loop),
    ]


def overhead(notebook: Path, repeats: int, folder: Path) -> dict:
    """Median seconds of one run through the runner and through papermill alone, taking turns."""
    import papermill

    kernel = runner.ensure_kernel()
    times = {"runner.run_notebook": [], "papermill.execute_notebook": []}
    for repeat in range(repeats):
        out = folder / f"overhead{repeat}"
        start = time.perf_counter()
        runner.run_notebook(notebook, {"seed": repeat}, out / "runner", progress=False)
        times["runner.run_notebook"].append(time.perf_counter() - start)
        (out / "papermill").mkdir(parents=True)
        start = time.perf_counter()
        papermill.execute_notebook(
            str(notebook), str(out / "papermill" / notebook.name), parameters={"seed": repeat, "results_dir": "results"},
            kernel_name=kernel, progress_bar=False, cwd=str(out / "papermill"),
        )
        times["papermill.execute_notebook"].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=16, help="runs in the sweep (default 16)")
    parser.add_argument("--repeats", type=int, default=1, help="how many times to measure the three ways (default 1)")
    parser.add_argument("--quick", action="store_true", help="4 runs, a lighter notebook, 2 overhead turns")
    args = parser.parse_args()
    runs, rounds, turns = (4, 5, 2) if args.quick else (args.runs, 40, 5)
    os.environ["WORKBENCH_PROGRESS"] = "0"
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        notebook = write_quick_notebook(folder / "quick.ipynb", rounds)
        runner.ensure_kernel()  # puts the workbench kernel on JUPYTER_PATH for the papermill loop too
        for repeat in range(args.repeats):
            for row in sweep_modes(notebook, runs, folder / f"repeat{repeat}"):
                rows.append({**row, "repeat": repeat, "runs": runs})
            shutil.rmtree(folder / f"repeat{repeat}")
        per_run = overhead(notebook, turns, folder)
    cores = len(os.sched_getaffinity(0))
    print(f"{runs}-run sweep of a quick notebook; {cores} cores; 1-minute load average before -> after each way")
    print(f"{'repeat':>6} {'way':<26} {'wall s':>8} {'s/run':>7} {'speed-up':>9} {'load':>11}")
    for repeat in range(args.repeats):
        own = [row for row in rows if row["repeat"] == repeat]
        baseline = own[0]["seconds"]
        for row in own:
            row["speedup"] = baseline / row["seconds"]
            print(f"{repeat:>6} {row['mode']:<26} {row['seconds']:8.1f} {row['seconds'] / runs:7.2f} {row['speedup']:9.2f} "
                  f"{row['load_before']:5.2f}->{row['load_after']:<5.2f}")
    runner_s, papermill_s = per_run["runner.run_notebook"], per_run["papermill.execute_notebook"]
    print(f"one run, median of {turns}: runner.run_notebook {runner_s:.2f} s, papermill.execute_notebook {papermill_s:.2f} s, "
          f"overhead {runner_s - papermill_s:+.2f} s ({runner_s / papermill_s:.2f}x)")
    with open("benchmarks/latest_sweeps.json", "w") as stream:
        json.dump({"sweeps": rows, "per_run": per_run, "cores": cores}, stream, indent=1)


if __name__ == "__main__":
    main()
