import numpy as np
import pytest
import torch
from torch import nn

from workbench.models import mlp_encoder
from workbench.tasks import MultiTaskData, MultiTaskModel, Task, classification_task, num_samples, regression_task


def test_model_contract(model, batch):
    outputs = model(batch[0])
    assert list(outputs) == ["t0", "t1", "t2"] and outputs["t0"].shape == (11, 1)
    assert model.represent(batch[0]).shape == (11, 6)
    assert [n for n, _ in model.shared_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    scores = model.evaluate(*batch)
    assert set(scores) == {"t0", "t1", "t2"} and model.training


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: MultiTaskModel(nn.Linear(2, 2), [regression_task("a"), regression_task("a")], representation_dim=2), "distinct names"),
        (lambda: MultiTaskModel(nn.Linear(2, 2), [regression_task("a")]), "representation_dim"),
        (lambda: MultiTaskModel(nn.Linear(2, 2), [regression_task("a")], heads={"b": nn.Linear(2, 1)}), r"missing heads \['a'\], heads without task \['b'\]"),
        (lambda: regression_task("not a name"), "identifier"),
        (lambda: classification_task("c", n_classes=1), "n_classes >= 2"),
        (lambda: Task("x", "ranking", None, None, "m", True), "kind must be"),
        (lambda: mlp_encoder(3, ()), "at least one hidden width"),
    ],
)
def test_bad_models_and_tasks_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_classification_tasks_score_accuracy():
    binary, multi = classification_task("b"), classification_task("m", n_classes=3)
    assert binary.out_features == 1 and multi.out_features == 3
    assert binary.metric(torch.tensor([[2.0], [-1.0]]), torch.tensor([1.0, 1.0])).item() == 0.5
    assert multi.metric(torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]]), torch.tensor([1, 0])).item() == 1.0


def test_data_checks_rows_and_tasks():
    tasks = [regression_task("a"), regression_task("b")]
    with pytest.raises(ValueError, match="task 'b' have 3 rows, x has 4"):
        MultiTaskData(torch.zeros(4, 2), {"a": torch.zeros(4), "b": torch.zeros(3)}, tasks)
    with pytest.raises(ValueError, match="no targets for task 'b'"):
        MultiTaskData(torch.zeros(4, 2), {"a": torch.zeros(4)}, tasks)
    data = MultiTaskData(torch.arange(20.0).reshape(10, 2), {"a": torch.zeros(10), "b": torch.ones(10)}, tasks)
    with pytest.raises(KeyError, match="unknown tasks"):
        data.subset(["c"])
    with pytest.raises(ValueError, match="test_fraction"):
        data.split(1.5)
    train, test = data.split(0.3, seed=1)
    assert len(train) == 7 and len(test) == 3
    assert sorted(torch.cat([train.x[:, 0], test.x[:, 0]]).tolist()) == data.x[:, 0].tolist()


def test_named_inputs_and_meta_follow_the_samples():
    x = {"input_ids": torch.arange(20).reshape(10, 2), "attention_mask": torch.ones(10, 2, dtype=torch.long)}
    meta = {"word": np.array([f"w{i}" for i in range(10)], dtype=object)}
    data = MultiTaskData(x, {"a": torch.arange(10.0)}, [regression_task("a")], meta=meta)
    assert len(data) == 10 and num_samples(x) == 10
    picked = data.rows(torch.tensor([3, 7]))
    assert picked.x["input_ids"].tolist() == [[6, 7], [14, 15]]
    assert picked.meta["word"].tolist() == ["w3", "w7"] and picked.targets["a"].tolist() == [3.0, 7.0]
    splits = data.splits(0.2, 0.2, seed=1)
    words = [set(s.meta["word"]) for s in (splits.train, splits.validation, splits.test)]
    assert sum(map(len, words)) == 10 and not (words[0] & words[1] or words[0] & words[2] or words[1] & words[2])
    for part in (splits.train, splits.validation, splits.test):
        assert [f"w{int(v)}" for v in part.targets["a"]] == part.meta["word"].tolist()
    batch_x, batch_targets = data.batch(0, 4, seed=0)
    assert batch_x["input_ids"].shape == (4, 2) and batch_targets["a"].shape == (4,)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: num_samples({"a": torch.zeros(3), "b": torch.zeros(4)}), r"share their first dim, got {'a': 3, 'b': 4}"),
        (lambda: num_samples({}), "empty mapping"),
        (lambda: MultiTaskData(torch.zeros(3, 1), {"a": torch.zeros(3)}, [regression_task("a")], meta={"w": np.zeros(2)}), "meta 'w' has 2 rows, x has 3"),
        (lambda: MultiTaskData(torch.zeros(9, 1), {"a": torch.zeros(9)}, [regression_task("a")]).splits(0.5, 0.5), "sum below 1"),
    ],
)
def test_bad_inputs_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_evaluation_in_chunks_equals_one_pass(model, batch):
    x, targets = batch
    whole = model.evaluate(x, targets, batch_size=len(x))
    chunked = model.evaluate(x, targets, batch_size=3)
    for name in whole:
        assert chunked[name] == pytest.approx(whole[name], rel=1e-6)


def test_spatial_representations_get_flattening_heads():
    encoder = nn.Conv2d(1, 2, 3, padding=1)
    model = MultiTaskModel(encoder, [classification_task("digit", 10), regression_task("size")], representation_dim=(2, 4, 5))
    outputs = model(torch.randn(3, 1, 4, 5))
    assert outputs["digit"].shape == (3, 10) and outputs["size"].shape == (3, 1)
    assert model.device == torch.device("cpu")
