"""AdapterFusion and ScaLearn against their definitions: the fusion of identity values and equal scores is the mean
adapter output plus the residual; ScaLearn with one-hot scales is the source task adapter itself; AdapterFusion's
value regulariser adds its gradient to every method's update; the sources come from the stage-one model or its
file, and mismatching sources are refused naming the tensors; the study runs both stages under each seed."""

import numpy as np
import pytest
import torch

from tests.test_peft_laws import BACKBONES, TASKS, batch, perturbed
from workbench.models import make_scheme
from workbench.models.peft.fusion import AdapterFusionLayer, FusedAdapters, ScaLearnLayer
from workbench.models.peft.saved import load_adapters, save_adapters
from workbench.studies import composed_comparison, compare_schemes, load_problem
from workbench.tasks import MultiTaskData
from workbench.train import train


def stage_one(backbone: str = "MLP", seed: int = 0, **options):
    torch.manual_seed(seed)
    return perturbed(make_scheme("task_adapter", TASKS, BACKBONES[backbone], **{"reduction": 2, **options}), seed=seed + 3)


def fused(scheme: str, backbone: str = "MLP", **options):
    torch.manual_seed(1)
    return make_scheme(scheme, TASKS, BACKBONES[backbone], reduction=2, dropout=0.0, **options)


def fusion_layers(model) -> list[FusedAdapters]:
    return [layer for layer in model.encoder.adapted_layers().values() if isinstance(layer, FusedAdapters)]


def test_a_fusion_of_identity_values_and_equal_scores_is_the_mean_adapter_output_plus_the_residual():
    layer = AdapterFusionLayer(6, dropout=0.0)
    off_diagonal = layer.value.weight - torch.eye(6)
    assert torch.allclose(off_diagonal, torch.full((6, 6), 1e-6) - 1e-6 * torch.eye(6)), "W_V starts at I, 1e-6 off the diagonal"
    with torch.no_grad():
        layer.query.weight.zero_()
        layer.query.bias.zero_()
        layer.value.weight.copy_(torch.eye(6))
    y, added = torch.randn(4, 5, 6), torch.randn(4, 5, 3, 6)
    torch.testing.assert_close(layer(y, added), y + added.mean(-2))
    assert layer.auxiliary_loss(None, None) == 0
    static = AdapterFusionLayer(6, value=False, dropout=0.0)
    assert static.value is None and static.auxiliary_loss(None, None) is None


def test_scalearn_scales_each_adapter_output_and_starts_at_two_over_n():
    layer = ScaLearnLayer(6, 3, dropout=0.0)
    assert layer.omega.shape == (3, 6) and torch.allclose(layer.omega, torch.full((3, 6), 2 / 3), atol=0.01)
    y, added = torch.randn(4, 6), torch.randn(4, 3, 6)
    torch.testing.assert_close(layer(y, added), y + (layer.omega * added).sum(-2))
    assert ScaLearnLayer(6, 3, omega="scalar").omega.shape == (3, 1)


@pytest.mark.parametrize("backbone", ["MLP", "BERT"])
def test_scalearn_with_one_hot_scales_is_each_tasks_own_source_adapter_and_its_head(backbone):
    sources = stage_one(backbone).eval()
    model = fused("scalearn", backbone, sources=sources).eval()
    with torch.no_grad():
        for layer in fusion_layers(model):
            for task in layer.tasks:
                layer.fusion[task].omega.copy_(torch.eye(len(layer.sources))[layer.sources.index(task)].unsqueeze(1))
    x, _ = batch(backbone)
    expected, got = sources(x), model(x)
    for task in sources.task_names:
        torch.testing.assert_close(got[task], expected[task], rtol=0, atol=1e-6)
    assert not any(p.requires_grad for layer in fusion_layers(model) for p in [*layer.adapter_down.parameters(), *layer.adapter_up.parameters()])


def test_adapter_fusions_value_regulariser_adds_its_gradient_to_every_methods_update():
    x, targets = batch("MLP", n=16)
    data = MultiTaskData(x, targets, TASKS)
    sgd = lambda params: torch.optim.SGD(params, lr=1.0)  # noqa: E731 - one step moves each parameter by minus its gradient
    after = {}
    for penalty in (0.0, 0.5):
        model = fused("adapter_fusion", sources=stage_one(), value_penalty=penalty)
        with torch.no_grad():
            for layer in fusion_layers(model):
                for fusion in layer.fusion.values():
                    fusion.value.weight.add_(0.1 * torch.randn_like(fusion.value.weight))
        start = {name: p.detach().clone() for name, p in model.named_parameters() if name.endswith("value.weight")}
        train(model, data, 1, method="upgrad", batch_size=16, optimizer=sgd, progress=False)
        after[penalty] = {name: p.detach() for name, p in model.named_parameters() if name in start}
    assert start
    for name, weight in start.items():
        penalty_gradient = 0.5 * 2 * (weight - torch.eye(weight.shape[0]))  # d/dW of 0.5 ||I - W||²
        torch.testing.assert_close(after[0.5][name] - after[0.0][name], -penalty_gradient, msg=name)


