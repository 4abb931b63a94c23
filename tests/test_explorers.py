"""The explorers of notebooks 01 and 02: widgets interactively, precomputed figures in a batch run, on tiny synthetic results."""

import numpy as np
import plotly.graph_objects as go
import pytest
import xarray as xr

from workbench import viz
from workbench.probes import conflict_frequency

TASKS = ["t0", "t1", "t2"]
STEPS = [0, 10, 20]
LAYERS = ["a.weight", "b.weight"]


@pytest.fixture
def history() -> xr.Dataset:
    """A recorded conflict history, ``(step, [layer,] task, other_task)``, symmetric with a unit diagonal; t1's gradient is zero at step 10."""
    rng = np.random.default_rng(0)

    def matrices(*shape):
        values = rng.uniform(-1, 1, (*shape, 3, 3))
        values = (values + np.swapaxes(values, -1, -2)) / 2
        values[..., range(3), range(3)] = 1.0
        values[1, ..., 1, :] = values[1, ..., :, 1] = np.nan
        return values

    cosine = matrices(3)
    cosine[:, 0, 2] = cosine[:, 2, 0] = [-0.5, 0.3, 0.4]  # t0 and t2 conflict at the first step only
    pair, layer_pair = ("step", "task", "other_task"), ("step", "layer", "task", "other_task")
    return xr.Dataset(
        {
            "cosine": (pair, cosine), "magnitude_similarity": (pair, abs(matrices(3))),
            "layer_cosine": (layer_pair, matrices(3, 2)), "layer_magnitude_similarity": (layer_pair, abs(matrices(3, 2))),
        },
        coords={"step": STEPS, "layer": LAYERS, "task": TASKS, "other_task": TASKS},
        attrs={"probe": "gradient_conflict", "threshold": 0.0},
    )


@pytest.fixture
def comparison() -> xr.Dataset:
    """A method comparison shaped like ``compare_methods``'s: three methods, two seeds, three tasks."""
    rng = np.random.default_rng(1)
    methods = ["ew", "mgda", "pcgrad"]
    return xr.Dataset(
        {
            "metric": (("method", "seed", "split", "task"), rng.uniform(0.5, 0.9, (3, 2, 2, 3))),
            "single_task": (("seed", "split", "task"), rng.uniform(0.5, 0.9, (2, 2, 3))),
            "delta_m": (("method", "seed", "split"), rng.normal(0, 5, (3, 2, 2))),
            "curve": (("method", "seed", "eval_step", "task"), rng.uniform(0, 1, (3, 2, 4, 3))),
        },
        coords={
            "method": methods, "seed": [0, 1], "split": ["validation", "test"], "task": TASKS, "eval_step": [0, 5, 10, 15],
            "higher_is_better": ("task", [True] * 3), "metric_name": ("task", ["accuracy"] * 3),
        },
        attrs={"methods": {m: {"name": m} for m in methods}},
    )


@pytest.fixture
def live(monkeypatch):
    monkeypatch.delenv("WORKBENCH_BATCH", raising=False)


@pytest.fixture
def batch(monkeypatch):
    monkeypatch.setenv("WORKBENCH_BATCH", "1")


def click(widget: go.FigureWidget, trace: int, row: str, column: str) -> None:
    """What the browser sends when a heatmap cell of ``widget`` is clicked."""
    point = [TASKS.index(row), TASKS.index(column)]
    widget._handler_js2py_pointsCallback({"new": {
        "event_type": "plotly_click", "points": {"xs": [column], "ys": [row], "point_indexes": [point], "trace_indexes": [trace]},
    }})


def test_the_views_hold_each_steps_matrices_and_the_conflict_frequency_up_to_it(history):
    views = viz.conflict_views(history)
    assert views.dims == ("view", "quantity", "step", "task", "other_task")
    assert views.view.values.tolist() == ["whole", *LAYERS]
    np.testing.assert_array_equal(views.sel(view="b.weight", quantity="cosine").values, history.layer_cosine.sel(layer="b.weight").values)
    for i, step in enumerate(STEPS):
        so_far = conflict_frequency(history.isel(step=slice(0, i + 1)))
        np.testing.assert_array_equal(views.sel(view="whole", quantity="frequency", step=step).values, so_far.frequency.values)
    assert views.sel(view="whole", quantity="frequency", task="t0", other_task="t2").values.tolist() == [1.0, 0.5, 1 / 3]
    cosine = history.cosine.sel(task="t1", other_task="t2").values  # undefined at step 10: left out of the fraction
    assert views.sel(view="whole", quantity="frequency", step=20, task="t1", other_task="t2").item() == np.mean(cosine[[0, 2]] < 0)


