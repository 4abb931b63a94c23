"""TaskExpert's laws: a gate with all its mass on one expert (or on the memory) gives it, one stage is MMoE on that
stage with the same weights, the memory's weight at 0 makes it MMoE on the last stage, the gates read out per stage,
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
N = 3


def build(backbone: str = "MLP", name: str = "task_expert", seed: int = 0, **options):
    torch.manual_seed(seed)
    return make_architecture(name, TASKS, BACKBONES[backbone][0], n_experts=N, expert_hidden=(5,), **options)


def inputs(backbone: str = "MLP", n: int = 6):
    return torch.randn(n, *BACKBONES[backbone][1], generator=torch.Generator().manual_seed(4))


def features(model, x, stage: int):
    """Stage ``stage``'s output, flattened, computed from the stages themselves."""
    for s in model.encoder.stages[: stage + 1]:
        x = s(x)
    return x.flatten(1)


def all_mass_on(gate, expert: int) -> None:
    with torch.no_grad():
        gate.weight.zero_()
        gate.bias.fill_(-100.0)
        gate.bias[expert] = 100.0


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_gate_with_all_its_mass_on_one_expert_or_the_memory_gives_it(backbone):
    model = build(backbone)
    encoder, x = model.encoder, inputs(backbone)
    u0, u1 = features(model, x, 0), features(model, x, 1)
    for t, task in enumerate(model.task_names):
        gates = encoder.gates[task]
        first = torch.einsum("be,bec->bc", gates["0"](u0), torch.stack([e(u0) for e in encoder.experts["0"]], dim=1))  # the memory after stage 0
        for expert in range(N + 1):
            all_mass_on(gates["1"], expert)
            want = first if expert == N else encoder.experts["1"][expert](u1)
            torch.testing.assert_close(model.represent(x)[:, t], want, rtol=1e-6, atol=1e-6)
        all_mass_on(gates["0"], 1)
        all_mass_on(gates["1"], N)  # the memory carries stage 0's expert 1 to the end
        torch.testing.assert_close(model.represent(x)[:, t], encoder.experts["0"][1](u0), rtol=1e-6, atol=1e-6)


def copy_weights(source, target) -> None:
    ours, theirs = list(source.parameters()), list(target.parameters())
    assert [p.shape for p in ours] == [p.shape for p in theirs]
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            q.copy_(p)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_one_stage_is_mmoe_on_that_stage_with_the_same_weights(backbone):
    ours, mmoe = build(backbone, at=(1,)), build(backbone, "mmoe", seed=1)
    assert not any("memory" in name for task in ours.task_names for name in ours.encoder.expert_names(task))
    copy_weights(ours, mmoe)  # trunk, experts, gates, heads in the same order
    x = inputs(backbone)
    for task, output in ours(x).items():
        torch.testing.assert_close(output, mmoe(x)[task], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_with_the_memory_s_weight_zero_it_is_mmoe_on_the_last_stage(backbone):
    ours, mmoe = build(backbone), build(backbone, "mmoe", seed=1)
    encoder = ours.encoder
    with torch.no_grad():
        for task in ours.task_names:
            gate = encoder.gates[task]["1"]
            gate.weight[N].zero_()
            gate.bias[N] = -1e4  # exp underflows to 0: no mass on the memory
            mmoe.encoder.gates[task].weight.copy_(gate.weight[:N])
            mmoe.encoder.gates[task].bias.copy_(gate.bias[:N])
        for p, q in zip(encoder.stages.parameters(), mmoe.encoder.trunk.parameters()):
            q.copy_(p)
        for p, q in zip(encoder.experts["1"].parameters(), mmoe.encoder.experts.parameters()):
            q.copy_(p)
        for p, q in zip(ours.heads.parameters(), mmoe.heads.parameters()):
            q.copy_(p)
    x = inputs(backbone)
    torch.testing.assert_close(ours.represent(x), mmoe.represent(x), rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # stage 0's experts reach nothing now
        for p in encoder.experts["0"].parameters():
            p.add_(1.0)
    torch.testing.assert_close(ours.represent(x), mmoe.represent(x), rtol=1e-6, atol=1e-6)


def test_the_gates_read_out_one_level_per_stage_the_memory_from_the_second():
    model = build(at=(1, 0))
    readings = model.encoder.gate_readings(inputs())
    assert list(readings) == ["stage 0", "stage 1"]
    for task in model.task_names:
        assert readings["stage 0"][task].experts == ["shared 0", "shared 1", "shared 2"]
        assert readings["stage 1"][task].experts == model.encoder.expert_names(task) == ["shared 0", "shared 1", "shared 2", f"{task} memory"]
        assert readings["stage 1"][task].outputs.shape == (6, N + 1, 5)
        for level in readings.values():
            torch.testing.assert_close(level[task].weights.sum(-1), torch.ones(6))
    assert len(build(at=(0,)).encoder.stages) == 1  # stages above the last of at are not built
    own = {name for name, _ in model.encoder.task_parameters()["b"]}
    assert own == {f"gates.b.{s}.{p}" for s in "01" for p in ("weight", "bias")}


@pytest.mark.parametrize("options, message", [
    ({"at": (2,)}, r"task_expert: at must name distinct stages of the backbone's 2, 0 to 1"),
    ({"at": (0, 0)}, r"task_expert: at must name distinct stages"),
    ({"at": ()}, r"task_expert: at must name distinct stages"),
    ({"at": 1}, r"task_expert: at must name distinct stages"),
    ({"n_experts": 0}, r"task_expert: n_experts must be a positive integer, got 0"),
    ({"expert_hidden": ()}, r"task_expert: expert_hidden must be one or more positive widths"),
])
def test_bad_options_are_refused_naming_task_expert_and_the_option(options, message):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=message):
        make_architecture("task_expert", TASKS, BACKBONES["MLP"][0], **{"n_experts": N, "expert_hidden": (5,), **options})


def test_named_inputs_are_refused():
    named = Backbone("MiniLM", partial(mlp_encoder, 5, (6,)), (6,), inputs=None)
    with pytest.raises(ValueError, match="task_expert reads each stage's width .* named inputs are not"):
        make_architecture("task_expert", TASKS, named)
