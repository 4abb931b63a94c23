"""Laws of MTAN (Liu et al. 2019) beyond the battery every architecture passes: its masks are attention in (0, 1);
with every mask at 1 it is hard sharing; each task's mask reads the trunk and its own feature of the stage before;
the cut of a stage into body and last block; what it refuses. Its equality with LibMTL's is in ``test_libmtl.py``."""

from functools import partial

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from workbench.models import Backbone, conv_encoder, make_architecture, mlp_encoder
from workbench.models.mtan import split_stage
from workbench.tasks import regression_task

TASKS = [regression_task("a"), regression_task("b"), regression_task("c")]
BACKBONES = {
    "MLP": (Backbone("MLP", partial(mlp_encoder, 5, (8, 7, 6)), (6,), inputs=(5,)), (5,)),
    "CNN": (Backbone("CNN", partial(conv_encoder, 1, (4, 3, 2)), (2, 2, 2), inputs=(1, 8, 8)), (1, 8, 8)),
}


def build(backbone: str, **options):
    torch.manual_seed(0)
    return make_architecture("mtan", TASKS, BACKBONES[backbone][0], **options)


def inputs(backbone: str, n: int = 6):
    return torch.randn(n, *BACKBONES[backbone][1], generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_masks_lie_in_the_open_unit_interval_and_have_the_trunk_s_shape(backbone, train):
    model = build(backbone, reduction=2).train(train)
    trace = model.encoder.trace(inputs(backbone))
    assert len(trace.shared) == 3
    for shared, masks, features in zip(trace.shared, trace.attention, trace.features):
        for task in model.task_names:
            assert masks[task].shape == shared.shape and ((masks[task] > 0) & (masks[task] < 1)).all()
            torch.testing.assert_close(features[task], masks[task] * shared, rtol=0, atol=0)
    assert not torch.equal(trace.features[-1]["a"], trace.features[-1]["b"])  # the tasks' features differ


@pytest.mark.parametrize("backbone", BACKBONES)
def test_with_every_mask_at_one_each_task_s_feature_is_the_trunk_s_output_hard_sharing(backbone):
    model = build(backbone)
    torch.manual_seed(0)
    hps = make_architecture("hps", TASKS, BACKBONES[backbone][0])  # the same trunk's weights, from the same seed
    trunk = nn.Sequential(*(nn.Sequential(body, last) for body, last in zip(model.encoder.bodies, model.encoder.last_blocks)))
    for ours, theirs in zip(trunk.parameters(), hps.encoder.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    with torch.no_grad():
        for stages in model.encoder.attention.values():
            for attention in stages:
                attention[4].weight.zero_()
                attention[4].bias.fill_(1e4)  # the last batch norm before the sigmoid: σ(10⁴) = 1 in float32
    x = inputs(backbone)
    trace = model.encoder.trace(x)
    h = x
    for l, stage in enumerate(trunk):
        h = stage(h)
        torch.testing.assert_close(trace.shared[l], h, rtol=0, atol=0)
        for task in model.task_names:
            assert (trace.attention[l][task] == 1).all()
            torch.testing.assert_close(trace.features[l][task], h, rtol=0, atol=0)
    z, shared = model.represent(x), hps.represent(x).flatten(1)
    for t in range(len(TASKS)):
        torch.testing.assert_close(z[:, t], shared, rtol=0, atol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_task_s_mask_reads_the_body_s_output_and_its_own_feature_of_the_stage_before_through_the_shared_block(backbone):
    model = build(backbone).eval()
    encoder, x = model.encoder, inputs(backbone)
    trace = encoder.trace(x)
    s0 = encoder.last_blocks[0](encoder.bodies[0](x))  # each stage of these backbones is one layer: its body is empty
    s1 = encoder.last_blocks[1](s0)
    fit = (lambda h, like: h) if backbone == "MLP" else (lambda h, like: F.adaptive_max_pool2d(h, like.shape[-2:]))
    for task in model.task_names:
        a0 = encoder.attention[task][0](fit(x, s0))  # the stage's input, max-pooled to its output's size on a CNN
        torch.testing.assert_close(trace.attention[0][task], a0, rtol=0, atol=0)
        a1 = encoder.attention[task][1](torch.cat([fit(s0, s1), fit(encoder.blocks[0](a0 * s0), s1)], dim=1))
        torch.testing.assert_close(trace.attention[1][task], a1, rtol=0, atol=0)
    assert [len(body) for body in encoder.bodies] == [0, 0, 0]


def test_the_trunk_and_the_blocks_are_shared_each_task_s_attention_its_own():
    model = build("MLP")
    shared = {name.split(".")[0] for name, _ in model.shared_parameters()}
    assert shared == {"last_blocks", "blocks"}
    for task, params in model.encoder.task_parameters().items():
        assert params and all(name.startswith(f"attention.{task}.") for name, _ in params)


def test_a_stage_is_cut_before_its_last_layer_with_parameters_and_the_pieces_compose_to_it():
    blocks = [nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(3)]
    stage = nn.Sequential(nn.Identity(), *blocks, nn.Dropout(0.0), nn.Tanh())
    body, last = split_stage(stage)
    assert list(body) == [stage[0], *blocks[:2]] and list(last) == [blocks[2], stage[4], stage[5]]
    x = torch.randn(3, 4)
    torch.testing.assert_close(last(body(x)), stage(x), rtol=0, atol=0)
    one = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    assert len(split_stage(one)[0]) == 0 and list(split_stage(one)[1]) == list(one)
    module = nn.Linear(4, 4)
    body, last = split_stage(module)
    assert len(body) == 0 and list(last) == [module]


def test_bad_options_and_backbones_are_refused():
    mlp = BACKBONES["MLP"][0]
    for reduction in (0, 7):
        with pytest.raises(ValueError, match=r"mtan: reduction, .* must lie in \[1, 6\] \(the narrowest stage of \[8, 7, 6\]\), got " + str(reduction)):
            make_architecture("mtan", TASKS, mlp, reduction=reduction)
    named = Backbone("MiniLM", partial(mlp_encoder, 5, (6,)), (6,), inputs=None)
    with pytest.raises(ValueError, match="mtan sizes its attention .* the MiniLM backbone's named inputs do not allow"):
        make_architecture("mtan", TASKS, named)
    mixed = Backbone("CNN then MLP", lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(128, 4)), (4,), inputs=(1, 8, 8),
                     stages=lambda m: [m[0], nn.Sequential(m[1], m[2])])
    with pytest.raises(ValueError, match=r"mtan: the CNN then MLP backbone's stage bodies and stages must all give vectors \(C,\) or all maps"):
        make_architecture("mtan", TASKS, mixed)
