"""One dataset per task (TaskDatasets): sampling shares, per-step counts, epochs per task, random access, evaluation per
task, bad input named, training in both mixings; and missing labels (None targets) in streamed data."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from tests.conftest import Items
from workbench.data import StreamedData, TaskDatasets, make_synthetic, task_datasets
from workbench.data.per_task import mixed_counts, per_task_counts, sampling_shares
from workbench.models import mlp_encoder
from workbench.tasks import MultiTaskData, MultiTaskModel, TaskInputs, classification_task, regression_task
from workbench.train import train


def _problem(n=240, seed=3):
    return make_synthetic(n_tasks=3, n_samples=n, n_features=6, groups=[[0, 1]], classification=[2], seed=seed).data


def _members(data=None):
    """Each task's own data, of different sizes, the third with a third of its labels missing."""
    data = _problem() if data is None else data
    return {"t0": data.rows(torch.arange(0, 40)), "t1": data.rows(torch.arange(40, 160)), "t2": data.rows(torch.arange(160, 240)).without_labels(1 / 3, seed=1)}


def _model(tasks, seed=0):
    torch.manual_seed(seed)
    return MultiTaskModel(mlp_encoder(6, (16,)), tasks, representation_dim=16)


def _rows(x, task):
    """The group and the sample index a task is routed to (all of the group's samples written out)."""
    group, index = x.rows[task]
    return group, torch.arange(len(x.groups[group])) if index is None else index


def _assert_same_batch(a, b):
    """The same samples, routing and targets (a streamed batch without a missing label routes a task to all its group: None)."""
    (xa, ya), (xb, yb) = a, b
    assert isinstance(xa, TaskInputs) and isinstance(xb, TaskInputs)
    assert len(xa.groups) == len(xb.groups) and all(torch.equal(p, q) for p, q in zip(xa.groups, xb.groups))
    assert xa.rows.keys() == xb.rows.keys()
    for task in xa.rows:
        (group, index), (other_group, other_index) = _rows(xa, task), _rows(xb, task)
        assert group == other_group and torch.equal(index, other_index)
    assert ya.keys() == yb.keys() and all(torch.equal(ya[t], yb[t]) and ya[t].dtype == yb[t].dtype for t in ya)


# --- sampling shares and per-step counts -------------------------------------------------------------------------

sizes = st.dictionaries(st.sampled_from([f"t{i}" for i in range(6)]), st.integers(1, 10**6), min_size=1, max_size=6)


@given(sizes, st.floats(0.05, 50))
def test_every_policys_shares_sum_to_one_and_keep_the_order_of_the_sizes(sizes, temperature):
    weights = {task: float(i + 1) for i, task in enumerate(sizes)}
    for sampling in ("proportional", "uniform", temperature, weights):
        shares = sampling_shares(sizes, sampling)
        assert list(shares) == list(sizes) and math.isclose(sum(shares.values()), 1.0, rel_tol=1e-9)
        assert all(share >= 0 for share in shares.values())
    for sampling in ("proportional", temperature):
        shares = sampling_shares(sizes, sampling)
        for a in sizes:
            for b in sizes:
                if sizes[a] > sizes[b]:
                    assert shares[a] >= shares[b]
    np.testing.assert_allclose(list(sampling_shares(sizes, 1.0).values()), [n / sum(sizes.values()) for n in sizes.values()], rtol=1e-9)
    np.testing.assert_allclose(list(sampling_shares(sizes, 1e9).values()), [1 / len(sizes)] * len(sizes), atol=1e-6)
    np.testing.assert_allclose(list(sampling_shares(sizes, weights).values()), [w / sum(weights.values()) for w in weights.values()], rtol=1e-9)


def test_a_temperature_between_flattens_the_shares():
    sizes = {"a": 1000, "b": 10}
    proportional, warm, uniform = (sampling_shares(sizes, s)["a"] for s in ("proportional", 2.0, "uniform"))
    assert proportional > warm > uniform
    assert warm == pytest.approx(math.sqrt(1000) / (math.sqrt(1000) + math.sqrt(10)))


@given(sizes, st.integers(1, 300))
def test_per_task_counts_sum_to_the_batch_and_give_every_task_a_sample(sizes, batch_size):
    shares = sampling_shares(sizes, "proportional")
    counts = per_task_counts(shares, batch_size)
    assert list(counts) == list(sizes) and all(k >= 1 for k in counts.values())
    if batch_size >= len(sizes):
        assert sum(counts.values()) == batch_size
    else:
        assert set(counts.values()) == {1}
    if all(share * batch_size >= 1 for share in shares.values()):  # nothing raised to one: plain largest remainder
        assert all(abs(counts[t] - shares[t] * batch_size) < 1 for t in shares)