def test_the_sources_load_from_the_stage_one_model_or_its_file_and_a_saved_fusion_keeps_them(tmp_path):
    sources = stage_one()
    path = save_adapters(sources, tmp_path / "sources.safetensors")
    from_model, from_file = fused("adapter_fusion", sources=sources), fused("adapter_fusion", sources=path)
    for name, tensor in from_model.state_dict().items():
        if "base_layer" in name:  # the backbone: the source model's, and the file holds none
            assert torch.equal(tensor, sources.state_dict()[name])
        else:
            assert torch.equal(tensor, from_file.state_dict()[name]), name
    untrained = fused("adapter_fusion")
    assert not torch.equal(fusion_layers(untrained)[0].adapter_down["a"].weight, fusion_layers(from_model)[0].adapter_down["a"].weight)
    saved = save_adapters(perturbed(from_file), tmp_path / "fusion.safetensors")  # built alike, the backbone too
    restored = load_adapters(fused("adapter_fusion"), saved)
    x, _ = batch("MLP")
    from_file.eval(), restored.eval()
    for task, output in from_file(x).items():
        torch.testing.assert_close(restored(x)[task], output, rtol=0, atol=0)


def test_sources_of_another_width_layers_or_kind_are_refused_naming_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=r"scalearn: the source adapters were built with another reduction or backbone; tensors of other shapes: "
                                         r"\{'encoder\.base\.0\.adapter_down\.a\.weight': '\(2, 8\) in the sources, \(4, 8\) here'"):
        fused("scalearn", sources=stage_one(reduction=4))
    with pytest.raises(ValueError, match=r"adapter_fusion: the sources have no adapters at \['encoder\.base\.0\.adapter_down"):
        fused("adapter_fusion", sources=stage_one(targets=["2"]))
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"scalearn: the source model holds no bottleneck adapters"):
        fused("scalearn", sources=make_scheme("task_lora", TASKS, BACKBONES["MLP"], rank=2))
    with pytest.raises(ValueError, match=r"adapter_fusion: sources is a task_adapter model or the \*\.safetensors file save_adapters wrote; got 'x\.pt'"):
        fused("adapter_fusion", sources=tmp_path / "x.pt")
    with pytest.raises(TypeError, match="not a dict"):
        fused("adapter_fusion", sources={})
    poisoned = stage_one()
    with torch.no_grad():
        fusion_target = next(p for name, p in poisoned.named_parameters() if ".adapter_up.b." in name)
        fusion_target[0] = float("nan")
    with pytest.raises(ValueError, match=r"scalearn: tensors \['encoder\.base\.0\.adapter_up\.b\.weight'\] hold NaN"):
        fused("scalearn", sources=poisoned)
    for options, message in [({"omega": "matrix"}, "omega must be 'vector' or 'scalar'"), ({"value_penalty": -1}, "value_penalty must be")]:
        scheme = "scalearn" if "omega" in options else "adapter_fusion"
        with pytest.raises(ValueError, match=message):
            fused(scheme, **options)


def test_the_score_and_scale_dropouts_act_in_training_only():
    x, _ = batch("MLP")
    for scheme in ("adapter_fusion", "scalearn"):
        torch.manual_seed(0)
        model = make_scheme(scheme, TASKS, BACKBONES["MLP"], reduction=2, sources=stage_one(), dropout=0.5)
        model.train()
        assert not torch.equal(model(x)["a"], model(x)["a"]), scheme
        model.eval()
        assert torch.equal(model(x)["a"], model(x)["a"]), scheme


def test_the_study_trains_the_source_adapters_then_composes_them_under_each_seed(monkeypatch):
    problem = load_problem("synthetic", seed=1, n_tasks=2, n_samples=120, n_features=5, hidden=(32,))
    import workbench.studies.schemes as schemes_study

    trained = []

    def recording_train(model, *args, **kwargs):
        trained.append((model, args, kwargs))
        return train(model, *args, **kwargs)

    monkeypatch.setattr(schemes_study, "train", recording_train)
    result = compare_schemes(problem, ["ew"], seeds=[0, 1], steps=4, schemes=["task_adapter", "scalearn", "adapter_fusion"], batch_size=16)
    assert list(result.architecture.values) == ["hps", "task_adapter", "scalearn", "adapter_fusion"]
    assert result.attrs["source_steps"] == {"scalearn": 4, "adapter_fusion": 4} and np.isfinite(result.delta_m.values).all()
    # one first stage per seed, shared by both compositions
    assert [(args[1], kwargs["method"], kwargs["seed"]) for _, args, kwargs in trained] == [(4, "sum", 0), (4, "sum", 1)]
    sources = trained[0][0]
    torch.manual_seed(0)
    fresh = problem.make_model(problem.splits.tasks, architecture="task_adapter")
    assert any(not torch.equal(a, b) for (name, a), b in zip(sources.named_parameters(), fresh.parameters()) if "adapter_up" in name), "the first stage trained"
    alone = composed_comparison(problem, "scalearn", ["ew"], [0], 4, single_task=result.single_task.sel(architecture="hps"), batch_size=16)
    np.testing.assert_allclose(alone.delta_m.values, result.delta_m.sel(architecture=["scalearn"], seed=[0]).values[0])
