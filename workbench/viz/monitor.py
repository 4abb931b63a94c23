"""A live training monitor for JupyterLab: the curves per task, the latest probe reading and a Stop button.

``train(..., monitor=True)`` builds a :class:`LiveMonitor` and displays it when it runs in a Jupyter
kernel that is not a batch run (see :mod:`workbench.progress`); elsewhere nothing is built. The
training loop talks to any monitor through four calls, so that it stays testable without a browser:

- ``due()``: whether a redraw is wanted now (asked after every step; a clock read);
- ``update(done, history, recorders)``: redraw from the run so far (``done`` steps; ``history`` is the
  layout of :attr:`~workbench.train.TrainingResult.history` cut to those steps);
- ``should_stop()``: whether the run is to end after the step just done;
- ``close()``: the run is over.

A kernel handles a cell's code and its widgets' messages on one thread, so a click on Stop waits for
the training cell to end unless the cell reads it: at every redraw the monitor takes the messages that
wait for the kernel's main shell (ipykernel 7, :func:`_take_clicks`), handles those of its own button
and hands every other back to the kernel in order. The kernel's Interrupt (■) arrives as a signal: a
displayed monitor takes the first interrupt as Stop (the run ends cleanly after its step) and a second
as the usual ``KeyboardInterrupt``.

The monitor draws at most ``redraws_per_second`` times a second whatever the step rate (the loop
redraws once more at the end), and each curve with at most ``points`` points (consecutive steps
averaged), so that a redraw costs the same at step 100 and at step 100 000.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from workbench.probes.recorder import ProbeRecorder
from workbench.probes.registry import Probe, task_matrix
from workbench.progress import batch_run
from workbench.viz.explorer_kit import LiveBox

__all__ = ["LiveMonitor", "thinned"]

_PANELS = ("training loss", "validation loss", "validation metric")
RESTARTED = "This live monitor stopped with the kernel that trained: re-run the cell to train and watch again."


def thinned(x: np.ndarray, y: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of shape ``(n,)`` as at most ``points`` points: the mean of consecutive bins, NaN skipped.

    Each bin is drawn at its first ``x``; a bin of NaN only (steps where the task had no label) stays NaN.
    """
    if points < 1:
        raise ValueError(f"points must be positive, got {points}")
    if len(x) <= points:
        return x, y
    size = -(-len(x) // points)
    padded = np.full(-(-len(y) // size) * size, np.nan)
    padded[: len(y)] = y
    bins = padded.reshape(-1, size)
    counts = np.sum(~np.isnan(bins), axis=1)
    sums = np.nansum(bins, axis=1)
    return x[::size], np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _take_clicks(comm) -> None:
    """Handle the waiting messages of ``comm`` (the Stop button's) now, in a running cell of an ipykernel 7 kernel.

    The messages of the main shell wait in an inproc socket that the kernel reads between cells; each
    is read here, ``comm``'s handled at once, and every other scheduled for the kernel exactly as it
    would have been (after this cell, in the order they came). Elsewhere (no kernel, another
    ipykernel, a thread other than the main one, which alone reads that socket) it does nothing.
    """
    if comm is None or threading.current_thread() is not threading.main_thread():
        return
    try:
        import zmq
        from ipykernel.kernelbase import Kernel

        if not Kernel.initialized():
            return
        kernel = Kernel.instance()
        pair = kernel.shell_channel_thread.manager._shell_channel_to_main
        socket, handle_later = pair.to_socket, pair.to_stream._recv_callback
    except (ImportError, AttributeError):
        return
    if handle_later is None:
        return
    while True:
        try:
            frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        _, parts = kernel.session.feed_identities(frames, copy=False)
        # header and content read unchecked: deserialize() would record the signature, and refuse the message handed back
        header, content = (kernel.session.unpack(parts[i].bytes) for i in (1, 4))
        if header.get("msg_type") == "comm_msg" and content.get("comm_id") == comm.comm_id:
            comm.handle_msg(kernel.session.deserialize(parts, content=True, copy=False))
        else:
            kernel.io_loop.add_callback(handle_later, frames)


def _pairwise_recorder(recorders: Sequence[ProbeRecorder]) -> ProbeRecorder | None:
    """The first recorder of a registered probe with a task × task reading, or ``None``."""
    for recorder in recorders:
        if isinstance(recorder.probe, Probe) and recorder.probe.entry.traits.get("pairwise"):
            return recorder
    return None




class LiveMonitor:
    """Curves of a run per task, the latest task × task probe reading, and a Stop button; ``widget`` is what to display.

    ``stop_button.click()`` (or a click in JupyterLab) asks the run to end after its current step.
    ``redraws`` counts the redraws done. Built undisplayed (``LiveMonitor()``) it works the same in a
    plain process: nothing is sent anywhere. With ``stop_on_interrupt`` (a displayed monitor's default) the
    first SIGINT (the kernel's Interrupt) until :meth:`close` asks the run to stop, and a second raises
    ``KeyboardInterrupt`` as usual; it is installed only on the main thread (the only one that gets signals).
    """

    def __init__(self, redraws_per_second: float = 4.0, points: int = 1000, stop_on_interrupt: bool = False) -> None:
        if redraws_per_second <= 0:
            raise ValueError(f"redraws_per_second must be positive, got {redraws_per_second}")
        self.interval, self.points = 1.0 / redraws_per_second, points
        self.curves = go.FigureWidget(make_subplots(rows=1, cols=3, subplot_titles=_PANELS, horizontal_spacing=0.06))
        self.curves.update_layout(height=340, margin=dict(t=40, b=40, l=50, r=20), legend=dict(orientation="h", y=-0.15))
        self.curves.update_xaxes(title_text="step")
        self.reading = go.FigureWidget(go.Heatmap(colorscale="RdBu", zmid=0, z=[[]]))
        self.reading.update_layout(height=320, width=420, margin=dict(t=40, b=40, l=60, r=20), title="no probe reading recorded")
        self.reading.update_yaxes(autorange="reversed")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", tooltip="end the run after the current step")
        self.stop_button.on_click(self._ask_stop)
        self.status = widgets.HTML("waiting for the first step")
        self.reading_box = widgets.Box([])
        self.widget = LiveBox([widgets.HBox([self.stop_button, self.status]), self.curves, self.reading_box], note=RESTARTED)
        self.redraws = 0
        self._stop = threading.Event()  # a click may arrive on another thread than the loop's
        self._drawn = -np.inf
        self._tasks: list[str] = []
        self._read_step: int | None = None
        self._done = 0
        self._interrupt_handler = None
        if stop_on_interrupt and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._interrupted)
            self._interrupt_handler = signal.SIG_DFL if previous is None else previous

    @classmethod
    def displayed(cls, **options) -> LiveMonitor:
        """A monitor shown in the current cell's output (``stop_on_interrupt`` unless ``options`` say otherwise); refused
        in a batch run, whose notebook becomes a report that no widget can drive."""
        from IPython.display import display

        if batch_run():
            raise RuntimeError("a live monitor is not displayed in a batch run (WORKBENCH_BATCH=1); train(monitor=True) is silent there")
        monitor = cls(**{"stop_on_interrupt": True, **options})
        display(monitor.widget)
        return monitor

    def _ask_stop(self, _button=None) -> None:
        self._stop.set()
        self.stop_button.disabled = True
        self.status.value = "stopping after the current step"

    def _interrupted(self, signum, frame) -> None:
        if self.should_stop():  # the second interrupt: as if the monitor were not there
            self._restore_interrupt()
            signal.raise_signal(signum)
            return
        self._ask_stop()
        self.status.value = "interrupted: stopping after the current step (interrupt again to stop at once)"

    def _restore_interrupt(self) -> None:
        if self._interrupt_handler is not None:
            signal.signal(signal.SIGINT, self._interrupt_handler)
            self._interrupt_handler = None

    def due(self) -> bool:
        """Whether the last redraw is at least ``1 / redraws_per_second`` seconds old."""
        return time.monotonic() - self._drawn >= self.interval

    def should_stop(self) -> bool:
        """Whether the Stop button was pressed."""
        return self._stop.is_set()

    def update(self, done: int, history: xr.Dataset, recorders: Sequence[ProbeRecorder] = ()) -> None:
        """Redraw from ``history`` (``train_loss`` over ``(step, task)`` for the ``done`` steps, ``loss`` and
        ``metric`` over ``(eval_step, task)``) and the latest record of the first recorder with a pairwise reading."""
        tasks = [str(t) for t in history.task.values]
        if tasks != self._tasks:
            self._add_traces(tasks, [str(m) for m in history.metric_name.values])
        steps, evals = history.step.values, history.eval_step.values
        with self.curves.batch_update():
            for t, task in enumerate(tasks):
                train_trace, loss_trace, metric_trace = (self.curves.data[p * len(tasks) + t] for p in range(3))
                train_trace.x, train_trace.y = thinned(steps, history.train_loss.values[:, t], self.points)
                loss_trace.x, loss_trace.y = evals, history.loss.values[:, t]
                metric_trace.x, metric_trace.y = evals, history.metric.values[:, t]
        self._update_reading(recorders)
        _take_clicks(self.stop_button.comm)
        asked = history.attrs.get("steps", done)
        self.status.value = f"{history.attrs.get('method', '')}: step {done} of {asked}"
        self._done = done
        self._drawn = time.monotonic()
        self.redraws += 1

    def _add_traces(self, tasks: list[str], metrics: list[str]) -> None:
        self.curves.data = ()
        colours = qualitative.Plotly
        for panel in range(3):
            for t, task in enumerate(tasks):
                name = f"{task} ({metrics[t]})" if panel == 2 else task
                self.curves.add_scatter(
                    x=[], y=[], mode="lines" if panel == 0 else "lines+markers", name=name, legendgroup=task,
                    showlegend=panel == 0, line=dict(color=colours[t % len(colours)]), row=1, col=panel + 1,
                )
        self._tasks = tasks

    def _update_reading(self, recorders: Sequence[ProbeRecorder]) -> None:
        """Redraw the heatmap when the chosen recorder has recorded since the last redraw."""
        recorder = _pairwise_recorder(recorders)
        record = recorder.latest if recorder is not None else None
        if record is None or int(record.step[-1]) == self._read_step:
            return
        latest = int(record.step[-1])
        matrix = task_matrix(record)
        with self.reading.batch_update():
            heatmap = self.reading.data[0]
            heatmap.z, heatmap.x, heatmap.y = matrix.values, [str(t) for t in matrix.target.values], [str(s) for s in matrix.source.values]
            self.reading.layout.title = f"{recorder.name} at step {latest} (row: source task)"
        self.reading_box.children = (self.reading,)
        self._read_step = latest

    def close(self) -> None:
        """The run is over: the interrupt is the kernel's again, the button disabled, the status says where the run ended."""
        self._restore_interrupt()
        self.stop_button.disabled = True
        self.status.value = f"{'stopped' if self.should_stop() else 'finished'} after {self._done} steps"
