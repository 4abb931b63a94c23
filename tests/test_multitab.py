"""Laws of MultiTab-Net (workbench.models.multitab) beyond the battery every architecture passes: what each attention
mask blocks, what each task owns under it, the input it reads, the options it refuses; it trains on the tabular tasks."""

from functools import partial

import numpy as np
import pytest
import torch

from workbench.models import Backbone, conv_encoder, make_architecture, mlp_encoder
from workbench.models.multitab import MASKS, MAX_TOKENS, attention_mask
from workbench.tasks import classification_task, regression_task

TASKS = [regression_task("a"), regression_task("b"), classification_task("c", 3)]
MLP = Backbone("MLP", partial(mlp_encoder, 5, (6,)), (6,), inputs=(5,))
SMALL = {"dim": 8, "heads": 2, "ff": 16, "layers": 2}


def build(mask: str = "TxT", seed: int = 0, backbone: Backbone = MLP, **options):
    torch.manual_seed(seed)
    return make_architecture("multitab_net", TASKS, backbone, **{**SMALL, "mask": mask, **options})


def inputs(n: int = 6, shape=(5,), seed: int = 1):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _larger_task_tokens(model) -> None:
    """Task tokens far from the 0.01 init, so that what reaches them shows (the law holds at any weights)."""
    with torch.no_grad():
        for p in model.encoder.task_tokens.values():
            p.normal_()


def test_the_mask_blocks_task_tokens_from_each_other_and_feature_tokens_from_task_tokens_as_named():
    t, f = 3, 4
    txt, fxt, both = (attention_mask(t, f, mode) for mode in ("TxT", "FxT", "FxT_TxT"))
    assert attention_mask(t, f, "none") is None
    assert txt[:t, :t].sum() == t * (t - 1) and not txt.diagonal().any() and not txt[t:].any() and not txt[:, t:].any()
    assert fxt[t:, :t].all() and fxt.sum() == f * t
    assert torch.equal(both, txt | fxt)


def test_under_txt_the_attention_weights_between_distinct_task_tokens_are_exactly_zero():
    x = inputs()
    for mask in ("TxT", "none"):
        model = build(mask)
        _larger_task_tokens(model)
        for weights in model.encoder.attention_weights(x):  # (B, heads, N, N) per block
            between = weights[:, :, :3, :3]
            off = between[:, :, ~torch.eye(3, dtype=torch.bool)]
            if mask == "TxT":
                assert torch.equal(off, torch.zeros_like(off)) and (between.diagonal(dim1=-2, dim2=-1) > 0).all()
            else:
                assert (off > 0).all()
            torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@pytest.mark.parametrize("mask", ["FxT", "FxT_TxT"])
def test_under_fxt_the_feature_tokens_get_exactly_zero_gradient_from_the_task_tokens_embeddings(mask):
    for mode in (mask, "TxT"):
        model = build(mode)
        _larger_task_tokens(model)
        features = model.encoder.tokens(inputs())[:, 3:]  # the feature tokens' last states
        tokens = list(model.encoder.task_tokens.values())
        grads = torch.autograd.grad(features.square().sum(), tokens, allow_unused=True, materialize_grads=True)
        if mode == "TxT":
            assert all(g.abs().sum() > 0 for g in grads)  # the feature tokens read the task tokens
        else:
            assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_under_fxt_txt_changing_one_task_token_changes_only_that_task_s_output_and_under_txt_every_task_s():
    x = inputs()
    for mask in ("FxT_TxT", "TxT"):
        model = build(mask)
        before = model(x)
        with torch.no_grad():
            model.encoder.task_tokens["b"].add_(1.0)
        after = model(x)
        assert not torch.allclose(before["b"], after["b"])
        for task in ("a", "c"):
            if mask == "FxT_TxT":
                assert torch.equal(before[task], after[task])
            else:
                assert not torch.equal(before[task], after[task])  # through the feature tokens, which read task token b


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("mask", MASKS)
def test_each_mask_declares_as_a_task_s_own_only_what_no_other_task_s_loss_reaches(mask, layers):
    model = build(mask, layers=layers)
    _larger_task_tokens(model)
    own = model.encoder.task_parameters()
    owned = mask == "FxT_TxT" or (mask == "TxT" and layers == 1)
    assert sorted(own) == (["a", "b", "c"] if owned else [])
    x = inputs(8)
    targets = {"a": torch.randn(8), "b": torch.randn(8), "c": torch.randint(0, 3, (8,))}
    losses = model.losses(x, targets)
    for task, params in own.items():
        assert [name for name, _ in params] == [f"task_tokens.{task}"]
        for other in set(losses) - {task}:
            (grad,) = torch.autograd.grad(losses[other], [params[0][1]], retain_graph=True, allow_unused=True, materialize_grads=True)
            assert torch.equal(grad, torch.zeros_like(grad))
    shared = {name for name, _ in model.shared_parameters()}
    assert {"feature_weight", "feature_bias"} <= shared
    assert ({f"task_tokens.{t}" for t in "abc"} <= shared) == (not owned)