def test_largest_remainder_rounding():
    assert per_task_counts({"a": 0.5, "b": 0.3, "c": 0.2}, 7) == {"a": 4, "b": 2, "c": 1}  # quotas 3.5, 2.1, 1.4
    assert per_task_counts({"a": 0.98, "b": 0.01, "c": 0.01}, 10) == {"a": 8, "b": 1, "c": 1}


@given(sizes, st.integers(1, 200), st.integers(0, 2**32), st.integers(0, 10**6))
def test_mixed_counts_depend_on_the_seed_and_step_only(sizes, batch_size, seed, step):
    shares = sampling_shares(sizes, "uniform")
    counts = mixed_counts(shares, batch_size, seed, step)
    assert counts == mixed_counts(dict(shares), batch_size, seed, step) and sum(counts.values()) == batch_size
    assert all(k >= 0 for k in counts.values())


def test_mixed_counts_vary_over_steps_and_follow_the_shares():
    shares = {"a": 0.7, "b": 0.2, "c": 0.1}
    drawn = np.array([list(mixed_counts(shares, 100, 4, step).values()) for step in range(400)])
    assert len({tuple(row) for row in drawn}) > 100
    np.testing.assert_allclose(drawn.mean(axis=0) / 100, [0.7, 0.2, 0.1], atol=0.01)


# --- the samples each step draws --------------------------------------------------------------------------------

@given(st.lists(st.integers(1, 30), min_size=1, max_size=4), st.integers(1, 40), st.sampled_from(["per_task", "mixed"]), st.integers(0, 99))
def test_every_sample_of_a_task_is_drawn_once_per_its_epoch(task_sizes, batch_size, mixing, seed):
    tasks = [regression_task(f"t{i}") for i in range(len(task_sizes))]
    members = {
        task.name: MultiTaskData(torch.arange(n, dtype=torch.float32)[:, None], {task.name: torch.zeros(n)}, [task]) for task, n in zip(tasks, task_sizes)
    }
    data = TaskDatasets(members, "uniform", mixing)
    drawn = {task: [] for task in members}
    for step in range(25):
        for task, index in data.step_indices(step, batch_size, seed).items():
            drawn[task].extend(index.tolist())
    for task, n in zip(members, task_sizes):
        sequence = drawn[task]
        for start in range(0, len(sequence) - n + 1, n):
            assert sorted(sequence[start : start + n]) == list(range(n)), (task, start)


def test_epochs_differ_per_task_epoch_and_seed():
    data = TaskDatasets(_members(), "uniform")
    first, second = data.step_indices(0, 120, seed=0)["t0"], data.step_indices(1, 120, seed=0)["t0"]  # 40 per step: one epoch each
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(40)) and not torch.equal(first, second)
    assert not torch.equal(first, data.step_indices(0, 120, seed=1)["t0"])
    alike = TaskDatasets({"t0": _members()["t0"], "t1": _members()["t1"].head(40)}, "uniform").step_indices(0, 80, seed=0)
    assert torch.equal(alike["t0"], first) and not torch.equal(alike["t0"], alike["t1"])  # tasks of one size: each its own order


@pytest.mark.parametrize("mixing", ["per_task", "mixed"])
def test_a_steps_batch_is_the_streams_item_whatever_step_the_stream_starts_at(mixing):
    data = TaskDatasets(_members(), 2.0, mixing)
    stream = data.stream(0, 24, seed=3)
    from_start = [next(stream) for _ in range(12)]
    stream.close()
    for step in (0, 5, 11, 7):
        _assert_same_batch(data.batch(step, 24, seed=3), from_start[step])
        resumed = data.stream(step, 24, seed=3)
        _assert_same_batch(next(resumed), from_start[step])
        resumed.close()


def test_a_per_task_batch_has_a_group_per_task_and_its_labelled_rows():
    members = _members()
    data = TaskDatasets(members, "proportional", "per_task")
    x, targets = data.batch(2, 24, seed=1)
    counts = per_task_counts(data.shares(), 24)
    indices = data.step_indices(2, 24, seed=1)
    assert [len(group) for group in x.groups] == list(counts.values()) == [4, 12, 8]
    for g, task in enumerate(data.task_names):
        group, rows = x.rows[task]
        assert group == g and torch.equal(x.groups[g], members[task].x[indices[task]])
        mask = members[task].masks.get(task)
        if mask is None:
            assert rows is None and torch.equal(targets[task], members[task].targets[task][indices[task]])
        else:
            assert torch.equal(rows, torch.nonzero(mask[indices[task]], as_tuple=True)[0])
            assert torch.equal(targets[task], members[task].targets[task][indices[task]][mask[indices[task]]])


