import pytest
import torch
from torch import nn

from workbench.tasks import MultiTaskData, MultiTaskModel, Task, classification_task, mlp_encoder, regression_task


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
