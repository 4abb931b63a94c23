"""Parameter-efficient schemes against what they claim: LoRA equals ``peft``'s in outputs and gradients and moves
between the two as ``peft`` folders; MTL-LoRA and MultiLoRA reduce to LoRA; a bottleneck adapter is its formula;
adapters inside the trainable blocks keep the cache of the frozen ones valid; bad adapter folders are refused
before anything is copied."""

import json
import re

import pytest
import torch
from torch import nn

from tests.test_encoders import tiny_bert, token_batch
from tests.test_peft_laws import BACKBONES, TASKS, perturbed
from workbench.models import Backbone
from workbench.models import make_scheme
from workbench.models.peft.bottleneck import BottleneckAdapter
from workbench.models.peft.lora import LoRALinear
from workbench.models.peft.mtl_lora import MTLLoRALinear
from workbench.models.peft.multilora import MultiLoRALinear
from workbench.models.peft.peft_format import load_lora, save_lora

peft = pytest.importorskip("peft")


def mean_pooled(transformer, ids):
    mask = (ids != 0).long()
    hidden = transformer(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


def peft_twin(model, adapter="default", **config):
    """A ``peft`` LoRA on a fresh copy of the tiny BERT, holding the model's LoRA ``adapter``."""
    layers = {name.removeprefix("encoder.base.transformer."): module for name, module in model.named_modules() if isinstance(module, LoRALinear)}
    first = next(iter(layers.values()))
    twin = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=first.rank, lora_alpha=first.alpha, use_rslora=first.rslora,
                                                            target_modules=sorted(layers), **config))
    with torch.no_grad():
        for name, parameter in twin.named_parameters():
            if ".lora_" in name:
                module, _, rest = name.removeprefix("base_model.model.").partition(".lora_")
                part = rest.split(".")[0]
                parameter.copy_(getattr(layers[module], f"lora_{part}")[adapter].weight)
    return twin


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_equals_peft_in_outputs_and_in_the_gradients_of_its_parameters(rslora):
    model = perturbed(make_scheme("lora", TASKS, BACKBONES["BERT"], rank=3, alpha=6.0, rslora=rslora))
    twin = peft_twin(model)
    ids = token_batch()
    ours, theirs = model.represent(ids), mean_pooled(twin, ids)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    weights = torch.randn_like(ours)
    ours_grads = torch.autograd.grad((ours * weights).sum(), [p for _, p in model.shared_parameters()])
    named = dict(twin.named_parameters())
    for (name, _), grad in zip(model.shared_parameters(), ours_grads):
        module = name.removeprefix("base.transformer.")
        torch.testing.assert_close(grad, torch.autograd.grad((theirs * weights).sum(), named[f"base_model.model.{module}"], retain_graph=True)[0],
                                   rtol=0, atol=1e-6)