def test_a_mixed_batch_concatenates_the_tasks_and_routes_each_to_its_rows():
    members = _members()
    data = TaskDatasets(members, "uniform", "mixed")
    x, targets = data.batch(4, 30, seed=2)
    indices = data.step_indices(4, 30, seed=2)
    counts = mixed_counts(data.shares(), 30, 2, 4)
    assert len(x.groups) == 1 and len(x.groups[0]) == 30 and {t: len(i) for t, i in indices.items()} == counts
    offset = 0
    for task in data.task_names:
        drawn = members[task].x[indices[task]]
        assert torch.equal(x.groups[0][offset : offset + len(drawn)], drawn)
        mask = members[task].masks.get(task, torch.ones(len(members[task]), dtype=torch.bool))[indices[task]]
        assert torch.equal(x.rows[task][1], offset + torch.nonzero(mask, as_tuple=True)[0])
        assert torch.equal(targets[task], members[task].targets[task][indices[task]][mask])
        offset += len(drawn)


def test_a_task_drawn_no_sample_has_an_empty_index_and_targets_of_zero_rows():
    x = torch.randn(50, 4)
    members = {
        "big": MultiTaskData(x, {"big": torch.randn(50)}, [regression_task("big")]),
        "rare": MultiTaskData(x[:5], {"rare": torch.randint(0, 3, (5, 2, 2))}, [classification_task("rare", 3)]),
    }
    data = TaskDatasets(members, {"big": 1.0, "rare": 1e-12}, "mixed")
    batch, targets = data.batch(0, 8)
    assert batch.rows["rare"][1].shape == (0,) and batch.rows["rare"][1].dtype == torch.long and batch.labelled("rare") == 0
    assert targets["rare"].shape == (0, 2, 2) and targets["rare"].dtype == torch.int64 and targets["big"].shape == (8,)


def test_streamed_members_give_the_batches_of_the_same_members_in_memory():
    members = _members()
    streamed = {task: StreamedData(Items(data), data.tasks) for task, data in members.items()}
    for mixing in ("per_task", "mixed"):
        in_memory, from_items = TaskDatasets(members, 0.5, mixing), TaskDatasets(streamed, 0.5, mixing)
        for step in (0, 3, 9):
            _assert_same_batch(from_items.batch(step, 20, seed=1), in_memory.batch(step, 20, seed=1))
        _assert_same_batch(from_items.probe_batch(7), in_memory.probe_batch(7))
        assert [len(g) for g in in_memory.probe_batch(50)[0].groups] == [40, 50, 50]


def test_the_workers_of_streamed_members_read_ahead_and_stop_with_the_stream():
    import multiprocessing

    members = _members()
    streamed = {task: StreamedData(Items(data), data.tasks, num_workers=1) for task, data in members.items()}
    in_memory, from_items = TaskDatasets(members, mixing="mixed"), TaskDatasets(streamed, mixing="mixed")
    stream, expected = from_items.stream(2, 16, seed=5), in_memory.stream(2, 16, seed=5)
    for _ in range(6):
        _assert_same_batch(next(stream), next(expected))
    assert len(multiprocessing.active_children()) == 3
    stream.close()
    assert multiprocessing.active_children() == []


# --- evaluation, views and the rest of the data interface -------------------------------------------------------

@pytest.mark.parametrize("batch_size", [7, 1000])
def test_evaluation_scores_each_task_on_its_own_data(batch_size):
    members = _members()
    data = TaskDatasets(members, "uniform", "mixed")
    model = _model(data.tasks)
    scores = model.evaluate_batches(data.batches(batch_size))
    for task, member in members.items():
        assert scores[task] == model.restricted([task]).evaluate_batches(member.batches(batch_size))[task]
    whole = model.restricted(["t0"]).evaluate(members["t0"].x, {"t0": members["t0"].targets["t0"]}, batch_size=40)
    np.testing.assert_allclose(scores["t0"], whole["t0"], rtol=1e-6)
    batches = list(data.batches(batch_size))
    assert all(len(targets) == 1 for _, targets in batches)
    assert [next(iter(targets)) for _, targets in batches] == sorted(next(iter(targets)) for _, targets in batches)


