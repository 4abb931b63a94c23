import os
import subprocess
import sys

import pytest

from workbench.files import atomic_write, remove_leftovers, write_behind


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_write_gives_the_mode_the_umask_allows(tmp_path, umask, mode):
    saved = os.umask(umask)
    try:
        with atomic_write(tmp_path / "report.html") as temporary:
            temporary.write_text("<p>hi</p>")
    finally:
        os.umask(saved)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == mode


def test_a_killed_write_leaves_a_leftover_that_the_next_clean_up_removes(tmp_path):
    script = (
        "import os, sys\n"
        "from workbench.files import atomic_write\n"
        "with atomic_write(sys.argv[1], suffix='.ipynb') as temporary:\n"
        "    temporary.write_text('half a notebook')\n"
        "    os._exit(9)\n"  # killed mid-write: no clean-up runs
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "01_a.ipynb")])
    assert done.returncode == 9
    leftover = [p.name for p in tmp_path.iterdir()]
    assert len(leftover) == 1 and leftover[0].startswith(".01_a.ipynb.partial-") and leftover[0].endswith(".ipynb")
    (tmp_path / "02_b.html").write_text("a finished report")
    assert remove_leftovers(tmp_path, ["02_b.html"]) == []  # another target's leftover is left alone
    assert [p.name for p in remove_leftovers(tmp_path, ["01_a.ipynb"])] == leftover
    assert [p.name for p in tmp_path.iterdir()] == ["02_b.html"]


def test_remove_leftovers_without_names_cleans_a_whole_tree(tmp_path):
    (tmp_path / "run" / "results").mkdir(parents=True)
    stale = [tmp_path / ".index.html.partial-0123abcd.tmp", tmp_path / "run" / "results" / ".m.nc.partial-0123abcd.tmp"]
    kept = [tmp_path / "run" / "results" / "m.nc", tmp_path / ".hidden-but-not-ours"]
    for path in stale + kept:
        path.write_text("x")
    assert remove_leftovers(tmp_path) == stale[:1]
    assert sorted(remove_leftovers(tmp_path, recursive=True)) == stale[1:]
    assert all(p.exists() for p in kept)


def test_a_leftover_of_a_live_writer_is_kept(tmp_path):
    with atomic_write(tmp_path / "m.safetensors", suffix=".safetensors") as temporary:
        temporary.write_text("being written")
        assert remove_leftovers(tmp_path) == [] and temporary.exists()
        with atomic_write(tmp_path / "m.safetensors") as other:  # a second write of the same target leaves the first alone
            other.write_text("the other one")
        assert temporary.exists()
    assert (tmp_path / "m.safetensors").read_text() == "being written"


def test_a_killed_merge_leaves_a_leftover_that_the_next_merge_into_the_folder_removes(tmp_path):
    script = (
        "import os, sys, torch\n"
        "from workbench.weights.state_dicts import write_state_dict\n"
        "import glob, time\n"
        "def killed():\n"
        "    yield torch.ones(10000)\n"
        "    for _ in range(500):  # killed once the first tensor reached the file (a second thread writes it)\n"
        "        if any(os.path.getsize(p) > 0 for p in glob.glob(os.path.join(os.path.dirname(sys.argv[1]), '.merged*'))):\n"
        "            break\n"
        "        time.sleep(0.01)\n"
        "    os._exit(9)\n"
        "class Tensors(dict):\n"
        "    def values(self): return killed()\n"
        "write_state_dict(sys.argv[1], Tensors(a=torch.ones(10000), b=torch.ones(10)))\n"
    )
    out = tmp_path / "merged.safetensors"
    assert subprocess.run([sys.executable, "-c", script, str(out)]).returncode == 9
    leftover = [p for p in tmp_path.iterdir()]
    assert len(leftover) == 1 and leftover[0].name.startswith(".merged.safetensors.partial-") and leftover[0].stat().st_size > 0
    import torch

    from workbench.merge import MergeOptions, merge_task_vectors

    models = {"t": {"w": torch.ones(3)}}
    merge_task_vectors({"w": torch.zeros(3)}, models, MergeOptions(), out=out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["merged.safetensors"]


def test_an_atomic_write_reaches_the_disk_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    target = tmp_path / "report.html"
    with atomic_write(target) as temporary:
        temporary.write_text("complete")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert ".report.html.partial-" in events[0][1] and events[1][1] == str(target) and events[2][1] == str(tmp_path)


def test_a_write_behind_writes_every_piece_in_order(tmp_path):
    path = tmp_path / "out.bin"
    with open(path, "wb") as file, write_behind(file) as write:
        for k in range(50):
            write(bytes([k]) * 1000)
    assert path.read_bytes() == b"".join(bytes([k]) * 1000 for k in range(50))


def test_a_failed_write_behind_is_raised_on_the_callers_thread():
    class Full:
        def write(self, piece):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        with write_behind(Full()) as write:
            for _ in range(10):
                write(b"x")
