"""The live training monitor: silent where nobody watches, throttled, drawing the run, and a Stop button that ends a
run cleanly after its current step (the history cut there, the checkpoint resuming to an unbroken run's numbers)."""

import inspect
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import tiny_model
from workbench.data import make_synthetic
from workbench.probes import ProbeRecorder, task_matrix
from workbench.train import loop, train
from workbench.viz.monitor import LiveMonitor, thinned

T = 3


def _data():
    return make_synthetic(n_tasks=T, n_samples=48, n_features=5, groups=[[0, 1]], seed=2).data


def _train(steps, **kwargs):
    torch.manual_seed(0)
    return train(tiny_model(T, seed=7), _data(), steps, batch_size=16, seed=1, progress=False, eval_every=4, **kwargs)


class CountingMonitor:
    """A monitor that records what the loop asks of it (and, as the loop's live monitor, how often it was built)."""

    built = 0

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after, self.updates, self.closed, self.asked = stop_after, [], 0, 0

    @classmethod
    def displayed(cls):
        cls.built += 1
        return cls()

    def due(self):
        return True

    def update(self, done, history, recorders):
        self.updates.append((done, history.sizes["step"]))

    def should_stop(self):
        self.asked += 1
        return self.stop_after is not None and self.asked >= self.stop_after

    def close(self):
        self.closed += 1


class ClickStop(ProbeRecorder):
    """Records the gradient conflict every 4 steps and clicks ``button`` at step ``at`` (a person pressing Stop mid-run)."""

    def __init__(self, button, at: int) -> None:
        super().__init__("gradient_conflict", every=4)
        self.button, self.at = button, at

    def maybe_record(self, step, *args, **kwargs):
        if step == self.at:
            self.button.click()
        return super().maybe_record(step, *args, **kwargs)


