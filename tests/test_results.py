import numpy as np
import pytest
import xarray as xr

from workbench import results


def _dataset(value):
    return xr.Dataset(
        {"cosine": (("task", "other_task"), np.full((2, 2), value)), "seen": ("task", [True, False])},
        coords={"task": ["a", "b"], "other_task": ["a", "b"]},
        attrs={"probe": "gradient_conflict", "threshold": -0.1, "options": {"by": "tensor"}, "flag": True, "groups": [[0, 1]]},
    )


def test_round_trip_keeps_values_and_attrs(tmp_path):
    path = results.save(_dataset(0.5), tmp_path / "sub" / "r.nc")
    loaded = results.load(path)
    xr.testing.assert_identical(loaded.drop_attrs(), _dataset(0.5).drop_attrs())
    assert loaded.attrs["options"] == {"by": "tensor"}
    assert loaded.attrs["flag"] is True and loaded.attrs["groups"] == [[0, 1]]
    assert loaded.attrs["threshold"] == -0.1 and "workbench_version" in loaded.attrs


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "r.nc"
    results.save(_dataset(1.0), path)
    before = path.read_bytes()

    def write_half_then_fail(self, target, *args, **kwargs):
        with open(target, "wb") as stream:
            stream.write(b"CDF\x01 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        results.save(_dataset(2.0), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.nc"]
    monkeypatch.undo()
    assert float(results.load(path).cosine[0, 0]) == 1.0


def test_bad_paths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="NetCDF"):
        results.save(_dataset(1.0), tmp_path / "r.pkl")
    with pytest.raises(FileNotFoundError, match="no result file"):
        results.load(tmp_path / "missing.nc")


def test_load_refuses_what_is_not_a_netcdf_result(tmp_path):
    import pickle

    pickled = tmp_path / "r.pkl"
    pickled.write_bytes(pickle.dumps({"cosine": 1.0}))
    with pytest.raises(ValueError, match="not a NetCDF result"):
        results.load(pickled)
    disguised = tmp_path / "r.nc"
    disguised.write_bytes(pickle.dumps({"cosine": 1.0}))
    with pytest.raises(ValueError, match="not a readable NetCDF result"):
        results.load(disguised)
