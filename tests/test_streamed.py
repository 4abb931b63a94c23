"""Data streamed from a torch Dataset: the same batches, runs and scores as the same samples in memory; bad items named."""

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import Items
from workbench.data import StreamedData, make_synthetic
from workbench.models import mlp_encoder
from workbench.probes import ProbeRecorder, gradient_conflict
from workbench.tasks import MultiTaskModel
from workbench.train import train


def _problem():
    return make_synthetic(n_tasks=3, n_samples=200, n_features=6, groups=[[0, 1]], classification=[2], seed=3)


def _model(tasks, seed=0):
    torch.manual_seed(seed)
    return MultiTaskModel(mlp_encoder(6, (16,)), tasks, representation_dim=16)


def test_a_steps_batch_is_the_one_in_memory_also_when_read_out_of_order():
    data = _problem().data
    streamed = StreamedData(Items(data), data.tasks)
    for step in [0, 1, 2, 13, 14, 3, 3, 40]:  # 13 is past the first epoch; 3 twice is a resumed run
        x, targets = streamed.batch(step, 16, seed=5)
        expected_x, expected_targets = data.batch(step, 16, seed=5)
        assert torch.equal(x, expected_x) and all(torch.equal(targets[n], expected_targets[n]) for n in data.task_names)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_on_a_dataset_equals_the_run_in_memory(workers):
    data = _problem().data
    options = dict(steps=30, batch_size=16, seed=1, eval_every=10, eval_batch_size=48, progress=False, method="mgda")
    in_memory = train(_model(data.tasks), data, recorders=[ProbeRecorder(gradient_conflict, every=10)], **options)
    streamed = StreamedData(DataLoader(Items(data), num_workers=workers), data.tasks, data.attrs)
    from_dataset = train(_model(data.tasks), streamed, recorders=[ProbeRecorder(gradient_conflict, every=10)], **options)
    for variable in ("train_loss", "weights", "loss", "metric"):
        np.testing.assert_array_equal(from_dataset.history[variable].values, in_memory.history[variable].values, err_msg=variable)
    np.testing.assert_array_equal(from_dataset.probes["gradient_conflict"].cosine.values, in_memory.probes["gradient_conflict"].cosine.values)
    assert from_dataset.history.attrs["data"] == in_memory.history.attrs["data"]


def test_streamed_evaluation_equals_the_whole_set_in_memory():
    data = _problem().data
    model = _model(data.tasks)
    whole = model.evaluate(data.x, data.targets, batch_size=len(data))
    for batch_size in (7, 64, 1000):
        streamed = model.evaluate_batches(StreamedData(Items(data), data.tasks).batches(batch_size))
        assert streamed == model.evaluate_batches(data.batches(batch_size))  # the same batches: the same numbers
        for task, scores in whole.items():  # other batch sizes: the same up to the rounding of the forward passes
            np.testing.assert_allclose(streamed[task], scores, rtol=1e-6)


def test_single_task_baselines_stream_each_task():
    from workbench.train import single_task_baselines

    data = _problem().data
    streamed = StreamedData(Items(data), data.tasks)
    baselines = single_task_baselines(lambda tasks: _model(tasks), streamed, 10, batch_size=16, progress=False)
    expected = single_task_baselines(lambda tasks: _model(tasks), data, 10, batch_size=16, progress=False)
    np.testing.assert_array_equal(baselines.metric.values, expected.metric.values)


@pytest.mark.parametrize("broken, message", [
    ("not a pair", r"sample 17: an item must be a pair \(x, \{task: target\}\), got a str"),
    ((torch.zeros(6), {"t0": 1.0, "t1": 2.0}), r"sample 17 has no target for tasks \['t2'\]"),
    ((torch.zeros(5), {"t0": 1.0, "t1": 2.0, "t2": 1.0}), r"sample 17: its input is \(\(5,\), torch.float32\)"),
    ((torch.zeros(6), {"t0": torch.zeros(2), "t1": 2.0, "t2": 1.0}), r"sample 17: task 't0' has target \(\(2,\), torch.float32\)"),
])
def test_a_bad_item_is_named_by_its_index_and_task(broken, message):
    data = _problem().data
    streamed = StreamedData(Items(data, {17: broken}), data.tasks)
    with pytest.raises(ValueError, match=message):
        list(streamed.batches(50))


