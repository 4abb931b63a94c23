"""Encoders under the model contract: a CNN, a transformers encoder (tiny random BERT, packaged MiniLM)."""

import pytest
import torch
from torch import nn

from tests.test_gradients import naive_jacobian
from workbench.models import TransformerEncoder, conv_encoder, minilm_encoder, minilm_tokenizer, representation_shape
from workbench.gradients import model_task_jacobian
from workbench.tasks import MultiTaskModel, classification_task, regression_task

transformers = pytest.importorskip("transformers")


def tiny_bert(layers: int = 3, seed: int = 0) -> nn.Module:
    """A random-initialised BERT small enough for exact checks; no dropout, so two forwards agree."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=12, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=20,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.BertModel(config)


def token_batch(n: int = 6, length: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, length), generator=g)
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    ids[torch.arange(length)[None, :] >= lengths[:, None]] = 0  # padding
    return ids


def text_model(pooling="mean", trainable_layers=None, n_tasks=3):
    tasks = [regression_task(f"r{i}") for i in range(n_tasks - 1)] + [classification_task("c", 3)]
    return MultiTaskModel(TransformerEncoder(tiny_bert(), pooling, trainable_layers), tasks, representation_dim=12)


def targets_for(model, n, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randint(0, 3, (n,), generator=g) if t.kind == "classification" else torch.randn(n, generator=g) for name, t in model.tasks.items()}


def test_conv_encoder_keeps_a_spatial_representation():
    encoder = conv_encoder(1, (4, 8, 8))
    assert representation_shape(encoder, torch.zeros(2, 1, 12, 16)) == (8, 3, 4)
    with pytest.raises(ValueError, match="at least one channel"):
        conv_encoder(1, ())


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("strategy", ["batched", "loop", "direct"])
def test_transformer_jacobian_matches_a_naive_loop(pooling, strategy):
    model = text_model(pooling, trainable_layers=2)
    ids = token_batch()
    targets = targets_for(model, 6)
    jacobian = model_task_jacobian(model, {"input_ids": ids, "attention_mask": (ids != 0).long()}, targets, strategy=strategy)
    torch.testing.assert_close(jacobian.matrix(), naive_jacobian(model, (ids, targets)), atol=1e-5, rtol=1e-4)
    assert jacobian.strategy == strategy
    assert list(jacobian.groups("block")) == ["transformer.encoder.layer.1", "transformer.encoder.layer.2"]


def test_mean_pooling_ignores_padding():
    encoder = TransformerEncoder(tiny_bert()).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    padded_more = torch.tensor([[5, 6, 7, 0, 0, 0, 0]])
    torch.testing.assert_close(encoder(ids), encoder(padded_more), atol=1e-5, rtol=1e-5)
    assert encoder(ids).shape == (1, 12)


def test_frozen_parameters_are_not_shared_and_frozen_blocks_stay_in_eval_mode():
    encoder = TransformerEncoder(tiny_bert(layers=4), trainable_layers=1)
    model = MultiTaskModel(encoder, [regression_task("a")], representation_dim=12)
    shared = [name for name, _ in model.shared_parameters()]
    assert shared and all(name.startswith("transformer.encoder.layer.3.") for name in shared)
    assert encoder.transformer.pooler is None
    model.train()
    assert encoder.blocks[3].training and not encoder.blocks[0].training and not encoder.transformer.embeddings.training
    everything = TransformerEncoder(tiny_bert(layers=2))
    assert all(p.requires_grad for p in everything.parameters())
    assert "trainable: all parameters" in repr(everything)
    with pytest.raises(ValueError, match=r"trainable_layers must lie in \[0, 3\]"):
        TransformerEncoder(tiny_bert(), trainable_layers=4)
    with pytest.raises(ValueError, match="pooling must be"):
        TransformerEncoder(tiny_bert(), pooling="max")


def test_bad_text_inputs_are_named():
    encoder = TransformerEncoder(tiny_bert())
    with pytest.raises(KeyError, match="need 'input_ids'"):
        encoder({"ids": torch.ones(2, 3, dtype=torch.long)})
    with pytest.raises(TypeError, match="token ids must be integers"):
        encoder(torch.ones(2, 3))


def test_an_unused_encoder_parameter_gets_zero_rows():
    """A layer no loss reaches (as a transformer's pooler under mean pooling) has a (T, *shape) block of zeros."""

    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 3)
            self.unused = nn.Linear(3, 3)

        def forward(self, x):
            return torch.tanh(self.used(x))

    torch.manual_seed(0)
    model = MultiTaskModel(WithUnused(), [regression_task("a"), regression_task("b")], representation_dim=3)
    x, targets = torch.randn(5, 4), {"a": torch.randn(5), "b": torch.randn(5)}
    for strategy in ("batched", "loop", "direct"):
        jacobian = model_task_jacobian(model, x, targets, strategy=strategy)
        assert jacobian.blocks["unused.weight"].shape == (2, 3, 3)
        assert not jacobian.blocks["unused.weight"].any()
        torch.testing.assert_close(jacobian.matrix(), naive_jacobian(model, (x, targets)))