def test_each_tasks_lora_is_peft_s_adapter_of_that_name():
    model = perturbed(make_scheme("task_lora", TASKS, BACKBONES["BERT"], rank=2))
    ids = token_batch()
    z = model.represent(ids)
    for slot, task in enumerate(model.task_names):
        torch.testing.assert_close(z[:, slot], mean_pooled(peft_twin(model, adapter=task), ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scheme, adapter", [("lora", None), ("task_lora", "b")])
def test_a_lora_saved_here_loads_in_peft_and_one_saved_by_peft_loads_here(tmp_path, scheme, adapter):
    model = perturbed(make_scheme(scheme, TASKS, BACKBONES["BERT"], rank=2, alpha=4.0))
    ids = token_batch()
    slot = model.task_names.index(adapter) if adapter else None
    expected = model.represent(ids) if slot is None else model.represent(ids)[:, slot]
    save_lora(model, tmp_path / "ours", adapter=adapter, base_model="tiny-bert")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path / "ours")
    torch.testing.assert_close(mean_pooled(loaded, ids), expected, rtol=0, atol=1e-6)
    peft_twin(model, adapter=adapter or "default").save_pretrained(tmp_path / "theirs")
    fresh = make_scheme(scheme, TASKS, BACKBONES["BERT"], rank=2, alpha=4.0)
    load_lora(fresh, tmp_path / "theirs", adapter=adapter)
    got = fresh.represent(ids) if slot is None else fresh.represent(ids)[:, slot]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_a_saved_folder_is_replaced_whole_only_when_asked_and_no_other_folder_is_overwritten(tmp_path):
    model = perturbed(make_scheme("lora", TASKS, BACKBONES["BERT"], rank=2))
    save_lora(model, tmp_path / "adapter")
    perturbed(model, seed=9)
    with pytest.raises(FileExistsError, match="exists; give overwrite=True to replace the adapter in it"):
        save_lora(model, tmp_path / "adapter")
    save_lora(model, tmp_path / "adapter", overwrite=True)
    fresh = load_lora(make_scheme("lora", TASKS, BACKBONES["BERT"], rank=2), tmp_path / "adapter")
    ids = token_batch()
    torch.testing.assert_close(fresh.represent(ids), model.represent(ids), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    (tmp_path / "adapter" / "notes.txt").write_text("mine")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "keep.txt").write_text("mine")
    for folder in ("adapter", "results"):
        with pytest.raises(FileExistsError, match="is no adapter folder holding an adapter alone"):
            save_lora(model, tmp_path / folder, overwrite=True)
    assert (tmp_path / "results" / "keep.txt").read_text() == "mine" and (tmp_path / "adapter" / "notes.txt").read_text() == "mine"
    with torch.no_grad():
        next(iter(model.encoder.adapted_layers().values())).lora_B["default"].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="the LoRA to save holds NaN or infinite values"):
        save_lora(model, tmp_path / "diverged")
    assert not (tmp_path / "diverged").exists()


