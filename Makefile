# minitome's commands; each creates .venv and installs what it needs on first use.
#   make weights   download the official SD 1.5 weights + tokenizer into models/ (resumable, checked)
#   make sample    make an image (downloads the weights first if missing); PROMPT="..." ARGS="--tome-ratio 0.5"
#   make bench     what merging buys on this machine (random SD 1.5 weights, no download); BENCH_ARGS="..."
#   make bench-compare   the same, side by side with diffusers + tomesd (installs them)
#   make test      the whole test suite (adds pytest, hypothesis and the pinned references)
# TORCH names the torch requirement installed first: torch==2.13.0 is a CPU build on CPU-only
# machines that carry it locally; on a CUDA machine set TORCH to the build you want.
PYTHON  ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
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

.PHONY: test weights sample bench bench-compare

$(RUNTIME): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

$(TESTING): $(RUNTIME) requirements-test.txt
	$(BIN)/python -m pip install -q -r requirements-test.txt
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

weights: $(RUNTIME)
	$(BIN)/python -m weights.download --dest models

sample: $(RUNTIME)
	@test -f $(WEIGHTS) || $(MAKE) weights
	$(BIN)/python -m minitome.sample --weights $(WEIGHTS) --prompt "$(PROMPT)" $(ARGS)

bench: $(RUNTIME)
	$(BIN)/python -m minitome.bench $(BENCH_ARGS)

bench-compare: $(TESTING)
	$(BIN)/python -m minitome.bench --compare $(BENCH_ARGS)
