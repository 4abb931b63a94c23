"""HMTL's laws: a task reads nothing above its level, all tasks at the top without the shortcut is hard sharing, the
shortcut is the concatenation HMTL's higher encoders read, and bad levels are refused."""

from functools import partial

import pytest
import torch
from torch import nn

from workbench.models import Backbone, conv_encoder, make_architecture, mlp_encoder
from workbench.models.hmtl import default_levels
from workbench.tasks import classification_task, regression_task

TASKS = [regression_task("a"), regression_task("b"), classification_task("c", 3)]
BACKBONES = {
    "MLP": (Backbone("MLP", partial(mlp_encoder, 5, (8, 7, 6)), (6,), inputs=(5,)), (5,)),
    "CNN": (Backbone("CNN", partial(conv_encoder, 1, (4, 3, 2)), (2, 2, 2), inputs=(1, 8, 8)), (1, 8, 8)),
}


def build(backbone: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return make_architecture("hmtl", TASKS, BACKBONES[backbone][0], **options)


def inputs(backbone: str, n: int = 5):
    return torch.randn(n, *BACKBONES[backbone][1], generator=torch.Generator().manual_seed(3))


def randomise_shortcuts(model) -> None:
    with torch.no_grad():
        for p in model.encoder.shortcuts.parameters():
            p.normal_(0, 0.3)


def test_the_default_levels_spread_the_tasks_in_order_from_the_lowest_stage_to_the_top():
    assert default_levels(["a", "b", "c"], 3) == {"a": 0, "b": 1, "c": 2}
    assert default_levels(["a", "b", "c"], 2) == {"a": 0, "b": 0, "c": 1}
    assert default_levels(["a", "b"], 4) == {"a": 0, "b": 3}
    assert default_levels(["a", "b", "c", "d"], 3) == {"a": 0, "b": 0, "c": 1, "d": 2}
    assert default_levels(["a"], 3) == {"a": 2}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_task_s_output_does_not_depend_on_the_stages_above_its_level(backbone):
    model = build(backbone)
    assert model.encoder.levels == {"a": 0, "b": 1, "c": 2}
    randomise_shortcuts(model)
    x = inputs(backbone)
    before = {task: out.detach() for task, out in model(x).items()}
    with torch.no_grad():
        for p in [*model.encoder.stages[2].parameters(), *model.encoder.shortcuts["2"].parameters()]:
            p.add_(torch.randn_like(p))
    after = model(x)
    torch.testing.assert_close(after["a"], before["a"], rtol=0, atol=0)
    torch.testing.assert_close(after["b"], before["b"], rtol=0, atol=0)
    assert not torch.allclose(after["c"], before["c"])  # the top task reads the perturbed stage
    with torch.no_grad():
        for p in [*model.encoder.stages[1].parameters(), *model.encoder.shortcuts["1"].parameters()]:
            p.add_(torch.randn_like(p))
    after = model(x)
    torch.testing.assert_close(after["a"], before["a"], rtol=0, atol=0)
    assert not torch.allclose(after["b"], before["b"])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_task_at_the_top_without_the_shortcut_is_hard_sharing_with_the_same_weights(backbone):
    model = build(backbone, levels={"a": 2, "b": 2, "c": 2}, shortcut=False)
    hps = make_architecture("hps", TASKS, BACKBONES[backbone][0])
    ours, theirs = list(model.parameters()), list(hps.parameters())
    assert [p.shape for p in ours] == [p.shape for p in theirs]
    with torch.no_grad():
        for mine, other in zip(ours, theirs):
            other.copy_(mine)
    x = inputs(backbone)
    for task, output in model(x).items():
        torch.testing.assert_close(output, hps(x)[task], rtol=1e-6, atol=1e-6)
    assert [p.shape for _, p in model.shared_parameters()] == [p.shape for _, p in hps.shared_parameters()]  # every stage shared


def test_the_shortcut_is_the_concatenation_of_the_input_and_the_lower_stage_through_the_stage_s_first_layer():
    model = build("MLP", levels={"a": 0, "b": 0, "c": 1})
    randomise_shortcuts(model)
    x = inputs("MLP")
    low, top = model.encoder.stages
    linear = top[0]
    concatenated = nn.Linear(8 + 5, 7)  # [h_0 ; x] -> the stage's width, W_e = W_h P
    with torch.no_grad():
        concatenated.weight.copy_(torch.cat([linear.weight, linear.weight @ model.encoder.shortcuts["1"].weight], dim=1))
        concatenated.bias.copy_(linear.bias)
    h = torch.relu(concatenated(torch.cat([low(x), x], dim=1)))
    torch.testing.assert_close(model.represent(x)[:, 2, :7], h, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_an_untrained_shortcut_is_the_plain_hierarchy(backbone):
    with_shortcut, without = build(backbone), build(backbone, shortcut=False)
    assert all(not p.any() for p in with_shortcut.encoder.shortcuts.parameters())
    x = inputs(backbone)
    torch.testing.assert_close(with_shortcut.represent(x), without.represent(x), rtol=0, atol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_slot_holds_its_task_s_stage_output_zero_padded_and_the_head_reads_only_that(backbone):
    model = build(backbone)
    x = inputs(backbone)
    z = model.represent(x)
    outputs = model.encoder.stage_outputs(x)
    widths = [h[0].numel() for h in outputs]
    assert z.shape == (5, 3, max(widths))
    for t, task in enumerate(model.task_names):
        width = widths[model.encoder.levels[task]]
        torch.testing.assert_close(z[:, t, :width], outputs[model.encoder.levels[task]].flatten(1), rtol=0, atol=0)
        assert not z[:, t, width:].any()
        assert model.heads[task][-1].in_features == width


def test_a_stage_is_a_task_s_own_when_that_task_alone_is_at_or_above_it():
    model = build("MLP")  # a at 0, b at 1, c at 2
    own = {task: {name for name, _ in params} for task, params in model.encoder.task_parameters().items()}
    assert own["a"] == set() and own["b"] == set()
    assert own["c"] == {"stages.2.0.weight", "stages.2.0.bias", "shortcuts.2.weight"}
    assert {name for name, _ in model.shared_parameters()} == {"stages.0.0.weight", "stages.0.0.bias", "stages.1.0.weight", "stages.1.0.bias",
                                                               "shortcuts.1.weight"}
    low = build("MLP", levels={"a": 0, "b": 0, "c": 0})
    assert len(low.encoder.stages) == 1 and not low.encoder.shortcuts  # the stages above the highest level are not built


@pytest.mark.parametrize("options, message", [
    ({"levels": {"a": 0, "b": 1, "c": 3}}, r"hmtl: levels puts task 'c' at stage 3; the backbone has 3 stages, 0 to 2"),
    ({"levels": {"a": 0, "b": -1, "c": 2}}, r"hmtl: levels puts task 'b' at stage -1"),
    ({"levels": {"a": 0, "b": 1.0, "c": 2}}, r"hmtl: levels puts task 'b' at stage 1.0"),
    ({"levels": {"a": 0, "b": 1, "c": 2, "d": 1}}, r"hmtl: levels names unknown tasks \['d'\]"),
    ({"levels": {"a": 0, "b": 1}}, r"hmtl: levels gives no stage to the tasks \['c'\]"),
    ({"levels": [0, 1, 2]}, r"hmtl: levels maps each task to the stage"),
    ({"shortcut": "yes"}, r"hmtl: shortcut must be True or False"),
])
def test_bad_options_are_refused_naming_hmtl_and_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        build("MLP", **options)


def test_named_inputs_are_refused():
    named = Backbone("MiniLM", partial(mlp_encoder, 5, (6,)), (6,), inputs=None)
    with pytest.raises(ValueError, match="hmtl reads each stage's width .* named inputs are not"):
        make_architecture("hmtl", TASKS, named)
