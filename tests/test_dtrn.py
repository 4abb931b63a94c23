"""DTRN's laws: a task's bottom layer is what the hypernetwork generates from its embedding (of the documented shapes
and rank), tasks with equal embeddings and refinements are one task, the refinement weighs each group in (0, 1),
and bad options are refused."""

from functools import partial

import pytest
import torch

from workbench.models import Backbone, conv_encoder, make_architecture, mlp_encoder
from workbench.tasks import classification_task, regression_task

TASKS = [regression_task("a"), regression_task("b"), classification_task("c", 3)]
BACKBONES = {
    "MLP": (Backbone("MLP", partial(mlp_encoder, 5, (8, 6)), (6,), inputs=(5,)), (5,)),
    "CNN": (Backbone("CNN", partial(conv_encoder, 1, (4, 3)), (3, 4, 4), inputs=(1, 8, 8)), (1, 8, 8)),
}
OPTIONS = {"width": 12, "embedding": 3, "rank": 2, "groups": 4, "reduction": 2}


def build(backbone: str = "MLP", **options):
    torch.manual_seed(0)
    return make_architecture("dtrn", TASKS, BACKBONES[backbone][0], **{**OPTIONS, **options})


def inputs(backbone: str = "MLP", n: int = 6):
    return torch.randn(n, *BACKBONES[backbone][1], generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("backbone, features", [("MLP", 6), ("CNN", 48)])
def test_the_generated_bottom_layer_has_the_documented_shapes_and_rank_and_is_what_each_task_applies(backbone, features):
    model = build(backbone)
    encoder, x = model.encoder, inputs(backbone)
    h = encoder.trunk(x).flatten(1)
    bottoms = encoder.bottoms(x)
    for task in model.task_names:
        weight, bias = encoder.generated(task)
        assert weight.shape == (features, 12) and bias.shape == (12,)
        assert torch.linalg.matrix_rank((weight - encoder.generator.base).detach()) <= 2  # W_t − W_0 = U diag(M e_t) Vᵀ
        torch.testing.assert_close(bottoms[task], torch.relu(h @ weight + bias), rtol=1e-5, atol=1e-6)


def test_tasks_with_equal_embeddings_and_refinements_get_identical_representations():
    model = build()
    encoder, x = model.encoder, inputs()
    z = model.represent(x)
    assert not torch.allclose(z[:, 0], z[:, 1])  # distinct tasks, distinct representations
    with torch.no_grad():
        encoder.embeddings["b"].copy_(encoder.embeddings["a"])
    assert not torch.allclose(model.represent(x)[:, 0], model.represent(x)[:, 1])  # the refinements still differ
    encoder.refinements["b"].load_state_dict(encoder.refinements["a"].state_dict())
    z = model.represent(x)
    torch.testing.assert_close(z[:, 1], z[:, 0], rtol=0, atol=0)
    assert not torch.allclose(z[:, 2], z[:, 0])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_refinement_weighs_each_group_of_units_by_a_weight_in_0_1(backbone):
    model = build(backbone)
    encoder, x = model.encoder, inputs(backbone)
    with torch.no_grad():  # larger gate weights, so the sigmoid's whole range is tried
        for p in encoder.refinements.parameters():
            p.mul_(3.0)
    weights, bottoms, z = encoder.refinement_weights(x), encoder.bottoms(x), model.represent(x)
    for t, task in enumerate(model.task_names):
        a = weights[task]
        assert a.shape == (6, 4) and ((a > 0) & (a < 1)).all()
        torch.testing.assert_close(z[:, t], bottoms[task] * a.repeat_interleave(3, dim=1), rtol=1e-6, atol=1e-7)


def test_the_embeddings_and_refinements_are_the_tasks_own_and_the_hypernetwork_shared():
    model = build()
    own = {task: {name for name, _ in params} for task, params in model.encoder.task_parameters().items()}
    assert own["a"] == {"embeddings.a", "refinements.a.squeeze.weight", "refinements.a.squeeze.bias", "refinements.a.excite.weight",
                        "refinements.a.excite.bias"}
    shared = {name for name, _ in model.shared_parameters()}
    assert {"generator.base", "generator.left", "generator.right", "generator.scales.weight", "generator.bias.weight"} <= shared
    assert all(name.startswith(("trunk.", "generator.")) for name in shared)


@pytest.mark.parametrize("options, message", [
    ({"width": 0}, r"dtrn: width must be a positive integer, got 0"),
    ({"embedding": 0}, r"dtrn: embedding must be a positive integer"),
    ({"rank": 1.5}, r"dtrn: rank must be a positive integer, got 1.5"),
    ({"groups": 5}, r"dtrn: groups=5 must divide width=12"),
    ({"reduction": 5}, r"dtrn: reduction=5 above groups=4"),
    ({"reduction": 0}, r"dtrn: reduction must be a positive integer"),
])
def test_bad_options_are_refused_naming_dtrn_and_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        build(**options)
