# The two commands of the README: `make demo` (a small sweep end to end) and `make test` (every test).
# Both create .venv themselves (uv from PyPI installs the Airflow set in seconds, pip takes minutes).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo ui test lint bench clean image image-test

$(STAMP): requirements.txt images/finetune/pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.8
	$(VENV)/bin/uv pip install --quiet --python $(PY) -r requirements.txt
	# plugins/ on the venv's path (as Airflow puts it on sys.path), so that
	# `python -m finetune_sweep render|recommend|findings` works from the venv.
	echo "$(CURDIR)/plugins" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/finetune_sweep_plugins.pth"
	touch $(STAMP)

venv: $(STAMP)

# Every test, on every core (pytest-xdist); PYTEST_ARGS="-n 0" runs them in one process.
PYTEST_ARGS ?= -n auto
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff: lint (pyflakes, pycodestyle, isort, bugbear, pyupgrade) and the formatter's check.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(STAMP)
	$(PY) scripts/demo.py

# A local Airflow (api-server, scheduler, dag-processor) on the demo's databases, until Ctrl-C.
ui: $(STAMP)
	$(PY) scripts/ui.py

bench: $(STAMP)
	$(PY) benchmarks/bench_baselines.py
	$(PY) benchmarks/bench_significance.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_scale.py
	$(PY) benchmarks/bench_bars.py
	$(PY) benchmarks/bench_findings.py
	$(PY) benchmarks/bench_dag.py
	$(PY) benchmarks/bench_db_faults.py
	$(PY) benchmarks/bench_ui.py
	$(PY) benchmarks/bench_gate.py
	$(PY) benchmarks/bench_plugins.py
	$(PY) benchmarks/bench_calibration.py

# The pod image (images/finetune/Dockerfile) with podman (docker where that is the engine), tagged
# as the DAG pins it (FINETUNE_IMAGE). FINETUNE_BASE_IMAGE=local builds the base with debootstrap
# (auto: when the registry is unreachable); its rootfs tarball is cached in .image/.
# Only the settings module of plugins/ is needed: no venv.
image:
	$(PYTHON) scripts/image_build.py

# The image built, then the rendered pod spec played by podman kube play against the machine's
# PostgreSQL: migrate, one factor's rows and the gate, a probe of the container's security, an OOM
# kill at 64Mi classified by the project's own code. Each step's time is printed; SKIPPED (exit 0)
# when no engine can run here.
image-test: $(STAMP)
	$(PY) scripts/image_test.py

clean:
	rm -rf $(VENV) .demo .image