def test_an_image_input_is_flattened_one_token_per_value_and_the_backbone_s_encoder_is_not_used():
    cnn = Backbone("CNN", partial(conv_encoder, 1, (4, 3)), (3, 4, 4), inputs=(1, 8, 8))
    flat = Backbone("flat", partial(mlp_encoder, 64, (6,)), (6,), inputs=(64,))
    image, vector = build(backbone=cnn), build(backbone=flat, seed=5)
    vector.load_state_dict(image.state_dict())  # strict: the same parameters, no trace of either backbone's encoder
    x = inputs(shape=(1, 8, 8))
    assert image.encoder.tokens(x).shape == (6, 3 + 64, 8)
    for task, output in image(x).items():
        torch.testing.assert_close(output, vector(x.flatten(1))[task], rtol=0, atol=0)


@pytest.mark.parametrize("options, message", [
    ({"dim": 10, "heads": 4}, r"^multitab_net: dim \(10\) must be divisible by heads \(4\)"),
    ({"mask": "TxF"}, r"^multitab_net: mask must be one of \['TxT', 'FxT', 'FxT_TxT', 'none'\], not 'TxF'"),
    ({"layers": 0}, r"^multitab_net: layers must be at least 1, got 0"),
    ({"ff": 0}, r"^multitab_net: ff must be at least 1, got 0"),
])
def test_bad_options_are_refused_naming_multitab_net_and_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        build(**options)


def test_named_inputs_and_more_tokens_than_the_cap_are_refused_naming_multitab_net_and_the_backbone():
    named = Backbone("MiniLM", partial(mlp_encoder, 5, (6,)), (6,), inputs=None)
    with pytest.raises(ValueError, match=r"^multitab_net reads the raw input.*the MiniLM backbone's inputs are named tensors"):
        build(backbone=named)
    wide = Backbone("wide", partial(mlp_encoder, MAX_TOKENS, (6,)), (6,), inputs=(1, MAX_TOKENS))
    with pytest.raises(ValueError, match=rf"^multitab_net: 3 task tokens and {MAX_TOKENS} features \(the wide backbone's input.*max_tokens={MAX_TOKENS}"):
        build(backbone=wide)
    assert build(backbone=wide, max_tokens=MAX_TOKENS + 3).encoder  # a user may raise the cap


def test_it_trains_a_few_steps_on_the_tabular_tasks_with_finite_losses():
    from workbench.studies import load_problem
    from workbench.train import train

    problem = load_problem("tabular", n_tasks=3, n_features=8, n_samples=300)
    torch.manual_seed(0)
    model = problem.make_model(problem.splits.train.tasks, architecture="multitab_net", dim=8, heads=2, ff=16)
    before = model.encoder.feature_weight.detach().clone()
    run = train(model, problem.splits.train, 10, method="ew", batch_size=64, optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-5),
                progress=False)
    assert np.isfinite(run.history.train_loss.values).all() and not torch.equal(model.encoder.feature_weight, before)