def test_an_explorer_is_shown_beside_a_note_for_when_its_kernel_is_gone_and_refused_in_a_batch_run(history, monkeypatch):
    import IPython.display

    from workbench.viz.explorer_kit import RERUN, LiveBox

    monkeypatch.delenv("WORKBENCH_BATCH", raising=False)
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **options: shown.append((objects, options)))
    explorer = viz.conflict_explorer(history)
    assert isinstance(explorer, LiveBox) and "wb-live" in explorer._dom_classes
    explorer._ipython_display_()
    (widget, raw), (note, _) = shown
    assert raw == {"raw": True} and widget[0]["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.model_id
    html = note[0].data
    assert RERUN in html and '<div class="wb-live-note">' in html and ".jp-OutputArea:has(.wb-live:not(.jupyter-widgets-disconnected)) .wb-live-note {display: none}" in html
    monkeypatch.setenv("WORKBENCH_BATCH", "1")
    with pytest.raises(RuntimeError, match="batch run"):
        explorer._ipython_display_()


def test_the_conflict_explorer_is_widgets_interactively_and_precomputed_figures_in_a_batch_run(history, monkeypatch):
    import ipywidgets

    monkeypatch.delenv("WORKBENCH_BATCH", raising=False)
    assert isinstance(viz.conflict_explorer(history), ipywidgets.VBox)
    monkeypatch.setenv("WORKBENCH_BATCH", "1")
    heatmaps, pairs = viz.conflict_explorer(history, layer="a.weight", step=10)
    assert isinstance(heatmaps, go.Figure) and not isinstance(heatmaps, go.FigureWidget)
    assert [b.label for b in heatmaps.layout.updatemenus[0].buttons] == ["whole", *LAYERS] and heatmaps.layout.updatemenus[0].active == 1
    slider = heatmaps.layout.sliders[0]
    assert [s.label for s in slider.steps] == ["0", "10", "20"] and slider.active == 1
    drawn = np.array(slider.steps[2].args[0]["z"][0], dtype=float)  # the cosine of a.weight at step 20
    np.testing.assert_allclose(drawn, history.layer_cosine.sel(layer="a.weight", step=20).values, atol=5e-4)
    whole_slider = heatmaps.layout.updatemenus[0].buttons[0].args[1]["sliders"][0]
    np.testing.assert_allclose(np.array(whole_slider["steps"][0]["args"][0]["z"][1], dtype=float), history.magnitude_similarity.isel(step=0).values, atol=5e-4)
    assert [b.label for b in pairs.layout.updatemenus[0].buttons] == ["t0–t1", "t0–t2", "t1–t2"]
    assert len(pairs.data) == 3 * 3 and sum(bool(t.visible) for t in pairs.data) == 3  # a line per view and pair, the first pair's shown


def test_moving_the_layer_and_the_step_redraws_the_three_heatmaps(history, live):
    explorer = viz.conflict_explorer(history)
    (layer, step), heatmaps = explorer.children[0].children, explorer.children[1]
    assert (layer.value, step.value) == ("whole", 20)
    before = [np.array(t.z) for t in heatmaps.data]
    step.value = 0
    after = [np.array(t.z) for t in heatmaps.data]
    assert all(not np.array_equal(b, a, equal_nan=True) for b, a in zip(before, after))
    np.testing.assert_array_equal(after[0], history.cosine.sel(step=0).values)
    layer.value = "b.weight"
    np.testing.assert_array_equal(np.array(heatmaps.data[1].z), history.layer_magnitude_similarity.sel(layer="b.weight", step=0).values)
    assert heatmaps.layout.title.text == "The tasks' gradients on layer b.weight at step 0"


def test_clicking_a_cell_shows_that_pairs_cosine_over_training_per_layer(history, live):
    explorer = viz.conflict_explorer(history)
    heatmaps, pair = explorer.children[1], explorer.children[2]
    assert pair.layout.title.text.startswith("Gradient cosine of t0–t1")
    click(heatmaps, 2, "t2", "t0")  # on the conflict frequency
    assert pair.layout.title.text.startswith("Gradient cosine of t2–t0")
    assert [t.name for t in pair.data] == ["whole", *LAYERS]
    np.testing.assert_array_equal(np.array(pair.data[2].y), history.layer_cosine.sel(layer="b.weight", task="t2", other_task="t0").values)
    click(heatmaps, 0, "t1", "t1")  # a task with itself: nothing to show
    assert pair.layout.title.text.startswith("Gradient cosine of t2–t0")


def test_the_conflict_explorer_refuses_unknown_selections(history, live):
    with pytest.raises(ValueError, match=r"unknown layer 'c.weight'; choose one of \['whole', 'a.weight', 'b.weight'\]"):
        viz.conflict_explorer(history, layer="c.weight")
    with pytest.raises(ValueError, match=r"unknown step 5; choose one of \[0, 10, 20\]"):
        viz.conflict_explorer(history, step=5)
    with pytest.raises(ValueError, match="unknown task pair"):
        viz.conflict_explorer(history, pair=("t0", "t0"))
    with pytest.raises(ValueError, match=r"not a recorded gradient_conflict history.*missing \['layer_cosine'\]"):
        viz.conflict_explorer(history.drop_vars("layer_cosine"))
    with pytest.raises(ValueError, match=r"gradient conflict is between tasks; this history has \['t0'\]"):
        viz.conflict_explorer(history.isel(task=[0], other_task=[0]))


def test_the_methods_explorer_is_widgets_interactively_and_every_methods_figures_in_a_batch_run(comparison, monkeypatch):
    import ipywidgets

    monkeypatch.delenv("WORKBENCH_BATCH", raising=False)
    assert isinstance(viz.methods_explorer(comparison), ipywidgets.VBox)
    monkeypatch.setenv("WORKBENCH_BATCH", "1")
    bars, trade, curves = viz.methods_explorer(comparison, split="validation")
    assert [b.label for b in bars.layout.updatemenus[0].buttons] == ["validation", "test"] and bars.layout.updatemenus[0].active == 0
    assert [bool(t.visible) for t in bars.data] == [True, False] and bars.layout.title.text.startswith("Δm% against single-task training on the validation")
    assert len(trade.layout.updatemenus[0].buttons) == 3 * 2 and len(trade.data) == 3 * 2 * (3 + 1)  # pairs × splits × (methods + single-task)
    assert [b.label for b in curves.layout.updatemenus[0].buttons] == TASKS and len(curves.data) == 3 * 3


def test_the_picked_methods_task_pair_and_split_redraw_what_depends_on_them(comparison, live):
    explorer = viz.methods_explorer(comparison)
    picked, (task, pair, split) = explorer.children[0].children[0], explorer.children[0].children[1].children
    bars, trade, curves = explorer.children[1:]
    assert sorted(bars.data[0].x) == ["ew", "mgda", "pcgrad"] and len(curves.data) == 3
    picked.value = ("mgda", "pcgrad")
    assert sorted(bars.data[0].x) == ["mgda", "pcgrad"] and [t.name for t in curves.data] == ["mgda", "pcgrad"]
    assert [t.name for t in trade.data] == ["mgda", "pcgrad", "single-task"]
    test_bars, test_point = list(bars.data[0].y), trade.data[0].x
    split.value = "validation"
    assert list(bars.data[0].y) != test_bars and trade.data[0].x != test_point
    np.testing.assert_allclose(trade.data[0].x, [comparison.metric.sel({"method": "mgda", "split": "validation", "task": "t0"}).mean("seed")])
    curve = curves.data[0].y
    task.value = "t2"
    assert curves.layout.title.text == "Validation accuracy of t2 during training" and list(curves.data[0].y) != list(curve)
    pair.value = ("t1", "t2")
    assert trade.layout.xaxis.title.text == "t1 accuracy" and trade.layout.yaxis.title.text == "t2 accuracy"
    picked.value = ()
    assert [len(f.data) for f in (bars, trade, curves)] == [0, 0, 0] and bars.layout.title.text == "Pick at least one method"
    assert bars.layout.yaxis.title.text is None and not bars.layout.shapes  # nothing left of the bars
    picked.value = ("ew",)
    assert list(bars.data[0].x) == ["ew"] and bars.layout.yaxis.title.text == "Δm %"


def test_the_methods_explorer_refuses_unknown_selections(comparison, live):
    with pytest.raises(ValueError, match=r"unknown method 'nash_mtl'; choose one of \['ew', 'mgda', 'pcgrad'\]"):
        viz.methods_explorer(comparison, methods=["ew", "nash_mtl"])
    with pytest.raises(ValueError, match="pick at least one method"):
        viz.methods_explorer(comparison, methods=[])
    with pytest.raises(ValueError, match=r"unknown task 't9'"):
        viz.methods_explorer(comparison, task="t9")
    with pytest.raises(ValueError, match=r"unknown task pair \('t1', 't0'\)"):
        viz.methods_explorer(comparison, pair=("t1", "t0"))
    with pytest.raises(ValueError, match=r"unknown split 'train'; choose one of \['validation', 'test'\]"):
        viz.methods_explorer(comparison, split="train")
    with pytest.raises(ValueError, match="a trade-off needs two tasks"):
        viz.methods_explorer(comparison.isel(task=[0]))