def test_auto_strategy_alternates_then_keeps_the_faster(monkeypatch):
    from workbench import gradients

    seconds = {"batched": 2.0, "loop": 1.0, "direct": 3.0}

    def fake_timed(device, compute, *args):
        result = compute(*args)
        return seconds[result.strategy], result

    monkeypatch.setattr(gradients, "_timed", fake_timed)
    model = text_model()
    ids = token_batch()
    targets = targets_for(model, 6)
    first = [model_task_jacobian(model, ids, targets) for _ in range(gradients.LEARNING_CALLS)]
    assert [j.strategy for j in first] == ["batched", "loop", "direct"] * (gradients.WARMUP + gradients.TRIALS)
    later = model_task_jacobian(model, ids, targets)
    assert later.strategy == "loop"
    torch.testing.assert_close(later.matrix(), first[0].matrix(), atol=1e-6, rtol=1e-6)
    assert model_task_jacobian(model, ids[:4], {k: v[:4] for k, v in targets.items()}).strategy == "batched"  # another shape: learned anew
    with pytest.raises(ValueError, match="strategy must be"):
        model_task_jacobian(model, ids, targets, strategy="fast")


def test_auto_strategy_gives_up_batching_where_it_falls_back(no_batched_grad):
    from workbench import gradients

    model = text_model()
    ids, targets = token_batch(), targets_for(model, 6)
    with pytest.warns(RuntimeWarning, match="task by task"):
        assert model_task_jacobian(model, ids, targets).strategy == "loop"
    later = [model_task_jacobian(model, ids, targets).strategy for _ in range(gradients.LEARNING_CALLS)]
    assert "batched" not in later and set(later) == {"loop", "direct"}


def test_packaged_minilm_loads_offline_and_fits_the_contract(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = minilm_tokenizer()
    tokens = tokenizer(["happy", "unhappiness", "the"], padding=True, return_tensors="pt", return_token_type_ids=False)
    encoder = minilm_encoder(trainable_layers=1).eval()
    model = MultiTaskModel(encoder, [regression_task("a"), regression_task("b")], representation_dim=384)
    targets = {"a": torch.tensor([1.0, -1.0, 0.0]), "b": torch.tensor([0.5, 0.2, -0.3])}
    jacobian = model_task_jacobian(model, dict(tokens), targets)
    assert jacobian.matrix().shape == (2, sum(p.numel() for p in encoder.blocks[5].parameters()))
    torch.testing.assert_close(jacobian.matrix(), naive_jacobian(model, (dict(tokens), targets)), atol=1e-5, rtol=1e-4)
    # the sentence-transformers model: mean-pooled embeddings of related words are closer than of unrelated ones
    with torch.no_grad():
        z = nn.functional.normalize(encoder(dict(tokenizer(["happy", "glad", "carburettor"], padding=True, return_tensors="pt", return_token_type_ids=False))), dim=1)
    assert z[0] @ z[1] > z[0] @ z[2] + 0.1
