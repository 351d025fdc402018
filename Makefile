# minitome's commands. `make test` creates .venv and installs what it needs on first use.
# TORCH names the torch requirement installed first: torch==2.13.0 is a CPU build on CPU-only
# machines that carry it locally; on a CUDA machine set TORCH to the build you want.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test venv

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -r requirements-test.txt
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest
