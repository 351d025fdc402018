"""Shared helpers: random-weight reference models in the official layouts.

Every parameter is drawn from an explicit generator, 1-D ones too (norm weights around 1, biases
around 0, each with its own noise), so a swapped weight and bias, or a norm left at its default,
cannot pass a parity test.
"""
import contextlib
import gzip
import importlib.util
import json
import os
import signal
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import settings

warnings.filterwarnings("ignore", category=FutureWarning)

# Property tests draw the same examples on every run and every machine (derandomize: the seed comes from the
# test's own source), so the suite's outcome and length never depend on luck. MINITOME_HYPOTHESIS=explore draws
# fresh examples, for hunting new failures by hand.
settings.register_profile("suite", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("MINITOME_HYPOTHESIS", "suite"))


class Hang(Exception):
    """Raised by `finishes_within` in the main thread when the work outlives its bound."""


@contextlib.contextmanager
def finishes_within(seconds: int, what: str):
    """Fail (a finding, not a slow machine: the bound is ~100× what the work takes) when `what` runs longer than
    `seconds`, instead of hanging the suite. SIGALRM interrupts the main thread wherever it is."""
    def alarm(signum, frame):
        raise Hang()
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    except Hang:
        pytest.fail(f"{what} did not finish within {seconds} s: a hang or work that grows without bound")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def float32_bound(request):
    """check(error, bound): the float32 smoke tests' assertion. With MINITOME_FLOAT32_LOG naming a file, each
    error is also appended there as one JSON line (tests/float32_spread.py reads them across CPU kernels)."""
    def check(error: float, bound: float):
        log = os.environ.get("MINITOME_FLOAT32_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"test": request.node.nodeid, "error": error, "bound": bound}) + "\n")
        assert error <= bound, f"float32 error {error:.3e} above its bound {bound:.1e}"
    return check

TINY_DIFFUSERS_UNET = dict(block_out_channels=(32, 64, 64, 64), cross_attention_dim=32,
                           attention_head_dim=8, norm_num_groups=32)


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            else:
                centre = 1.0 if name.endswith("weight") else 0.0  # 1-D weights are norm scales
                p.copy_(centre + 0.2 * torch.randn(p.shape, generator=g))
    return module


# Parity in float64: both sides compute in float64; the errors measured are 1e-16 – 4e-14 relative, and a
# real mistake (a norm's eps off by 10×) shows as 1e-6 or more (tests/test_teeth.py): these bounds are the
# ones with teeth. One float32 smoke test per part keeps its own bound: the largest error measured across
# CPU kernels (PyTorch's scalar, AVX2 and AVX-512 code, oneDNN down to SSE4.1, 1 and 2 threads:
# tests/float32_spread.py) times a margin of about 4, so that it holds on any CPU; it catches gross mistakes
# (a wrong layer, a swapped weight), which float32 rounding could never explain.
F64_BOUND = 1e-10


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out − ref| / max |ref|, the parity measure used across the tests."""
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def diffusers_unet(seed: int = 0, **config):
    from diffusers import UNet2DConditionModel
    return randomize_(UNet2DConditionModel(**config), seed).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_unet_folder(tmp_path_factory):
    """(diffusers tiny UNet, folder with it saved as `unet/` of a diffusers pipeline)."""
    model = diffusers_unet(seed=1, **TINY_DIFFUSERS_UNET)
    folder = tmp_path_factory.mktemp("tiny_diffusers")
    model.save_pretrained(folder / "unet")
    return model, folder


ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"


# The command line's tests pin their dtype: `--dtype auto` is bfloat16 on a CPU that computes it natively (this
# kind of machine may), float32 on others, and an image's pixels follow the dtype. Only tests of the dtype itself
# (tests/test_dtype.py) leave it to auto.
FLOAT32 = ["--dtype", "float32"]


def pinned(argv) -> list:
    """argv with --dtype float32 added, unless it names a dtype itself."""
    argv = list(argv)
    return argv if any(a == "--dtype" or a.startswith("--dtype=") for a in argv) else argv + FLOAT32


def sample_main(argv) -> int:
    """`python -m minitome.sample`'s main, in this process, in float32 unless argv names a dtype."""
    from minitome.sample import main
    return main(pinned(argv))


def child_env() -> dict:
    """The environment for a test's child process: the repository importable from anywhere."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def cached(variable: str, default: str) -> Path:
    """A file `make test` puts in .cache/ (its path in an environment variable when run by make)."""
    path = Path(os.environ.get(variable, CACHE / default))
    if not path.exists():
        pytest.fail(f"{path} is missing: run the tests with `make test`, which fetches it")
    return path


@pytest.fixture(scope="session")
def clip_vocab_gz():
    """The real CLIP vocabulary, `bpe_simple_vocab_16e6.txt.gz` out of the open-clip-torch wheel."""
    return cached("MINITOME_VOCAB", "bpe_simple_vocab_16e6.txt.gz")


@pytest.fixture(scope="session")
def open_clip_tokenizer():
    """open_clip's SimpleTokenizer (OpenAI CLIP's tokenizer), read out of the open-clip-torch wheel with its
    vocabulary beside it: the reference for the byte order, the vocabulary table and the BPE."""
    path = cached("MINITOME_OPEN_CLIP", "open_clip/tokenizer.py")
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so tests can reach its clean-up functions too
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


# open_clip renamed CLIP's two special tokens; the SD 1.5 repository's vocab.json keeps OpenAI's names
OPEN_CLIP_SPECIALS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


@pytest.fixture(scope="session")
def clip_tokenizer_folder(clip_vocab_gz, open_clip_tokenizer, tmp_path_factory):
    """The vocabulary in diffusers' `tokenizer/` layout (vocab.json + merges.txt), as transformers reads it,
    written from open_clip's own encoder table and merge list (never from minitome's tokenizer)."""
    lines = gzip.open(clip_vocab_gz, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # CLIP's merge count, as SimpleTokenizer reads it
    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    vocab = {OPEN_CLIP_SPECIALS.get(symbol, symbol): i for symbol, i in open_clip_tokenizer.encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return folder


TINY_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=128,
                 vocab_size=49408, max_position_embeddings=77)
TINY_VAE = dict(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=32)  # ×8, like SD
SD15_VAE = dict(TINY_VAE, block_out_channels=(128, 256, 512, 512), layers_per_block=2)  # SD 1.5's vae/config.json


def diffusers_text_encoder(seed: int = 0, **config):
    from transformers import CLIPTextConfig, CLIPTextModel
    return randomize_(CLIPTextModel(CLIPTextConfig(**config)), seed).eval().requires_grad_(False)


def diffusers_vae(seed: int = 0, **config):
    from diffusers import AutoencoderKL
    return randomize_(AutoencoderKL(**config), seed).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_pipeline(clip_tokenizer_folder, tmp_path_factory):
    """A random tiny SD-shaped diffusers StableDiffusionPipeline, saved with save_pretrained: (pipe, folder)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer
    unet = diffusers_unet(seed=11, **{**TINY_DIFFUSERS_UNET, "cross_attention_dim": 64})
    text_encoder = diffusers_text_encoder(seed=12, **TINY_TEXT)
    vae = diffusers_vae(seed=13, **TINY_VAE)
    scheduler = PNDMScheduler.from_config(dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                               num_train_timesteps=1000, set_alpha_to_one=False,
                                               skip_prk_steps=True, steps_offset=1))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(
        str(clip_tokenizer_folder), model_max_length=77), unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("tiny_pipeline")
    pipe.save_pretrained(folder)
    return pipe, folder


