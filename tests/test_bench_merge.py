"""The merge benchmark runs end to end on tiny sets: every set and reader gives a row, and a model folder merges as its file does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from workbench.weights import open_weights

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_merge.py"


def _bench(*args: str) -> None:
    result = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=BENCH.parents[1])
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_the_merge_benchmark_times_files_folders_and_the_copy_and_the_folder_merges_as_the_file(tmp_path):
    _bench("--sets", "large", "large_folder", "--large-dir", str(tmp_path), "--large-shape", "32", "64",
           "--methods", "task_arithmetic", "slerp", "--keep-page-cache", "--json", str(tmp_path / "rows.json"))
    rows = json.loads((tmp_path / "rows.json").read_text())
    seen = {(r["set"], r["method"], r["who"]) for r in rows}
    for method in ("task_arithmetic", "slerp"):
        assert {("large", method, who) for who in ("workbench", "mergekit", "copy")} <= seen
        assert {("large_folder", method, who) for who in ("workbench", "copy")} <= seen and ("large_folder", method, "mergekit") not in seen
    for row in rows:
        assert row["seconds"] > 0 and row["peak"] > 0
        assert (row["expected_peak"] is not None and row["expected_peak"] > 0) == (row["who"] == "workbench")
    # the last merges of both sets are SLERP of the same tensors: the folder's shards hold what the file holds
    file_merge = load_file(str(tmp_path / "merged.safetensors"))
    folder_merge = open_weights(tmp_path / "merged")
    assert sorted(folder_merge.keys()) == sorted(file_merge) and (tmp_path / "merged" / "config.json").is_file()
    for key, tensor in file_merge.items():
        assert folder_merge[key].equal(tensor)


@pytest.mark.slow
def test_the_merge_benchmark_compares_the_minilm_set_with_mergekit(tmp_path):
    _bench("--sets", "minilm", "--methods", "slerp", "--rounds", "1", "--json", str(tmp_path / "rows.json"))
    rows = {r["who"]: r for r in json.loads((tmp_path / "rows.json").read_text())}
    assert set(rows) == {"workbench", "mergekit", "copy"} and rows["workbench"]["differing"] == 0
    assert rows["mergekit"]["mergekit_over_this"] == 1.0 and rows["workbench"]["mergekit_over_this"] > 0