def test_the_data_interface():
    members = _members()
    data = TaskDatasets(members, {"t0": 1, "t1": 1, "t2": 2}, "per_task", attrs={"source": "test"})
    assert data.task_names == ["t0", "t1", "t2"] and [t.name for t in data.tasks] == data.task_names
    assert len(data) == 240 and data.steps_per_epoch(64) == 3 and data.steps_per_epoch(1000) == 1
    assert data.labelled("t0") == 40 and data.labelled("t2") == members["t2"].labelled("t2") < 80
    assert data.shares() == {"t0": 0.25, "t1": 0.25, "t2": 0.5}
    attrs = data.attrs
    assert attrs.pop("datasets") == {task: member.attrs for task, member in members.items()} and members["t2"].attrs["labels_removed"] == 1 / 3
    assert attrs == {"source": "test", "sampling": {"t0": 1, "t1": 1, "t2": 2}, "mixing": "per_task",
                     "sizes": {"t0": 40, "t1": 120, "t2": 80}, "shares": {"t0": 0.25, "t1": 0.25, "t2": 0.5}}
    subset = data.subset(["t2", "t0"])
    assert subset.task_names == ["t0", "t2"] and subset.shares() == pytest.approx({"t0": 1 / 3, "t2": 2 / 3}) and len(subset) == 120
    mapped = data.map_inputs(lambda x: 2 * x)
    assert torch.equal(mapped.probe_batch(3)[0].groups[1], 2 * members["t1"].x[:3])
    assert repr(data) == (
        "TaskDatasets(t0: 40 samples in memory, share 0.250, t1: 120 samples in memory, share 0.250, "
        "t2: 80 samples in memory, share 0.500; sampling={'t0': 1, 't1': 1, 't2': 2}, mixing='per_task')"
    )


def test_a_member_of_several_tasks_gives_only_its_own():
    data = _problem()
    per_task = TaskDatasets({"t0": data, "t2": data.head(30)})
    x, targets = per_task.batch(0, 10)
    assert per_task.task_names == ["t0", "t2"] and set(targets) == set(x.rows) == {"t0", "t2"}
    assert per_task.sizes == {"t0": 240, "t2": 30}


def test_task_datasets_builds_members_from_datasets_loaders_and_tables():
    import datasets

    members = {task: data for task, data in _members().items() if task != "t2"}
    rows = members["t1"]
    table = datasets.Dataset.from_dict({"features": rows.x.tolist(), "label": rows.targets["t1"].tolist()})
    made = task_datasets({"t0": DataLoader(Items(members["t0"])), "t1": table}, _problem().tasks, inputs="features", targets={"t1": "label"}, mixing="mixed")
    in_memory = TaskDatasets(members, mixing="mixed")
    for step in (0, 4):
        _assert_same_batch(made.batch(step, 16), in_memory.batch(step, 16))
    assert repr(made).count("streamed") == 2
    with pytest.raises(ValueError, match=r"sources name tasks \['t9'\]"):
        task_datasets({"t9": Items(members["t0"])}, _problem().tasks)
    with pytest.raises(ValueError, match=r"the source of task 't1' is a table; name its input column"):
        task_datasets({"t1": table}, _problem().tasks)


def _streamed(data):
    return StreamedData(Items(data), data.tasks)


