# minitome's commands; each creates .venv and installs what it needs on first use.
#   make weights   download the official SD 1.5 weights + tokenizer into models/ (resumable, checked)
#   make sample    make an image (downloads the weights first if missing); PROMPT="..." ARGS="--tome-ratio 0.5"
#   make bench     what merging buys on this machine (random SD 1.5 weights, no download); BENCH_ARGS="..."
#   make bench-compare   the same, side by side with diffusers + tomesd (installs them)
#   make bench BENCH_ARGS="--image --calls 2"   where one image's time goes, prompt to PNG (fetches CLIP's vocabulary)
#   make tutorial  what tutorial.md's snippets need (the runtime and the CLIP vocabulary), and its pictures redrawn
#   make test      the whole test suite (adds pytest, hypothesis and the pinned references)
# TORCH names the torch requirement installed first, TORCH_INDEX where it comes from. On a machine
# without an NVIDIA GPU (no nvidia-smi) the default index is PyTorch's CPU wheel index, so that a plain
# install does not pull the multi-GB CUDA build; with a GPU, pip's configured index. When TORCH_INDEX
# cannot be reached (machines that see only their configured registries), pip's configured index is
# used instead. Override either: make test TORCH_INDEX=https://download.pytorch.org/whl/cu128
# The venv also gets minitome itself, editable (pyproject.toml), so `.venv/bin/minitome` is the command line.
PYTHON  ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
BIN     := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
TESTING := $(VENV)/.test-installed
WEIGHTS := models/v1-5-pruned-emaonly.safetensors
PROMPT  ?= a photograph of an astronaut riding a horse
BENCH_ARGS ?=
ARGS    ?=

# The real CLIP vocabulary (for the tests and the tutorial) and open_clip's SimpleTokenizer (the tests'
# reference for CLIP's byte order and BPE), read out of the open-clip-torch wheel: downloaded, never installed.
VOCAB     := .cache/bpe_simple_vocab_16e6.txt.gz
OPEN_CLIP := .cache/open_clip/tokenizer.py
OPEN_CLIP_WHEEL := open-clip-torch==3.3.0
# test references whose declared dependencies are too old for this torch (see requirements-test.txt)
NO_DEPS_TEST := ca-tome==0.1.3

.PHONY: test tutorial weights sample bench bench-compare

$(RUNTIME): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_INDEX)" ] && $(BIN)/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" \
			"$(TORCH_INDEX)/" >/dev/null 2>&1; then \
		echo "installing $(TORCH) from $(TORCH_INDEX)"; \
		$(BIN)/python -m pip install -q "$(TORCH)" --index-url "$(TORCH_INDEX)"; \
	else \
		echo "installing $(TORCH) from pip's configured index$(if $(TORCH_INDEX), ($(TORCH_INDEX) cannot be reached))"; \
		$(BIN)/python -m pip install -q "$(TORCH)"; \
	fi
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q "setuptools>=64" wheel
	$(BIN)/python -m pip install -q --no-build-isolation -e .
	touch $@

$(TESTING): $(RUNTIME) requirements-test.txt
	$(BIN)/python -m pip install -q -r requirements-test.txt
	$(BIN)/python -m pip install -q --no-deps $(NO_DEPS_TEST)
	touch $@

$(OPEN_CLIP): | $(RUNTIME)
	rm -rf .cache/wheel .cache/open_clip && mkdir -p .cache/wheel
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: -d .cache/wheel "$(OPEN_CLIP_WHEEL)"
	$(BIN)/python -c "import zipfile, glob; z = zipfile.ZipFile(glob.glob('.cache/wheel/*.whl')[0]); \
		z.extract('open_clip/bpe_simple_vocab_16e6.txt.gz', '.cache'); z.extract('open_clip/tokenizer.py', '.cache')"

$(VOCAB): $(OPEN_CLIP)
	cp .cache/open_clip/bpe_simple_vocab_16e6.txt.gz $@

test: $(TESTING) $(VOCAB)
	MINITOME_VOCAB=$(VOCAB) MINITOME_OPEN_CLIP=$(OPEN_CLIP) $(BIN)/python -m pytest

tutorial: $(RUNTIME) $(VOCAB)
	$(BIN)/python -m minitome.lab.visualize --out docs/pictures
	@echo "ready: the pictures redrawn in docs/pictures; run tutorial.md's snippets with $(BIN)/python from this folder"

weights: $(RUNTIME)
	$(BIN)/python -m weights.download --dest models

sample: $(RUNTIME)
	@test -f $(WEIGHTS) || $(MAKE) weights
	$(BIN)/python -m minitome.sample --weights $(WEIGHTS) --prompt "$(PROMPT)" $(ARGS)

# --image makes an image from a prompt: on random weights it needs CLIP's vocabulary, fetched as for the tests
BENCH_VOCAB = $(if $(findstring --image,$(BENCH_ARGS)),$(VOCAB))

bench: $(RUNTIME) $(BENCH_VOCAB)
	MINITOME_VOCAB=$(VOCAB) $(BIN)/python -m minitome.lab.bench $(BENCH_ARGS)

bench-compare: $(TESTING) $(BENCH_VOCAB)
	MINITOME_VOCAB=$(VOCAB) $(BIN)/python -m minitome.lab.bench --compare $(BENCH_ARGS)
