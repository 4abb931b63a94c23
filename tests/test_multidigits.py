"""MultiDigits: shapes, determinism, split hygiene and labels that match the pictures; training labels removed; the canvases
read from image folders on disk."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
from sklearn.datasets import load_digits

import workbench.data.multidigits as multidigits_module
from workbench.data import MULTIDIGITS_TASKS, make_multidigits
from workbench.data.multidigits import multidigits_image_folder

SIZES = dict(n_train=300, n_validation=80, n_test=80)


@pytest.fixture(scope="module")
def digits():
    source = load_digits()
    return source.images / 16.0, source.target


@pytest.fixture(scope="module")
def splits():
    return make_multidigits(tasks=MULTIDIGITS_TASKS, seed=3, **SIZES)


def test_shapes_and_target_types(splits):
    train = splits.train
    assert train.x.shape == (300, 1, 12, 16) and train.x.dtype == torch.float32
    assert 0 <= train.x.min() and train.x.max() <= 1
    assert train.targets["left"].dtype == torch.int64 and set(train.targets["left"].tolist()) <= set(range(10))
    assert set(train.targets["parity"].tolist()) <= {0.0, 1.0} and set(train.targets["greater"].tolist()) <= {0.0, 1.0}
    assert [t.out_features for t in splits.tasks] == [10, 10, 1, 1, 1]
    assert abs(float(train.targets["sum"].mean())) < 1e-5 and float(train.targets["sum"].std()) == pytest.approx(1, abs=0.01)
    assert (len(splits.validation), len(splits.test)) == (80, 80)
    assert splits.attrs["source"].startswith("scikit-learn") and splits.attrs["seed"] == 3


def test_same_seed_same_data(splits):
    again = make_multidigits(tasks=MULTIDIGITS_TASKS, seed=3, **SIZES)
    other = make_multidigits(tasks=MULTIDIGITS_TASKS, seed=4, **SIZES)
    assert torch.equal(splits.train.x, again.train.x) and torch.equal(splits.test.targets["sum"], again.test.targets["sum"])
    assert not torch.equal(splits.train.x, other.train.x)


def test_no_source_image_of_test_or_validation_is_in_training(splits, digits):
    images, _ = digits

    def used(data):
        return {images[i].tobytes() for key in ("left_source", "right_source") for i in data.meta[key]}

    train, validation, test = used(splits.train), used(splits.validation), used(splits.test)
    assert not train & test and not train & validation and not validation & test
    assert splits.attrs["source_images"] == {"train": 1078, "validation": 360, "test": 359}


def test_each_canvas_holds_its_recorded_digits_and_labels(splits, digits):
    """The recorded source image lies on the canvas (composition takes the brighter pixel) and the labels follow it."""
    images, labels = digits
    data = splits.test
    for i in range(len(data)):
        canvas = data.x[i, 0].numpy()
        for key, columns in (("left_source", range(0, 3)), ("right_source", range(6, 9))):
            image = images[data.meta[key][i]]
            placed = [
                np.all(canvas[r : r + 8, c : c + 8] >= image - 1e-6) for r in range(0, 5) for c in columns
            ]
            assert any(placed), f"sample {i}: {key} not on the canvas"
        left, right = labels[data.meta["left_source"][i]], labels[data.meta["right_source"][i]]
        assert data.targets["left"][i] == left and data.targets["right"][i] == right
        assert data.targets["parity"][i] == (left + right) % 2 and data.targets["greater"][i] == (left > right)
    mean, std = splits.attrs["target_scaling"]["sum"]
    raw_sum = labels[data.meta["left_source"]] + labels[data.meta["right_source"]]
    np.testing.assert_allclose(data.targets["sum"].numpy() * std + mean, raw_sum, atol=1e-4)


def test_reference_is_the_mutual_information_of_the_labels(splits):
    reference = splits.reference
    assert reference.dims == ("task", "other_task")
    np.testing.assert_allclose(np.diag(reference), 1.0)
    np.testing.assert_allclose(reference, reference.T)
    assert reference.sel(task="left", other_task="right") < 0.05  # independent digits
    assert reference.sel(task="parity", other_task="sum") > 0.3  # the sum decides the parity


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(tasks=["left", "middle"]), r"unknown MultiDigits tasks \['middle'\]; available: \['left', 'right', 'parity', 'greater', 'sum'\]"),
        (dict(tasks=["left", "left"]), "distinct"),
        (dict(height=7), "cannot hold 8 × 8 digits"),
        (dict(n_test=0), "every split needs samples"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_multidigits(**options)


def test_labels_removed_thins_each_tasks_training_labels_alone():
    thinned = make_multidigits(tasks=["left", "parity", "sum"], labels_removed=0.4, seed=3, **SIZES)
    full = make_multidigits(tasks=["left", "parity", "sum"], seed=3, **SIZES)
    train = thinned.train
    assert {task: train.labelled(task) for task in train.task_names} == dict.fromkeys(train.task_names, 180)  # 300 less 40 %
    assert not torch.equal(train.masks["left"], train.masks["parity"])  # drawn per task
    assert not thinned.validation.masks and not thinned.test.masks
    assert torch.equal(train.x, full.train.x) and all(torch.equal(train.targets[t], full.train.targets[t]) for t in train.task_names)
    assert [split.attrs["labels_removed"] for split in (train, thinned.validation, thinned.test)] == [0.4] * 3 and full.attrs["labels_removed"] == 0
    again = make_multidigits(tasks=["left", "parity", "sum"], labels_removed=0.4, seed=3, **SIZES).train
    other = make_multidigits(tasks=["left", "parity", "sum"], labels_removed=0.4, seed=4, **SIZES).train
    assert all(torch.equal(again.masks[t], train.masks[t]) for t in train.task_names) and not torch.equal(other.masks["left"], train.masks["left"])
    with pytest.raises(ValueError, match=r"labels_removed is the share of training labels to remove, in \[0, 1\); got 1"):
        make_multidigits(labels_removed=1)


FOLDER_SIZES = dict(n_train=40, n_validation=10, n_test=10)


def _quantised(data):
    """The samples as 8-bit image files hold them."""
    return data.with_inputs((data.x * 255).round() / 255)


def test_an_image_folder_holds_the_canvases_and_reads_them_back(tmp_path):
    folder = tmp_path / "digits"
    from_files = multidigits_image_folder(folder, tasks=["left", "sum"], seed=5, **FOLDER_SIZES)
    memory = make_multidigits(tasks=["left", "sum"], seed=5, **FOLDER_SIZES)
    assert sorted(p.name for p in folder.iterdir()) == ["test", "train", "validation"] and len(from_files.train) == 40
    x, targets = from_files.train.batch(2, 16, seed=1)
    expected_x, expected_targets = _quantised(memory.train).batch(2, 16, seed=1)
    torch.testing.assert_close(x, expected_x, atol=1e-7, rtol=0)
    assert all(torch.equal(targets[t], expected_targets[t]) for t in memory.task_names)
    for split in ("validation", "test"):  # in memory, read from their folders
        part, expected = getattr(from_files, split), _quantised(getattr(memory, split))
        torch.testing.assert_close(part.x, expected.x, atol=1e-7, rtol=0)
        assert all(torch.equal(part.targets[t], expected.targets[t]) for t in memory.task_names)
        np.testing.assert_array_equal(part.meta["left_source"], expected.meta["left_source"])
    assert from_files.attrs["image_folder"] == str(folder) and from_files.attrs["source"] == memory.attrs["source"]
    np.testing.assert_array_equal(from_files.reference, memory.reference)


def test_an_image_folder_is_written_once_for_any_tasks_and_refused_for_other_samples(tmp_path, monkeypatch):
    folder = tmp_path / "digits"
    multidigits_image_folder(folder, tasks=["left"], seed=5, **FOLDER_SIZES)

    def no_writing(*args):
        raise AssertionError("the folder was written again")

    monkeypatch.setattr(multidigits_module, "write_image_folder", no_writing)
    again = multidigits_image_folder(folder, tasks=["parity", "sum"], seed=5, **FOLDER_SIZES)
    expected = make_multidigits(tasks=["parity", "sum"], seed=5, **FOLDER_SIZES)
    assert all(torch.equal(again.test.targets[t], expected.test.targets[t]) for t in ("parity", "sum"))
    with pytest.raises(ValueError, match=r"holds other labels of task 'left' than these MultiDigits samples \(40 images, 40 samples\)"):
        multidigits_image_folder(folder, tasks=["left"], seed=6, **FOLDER_SIZES)


def test_an_image_folder_goes_to_the_data_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    splits = multidigits_image_folder(tasks=["right"], seed=5, **FOLDER_SIZES)
    assert splits.attrs["image_folder"] == str(tmp_path / "multidigits" / "seed5-40-10-10-12x16-shift2")
    assert (tmp_path / "multidigits" / "seed5-40-10-10-12x16-shift2" / "train" / "labels.csv").is_file()


def test_two_processes_writing_the_same_image_folder_leave_one_whole_folder(tmp_path, monkeypatch):
    """The other writer renames its folder into place first: this one's rename finds it there, and reads it."""
    from workbench.data import image_folder as image_folder_module

    folder = tmp_path / "digits"
    other = tmp_path / "other"
    multidigits_image_folder(other, tasks=["left"], seed=5, **FOLDER_SIZES)  # what the other process wrote
    rename = image_folder_module.os.rename

    def the_other_writer_was_first(source, target):
        shutil.copytree(other / Path(target).name, target)
        return rename(source, target)

    monkeypatch.setattr(image_folder_module.os, "rename", the_other_writer_was_first)
    splits = multidigits_image_folder(folder, tasks=["left"], seed=5, **FOLDER_SIZES)
    assert len(splits.train) == 40 and sorted(p.name for p in folder.iterdir()) == ["test", "train", "validation"]
    assert not list(folder.glob(".*partial*")), "the losing writer's partial folder is removed"