@pytest.mark.parametrize("make, message", [
    (lambda m: TaskDatasets({}), "needs the data of at least one task"),
    (lambda m: TaskDatasets({"t0": m["t1"].subset(["t1"])}), r"the data given for task 't0' do not hold it; their tasks: \['t1'\]"),
    (lambda m: TaskDatasets({"t0": m["t0"].head(0), "t1": m["t1"]}), "task 't0' has no data"),
    (lambda m: TaskDatasets(m, sampling="balanced"), r"unknown sampling 'balanced'; give 'proportional', 'uniform', a temperature"),
    (lambda m: TaskDatasets(m, sampling=True), r"unknown sampling True"),
    (lambda m: TaskDatasets(m, sampling=0.0), "a sampling temperature must be a positive finite number, got 0.0"),
    (lambda m: TaskDatasets(m, sampling=float("inf")), "a sampling temperature must be a positive finite number"),
    (lambda m: TaskDatasets(m, sampling={"t0": 1, "t1": 1}), r"tasks without a weight \['t2'\], unknown tasks \[\]"),
    (lambda m: TaskDatasets(m, sampling={"t0": 1, "t1": 1, "t2": 1, "t7": 1}), r"unknown tasks \['t7'\]"),
    (lambda m: TaskDatasets(m, sampling={"t0": 1, "t1": 0, "t2": -1}), r"positive finite numbers; got \{'t1': 0, 't2': -1\}"),
    (lambda m: TaskDatasets(m, mixing="interleaved"), r"unknown mixing 'interleaved'; give one of \['per_task', 'mixed'\]"),
    (lambda m: TaskDatasets({**m, "t1": m["t1"].with_inputs(m["t1"].x[:, :5])}, mixing="mixed"),
     r"task 't0' has inputs \(\(6,\), torch.float32\), task 't1' \(\(5,\), torch.float32\)"),
    (lambda m: TaskDatasets({**m, "t2": m["t2"].with_inputs({"ids": m["t2"].x})}, mixing="mixed"),
     r"task 't0' has inputs .*, task 't2' \{'ids': \(\(6,\), torch.float32\)\}"),
    (lambda m: TaskDatasets({**m, "t1": _streamed(m["t1"].with_inputs(m["t1"].x.double()))}, mixing="mixed"), r"task 't1' \(\(6,\), torch.float64\)"),
])
def test_bad_datasets_and_policies_are_refused_naming_what(make, message):
    with pytest.raises(ValueError, match=message):
        make(_members())


def test_bad_calls_are_refused():
    members = _members()
    data = TaskDatasets(members)
    with pytest.raises(TypeError, match=r"the data of task 't0' is a list; give a MultiTaskData or a StreamedData"):
        TaskDatasets({"t0": [1, 2]})
    with pytest.raises(TypeError, match=r"the data of tasks \['t1'\] are streamed"):
        TaskDatasets({**members, "t1": _streamed(members["t1"])}).map_inputs(lambda x: x)
    with pytest.raises(KeyError, match=r"unknown tasks \['t5'\]"):
        data.subset(["t0", "t5"])
    with pytest.raises(KeyError, match="unknown task 't5'"):
        data.labelled("t5")
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        data.batch(0, 0)
    with pytest.raises(ValueError, match="at least one sample per task, got n=0"):
        data.probe_batch(0)


# --- training -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mixing", ["per_task", "mixed"])
@pytest.mark.parametrize("method", ["ew", "mgda", "upgrad", "gradnorm", "famo"])
def test_methods_train_on_one_dataset_per_task(method, mixing):
    members = _members()
    data = TaskDatasets({task: member for task, member in members.items()}, "uniform", mixing)
    result = train(_model(data.tasks), data, 8, method=method, batch_size=48, eval_every=4, progress=False)
    history = result.history
    assert np.isfinite(history.train_loss.values).all() and np.isfinite(history.metric.values).all()
    assert history.attrs["data"]["mixing"] == mixing and history.eval_step.values.tolist() == [0, 4, 8]
    assert not np.array_equal(history.loss.values[0], history.loss.values[-1])


def test_mixed_batches_of_fewer_samples_than_tasks_train_the_tasks_drawn():
    data = TaskDatasets(_members(), "uniform", "mixed")
    counts = np.array([list(mixed_counts(data.shares(), 2, 0, step).values()) for step in range(10)])
    assert (counts == 0).any(axis=1).all()  # every step leaves a task out
    result = train(_model(data.tasks), data, 10, method="famo", batch_size=2, progress=False)
    train_loss = result.history.train_loss.values
    labelled = np.array([[len(t) > 0 for t in data.batch(step, 2)[1].values()] for step in range(10)])
    assert np.array_equal(np.isfinite(train_loss), labelled)


def test_a_run_on_streamed_members_equals_the_run_in_memory():
    members = _members()
    options = {"steps": 12, "batch_size": 24, "seed": 1, "eval_every": 6, "eval_batch_size": 50, "method": "mgda", "progress": False}
    in_memory = train(_model(_problem().tasks), TaskDatasets(members, 2.0, "mixed"), **options).history
    streamed = {task: StreamedData(Items(member), member.tasks) for task, member in members.items()}
    from_items = train(_model(_problem().tasks), TaskDatasets(streamed, 2.0, "mixed"), **options).history
    for variable in ("train_loss", "weights", "loss", "metric"):
        np.testing.assert_array_equal(from_items[variable].values, in_memory[variable].values, err_msg=variable)


# --- missing labels in streamed data ----------------------------------------------------------------------------