def test_bad_datasets_and_tasks_are_refused():
    data = _problem().data
    with pytest.raises(ValueError, match="holds no samples"):
        StreamedData(Items(data.head(0)), data.tasks)
    with pytest.raises(ValueError, match=r"sample 0 has no target for tasks \['t2'\]"):
        StreamedData(Items(data.subset(["t0", "t1"])), data.tasks)
    with pytest.raises(TypeError, match="not a map-style Dataset"):
        StreamedData(iter([]), data.tasks)
    with pytest.raises(KeyError, match="unknown tasks"):
        StreamedData(Items(data), data.tasks).subset(["t9"])


def _digits(n=60):
    from workbench.data import make_multidigits

    return make_multidigits(("left", "parity", "sum"), n_train=n, n_validation=10, n_test=10, seed=2).train


def test_an_image_folder_reads_back_the_written_split_and_trains_as_it_does_in_memory(tmp_path):
    from workbench.data import image_folder_data, write_image_folder
    from workbench.models import conv_encoder, representation_shape

    data = _digits()
    folder = write_image_folder(data, tmp_path / "digits")
    assert sorted(p.name for p in folder.iterdir())[:2] == ["000000.png", "000001.png"] and (folder / "labels.csv").exists()
    streamed = image_folder_data(folder, data.tasks, num_workers=2)
    quantised = data.with_inputs((data.x * 255).round() / 255)
    x, targets = streamed.batch(3, 16, seed=4)
    expected_x, expected_targets = quantised.batch(3, 16, seed=4)
    torch.testing.assert_close(x, expected_x, atol=1e-7, rtol=0)
    assert all(torch.equal(targets[n], expected_targets[n]) and targets[n].dtype == expected_targets[n].dtype for n in data.task_names)

    def run(source):
        torch.manual_seed(0)
        net = conv_encoder(1, (8, 8))
        model = MultiTaskModel(net, data.tasks, representation_dim=representation_shape(net, data.x[:1]))
        return train(model, source, 12, batch_size=16, eval_every=6, progress=False).history

    np.testing.assert_allclose(run(streamed).metric.values, run(quantised).metric.values, rtol=1e-5)


@pytest.mark.parametrize("row, message", [
    ("../outside.png,1,0,0.5", "file '../outside.png' lies outside"),
    ("/etc/passwd,1,0,0.5", "file '/etc/passwd' lies outside"),
    ("000000.png,12,0,0.5", r"task 'left' has label '12', not a class in 0..9"),
    ("000000.png,1,0.5,0.5", r"task 'parity' has label '0.5', not a class in 0..1"),
    ("000000.png,1,0,nan", r"task 'sum' has label 'nan', not a finite number"),
    ("000000.png,1,x,0.5", r"task 'parity' has label 'x', not a number"),
])
def test_a_bad_row_of_the_labels_table_is_named_by_its_line(tmp_path, row, message):
    from workbench.data import ImageFolder, write_image_folder

    data = _digits(4)
    folder = write_image_folder(data, tmp_path / "digits")
    table = folder / "labels.csv"
    table.write_text(table.read_text() + row + "\n")
    with pytest.raises(ValueError, match=r"labels.csv, line 6: " + message):
        ImageFolder(folder, data.tasks)


