# Every target works on a fresh machine with Python 3.11 and pip: the virtual environment is made when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build that lies on the developers' disk; set TORCH_SPEC to another torch (a CUDA build) if you like.
TORCH_SPEC ?= torch==2.13.0
KERNEL := workbench
# Jupyter refuses to start as root (a container, a cloud notebook VM) unless told it may.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: install test reports lab benchmark chromium clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,lab,digits,text,solvers]"
	# LibMTL, the reference the architectures are tested against, without its torchvision (which could pull another torch)
	$(PY) -m pip install --quiet --no-deps "libmtl==1.1.5"
	$(VENV)/bin/workbench kernel
	touch $@

# In a git checkout, notebooks pass through nbstripout when staged (.gitattributes), so that what JupyterLab
# saves (outputs, execution counts, widget state) never reaches a commit; the cell ids are kept as committed.
NBSTRIPOUT := "$(abspath $(PY))" -m nbstripout --keep-id --extra-keys cell.metadata.jp-MarkdownHeadingCollapsed

install: $(VENV)/.installed
	@if [ "$$(git rev-parse --show-toplevel 2>/dev/null)" = "$(CURDIR)" ]; then \
	  git config filter.nbstripout.clean '$(NBSTRIPOUT)' && git config filter.nbstripout.smudge cat; fi

# The report test opens HTML in headless Chromium; Debian's package is installed when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# One pytest worker per core (pytest-xdist), each test file on one worker so that its module fixtures are built once.
TEST_WORKERS ?= auto
test: install chromium
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

reports: install
	$(VENV)/bin/workbench reports

lab: install
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(LAB_FLAGS)

benchmark: install
	$(PY) benchmarks/bench_gradients.py
	$(PY) benchmarks/bench_methods.py
	$(PY) benchmarks/bench_affinity.py
	$(PY) benchmarks/bench_saliency.py
	$(PY) benchmarks/bench_sweeps.py
	$(PY) benchmarks/bench_merge.py
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_monitor.py
	$(PY) benchmarks/bench_peft.py
	$(PY) benchmarks/bench_explorers.py
	$(PY) benchmarks/bench_architectures.py

clean:
	rm -rf $(VENV) reports/*.ipynb reports/*.html reports/*.nc reports/*.log reports/*.run.json reports/*.attempt.json reports/*.lock reports/.*.staging-* reports/*/
