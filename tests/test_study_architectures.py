"""Architectures compared on one problem, and the gates of the gated ones over training."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from workbench.models import ARCHITECTURES, Backbone
from workbench.studies import (
    architecture_summary, compare_architectures, compare_methods, expert_summary, expert_usage, gated_architectures, load_problem,
)


@pytest.fixture(scope="module")
def problem():
    return load_problem("synthetic", n_tasks=2, n_samples=120, n_features=6, hidden=(8, 6))


def test_every_architecture_is_compared_under_the_same_methods_reusing_what_was_run(problem):
    hard = compare_methods(problem, ["ew", "mgda"], [0], 4, batch_size=16, progress=False)
    result = compare_architectures(problem, ["ew"], [0], 4, architectures=["hps", "mmoe", "ple"], done={"hps": hard}, batch_size=16, progress=False)
    assert result.architecture.values.tolist() == ["hps", "mmoe", "ple"] and result.method.values.tolist() == ["ew"]
    np.testing.assert_array_equal(result.delta_m.sel(architecture="hps").values, hard.delta_m.sel({"method": ["ew"]}).values)
    built = {name: sum(p.numel() for p in problem.make_model(problem.splits.tasks, architecture=name).parameters()) for name in ("hps", "mmoe", "ple")}
    assert dict(zip(result.architecture.values, result.parameters.values.tolist())) == built
    table = architecture_summary(result)
    assert list(table.index.names) == ["architecture", "method"] and table.loc[("hps", "ew"), "steps_of_hps"] == 1.0
    assert (table["parameters"] > 0).all()


class Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 6)

    def forward(self, x):
        return torch.tanh(self.linear(x))


def test_an_architecture_that_refuses_the_backbone_is_left_out_with_its_reason_unless_asked_for(problem):
    opaque = replace(problem, backbone=Backbone("Opaque", Opaque, (6,), inputs=(6,)))
    result = compare_architectures(opaque, ["ew"], [0], 2, batch_size=16, progress=False)
    assert set(result.attrs["skipped"]) == {"ple", "cross_stitch", "mtan", "hmtl", "task_expert"} and "cannot be cut" in result.attrs["skipped"]["ple"]
    assert set(result.architecture.values) == set(ARCHITECTURES) - set(result.attrs["skipped"])
    assert "ple" not in gated_architectures(opaque) and "mmoe" in gated_architectures(opaque) and "hps" not in gated_architectures(opaque)
    with pytest.raises(ValueError, match="ple acts between the stages of the Opaque backbone"):
        compare_architectures(opaque, ["ew"], [0], 2, architectures=["hps", "ple"], batch_size=16, progress=False)
    with pytest.raises(ValueError, match="against hard sharing's single-task baselines: include 'hps' among the architectures \\['mmoe'\\]"):
        compare_architectures(opaque, ["ew"], [0], 2, architectures=["mmoe"], batch_size=16, progress=False)


def test_the_gates_over_training_and_their_summary(problem):
    usage = {name: expert_usage(problem, name, 6, every=3, batch_size=16) for name in ("mmoe", "ple")}
    assert usage["mmoe"].step.values.tolist() == [0, 3] and usage["ple"].sizes["level"] == 2
    table = expert_summary(usage)
    assert list(table.index) == ["mmoe", "ple"]
    assert (table.gate_entropy <= table.entropy_ceiling + 1e-9).all() and (table.max_shared_ownership >= 0.5 - 1e-9).all()
    assert ((table.max_dead_fraction >= 0) & (table.max_dead_fraction <= 1)).all()


def test_a_reused_comparison_that_was_run_otherwise_is_refused_naming_what_differs(problem):
    hard = compare_methods(problem, ["ew"], [0], 4, batch_size=16, progress=False)
    with pytest.raises(ValueError, match=r"done\['hps'\] is no comparison this one can reuse: it ran 4 steps, not 3; its seeds are \[0\], not \[0, 1\]"):
        compare_architectures(problem, ["ew"], [0, 1], 3, architectures=["hps", "mmoe"], done={"hps": hard}, batch_size=16, progress=False)
    with pytest.raises(ValueError, match="its architecture is 'hps'"):
        compare_architectures(problem, ["ew"], [0], 4, architectures=["hps", "mmoe"], done={"mmoe": hard}, batch_size=16, progress=False)


def test_every_architecture_is_scored_against_hard_sharing_s_single_task_baselines(problem):
    result = compare_architectures(problem, ["ew"], [0, 1], 3, architectures=["mmoe", "hps"], batch_size=16, progress=False)
    assert result.architecture.values.tolist() == ["mmoe", "hps"]
    np.testing.assert_array_equal(result.single_task.sel(architecture="mmoe").values, result.single_task.sel(architecture="hps").values)
    with pytest.raises(ValueError, match=r"single_task must hold the baselines of seeds \[0, 5\]"):
        compare_methods(problem, ["ew"], [0, 5], 3, single_task=result.single_task.sel(architecture="hps"), batch_size=16, progress=False)


def test_the_published_architecture_claims_are_checked_in_every_setting():
    from workbench.studies import ARCHITECTURE_CLAIMS, check_architecture_claims

    settings = {}
    for cosine in (-0.3, 0.8):
        tabular = load_problem("tabular", n_tasks=3, n_features=6, correlation=cosine, n_samples=150, hidden=(8, 6))
        settings[f"task cosine {cosine:+.1f}"] = compare_architectures(tabular, ["ew"], [0, 1], 3, architectures=["hps", "mmoe", "cgc", "ple"],
                                                                        batch_size=16, progress=False)
    table = check_architecture_claims(settings)
    tested = [(a, b) for a, b, _ in ARCHITECTURE_CLAIMS if {a, b} <= {"hps", "mmoe", "cgc", "ple"}]  # the claims these four can test
    assert tested and list(table.index) == [(setting, f"{a} beats {b}") for setting in settings for a, b in tested]
    row = table.loc[("task cosine -0.3", "ple beats mmoe")]
    delta = settings["task cosine -0.3"].delta_m.sel({"split": "test", "method": "ew"})
    assert row["mean difference"] == pytest.approx(float((delta.sel(architecture="ple") - delta.sel(architecture="mmoe")).mean()))
    assert row["verdict"] in {"holds, clearly", "holds within the noise", "reversed, clearly", "does not hold, within the noise"}


def test_a_remedy_study_measures_each_variant_under_every_seed_and_its_verdict_is_oriented(problem):
    from workbench.studies import COLLAPSE_MEASURES, check_remedies, remedy_study

    variants = {"two experts": {"n_experts": 2}, "same again": {"n_experts": 2}, "four experts": {"n_experts": 4}}
    study = remedy_study(problem, "mmoe", variants, [0, 1], 4, every=2, batch_size=16)
    assert study.max_dead_fraction.dims == ("variant", "seed") and study.variant.values.tolist() == list(variants)
    usage = expert_usage(problem, "mmoe", 4, every=2, seed=1, architecture_options={"n_experts": 4}, batch_size=16)
    assert float(study.min_output_std.sel(variant="four experts", seed=1)) == float(expert_summary({"m": usage}).min_output_std.iloc[0])
    same = check_remedies(study, "two experts", "same again")  # identical runs: no difference, and no claim
    assert list(same.index) == list(COLLAPSE_MEASURES) and (same["mean difference"] == 0).all() and (same.remedied == same.without).all()
    assert (same.verdict == "does not hold, within the noise").all()
    table = check_remedies(study, "four experts", "two experts")
    lower = study.max_dead_fraction.sel(variant="four experts") - study.max_dead_fraction.sel(variant="two experts")
    higher = study.min_output_std.sel(variant="four experts") - study.min_output_std.sel(variant="two experts")
    assert table.loc["max_dead_fraction", "mean difference"] == pytest.approx(float(lower.mean()))
    assert table.loc["min_output_std", "mean difference"] == pytest.approx(-float(higher.mean()))  # higher is better: negated
    with pytest.raises(ValueError, match="remedy_study compares variants of mmoe; give at least two"):
        remedy_study(problem, "mmoe", {"one": {}}, [0], 2)
    with pytest.raises(ValueError, match="give at least one seed"):
        remedy_study(problem, "mmoe", variants, [], 2)
    with pytest.raises(ValueError, match=r"check_remedies: no variants \['eight experts'\] in the study; its variants are \['two experts'"):
        check_remedies(study, "eight experts", "two experts")


def test_the_architecture_figures_draw_the_comparison_s_numbers(problem):
    from workbench.viz import architecture_bars, architecture_costs

    result = compare_architectures(problem, ["ew", "mgda"], [0, 1], 3, architectures=["hps", "mmoe", "cgc"], batch_size=16, progress=False)
    delta = result.delta_m.sel(split="test").mean("seed")
    bars = architecture_bars(result)
    order = list(delta.min("method").to_series().sort_values().index)
    assert [trace.name for trace in bars.data] == ["ew", "mgda"] and list(bars.data[0].x) == order
    np.testing.assert_allclose(bars.data[1].y, delta.sel({"method": "mgda", "architecture": order}).values)
    assert list(bars.data[0].customdata) == result.parameters.sel(architecture=order).values.tolist()
    costs = architecture_costs(result, "mgda")
    np.testing.assert_allclose(costs.data[0].x, result.seconds_per_step.sel({"method": "mgda"}).mean("seed").values * 1e3)
    np.testing.assert_allclose(costs.data[0].y, delta.sel({"method": "mgda"}).values)
    assert list(costs.data[0].text) == ["hps", "mmoe", "cgc"]