def test_bad_adapter_folders_are_refused_naming_what_is_wrong_before_anything_is_copied(tmp_path):
    save_lora(perturbed(make_scheme("lora", TASKS, BACKBONES["BERT"], rank=2, alpha=4.0)), tmp_path / "good")
    model = perturbed(make_scheme("lora", TASKS, BACKBONES["BERT"], rank=2, alpha=4.0), seed=11)  # other values than the file's
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"trained with \{'r': 2, 'lora_alpha': 4.0, 'use_rslora': False\}, the model's LoRA has \{'r': 3"):
        load_lora(make_scheme("lora", TASKS, BACKBONES["BERT"], rank=3, alpha=4.0), tmp_path / "good")
    wider = Backbone("BERT", lambda: type(model.encoder.base)(_bert(hidden=16), "mean", trainable_layers=2), (16,))
    other = make_scheme("lora", TASKS, wider, rank=2, alpha=4.0)
    with pytest.raises(ValueError, match=r"an adapter for another base model; tensors of other shapes: \{'base_model\.model\.encoder\.layer\.1\."
                                         r"attention\.self\.query\.lora_A\.weight': '\(2, 12\) in the file, \(2, 16\) here'"):
        load_lora(other, tmp_path / "good")
    with pytest.raises(ValueError, match=r"the adapter's modules are not the model's: missing tensors \[\], tensors of modules the model does not "
                                         r"adapt \['base_model\.model\.encoder\.layer\.1\.attention\.self\.value"):
        load_lora(make_scheme("lora", TASKS, BACKBONES["BERT"], rank=2, alpha=4.0, targets=["query"]), tmp_path / "good")
    with pytest.raises(ValueError, match="the model has no LoRA 'a'; it has one shared LoRA: give no adapter"):
        load_lora(model, tmp_path / "good", adapter="a")
    with pytest.raises(FileNotFoundError, match="is no LoRA folder"):
        load_lora(model, tmp_path)
    config = json.loads((tmp_path / "good" / "adapter_config.json").read_text())
    for feature, value in (("use_dora", True), ("alpha_pattern", {"query": 16})):
        (tmp_path / "good" / "adapter_config.json").write_text(json.dumps({**config, feature: value}))
        with pytest.raises(ValueError, match=rf"uses peft features the workbench's LoRA does not have: \{{'{feature}': {re.escape(repr(value))}\}}"):
            load_lora(model, tmp_path / "good")
    (tmp_path / "good" / "adapter_config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / "good" / "adapter_model.safetensors")
    first = sorted(tensors)[0]
    tensors[first][0, 0] = float("nan")
    save_file(tensors, tmp_path / "good" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=rf"tensors \['{re.escape(first)}'\] hold NaN"):
        load_lora(model, tmp_path / "good")
    (tmp_path / "good" / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        load_lora(model, tmp_path / "good")
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def _bert(hidden: int):
    import transformers

    config = transformers.BertConfig(vocab_size=40, hidden_size=hidden, num_hidden_layers=3, num_attention_heads=2, intermediate_size=20,
                                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertModel(config)


def test_mtl_lora_with_one_up_projection_and_identity_transforms_is_lora():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    mtl = MTLLoRALinear(base, ["a", "b"], rank=3, alpha=6.0, up_projections=1)
    plain = LoRALinear(base, rank=3, alpha=6.0)
    with torch.no_grad():
        mtl.lora_B.normal_()
        plain.lora_A["default"].weight.copy_(mtl.lora_A)
        plain.lora_B["default"].weight.copy_(mtl.lora_B[0])
    x = torch.randn(4, 6)
    torch.testing.assert_close(mtl(torch.cat([x, x])), torch.cat([plain(x), plain(x)]), rtol=0, atol=1e-6)


def test_mtl_lora_applies_a_full_task_transform_between_the_shared_projections():
    torch.manual_seed(0)
    layer = MTLLoRALinear(nn.Linear(6, 5), ["a", "b"], rank=3, alpha=3.0, up_projections=2)
    with torch.no_grad():
        layer.lora_B.normal_()
        for task in ("a", "b"):
            layer.lora_lambdas[task].copy_(torch.randn(3, 3))
    x = torch.randn(4, 6)
    out = layer(torch.cat([x, x])).unflatten(0, (2, 4))
    for t, task in enumerate(["a", "b"]):
        delta = layer.task_up_projection(task) @ layer.lora_lambdas[task] @ layer.lora_A  # B_t Λ_t A, (d_out, d_in)
        torch.testing.assert_close(out[t], layer.base_layer(x) + x @ delta.T, rtol=0, atol=1e-5)


def test_the_layers_refuse_options_they_do_not_have():
    from workbench.models.peft.routed import RoutedLoRALinear

    with pytest.raises(ValueError, match="LoRALinear: init must be 'kaiming' or 'gaussian', not 'kaimng'"):
        LoRALinear(nn.Linear(4, 4), rank=2, alpha=2.0, init="kaimng")
    with pytest.raises(ValueError, match="RoutedLoRALinear: gating must be 'softmax' or 'balanced_sigmoid', not 'top1'"):
        RoutedLoRALinear(nn.Linear(4, 4), experts=2, expert_rank=1, k=1, alpha=2.0, gating="top1")
    with pytest.raises(ValueError, match=r"BottleneckAdapter: activation must be one of \['relu', 'swish'\], not 'gelu'"):
        BottleneckAdapter(nn.Linear(4, 4), bottleneck=2, activation="gelu")
    with pytest.raises(ValueError, match="parameter-efficient scheme 'lora' has no options \\['per_task'\\]"):
        make_scheme("lora", TASKS, BACKBONES["MLP"], per_task=True)


def test_mtl_lora_gives_each_task_its_transform_and_its_mixture_of_up_projections():
    torch.manual_seed(0)
    layer = MTLLoRALinear(nn.Linear(6, 5), ["a", "b"], rank=3, alpha=6.0, up_projections=2, temperature=0.5, diagonal=True)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_lambdas["b"].mul_(torch.tensor([2.0, -1.0, 0.5]))
    x = torch.randn(4, 6)
    out = layer(torch.cat([x, x])).unflatten(0, (2, 4))
    for t, task in enumerate(["a", "b"]):
        mix = torch.softmax(layer.lora_B_w[task] / 0.5, 0)
        up = mix[0] * layer.lora_B[0] + mix[1] * layer.lora_B[1]
        want = layer.base_layer(x) + 2.0 * x @ layer.lora_A.T @ torch.diag(layer.lora_lambdas[task]) @ up.T
        torch.testing.assert_close(out[t], want, rtol=0, atol=1e-5)


def test_multilora_of_one_module_with_unit_scales_is_lora_and_starts_as_the_frozen_layer():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    multi = MultiLoRALinear(base, rank=2, alpha=4.0, n_modules=1)
    x = torch.randn(4, 6)
    torch.testing.assert_close(multi(x), base(x), rtol=0, atol=0)
    plain = LoRALinear(base, rank=2, alpha=4.0)
    with torch.no_grad():
        multi.lora_scaling.fill_(1.0)
        plain.lora_A["default"].weight.copy_(multi.lora_A[0])
        plain.lora_B["default"].weight.copy_(multi.lora_B[0])
    torch.testing.assert_close(multi(x), plain(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("activation, function", [("relu", torch.relu), ("swish", nn.functional.silu)])
def test_a_bottleneck_adapter_is_a_residual_mlp_on_the_frozen_layer_s_output(activation, function):
    torch.manual_seed(0)
    layer = BottleneckAdapter(nn.Linear(6, 8), bottleneck=2, activation=activation)
    x = torch.randn(4, 6)
    y = layer.base_layer(x)
    down, up = layer.adapter_down["default"], layer.adapter_up["default"]
    torch.testing.assert_close(layer(x), y + function(y @ down.weight.T + down.bias) @ up.weight.T + up.bias, rtol=0, atol=1e-6)
    assert down.weight.std().item() == pytest.approx(0.02, rel=0.6) and not down.bias.any()


def test_the_default_targets_are_peft_s_for_lora_and_the_output_projections_for_adapters():
    lora = make_scheme("lora", TASKS, BACKBONES["BERT"], rank=2)
    adapter = make_scheme("adapter", TASKS, BACKBONES["BERT"], reduction=2)
    strip = "base.transformer."
    assert sorted(n.removeprefix(strip) for n in lora.encoder.adapted_layers()) == [
        f"encoder.layer.{i}.attention.self.{m}" for i in (1, 2) for m in ("query", "value")]
    assert sorted(n.removeprefix(strip) for n in adapter.encoder.adapted_layers()) == [
        f"encoder.layer.{i}.{m}" for i in (1, 2) for m in ("attention.output.dense", "output.dense")]
    pfeiffer = make_scheme("adapter", TASKS, BACKBONES["BERT"], reduction=2, targets=r".*\.\d+\.output\.dense")
    assert sorted(n.removeprefix(strip) for n in pfeiffer.encoder.adapted_layers()) == ["encoder.layer.1.output.dense", "encoder.layer.2.output.dense"]


@pytest.mark.parametrize("scheme", ["lora", "task_lora", "adapter"])
def test_adapters_in_the_trainable_blocks_keep_the_cache_of_the_frozen_blocks_valid(scheme):
    model = perturbed(make_scheme(scheme, TASKS, BACKBONES["BERT"], **({"rank": 2} if "lora" in scheme else {"reduction": 2})))
    model.eval()
    ids = token_batch()
    cached = model.encoder.base.cache_frozen({"input_ids": ids, "attention_mask": (ids != 0).long()})
    torch.testing.assert_close(model.represent(cached), model.represent(ids), rtol=0, atol=1e-6)
    assert not any(isinstance(m, LoRALinear | BottleneckAdapter) for block in model.encoder.base.blocks[:1] for m in block.modules())


def test_a_scheme_with_adapters_per_task_needs_a_vector_representation():
    from functools import partial

    from workbench.models import conv_encoder

    backbone = Backbone("CNN", partial(conv_encoder, 1, (4, 3)), (3, 4, 4), inputs=(1, 8, 8))
    with pytest.raises(ValueError, match=r"task_lora: a scheme with parameters per task reads each task's representation from a slot of a vector; "
                                         r"the CNN backbone's representation has the shape \(3, 4, 4\)"):
        make_scheme("task_lora", TASKS, backbone)
    with pytest.raises(ValueError, match=r"lora: the targets None match no linear layer of the encoder; its linear layers: \['none'\]"):
        make_scheme("lora", TASKS, backbone)


def test_routed_experts_gate_k_per_token_and_smora_balances_its_ranks_once_per_step():
    from workbench.models.peft.routed import RoutedLoRALinear

    torch.manual_seed(0)
    mixture = RoutedLoRALinear(nn.Linear(6, 5), experts=4, expert_rank=2, k=2, alpha=8.0, gating="softmax")
    x = torch.randn(3, 7, 6)
    gates = mixture.gates(x)
    assert ((gates > 0).sum(-1) == 2).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(3, 7))
    with torch.no_grad():
        mixture.lora_B.normal_()
    want = mixture.base_layer(x) + 8.0 / 8 * sum(gates[..., e, None] * (x @ mixture.lora_A[e].T @ mixture.lora_B[e].T) for e in range(4))
    torch.testing.assert_close(mixture(x), want, rtol=0, atol=1e-5)
    ranks = RoutedLoRALinear(nn.Linear(6, 5), experts=4, expert_rank=1, k=1, alpha=4.0, gating="balanced_sigmoid", update_rate=0.5)
    with torch.no_grad():
        ranks.router.weight.zero_()
        ranks.router.weight[0, 0] = 10.0  # rank 0 scores highest wherever x_0 > 0
    x = torch.rand(16, 6)
    first = ranks(x)
    torch.testing.assert_close(ranks(x), first)  # a step's forwards agree: the bias moves only after the optimizer's step
    assert ranks.pending_load.tolist() == [32.0, 0.0, 0.0, 0.0]
    ranks.after_optimizer_step()
    assert ranks.balance_bias.tolist() == [-0.5, 0.5, 0.5, 0.5] and not ranks.pending_load.any()
    ranks.eval()
    ranks(x)
    assert not ranks.pending_load.any(), "an evaluation counts no choice"


def test_hyperformer_writes_each_tasks_adapter_with_one_shared_hypernetwork():
    model = perturbed(make_scheme("hyperformer", TASKS, BACKBONES["BERT"], reduction=2, task_embedding=3, layer_embedding=2))
    hypernetwork = model.encoder.hypernetwork
    layers = list(model.encoder.adapted_layers().values())
    assert len(layers) == 4 and all(layer._hypernetwork[0] is hypernetwork for layer in layers)
    assert hypernetwork.layer_embeddings.shape == (4, 2)
    assert {name for name, _ in model.shared_parameters()} >= {"hypernetwork.layer_embeddings", "hypernetwork.generators.width_12.down.weight"}
    assert model.task_parameters()["b"][-1][0] == "encoder.hypernetwork.task_embeddings.b"
    x = torch.randn(5, 12)
    layer = layers[2]
    out = layer(torch.cat([x, x, x])).unflatten(0, (3, 5))
    y = layer.base_layer(x)
    for t, task in enumerate(model.task_names):
        down, down_bias, up, up_bias = hypernetwork(task, 2)
        assert down.shape == (6, 12) and up.shape == (12, 6)
        torch.testing.assert_close(out[t], y + torch.relu(y @ down.T + down_bias) @ up.T + up_bias, rtol=0, atol=1e-5)
    assert not torch.allclose(out[0], out[1])


def test_a_problem_makes_a_scheme_as_it_makes_an_architecture_and_names_both_registries_for_an_unknown_name():
    import re

    from workbench.models import ARCHITECTURES, SCHEMES
    from workbench.studies import load_problem

    problem = load_problem("synthetic", n_tasks=2, n_samples=60)
    model = problem.make_model(problem.splits.tasks, architecture="mtl_lora", rank=4)
    assert model.encoder.per_task and {n for n, p in model.named_parameters() if p.requires_grad and "base_layer" in n} == set()
    with pytest.raises(ValueError, match=re.escape(f"unknown architecture or parameter-efficient scheme 'lorra'; architectures: {sorted(ARCHITECTURES)}; "
                                                   f"schemes: {sorted(SCHEMES)}")):
        problem.make_model(problem.splits.tasks, architecture="lorra")


@pytest.mark.parametrize("scheme", ["mtl_lora", "smora", "hyperformer"])
def test_any_schemes_adapters_save_as_safetensors_and_load_into_a_model_built_alike_after_every_check(tmp_path, scheme):
    from tests.test_peft_laws import SMALL
    from workbench.models.peft.saved import load_adapters, save_adapters

    model = perturbed(make_scheme(scheme, TASKS, BACKBONES["BERT"], **SMALL[scheme]))
    if scheme == "smora":
        model.encoder.adapted_layers()[next(iter(model.encoder.adapted_layers()))].balance_bias.fill_(0.25)
    path = save_adapters(model, tmp_path / "adapters.safetensors")
    assert path.stat().st_size < 200_000, "the frozen backbone is not written"
    fresh = load_adapters(make_scheme(scheme, TASKS, BACKBONES["BERT"], **SMALL[scheme]), path)
    ids = token_batch()
    torch.testing.assert_close(fresh.eval().represent(ids), model.eval().represent(ids), rtol=0, atol=0)
    other = make_scheme("lora", TASKS, BACKBONES["BERT"], rank=2)
    before = {name: p.detach().clone() for name, p in other.named_parameters()}
    with pytest.raises(ValueError, match="not this model's adapters: missing tensors"):
        load_adapters(other, path)
    assert all(torch.equal(p, before[name]) for name, p in other.named_parameters())


def test_adapters_of_another_rank_are_refused_naming_the_tensors(tmp_path):
    from workbench.models.peft.saved import load_adapters, save_adapters

    path = save_adapters(make_scheme("lora", TASKS, BACKBONES["BERT"], rank=2), tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"tensors of other shapes: \{'encoder\.base\.transformer\.encoder\.layer\.1\.attention\.self\.query\."
                                         r"lora_A\.default\.weight': '\(2, 12\) in the file, \(3, 12\) here'"):
        load_adapters(make_scheme("lora", TASKS, BACKBONES["BERT"], rank=3), path)


def test_lorahub_composes_loras_entry_wise_and_its_search_finds_the_lora_that_made_the_targets(tmp_path):
    from workbench.models.peft.lorahub import compose_loras, lorahub, read_loras
    from workbench.tasks import regression_task

    tasks = [regression_task("a"), regression_task("b")]
    folders = {}
    for k in range(3):
        source = perturbed(make_scheme("lora", tasks, BACKBONES["BERT"], rank=2), seed=20 + k)
        with torch.no_grad():
            for layer in source.encoder.adapted_layers().values():
                layer.lora_B["default"].weight.mul_(10)  # LoRAs that move the representation well beyond the l1 penalty
        folders[f"lora {k}"] = save_lora(source, tmp_path / f"lora{k}")
    torch.manual_seed(0)
    model = make_scheme("lora", tasks, BACKBONES["BERT"], rank=2).eval()
    ids = token_batch(n=16, seed=4)
    load_lora(model, folders["lora 1"])
    with torch.no_grad():
        targets = {name: out.squeeze(1) for name, out in model(ids).items()}  # what LoRA 1 gives, under these heads
        z = model.represent(ids)
    loras = read_loras(model, folders)
    compose_loras(model, loras, [0.0, 1.0, 0.0])
    torch.testing.assert_close(model.represent(ids), z, rtol=0, atol=0)  # one-hot weights: LoRA 1 itself
    compose_loras(model, loras, [0.5, 0.5, 0.0])
    layer = next(iter(model.encoder.adapted_layers().values()))
    name = next(n for n in loras["lora 0"] if n.endswith("lora_A"))
    torch.testing.assert_close(layer.lora_A["default"].weight, 0.5 * loras["lora 0"][name] + 0.5 * loras["lora 1"][name])
    found = lorahub(model, loras, (ids, targets), budget=60)
    torch.manual_seed(0)  # the model's heads, as it was built
    with torch.no_grad():
        at_zero = torch.stack(list(make_scheme("lora", tasks, BACKBONES["BERT"], rank=2).eval().losses(ids, targets).values())).mean()
    assert found["start"] == pytest.approx(float(at_zero), rel=1e-5)  # w = 0: the frozen model under the heads, no penalty
    assert found["objective"] < 0.5 * found["start"] and 0 < found["evaluations"] <= 60 + 2
    assert max(found["weights"], key=lambda k: found["weights"][k]) == "lora 1"
    with pytest.raises(ValueError, match="LoraHub composes two or more LoRAs"):
        lorahub(model, {"lora 0": loras["lora 0"]}, (ids, targets))


def test_lorahub_composes_a_task_lora_models_loras_and_with_fitted_heads_finds_the_one_whose_features_carry_the_task():
    from workbench.models.few_shot_heads import fit_heads
    from workbench.models.peft.lorahub import compose_loras, lorahub, task_loras
    from workbench.tasks import regression_task

    sources = perturbed(make_scheme("task_lora", TASKS, BACKBONES["BERT"], rank=2), seed=5)
    with torch.no_grad():
        for layer in sources.encoder.adapted_layers().values():
            for adapter in layer.lora_B.values():
                adapter.weight.mul_(30)  # LoRAs that change the features well beyond the l1 penalty
    loras = task_loras(sources)
    assert list(loras) == sources.task_names
    torch.manual_seed(0)
    model = make_scheme("lora", [regression_task("new")], BACKBONES["BERT"], rank=2).eval()
    second = sources.task_names[1]
    compose_loras(model, loras, [float(t == second) for t in loras])  # one-hot: that task's LoRA, in the shared slot
    for name, layer in model.encoder.adapted_layers().items():
        source = sources.encoder.adapted_layers()[name]
        for part in ("lora_A", "lora_B"):
            torch.testing.assert_close(getattr(layer, part)["default"].weight, getattr(source, part)[second].weight, rtol=0, atol=0)
    ids = token_batch(n=24, seed=6)
    with torch.no_grad():
        z = model.represent(ids)
    targets = {"new": z @ torch.randn(z.shape[1], generator=torch.Generator().manual_seed(1))}  # linear in that LoRA's features
    found = lorahub(model, loras, (ids, targets), budget=80, ridge=1e-3)
    assert max(found["weights"], key=lambda k: abs(found["weights"][k])) == second
    assert found["objective"] < 0.05 * found["start"]
    kept = [p.detach().clone() for p in (*model.parameters(),)]
    for k, label in enumerate(loras):  # the search starts from each LoRA alone: it never ends worse than the best of them
        compose_loras(model, loras, [float(j == k) for j in range(len(loras))])
        alone = float(fit_heads(model, ids, targets, 1e-3)["new"]) + 0.05 / len(loras)
        assert found["objective"] <= alone + 1e-12, label
    with torch.no_grad():
        for p, value in zip(model.parameters(), kept):
            p.copy_(value)
    head = model.heads["new"]
    with torch.no_grad():
        fitted = head(model.represent(ids)).squeeze(1)
    assert float(torch.mean((fitted - targets["new"]) ** 2)) < found["objective"]  # the heads left are fitted on every example
    narrow = {label: {name: t[..., :1] if name.endswith("lora_A") else t for name, t in lora.items()} for label, lora in loras.items()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match=rf"LoRA '{sources.task_names[0]}' has tensors of other shapes \(its, the model's\)"):
        lorahub(model, narrow, (ids, targets), ridge=1e-3)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_adapters_files_are_safetensors_by_name_and_the_peak_memory_of_a_step_counts_its_tensors(tmp_path):
    from workbench.models.peft.saved import load_adapters, save_adapters
    from workbench.studies import peak_memory_mib

    model = make_scheme("lora", TASKS, BACKBONES["MLP"], rank=2)
    for call in (save_adapters, load_adapters):
        with pytest.raises(ValueError, match=r"named \*\.safetensors; got 'adapters\.pt'"):
            call(model, tmp_path / "adapters.pt")
    assert list(tmp_path.iterdir()) == []
    assert 4.0 <= peak_memory_mib(lambda: torch.ones(1024, 1024) + 1) < 9.0  # two tensors of 4 MiB at most at once
