"""The Makefile's JupyterLab target and what git leaves out of the repository."""

import os
import shutil
import subprocess

import pytest


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_lets_root_start_jupyter():
    done = subprocess.run(["make", "-n", "lab"], capture_output=True, text=True, check=True)
    command = next(line for line in done.stdout.splitlines() if "jupyter lab" in line)
    assert ("--allow-root" in command) == (os.getuid() == 0), command


def test_jupyter_checkpoints_are_not_committed():
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True)
    if inside.stdout.strip() != "true":
        pytest.skip("not a git checkout")
    for path in ("notebooks/.ipynb_checkpoints/01_gradient_conflict-checkpoint.ipynb", "tests/.ipynb_checkpoints/x-checkpoint.py"):
        assert subprocess.run(["git", "check-ignore", "-q", path]).returncode == 0, path