def test_an_image_folder_refuses_a_missing_column_or_file_and_is_never_written_over(tmp_path):
    from workbench.data import ImageFolder, write_image_folder

    data = _digits(4)
    folder = write_image_folder(data, tmp_path / "digits")
    with pytest.raises(FileExistsError, match="exists already"):
        write_image_folder(data, folder)
    (folder / "000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"line 3: no image at .*000001.png"):
        ImageFolder(folder, data.tasks)
    table = folder / "labels.csv"
    table.write_text(table.read_text().replace("parity", "odd"))
    with pytest.raises(ValueError, match=r"no column for \['parity'\]"):
        ImageFolder(folder, data.tasks)
    with pytest.raises(ValueError, match=r"an image folder holds images"):
        write_image_folder(_problem().data, tmp_path / "vectors")
    assert not (tmp_path / "vectors").exists()


def test_a_hugging_face_table_trains_as_the_same_rows_in_memory():
    import datasets

    from workbench.data import table_data

    data = _problem().data
    columns = {"features": data.x.tolist(), **{f"label_{n}": y.tolist() for n, y in data.targets.items()}}
    table = datasets.Dataset.from_dict(columns)
    streamed = table_data(table, data.tasks, inputs="features", targets={n: f"label_{n}" for n in data.task_names})
    options = dict(steps=20, batch_size=16, seed=2, eval_every=10, progress=False)
    from_table = train(_model(data.tasks), streamed, **options).history
    in_memory = train(_model(data.tasks), data, **options).history
    np.testing.assert_array_equal(from_table.train_loss.values, in_memory.train_loss.values)
    np.testing.assert_array_equal(from_table.metric.values, in_memory.metric.values)


def test_a_table_of_named_inputs_and_its_bad_columns():
    from workbench.data import table_data

    data = _problem().data
    rows = [{"a": data.x[i, :3].tolist(), "b": data.x[i, 3:].tolist(), **{n: float(y[i]) for n, y in data.targets.items()}} for i in range(len(data))]
    x, targets = table_data(rows, data.tasks, inputs=["a", "b"]).batch(0, 8)
    assert x["a"].shape == (8, 3) and x["b"].shape == (8, 3) and targets["t2"].shape == (8,)
    with pytest.raises(ValueError, match=r"the table has no columns \['c'\]"):
        table_data(rows, data.tasks, inputs=["a", "c"])
    with pytest.raises(ValueError, match=r"tasks without a column \['t1', 't2'\]"):
        table_data(rows, data.tasks, inputs="a", targets={"t0": "t0"})


def _streamed_problem():
    """The synthetic problem of the notebooks, small, and the same problem with every split streamed from a Dataset."""
    from workbench.studies import load_problem
    from workbench.tasks import MultiTaskSplits

    problem = load_problem("synthetic", n_tasks=3, n_samples=300, n_features=6, groups=[[0, 1]], hidden=(16,), seed=1)
    parts = [getattr(problem.splits, split) for split in ("train", "validation", "test")]
    streamed = MultiTaskSplits(*(StreamedData(Items(part), part.tasks, part.attrs) for part in parts), problem.splits.reference)
    return problem, dataclasses.replace(problem, splits=streamed)


def test_studies_on_streamed_splits_equal_those_in_memory():
    from workbench.studies import compare_methods, measure_transfer

    in_memory, streamed = _streamed_problem()
    options = dict(methods=["ew", "pcgrad"], seeds=[0], steps=12, batch_size=16, progress=False)
    a, b = compare_methods(in_memory, **options), compare_methods(streamed, **options)
    for variable in ("metric", "single_task", "delta_m", "curve"):
        np.testing.assert_array_equal(a[variable].values, b[variable].values, err_msg=variable)
    options = dict(steps=10, seeds=[0], batch_size=16, progress=False)
    a, b = measure_transfer(in_memory, **options), measure_transfer(streamed, **options)
    np.testing.assert_array_equal(a.metric.values, b.metric.values)


def test_the_workers_reading_ahead_stop_when_the_run_ends():
    import multiprocessing

    data = _problem().data
    streamed = StreamedData(Items(data), data.tasks, num_workers=2)
    train(_model(data.tasks), streamed, 5, batch_size=16, eval_data=data, progress=False)
    assert multiprocessing.active_children() == []
    streamed.batch(3, 16)
    assert multiprocessing.active_children() == []


def test_an_image_linked_from_outside_the_folder_is_refused(tmp_path):
    from workbench.data import ImageFolder, write_image_folder

    data = _digits(4)
    folder = write_image_folder(data, tmp_path / "digits")
    (tmp_path / "secret.png").write_bytes((folder / "000000.png").read_bytes())
    (folder / "000000.png").unlink()
    (folder / "000000.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ValueError, match=r"line 2: file '000000.png' lies outside"):
        ImageFolder(folder, data.tasks)
