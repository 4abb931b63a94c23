"""The explorers of notebooks 03 (affinity), 04 (saliency) and 05 (merging): widgets live, figures in a batch run."""

import base64
import itertools

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import pytest
import xarray as xr

from workbench.merge import MERGES
from workbench.probes import PROBES
from workbench.progress import BATCH_VARIABLE, ENV_VARIABLE
from workbench.studies.grouping import GroupingStudy, _relative_loss
from workbench.studies.transfer import subset_label
from workbench.viz.affinity_explorer import affinity_explorer, affinity_view
from workbench.viz.merging import MergeScorer, merge_explorer, merge_option_widgets
from workbench.viz.saliency_explorer import saliency_explorer

TASKS = ["a", "b", "c"]
STEPS = [0, 5, 10]


@pytest.fixture
def live(monkeypatch):
    monkeypatch.delenv(BATCH_VARIABLE, raising=False)


@pytest.fixture
def batch(monkeypatch):
    monkeypatch.setenv(BATCH_VARIABLE, "1")


def shown(explorer) -> dict:
    """The plotly JSON the explorer's figure output holds (its last child)."""
    (output,) = explorer.children[-1].outputs
    return output["data"]["application/vnd.plotly.v1+json"]


def array(value) -> np.ndarray:
    """A figure's JSON array: a list, or plotly's typed array (base64 bytes, a dtype and a shape)."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape([int(n) for n in str(value.get("shape", -1)).split(",")])
    return np.asarray(value, dtype=float)


def z_values(figure: dict) -> list:
    return [array(trace["z"]).astype(float).round(6).tolist() for trace in figure["data"] if trace["type"] == "heatmap"]


# ---- 03: affinity ----

def affinity_history(probe: str, seed: int) -> xr.Dataset:
    values = np.random.default_rng(seed).normal(size=(len(STEPS), 3, 3))
    return xr.Dataset({"affinity": (("step", "source", "target"), values)}, coords={"step": STEPS, "source": TASKS, "target": TASKS}, attrs={"probe": probe})


def transfer(seed: int = 0) -> xr.Dataset:
    """Losses of every subset, two seeds (NaN where the task is not in the subset), as ``measure_transfer`` gives."""
    subsets = [g for size in (1, 2, 3) for g in itertools.combinations(TASKS, size)]
    members = np.array([[t in g for t in TASKS] for g in subsets])
    loss = np.random.default_rng(seed).uniform(0.5, 1.5, size=(2, len(subsets), 2, 3))
    loss[:, ~members[:, None, :].repeat(2, axis=1)] = np.nan
    return xr.Dataset(
        {"loss": (("split", "subset", "seed", "task"), loss), "members": (("subset", "task"), members)},
        coords={"split": ["validation", "test"], "subset": [subset_label(g) for g in subsets], "seed": [0, 1], "task": TASKS},
    )


def grouping_study(seed: int = 0) -> GroupingStudy:
    affinities = {probe: affinity_history(probe, seed + i) for i, probe in enumerate(PROBES.names(family="affinity"))}
    return GroupingStudy(affinities, transfer(seed), {}, {}, None)


def test_an_affinity_view_chooses_groups_from_the_window_and_measures_them_as_the_study_does():
    study = grouping_study()
    view = affinity_view(study, "tag_affinity", 5, 10, max_groups=3)
    np.testing.assert_allclose(view.affinity.values, study.affinities["tag_affinity"].affinity.sel(step=[5, 10]).mean("step").values)
    assert view.ks == [1, 2, 3] and view.groups[0] == [tuple(TASKS)]
    for groups, measured in zip(view.groups, view.measured):
        assert measured == pytest.approx(float(_relative_loss(study.transfer, groups).mean("seed")))
    with pytest.raises(ValueError, match="recorded no 'nope'"):
        affinity_view(study, "nope", 0, 10, 3)


def test_the_affinity_explorer_redraws_for_every_probe_window_and_optimizer(live):
    studies = {"adam": grouping_study(0), "sgd": grouping_study(7)}
    explorer = affinity_explorer(studies, "affinity")
    assert isinstance(explorer, widgets.VBox)
    optimizer, probe, window, _ = explorer.children[0].children
    assert list(probe.options) == PROBES.names(family="affinity") and list(optimizer.options) == ["adam", "sgd"]
    seen = [z_values(shown(explorer))]
    for control, value in ((probe, probe.options[1]), (window, (5, 10)), (optimizer, "sgd")):
        control.value = value
        seen.append(z_values(shown(explorer)))
        assert seen[-1] != seen[-2], control.description
    assert "sgd: cosine_affinity, steps 5–10" in shown(explorer)["layout"]["title"]["text"]
    single = affinity_explorer(grouping_study(), "affinity")
    assert [c.description for c in single.children[0].children[:2]] == ["probe", "steps"]  # no optimizer menu for one study


def test_the_affinity_explorer_refuses_unknown_selections(live):
    with pytest.raises(ValueError, match=r"unknown probe 'nope'; choose one of \['tag_affinity'"):
        affinity_explorer(grouping_study(), "affinity", probe="nope")
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        affinity_explorer({"sgd": grouping_study()}, "affinity", optimizer="adam")
    with pytest.raises(ValueError, match="none of the registered affinity probes"):
        affinity_explorer(GroupingStudy({}, transfer(), {}, {}, None), "affinity")


def test_the_affinity_explorer_is_a_precomputed_figure_in_a_batch_run(batch):
    figure = affinity_explorer({"adam": grouping_study(0), "sgd": grouping_study(7)}, "affinity", probe="cosine_affinity")
    assert isinstance(figure, go.Figure)
    pairs = [button.label for button in figure.layout.updatemenus[0].buttons]
    assert pairs[0] == "adam: cosine_affinity" and len(pairs) == 2 * len(PROBES.names(family="affinity"))
    assert len(figure.data) == 3 * len(STEPS) * len(pairs)  # heatmap, payoff and table per probe and window
    steps = figure.layout.sliders[0].steps
    assert [s.label for s in steps] == [str(s) for s in STEPS]
    first, last = (np.array(step.args[0]["visible"]) for step in (steps[0], steps[-1]))
    assert first.sum() == last.sum() == 3 and not (first & last).any()
    assert sum(trace.visible for trace in figure.data) == 3


# ---- 04: saliency ----

def saliency_results(spatial: bool, n: int = 5, tokens: int = 4):
    rng = np.random.default_rng(0)
    tasks = {"task": TASKS}
    if spatial:
        attribution = xr.Dataset({"attribution": (("task", "sample", "input_channel", "row", "column"), rng.normal(size=(3, n, 1, 6, 8)))}, coords=tasks)
        saliency = xr.Dataset({"saliency": (("task", "sample", "channel", "height", "width"), rng.normal(size=(3, n, 4, 2, 3)))}, coords=tasks)
        saliency.attrs["dims"] = ["channel", "height", "width"]
    else:
        attribution = xr.Dataset({"attribution": (("task", "sample", "token"), rng.normal(size=(3, n, tokens)))}, coords=tasks)
        saliency = xr.Dataset({"saliency": (("task", "sample", "channel"), rng.normal(size=(3, n, 16)))}, coords=tasks, attrs={"dims": ["channel"]})
    return attribution, saliency


def test_the_saliency_explorer_redraws_for_every_sample_and_task(live):
    attribution, saliency = saliency_results(spatial=True)
    images = np.random.default_rng(1).uniform(size=(5, 1, 6, 8))
    explorer = saliency_explorer(attribution, saliency, "digits", images=images)
    sample, task = explorer.children[0].children
    before = z_values(shown(explorer))
    assert len(before) == 2 + len(TASKS)  # the image, the attribution, every task's saliency map
    task.value = "b"
    after_task = z_values(shown(explorer))
    assert after_task[1] != before[1] and after_task[0] == before[0] and after_task[2:] == before[2:]  # only the attribution follows the task
    sample.value = 3
    after_sample = z_values(shown(explorer))
    assert all(a != b for a, b in zip(after_sample, after_task))
    np.testing.assert_allclose(np.array(after_sample[1])[::-1], attribution.attribution.sel(task="b").isel(sample=3).sum("input_channel").values, atol=1e-6)


def test_word_pieces_are_coloured_tokens_and_a_pooled_saliency_one_row_per_task(live):
    attribution, saliency = saliency_results(spatial=False)
    pieces = [["[CLS]", "go", "##od", "[SEP]"], ["[CLS]", "bad", "[SEP]"], ["[CLS]", "x", "[SEP]"], ["[CLS]", "y", "[SEP]"], ["[CLS]", "z", "[SEP]"]]
    explorer = saliency_explorer(attribution, saliency, "words", tokens=pieces, sample=1)
    tokens, pooled = shown(explorer)["data"]
    assert tokens["text"] == [pieces[1]] and array(tokens["z"]).shape == (1, 3)  # the padding is left out
    assert array(pooled["z"]).shape == (3, 16) and pooled["y"] == TASKS
    explorer.children[0].children[1].value = "c"
    assert z_values(shown(explorer))[0] != z_values({"data": [tokens]})[0]


def test_the_saliency_explorer_refuses_unknown_selections(live):
    attribution, saliency = saliency_results(spatial=True)
    images = np.zeros((5, 1, 6, 8))
    with pytest.raises(ValueError, match=r"unknown task 'd'; the tasks are \['a', 'b', 'c'\]"):
        saliency_explorer(attribution, saliency, "digits", images=images, task="d")
    with pytest.raises(ValueError, match="sample 5 is not among the 5 samples"):
        saliency_explorer(attribution, saliency, "digits", images=images, sample=5)
    with pytest.raises(ValueError, match="the attribution has 5 samples and the saliency 4"):
        saliency_explorer(attribution, saliency.isel(sample=slice(4)), "digits", images=images)
    with pytest.raises(ValueError, match="give the digit images"):
        saliency_explorer(attribution, saliency, "digits")


def test_the_saliency_explorer_is_a_precomputed_figure_in_a_batch_run(batch):
    attribution, saliency = saliency_results(spatial=True)
    figure = saliency_explorer(attribution, saliency, "digits", images=np.zeros((5, 1, 6, 8)), task="b", report_samples=4)
    assert [b.label for b in figure.layout.updatemenus[0].buttons] == ["b", "a", "c"]
    assert len(figure.data) == 4 * (1 + len(TASKS)) + 4 * len(TASKS)  # per sample: image and saliency maps; per sample and task: attribution
    for button in figure.layout.updatemenus[0].buttons:
        visible = np.array(button.args[0]["visible"])
        assert visible.sum() == 2 + len(TASKS)
        assert len(button.args[1]["sliders"][0]["steps"]) == 4
    assert sum(trace.visible for trace in figure.data) == 2 + len(TASKS)


# ---- 05: merging ----

def lambda_curves_of(methods) -> xr.Dataset:
    normalised = xr.DataArray(np.random.default_rng(0).uniform(size=(len(methods), 2, 3)), dims=("method", "lam", "task"), coords={"method": methods, "lam": [0.3, 1.0], "task": TASKS})
    return normalised.to_dataset(name="normalised").assign(mean=normalised.mean("task"))


def test_every_registered_merge_gets_a_widget_for_each_of_its_options(live):
    for name, entry in MERGES.items():
        made = merge_option_widgets(name, n_tasks=3)
        expected = {k for k, v in entry.options().items() if k != "lam" and v is not None and not isinstance(v, tuple)}
        assert set(made) == expected, name
        for option, widget in made.items():
            assert widget.value == entry.options()[option] and widget.description == option
            if isinstance(entry.options()[option], bool):
                assert isinstance(widget, widgets.Checkbox), (name, option)
            elif isinstance(entry.options()[option], (int, float)):
                assert isinstance(widget, (widgets.IntSlider, widgets.FloatSlider, widgets.FloatLogSlider)), (name, option)
    assert merge_option_widgets("ties", 3)["trim"].options == ("tensor", "model")
    assert merge_option_widgets("consensus", 5)["k"].max == 5


def test_the_merge_explorer_offers_every_merge_passes_the_moved_options_and_shows_the_scores(live):
    asked = []

    def score(method, lam, **options):
        asked.append((method, lam, options))
        rng = np.random.default_rng(len(asked))
        return xr.DataArray(rng.uniform(size=3), dims="task", coords={"task": TASKS})

    explorer = merge_explorer(score, lambda_curves_of(["task_arithmetic", "ties"]), "digits", methods=MERGES.names())
    method, lam = explorer.children[0].children
    assert list(method.options) == MERGES.names()
    bars = shown(explorer)["data"][0]
    assert bars["text"] == [f"{v:.3f}" for v in array(bars["y"])]  # the scores as numbers on the bars
    method.value = "ties"
    density = {w.description: w for w in explorer.children[1].children}["density"]
    density.value = 0.5
    method.value = "consensus"
    assert lam.disabled and {w.description for w in explorer.children[1].children} == {"k"}
    method.value = "ties"
    assert asked == [("average", None, {}), ("ties", 0.3, {}), ("ties", 0.3, {"density": 0.5}), ("consensus", None, {})]  # λ shared; ties at 0.5 kept
    assert "density = 0.5" in shown(explorer)["layout"]["title"]["text"]
    with pytest.raises(ValueError, match=r"unknown merges \['nope'\]"):
        merge_explorer(score, lambda_curves_of(["ties"]), "digits", methods=["ties", "nope"])


def test_the_merge_explorer_is_busy_while_it_merges(live):
    built, seen = {}, []

    def score(method, lam, **options):
        if built:  # not the first merge, made while building
            box = built["explorer"]
            controls = [*box.children[0].children, *box.children[1].children]
            seen.append(([c.disabled for c in controls], box.children[2].value))
        return xr.DataArray(np.ones(3), dims="task", coords={"task": TASKS})

    built["explorer"] = explorer = merge_explorer(score, lambda_curves_of(["task_arithmetic", "dare"]), "digits")
    explorer.children[0].children[0].value = "dare"
    assert seen == [([True] * 5, "merging…")]  # the menu, λ and DARE's drop, rescale and seed
    assert not any(c.disabled for c in [*explorer.children[0].children, *explorer.children[1].children]) and explorer.children[2].value == ""


def test_a_setting_the_merge_refuses_is_said_and_the_last_figure_kept(live):
    def score(method, lam, **options):
        if options:
            raise ValueError("k must be at most the number of tasks")
        return xr.DataArray(np.ones(3), dims="task", coords={"task": TASKS})

    explorer = merge_explorer(score, lambda_curves_of(["task_arithmetic"]), "digits", methods=["consensus"])
    before = shown(explorer)
    explorer.children[1].children[0].value = 1
    assert explorer.children[2].value == "consensus refused this setting: k must be at most the number of tasks"
    assert shown(explorer) == before and not explorer.children[0].children[0].disabled


def test_the_merge_explorer_is_the_precomputed_curves_in_a_batch_run(batch):
    figure = merge_explorer(lambda *a, **k: pytest.fail("merged in a batch run"), lambda_curves_of(["task_arithmetic", "ties"]), "digits", methods=MERGES.names())
    assert [b.label for b in figure.layout.updatemenus[0].buttons] == ["task_arithmetic", "ties"] and len(figure.data) == 2 * 3


@pytest.fixture(scope="module")
def merge_set(tmp_path_factory):
    from workbench.studies.fine_tuned import Recipe
    from workbench.studies.merging import load_merge_set

    recipe = Recipe("multidigits", ("left", "sum"), pretrain_steps=0, finetune_steps=2, options={"n_train": 200})
    return load_merge_set(recipe, cache=tmp_path_factory.mktemp("checkpoints"), progress=False)


def test_a_merge_scorer_merges_any_registered_merge_of_a_merge_set_and_scores_each_task(merge_set, monkeypatch):
    from workbench.studies.merging import swept_scores

    monkeypatch.setenv(ENV_VARIABLE, "0")  # no bars in the test's output
    scorer = MergeScorer(merge_set)
    # the sum is regressed: no AdaMerging (classification only); two tasks: none of the merges of one model
    assert scorer.methods == [m for m in MERGES.names() if not m.endswith("adamerging") and MERGES[m].traits.get("models", (1, None))[1] != 1]
    ties = scorer("ties", 0.7)
    np.testing.assert_allclose(ties.values, swept_scores(merge_set, "ties", [0.7]).isel(model=0).values)
    assert ties.dims == ("task",) and scorer("regmean", None, alpha=0.5).sizes["task"] == 2