def _masked():
    return _problem().without_labels(0.4, seed=2, tasks=["t0", "t2"])


def test_none_targets_stream_as_the_masked_batches_in_memory():
    data = _masked()
    streamed = StreamedData(Items(data), data.tasks)
    x, targets = streamed.batch(1, 32, seed=4)
    expected_x, expected_targets = data.batch(1, 32, seed=4)
    assert isinstance(x, TaskInputs) and torch.equal(x.groups[0], expected_x.groups[0])
    for task in ("t0", "t2"):
        assert torch.equal(x.rows[task][1], expected_x.rows[task][1]) and torch.equal(targets[task], expected_targets[task])
    assert x.rows["t1"] == (0, None) and torch.equal(targets["t1"], expected_targets["t1"])
    _assert_same_batch(streamed.probe_batch(32), data.probe_batch(32))
    assert [streamed.labelled(t) for t in data.task_names] == [data.labelled(t) for t in data.task_names]
    assert streamed.subset(["t2"]).labelled("t2") == data.labelled("t2")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_set_with_none_targets_trains_and_evaluates_as_the_masked_set_in_memory(workers):
    data = _masked()
    options = {"steps": 20, "batch_size": 16, "seed": 1, "eval_every": 10, "eval_batch_size": 48, "method": "ew", "progress": False}
    in_memory = train(_model(data.tasks), data, **options).history
    streamed = StreamedData(DataLoader(Items(data), num_workers=workers), data.tasks)
    from_items = train(_model(data.tasks), streamed, **options).history
    for variable in ("train_loss", "weights", "loss", "metric"):
        np.testing.assert_array_equal(from_items[variable].values, in_memory[variable].values, err_msg=variable)


def test_the_structure_of_a_task_unlabelled_on_the_first_items_comes_from_its_first_label():
    data = _problem(40)
    mask = torch.ones(40, dtype=torch.bool)
    mask[:5] = False
    masked = MultiTaskData(data.x, data.targets, data.tasks, masks={"t2": mask})
    streamed = StreamedData(Items(masked), data.tasks)
    assert streamed.structure[1]["t2"] == ((), torch.float32)
    x, targets = next(streamed.batches(4))
    assert x.rows["t2"][1].tolist() == [] and targets["t2"].shape == (0,) and targets["t2"].dtype == torch.float32
    with pytest.raises(ValueError, match=r"sample 7: task 't2' has target \(\(2,\), torch.float32\), the first labelled sample's is \(\(\), torch.float32\)"):
        list(StreamedData(Items(masked, {7: (data.x[7], {"t0": None, "t1": 1.0, "t2": torch.zeros(2)})}), data.tasks).batches(10))


@pytest.mark.parametrize("broken, message", [
    ((torch.zeros(5), {"t0": None, "t1": 2.0, "t2": 1.0}), r"sample 17: its input is \(\(5,\), torch.float32\)"),
    ((torch.zeros(6), {"t0": None, "t1": torch.zeros(2), "t2": 1.0}), r"sample 17: task 't1' has target \(\(2,\), torch.float32\)"),
    ((torch.zeros(6), {"t0": None, "t1": 2.0}), r"sample 17 has no target for tasks \['t2'\]"),
])
def test_an_item_with_none_targets_of_a_wrong_structure_is_refused_by_its_index(broken, message):
    data = _problem(60)
    with pytest.raises(ValueError, match=message):
        list(StreamedData(Items(data, {17: broken}), data.tasks).batches(50))


def test_a_task_labelled_nowhere_and_bad_index_batches_are_refused():
    data = _problem(20)
    unlabelled = {i: (data.x[i], {"t0": 1.0, "t1": None, "t2": 1.0}) for i in range(20)}
    with pytest.raises(ValueError, match=r"tasks \['t1'\] are labelled on no sample: their target is None in every item"):
        StreamedData(Items(data, unlabelled), data.tasks)
    streamed = StreamedData(Items(data), data.tasks)
    with pytest.raises(ValueError, match="index batch 1 is empty"):
        list(streamed.stream_indices([[0, 1], []]))
    with pytest.raises(ValueError, match=r"index batch 0 names samples \[20\] outside the dataset's 0 .. 19"):
        list(streamed.stream_indices([[3, 20]]))
    x, targets = next(streamed.stream_indices([[4, 2]]))
    assert torch.equal(x, data.x[[4, 2]]) and torch.equal(targets["t0"], data.targets["t0"][[4, 2]])
