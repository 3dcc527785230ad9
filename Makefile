# trl-safediffusion: `make demo` runs the main job on the embedded toy world, `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,tensorboard,wandb]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/toy_demo.py

test: $(STAMP)
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(PY) -m pytest tests -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples benchmarks research

clean:
	rm -rf $(VENV) outputs build *.egg-info src/*.egg-info
