import os
import subprocess
import sys

import pytest

from workbench.files import atomic_write, remove_leftovers


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