# SD 1.5's scheduler_config.json; from_config drops the keys a scheduler does not take, as pipelines do
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False)
KARRAS_LESS = ("plms", "ddim", "euler-a")  # the samplers whose diffusers scheduler has no Karras σ's


def reference_scheduler(sampler: str, spacing: str = "leading", config=None):
    """diffusers' scheduler for a minitome sampler, as `Scheduler.from_config(pipe.scheduler.config)` makes it for
    SD 1.5 (the pipeline's PNDMScheduler config carries timestep_spacing "leading"), with the spacing asked for;
    karras is use_karras_sigmas on linspace."""
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, PNDMScheduler)
    schedulers = {"plms": (PNDMScheduler, {}), "ddim": (DDIMScheduler, {}), "euler": (EulerDiscreteScheduler, {}),
                  "euler-a": (EulerAncestralDiscreteScheduler, {}),
                  "dpm++2m": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2))}
    config = config if config is not None else PNDMScheduler.from_config(SD15_SCHEDULER).config
    cls, extra = schedulers[sampler]
    spacing_config = dict(timestep_spacing="linspace", use_karras_sigmas=True) if spacing == "karras" else dict(
        timestep_spacing=spacing)
    return cls.from_config(config, **extra, **spacing_config)


class Float64Torch:
    """A scheduler module's `torch`, with torch.float32 meaning float64: the σ schedulers' steps upcast the sample
    "to float32", which would round a float64 run; with this they compute in float64 throughout."""
    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def scheduler_in_float64(scheduler):
    """The reference scheduler computing in float64: its tables (ᾱ, σ: float32 values, as ours) held in float64
    after each set_timesteps, and its module's float32 upcasts made float64 while it sets and steps."""
    import functools
    import sys
    module = sys.modules[type(scheduler).__module__]

    def in_float64(method):
        @functools.wraps(method)  # the pipeline reads step's signature to decide whether to pass the generator
        def call(*args, **kwargs):
            original, module.torch = module.torch, Float64Torch()
            try:
                return method(*args, **kwargs)
            finally:
                module.torch = original
        return call

    def set_timesteps(*args, **kwargs):
        in_float64(type(scheduler).set_timesteps)(scheduler, *args, **kwargs)
        for table in ("alphas_cumprod", "final_alpha_cumprod", "sigmas"):
            if isinstance(getattr(scheduler, table, None), torch.Tensor):
                setattr(scheduler, table, getattr(scheduler, table).double())

    scheduler.set_timesteps = set_timesteps
    scheduler.step = in_float64(scheduler.step)
    return scheduler


