# Two commands set up a fresh machine: `make demo` (main job on the bundled corpus) and
# `make test` (the whole suite, real-model tests included). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EP := $(VENV)/bin/embedpipe
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=
# make fuzz FUZZ_SECONDS=3600: fresh rounds of mutated GGUF/index/corpus files until the budget is spent
FUZZ_SECONDS ?= 600
FUZZ_ARGS ?= --gguf 300 --index 300 --ingest 30
# make bench ST_PYTHON=/path/to/torch-venv/bin/python adds sentence-transformers as a peer
ST_PYTHON ?=
# the default release is self-contained: dependency wheels ride along in dist/wheelhouse
RELEASE_ARGS ?= --wheelhouse

.PHONY: setup lint test test-fast fuzz demo bench release clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,ray,plot,serve]"
	touch $(STAMP)

setup: $(STAMP)
	$(EP) model pull

# ruff lint and format check first: a style slip fails fast, before the long suite
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not model and not slow and not emulation and not ray and not release" $(PYTEST_ARGS)

fuzz: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) -m tests.fuzz.campaign $(FUZZ_ARGS) --json fuzz-results.json

demo: setup
	$(EP) ingest datasets/hugeicons.parquet -o $(DEMO_OUT)/emb --task document --text-column text --keep name
	$(EP) build-index $(DEMO_OUT)/emb --type brute --quant int8 -o $(DEMO_OUT)/brute-int8.idx
	$(EP) build-index $(DEMO_OUT)/emb --type annoy -o $(DEMO_OUT)/annoy.idx
	$(EP) build-index $(DEMO_OUT)/emb --type hnsw -o $(DEMO_OUT)/hnsw.idx
	$(EP) eval tradeoffs $(DEMO_OUT)/emb
	$(EP) search $(DEMO_OUT)/brute-int8.idx "save parking spot with location and notes" -k 5

bench: setup
	$(PY) -m pip install --quiet -e ".[bench]"
	$(EP) bench kernels
	$(EP) bench runtime $(if $(ST_PYTHON),--st-python $(ST_PYTHON))
	$(EP) bench ingest
	$(EP) bench index

release: $(STAMP)
	$(PY) -m pip install --quiet -e ".[release]"
	$(PY) scripts/make_release.py $(RELEASE_ARGS)

clean:
	rm -rf build dist *.egg-info $(DEMO_OUT)
