"""The architectures that act between a backbone's stages (Cross-stitch, PLE): the cut, and their laws."""

from functools import partial

import pytest
import torch
from torch import nn

from workbench.models import Backbone, conv_encoder, make_architecture, mlp_encoder
from workbench.models.backbone import sequential_stages, stage_shapes
from workbench.tasks import regression_task

TASKS = [regression_task("a"), regression_task("b"), regression_task("c")]
MLP = Backbone("MLP", partial(mlp_encoder, 5, (8, 7, 6)), (6,), inputs=(5,))


@pytest.mark.parametrize("make, x", [(partial(mlp_encoder, 5, (8, 7, 6)), torch.randn(4, 5)),
                                     (partial(conv_encoder, 1, (4, 3, 2)), torch.randn(4, 1, 8, 8))])
def test_a_sequential_is_cut_into_stages_that_compose_to_it(make, x):
    encoder = make()
    stages = sequential_stages(encoder)
    assert len(stages) == 3 and all(any(True for _ in stage[0].parameters()) for stage in stages)
    assert sum(len(stage) for stage in stages) == len(encoder)
    torch.testing.assert_close(nn.Sequential(*stages)(x), encoder(x), rtol=0, atol=0)


def test_cross_stitch_with_identity_stitches_is_one_independent_network_per_task():
    torch.manual_seed(0)
    model = make_architecture("cross_stitch", TASKS, MLP, alpha_self=1.0)
    x = torch.randn(6, 5)
    z = model.represent(x)
    for t, task in enumerate(model.task_names):
        torch.testing.assert_close(z[:, t], nn.Sequential(*model.encoder.columns[task])(x))


def test_cross_stitch_mixes_the_columns_as_its_weights_say():
    torch.manual_seed(0)
    model = make_architecture("cross_stitch", TASKS[:2], Backbone("MLP", partial(mlp_encoder, 5, (4, 4)), (4,), inputs=(5,)))
    a, b = (model.encoder.columns[t] for t in ("a", "b"))
    x = torch.randn(3, 5)
    alpha = model.encoder.stitches[0]
    mixed_a = alpha[0, 0] * a[0](x) + alpha[0, 1] * b[0](x)
    torch.testing.assert_close(model.represent(x)[:, 0], a[1](mixed_a))
    torch.testing.assert_close(alpha, torch.tensor([[0.9, 0.1], [0.1, 0.9]]))


def test_ple_of_one_level_is_cgc_with_backbone_experts():
    one_stage = Backbone("MLP", partial(mlp_encoder, 5, (6,)), (6,), inputs=(5,))
    torch.manual_seed(0)
    ple = make_architecture("ple", TASKS, one_stage, n_experts=2, own_experts=1)
    cgc = make_architecture("cgc", TASKS, one_stage, n_experts=2, own_experts=1, experts="backbone")
    for k, expert in enumerate(ple.encoder.experts):
        cgc.encoder.experts[k].load_state_dict(expert[0].state_dict())  # its one stage
    for task in ple.task_names:
        cgc.encoder.own_experts[task][0].load_state_dict(ple.encoder.own_experts[task][0][0].state_dict())
        cgc.encoder.gates[task].load_state_dict(ple.encoder.gates[task][0].state_dict())
    x = torch.randn(6, 5)
    torch.testing.assert_close(ple.represent(x), cgc.represent(x), rtol=0, atol=1e-7)


class Opaque(nn.Module):
    """An encoder that is no nn.Sequential: it cannot be cut by default."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 6)

    def forward(self, x):
        return self.linear(x)


@pytest.mark.parametrize("name, backbone, options, message", [
    ("cross_stitch", Backbone("Opaque", Opaque, (6,), inputs=(5,)), {}, "cross_stitch acts between the stages of the Opaque backbone, which cannot be cut"),
    ("ple", Backbone("Opaque", Opaque, (6,), inputs=(5,)), {}, "ple acts between the stages of the Opaque backbone"),
    ("cross_stitch", Backbone("MLP", partial(mlp_encoder, 5, (6,)), (6,), inputs=(5,)), {}, "cross_stitch stitches between stages; the backbone has 1 stage"),
    ("ple", Backbone("Named", partial(mlp_encoder, 5, (6,)), (6,), inputs=None), {}, "ple's gates read each level's input flattened"),
    ("ple", MLP, {"n_experts": 0, "own_experts": 0}, "ple needs at least one expert per task"),
])
def test_backbones_and_options_that_do_not_fit_are_refused_naming_the_architecture(name, backbone, options, message):
    with pytest.raises(ValueError, match=message):
        make_architecture(name, TASKS, backbone, **options)


def test_cross_stitch_of_one_task_is_its_backbone_and_its_rows_start_summing_to_one():
    torch.manual_seed(0)
    alone = make_architecture("cross_stitch", TASKS[:1], MLP)
    x = torch.randn(4, 5)
    torch.testing.assert_close(alone.represent(x)[:, 0], nn.Sequential(*alone.encoder.columns["a"])(x))
    three = make_architecture("cross_stitch", TASKS, MLP, alpha_self=0.7)
    torch.testing.assert_close(three.encoder.stitches.sum(-1), torch.ones(2, 3))
    assert float(three.encoder.stitches[0, 0, 1]) == pytest.approx(0.15)
    with pytest.raises(ValueError, match=r"cross_stitch: alpha_self, .* must lie in \[0, 1\], got 1.5"):
        make_architecture("cross_stitch", TASKS, MLP, alpha_self=1.5)


def test_stage_shapes_reads_every_stage_s_input_and_the_output_and_leaves_the_modules_as_they_were():
    stages = [nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.MaxPool2d(2)), nn.Sequential(nn.Flatten(), nn.Linear(64, 5))]
    stages[1].eval()
    before = [m.running_mean.clone() for m in stages[0].modules() if isinstance(m, nn.BatchNorm2d)]
    assert stage_shapes(stages, (1, 8, 8)) == [(1, 8, 8), (4, 4, 4), (5,)]
    assert stages[0].training and stages[0][1].training and not stages[1].training  # modes as they were
    assert torch.equal(stages[0][1].running_mean, before[0])  # eval mode: no statistics updated
