"""What the live training monitor costs: steps/s of a run with ``monitor=`` a :class:`LiveMonitor` against the same run without.

MultiDigits' CNN (``load_problem("multidigits")``, its default tasks), equal weighting, batch 64,
evaluated on the validation split at the first and the last step only (so that the training steps,
not the evaluations, make the time the monitor is compared with), in two forms: no recorder, and a
gradient-conflict recorder every 10 steps (its heatmap redrawn by the monitor). Each call is a whole
``train`` run, the monitor built inside it (``LiveMonitor()``, at its default 4 redraws per second).
The runs with and without take turns in every round (median of the rounds); ratio = steps/s with the
monitor / steps/s without (goal: ≥ 0.95). Whole runs of a few seconds move by up to 30% from one to the
next even on an idle machine, so each monitored run also times the monitor itself (built, asked after
every step, redrawn) as a share of that run's seconds: ``1 - share`` is the ratio the monitor alone
would give, and it does not wait on the machine keeping still.

This is a plain process: the widget is built but displayed nowhere, so ipywidgets sends nothing
and serialises nothing. What a kernel would add per redraw is bounded by the last rows: one redraw
(``update``) of a finished run's monitor, and serialising its whole figure to JSON
(``plotly.io.to_json``, more than a redraw sends), each a median of many calls; what building
the monitor costs (once per run, inside the timed runs above); and a new monitor's first redraw, which
also reads the recorder's latest record into the heatmap (a redraw does so only after a new record).

Run: ``python benchmarks/bench_monitor.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import plotly.io as pio
import torch

from workbench.probes import ProbeRecorder
from workbench.studies import load_problem
from workbench.train import train
from workbench.viz.monitor import LiveMonitor

from timing import median_seconds  # benchmarks/timing.py

BATCH = 64


def _run(problem, steps: int, monitor, recorder_every: int):
    splits = problem.splits
    torch.manual_seed(0)
    recorders = [ProbeRecorder("gradient_conflict", every=recorder_every, by=problem.layers)] if recorder_every else []
    return train(problem.make_model(splits.tasks), splits.train, steps, method="ew", batch_size=BATCH, eval_data=splits.validation,
                 eval_every=steps, recorders=recorders, progress=False, monitor=monitor)


class TimedMonitor:
    """A :class:`LiveMonitor` built and called through this wrapper, which sums the seconds spent in it (``seconds``)."""

    def __init__(self):
        start = time.perf_counter()
        self.monitor = LiveMonitor()
        self.seconds = time.perf_counter() - start

    def _timed(self, call, *args):
        start = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.seconds += time.perf_counter() - start

    def due(self) -> bool:
        return self._timed(self.monitor.due)

    def should_stop(self) -> bool:
        return self._timed(self.monitor.should_stop)

    def update(self, *args) -> None:
        self._timed(self.monitor.update, *args)

    def close(self) -> None:
        self._timed(self.monitor.close)


def run_seconds(problem, steps: int, repeats: int, recorder_every: int) -> tuple[dict[str, float], float, int]:
    """Median seconds of a whole run without and with the monitor; the median share of a monitored run's seconds
    spent in the monitor (built, asked and redrawn); the redraws of the last monitored run."""
    monitors: list[TimedMonitor] = []
    shares: list[float] = []

    def monitored():
        start = time.perf_counter()
        monitors.append(TimedMonitor())
        _run(problem, steps, monitors[-1], recorder_every)
        shares.append(monitors[-1].seconds / (time.perf_counter() - start))

    seconds = median_seconds({"off": lambda: _run(problem, steps, False, recorder_every), "on": monitored}, repeats, warmup=1)
    return seconds, statistics.median(shares[1:]), monitors[-1].monitor.redraws


def redraw_seconds(problem, steps: int, calls: int) -> dict[str, float]:
    """Median seconds of one redraw of a finished run's monitor, of serialising its figure to JSON, and of building a monitor."""
    monitor = LiveMonitor()
    recorders = [ProbeRecorder("gradient_conflict", every=10, by=problem.layers)]
    splits = problem.splits
    torch.manual_seed(0)
    run = train(problem.make_model(splits.tasks), splits.train, steps, batch_size=BATCH, eval_data=splits.validation,
                recorders=recorders, progress=False, monitor=monitor)
    timed = {}
    calls_by_name = {
        "redraw (curves)": lambda: monitor.update(steps, run.history, recorders),
        "figure to JSON": lambda: pio.to_json(monitor.curves),
        "build the monitor": LiveMonitor,
        "build + first redraw (+ heatmap)": lambda: LiveMonitor().update(steps, run.history, recorders),
    }
    for name, call in calls_by_name.items():
        values = []
        for _ in range(calls):
            start = time.perf_counter()
            call()
            values.append(time.perf_counter() - start)
        timed[name] = statistics.median(values)
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    args = parser.parse_args()
    steps, repeats = (60, 2) if args.quick else (1000, 9)
    problem = load_problem("multidigits")
    rows = []
    print(f"{'recorder':24s} {'off steps/s':>12s} {'on steps/s':>11s} {'ratio':>6s} {'in monitor':>11s} {'1 - share':>10s} {'redraws':>8s}")
    for label, every in (("none", 0), ("gradient_conflict/10", 10)):
        seconds, share, redraws = run_seconds(problem, steps, repeats, every)
        off, on = steps / seconds["off"], steps / seconds["on"]
        rows.append({"recorder": label, "steps": steps, "off_steps_per_s": off, "on_steps_per_s": on, "ratio": on / off,
                     "monitor_share": share, "redraws": redraws})
        print(f"{label:24s} {off:12.1f} {on:11.1f} {on / off:6.3f} {100 * share:10.2f}% {1 - share:10.3f} {redraws:8d}")
    timed = redraw_seconds(problem, steps, 20 if args.quick else 50)
    print(f"\n{'call (' + str(steps) + ' steps drawn)':34s} {'ms':>7s}")
    for name, value in timed.items():
        rows.append({"call": name, "ms": 1000 * value})
        print(f"{name:34s} {1000 * value:7.2f}")
    Path(__file__).with_name("latest_monitor.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