def float64_pipeline(pipe, sampler: str = "plms", spacing: str = "leading"):
    """A float64 copy of the reference pipeline, with the scheduler of `sampler` and `spacing` (from SD 1.5's
    scheduler_config.json) computing in float64."""
    import copy
    pipe = copy.deepcopy(pipe).to(torch.float64)
    pipe.scheduler = scheduler_in_float64(reference_scheduler(sampler, spacing))
    return pipe


def official_single_file(sd, path, extra=None):
    """Write minitome's modules as an official CompVis-layout single file (prefixes + schedule buffers)."""
    from safetensors.torch import save_file
    tensors = {}
    parts = (("model.diffusion_model.", sd.unet), ("cond_stage_model.transformer.text_model.", sd.text_encoder),
             ("first_stage_model.", sd.vae), ("first_stage_model.", sd.vae_encoder))
    for prefix, module in (part for part in parts if part[1] is not None):
        tensors.update({prefix + name: t.contiguous() for name, t in module.state_dict().items()})
    tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    tensors["alphas_cumprod"] = torch.rand(1000)
    save_file({**tensors, **(extra or {})}, str(path))
    return path


@pytest.fixture(scope="session")
def single_file(tiny_pipeline, tmp_path_factory):
    """The tiny pipeline's weights as an official single file, with its tokenizer beside it."""
    import shutil
    import weights
    _, folder = tiny_pipeline
    where = tmp_path_factory.mktemp("single")
    shutil.copytree(folder / "tokenizer", where / "tokenizer")
    return official_single_file(weights.load(folder, encoder=True), where / "tiny-sd.safetensors")