def test_importing_the_loop_and_monitor_true_outside_a_kernel_build_no_widget_and_import_no_plotly():
    script = (
        "import sys, torch\n"
        "from tests.conftest import tiny_model\n"
        "from workbench.data import make_synthetic\n"
        "from workbench.train import train\n"
        "data = make_synthetic(n_tasks=2, n_samples=32, n_features=5, seed=0).data\n"
        "run = train(tiny_model(2), data, 3, batch_size=16, progress=False, monitor=True)\n"
        "assert run.history.sizes['step'] == 3 and 'stopped_at' not in run.history.attrs\n"
        "print(sorted(m for m in ('plotly', 'ipywidgets', 'workbench.viz.monitor') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("batch", [False, True])
def test_monitor_true_builds_the_live_monitor_in_a_kernel_only_when_it_is_no_batch_run(batch, monkeypatch):
    monkeypatch.setattr(loop, "_in_kernel", lambda: True)
    monkeypatch.setattr(loop, "LIVE_MONITOR", f"{__name__}.CountingMonitor")
    monkeypatch.setenv("WORKBENCH_BATCH", "1" if batch else "0")
    CountingMonitor.built = 0
    _train(5, monitor=True)
    assert CountingMonitor.built == (0 if batch else 1)


def test_the_loop_updates_after_each_due_step_and_once_at_the_end_and_closes():
    monitor = CountingMonitor()
    run = _train(6, monitor=monitor)
    assert monitor.updates == [(d, d) for d in range(1, 7)] + [(6, 6)]
    assert monitor.closed == 1 and run.history.sizes["step"] == 6


def test_a_monitor_that_is_not_one_is_refused():
    with pytest.raises(TypeError, match="lacks"):
        _train(2, monitor="yes")


def test_the_monitor_is_closed_when_the_run_fails():
    monitor = CountingMonitor()

    def broken(model, batch):
        raise ValueError("broken probe")

    with pytest.raises(ValueError, match="broken probe"):
        _train(6, monitor=monitor, recorders=[ProbeRecorder(broken, every=3)])
    assert monitor.closed == 1


@pytest.mark.parametrize("rate, redraws", [(1e-9, 2), (1e9, 13)])
def test_redraws_are_throttled_by_wall_time_plus_a_final_one(rate, redraws):
    """Slower than any step: the first step's redraw and the final one; faster than any: every step's and the final one."""
    monitor = LiveMonitor(redraws_per_second=rate)
    _train(12, monitor=monitor)
    assert monitor.redraws == redraws


def test_the_live_monitor_draws_the_curves_per_task_and_the_latest_pairwise_reading():
    monitor = LiveMonitor()
    recorders = [ProbeRecorder("task_saliency", every=4), ProbeRecorder("gradient_conflict", every=4, name="conflict")]
    run = _train(10, monitor=monitor, recorders=recorders)
    h = run.history
    traces = monitor.curves.data
    assert len(traces) == 3 * T
    for t in range(T):
        np.testing.assert_array_equal(traces[t].y, h.train_loss.values[:, t])
        np.testing.assert_array_equal(traces[T + t].x, h.eval_step.values)
        np.testing.assert_array_equal(traces[2 * T + t].y, h.metric.values[:, t])
    assert [trace.name for trace in traces[:T]] == [str(n) for n in h.task.values]
    expected = task_matrix(run.probes["conflict"], start=8)
    np.testing.assert_allclose(np.asarray(monitor.reading.data[0].z, dtype=float), expected.values)
    assert "conflict at step 8" in monitor.reading.layout.title.text
    assert monitor.reading_box.children == (monitor.reading,)
    assert monitor.status.value == "finished after 10 steps" and monitor.stop_button.disabled


def test_without_a_pairwise_recorder_no_heatmap_is_shown():
    monitor = LiveMonitor()
    _train(5, monitor=monitor, recorders=[ProbeRecorder("task_saliency", every=2)])
    assert monitor.reading_box.children == ()


def test_thinned_averages_consecutive_bins_and_skips_nan():
    x = np.arange(10)
    y = np.array([1.0, 3.0, np.nan, np.nan, 5.0, np.nan, 2.0, 4.0, 6.0, 8.0])
    xs, ys = thinned(x, y, 4)
    np.testing.assert_array_equal(xs, [0, 3, 6, 9])
    np.testing.assert_array_equal(ys, [(1 + 3) / 2, 5.0, (2 + 4 + 6) / 3, 8.0])
    assert thinned(x, y, 10)[1] is y
    xs, ys = thinned(x, np.array([np.nan] * 5 + [1.0] * 5), 2)
    assert np.isnan(ys[0]) and ys[1] == 1.0
    with pytest.raises(ValueError, match="positive"):
        thinned(x, y, 0)


def test_stop_ends_the_run_after_the_current_step_with_the_history_up_to_it(tmp_path):
    monitor = LiveMonitor()
    path = tmp_path / "run.safetensors"
    stopped = _train(10, monitor=monitor, recorders=[ClickStop(monitor.stop_button, at=6)], checkpoint=path)
    h = stopped.history
    assert h.attrs["stopped_at"] == 7 and h.attrs["steps"] == 10
    assert h.sizes["step"] == 7 and np.isfinite(h.train_loss.values).all() and np.isfinite(h.step_seconds.values).all()
    assert h.eval_step.values.tolist() == [0, 4, 7]
    assert stopped.probes["gradient_conflict"].step.values.tolist() == [0, 4]
    assert monitor.status.value == "stopped after 7 steps" and monitor.stop_button.disabled

    seven = _train(7, recorders=[ProbeRecorder("gradient_conflict", every=4)])
    for variable in ("train_loss", "weights", "loss", "metric"):
        np.testing.assert_array_equal(h[variable].values, seven.history[variable].values, err_msg=variable)

    unbroken = _train(10)
    torch.manual_seed(123)  # the resumed run must not depend on the state of the process
    resumed = _train(10, checkpoint=path, resume=True, recorders=[ProbeRecorder("gradient_conflict", every=4)])
    assert "stopped_at" not in resumed.history.attrs
    assert resumed.probes["gradient_conflict"].step.values.tolist() == [0, 4, 8]
    for variable in ("train_loss", "weights", "loss", "metric"):
        np.testing.assert_array_equal(resumed.history[variable].values, unbroken.history[variable].values, err_msg=variable)
    for (key, a), (_, b) in zip(resumed.model.state_dict().items(), unbroken.model.state_dict().items()):
        assert torch.equal(a, b), key


def test_a_stop_at_a_checkpoint_step_saves_that_checkpoint_once_and_resumes_from_it(tmp_path):
    path = tmp_path / "run.safetensors"
    stopped = _train(10, monitor=CountingMonitor(stop_after=5), checkpoint=path, checkpoint_every=5)
    assert stopped.history.attrs["stopped_at"] == 5
    resumed = _train(10, checkpoint=path, resume=True)
    np.testing.assert_array_equal(resumed.history.train_loss.values, _train(10).history.train_loss.values)


def test_a_stop_asked_at_the_last_step_is_a_finished_run():
    run = _train(4, monitor=CountingMonitor(stop_after=4))
    assert "stopped_at" not in run.history.attrs and run.history.sizes["step"] == 4


def test_every_study_that_trains_takes_monitor():
    from workbench.studies import fine_tuned, grouping, merging, methods, saliency, transfer, validity

    studies = [
        methods.compare_methods, transfer.measure_transfer, grouping.study_task_grouping, saliency.saliency_during_training,
        saliency.attribution_validity_study, validity.validity_study, fine_tuned.fine_tuned_checkpoints, merging.load_merge_set,
    ]
    for study in studies:
        assert inspect.signature(study).parameters["monitor"].default is False, study.__name__


def test_a_study_shows_each_of_its_runs_to_the_monitor():
    from workbench.studies import load_problem, measure_transfer

    problem = load_problem("synthetic", n_tasks=3, n_samples=60, n_features=5, hidden=(8,))
    monitor = CountingMonitor()
    transfer = measure_transfer(problem, 3, subsets="pairs", progress=False, monitor=monitor)
    assert monitor.closed == transfer.sizes["subset"] > 1
    assert monitor.updates.count((3, 3)) == 2 * monitor.closed  # each run: its last step's redraw and the final one


class Interrupt(ProbeRecorder):
    """Records the task saliency at step 0 and sends this process ``times`` SIGINTs at step ``at`` (the kernel's Interrupt)."""

    def __init__(self, at: int, times: int = 1) -> None:
        super().__init__("task_saliency", every=1000)
        self.at, self.times = at, times

    def maybe_record(self, step, *args, **kwargs):
        if step == self.at:
            for _ in range(self.times):
                signal.raise_signal(signal.SIGINT)
        return super().maybe_record(step, *args, **kwargs)


def test_an_interrupt_stops_a_monitored_run_after_its_step_and_the_kernels_handler_comes_back():
    before = signal.getsignal(signal.SIGINT)
    run = _train(10, monitor=LiveMonitor(stop_on_interrupt=True), recorders=[Interrupt(at=3)])
    assert run.history.attrs["stopped_at"] == 4 and run.history.sizes["step"] == 4
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_interrupt_interrupts_at_once():
    # the kernel's handler, Python's default: the second interrupt goes to it (in the full suite an earlier test has
    # once left another SIGINT handler in this process, which took the second interrupt without raising)
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        monitor = LiveMonitor(stop_on_interrupt=True)
        with pytest.raises(KeyboardInterrupt):
            _train(10, monitor=monitor, recorders=[Interrupt(at=3, times=2)])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and monitor.should_stop()
    finally:
        signal.signal(signal.SIGINT, found)


def test_without_stop_on_interrupt_the_monitor_leaves_the_interrupt_alone():
    before = signal.getsignal(signal.SIGINT)
    LiveMonitor()
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_a_click_on_stop_reaches_a_run_in_a_kernel_and_the_cells_sent_meanwhile_still_run_in_order():
    """A kernel reads widget messages between cells: the monitor must read its own button's click while the run's cell
    runs, and hand back every other message (here the next cell) untouched."""
    from jupyter_client.manager import start_new_kernel

    from workbench import runner

    manager, client = start_new_kernel(kernel_name=runner.ensure_kernel())
    try:
        setup = "from workbench.studies import load_problem\nfrom workbench.train import train\nproblem = load_problem('synthetic', n_tasks=2, n_samples=64, n_features=5, hidden=(8,))\n"
        assert client.execute_interactive(setup, timeout=120)["content"]["status"] == "ok"
        endless = "run = train(problem.make_model(problem.splits.tasks), problem.splits.train, 10**7, batch_size=16, progress=False, monitor=True)\n"
        run_cell = client.execute(endless + "print('stopped at', run.history.attrs['stopped_at'], run.history.sizes['step'])")
        next_cell = client.execute("print('next cell')")
        printed, idle, stop = [], set(), None
        while len(idle) < 2:
            msg = client.get_iopub_msg(timeout=120)  # a run that never stops ends here, in Empty
            kind, content = msg["msg_type"], msg["content"]
            if kind == "comm_open" and content["data"]["state"].get("description") == "Stop":
                stop = content["comm_id"]
                client.shell_channel.send(client.session.msg("comm_msg", {"comm_id": stop, "data": {"method": "custom", "content": {"event": "click"}}}))
            elif kind == "stream":
                printed.append(content["text"])
            elif kind == "error":
                raise AssertionError("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                idle.add(msg["parent_header"].get("msg_id"))
        assert stop is not None and idle == {run_cell, next_cell}
        words = "".join(printed).split()
        assert words[:2] == ["stopped", "at"] and words[2] == words[3] and words[4:] == ["next", "cell"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_a_study_refuses_a_run_ended_by_stop_naming_it():
    """A comparison stacks every run's history: a run stopped midway is refused by name, not stacked short."""
    from workbench.studies import compare_methods, load_problem

    problem = load_problem("synthetic", seed=0, n_tasks=2, groups=[[0, 1]], n_samples=64, n_features=4, hidden=(6,))
    with pytest.raises(RuntimeError, match=r"the t0 baseline of seed 0 was stopped at step 2 of 6; the study needs every run whole"):
        compare_methods(problem, ["ew"], [0], 6, batch_size=16, monitor=CountingMonitor(stop_after=2), progress=False)
    assert _train(4, monitor=CountingMonitor()).complete() is not None
