# Two commands: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# MediaPipe Tasks (the real client of our metadata) needs opencv-contrib-python,
# which clashes with opencv-python: it gets its own venv, used by tests/test_metadata.py.
MP_VENV ?= .venv-mediapipe
MP_STAMP := $(MP_VENV)/.installed

.PHONY: install demo test test-fast lint format reference notebooks benchmark benchmark-runner clean mediapipe-venv

install: $(STAMP)

$(STAMP): pyproject.toml setup.py pipeline/runtime/_bytetrack.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

mediapipe-venv: $(MP_STAMP)

$(MP_STAMP):
	$(PYTHON) -m venv $(MP_VENV)
	$(MP_VENV)/bin/pip install --quiet mediapipe==1.2.2
	touch $(MP_STAMP)

demo: install
	$(BIN)/edgepipe demo

test: install mediapipe-venv
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

reference: install  # regenerate docs/config.md's key table (a test checks it)
	$(BIN)/python -c "from pipeline.core.config import write_reference; write_reference('docs/config.md')"

notebooks: install  # execute notebooks/ in place at their default settings, outputs stored (a test checks it)
	cd notebooks && for nb in *.ipynb; do ../$(BIN)/jupyter-execute --inplace --timeout=1800 $$nb || exit 1; done

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

benchmark: install
	$(BIN)/python benchmarks/fashion_mnist.py

benchmark-runner: install
	$(BIN)/python benchmarks/runner.py --make-model 224

clean:
	rm -rf runs exports/*/ .pytest_cache
