"""`python -m minitome.lab.bench --image`: where one image's time goes, from the prompt to the PNG on disk.

Where this sits: one of bench.py's modes; stage_clock.py times the stages, one_image_table.py turns the figures
into ratios and tables, diffusers_pipeline.py makes diffusers' twin of the model (`--compare`). One 512² image
(`--sizes`) is made by the pipeline as a user runs it (`generate`, then the PNG written), for each of these runs:

- the default: PLMS 50, guidance 7.5, SD's VAE decoder (51 UNet calls on the guided pair);
- DPM++ 2M Karras 20, guidance 7.5, the VAE (20 calls on the guided pair);
- LCM 4 at guidance 1, the VAE (4 calls on one latent);
- LCM 4 at guidance 1, the tiny autoencoder (TAESD, minitome/taesd.py) as the decoder;
each alone, with ToMe (`--tome-ratio`, 0.5) and with DeepCache (`--deepcache-interval`, 3, branch 0). The LCM
runs use the plain UNet at guidance 1: an LCM-LoRA fused into it (as both libraries fuse one) changes no tensor's
shape and adds no work, so it changes no timing. Beside each (`--compare`), diffusers' `StableDiffusionPipeline`
on the same weights with the same scheduler (tomesd for ToMe, `DeepCacheSDHelper` for DeepCache,
`AutoencoderTiny` for TAESD). The weights are random, at SD 1.5's size (no download), or `--weights`.

A clock is put around the models' own calls, on the objects themselves for the run and taken off after: the
text encoder's forward (text), each UNet call (its seconds and its kind: a whole call, or DeepCache's shallow
branch), the decoder (minitome's VAE or TAESD forward, diffusers' `vae.decode`); then the PNG is written (png).
The total is the wall clock from the prompt to the written file; what is left of it ("rest") is the tokenizer,
the sampler's own arithmetic and the image's conversion to 8 bits.

`--calls N`: the first N UNet calls of each run are timed (with DeepCache at least 2: a whole call and a shallow
one), and the run goes on through the real pipeline with each later call's output stood in by the last one's, so
the text encoder, the sampler and the decoder still run for real; each call stood in for is counted at the mean
of the timed calls of its kind (minitome's DeepCache makes its calls 0, interval, 2·interval, … whole;
DeepCacheSDHelper those whose timestep's first place in the schedule is that far from the first call's), and
the figures that hold such a count are marked as estimated. Without `--calls` every call is timed.

Before the first run that calls the UNet on a new batch (the guided pair, or one latent) or decodes with a new
decoder, one untimed run of it with one UNet call warms that library up (oneDNN's kernels, minitome's convolution
layouts for that batch); the LCM runs with TAESD are measured before those with the VAE, so that two warm-ups per
library cover the four runs. The dtypes: float32, and bfloat16 on a CPU that computes it natively (cli/device.py's
`native_bf16`); each dtype's models are built afresh (the same random weights, cast), one dtype after the other.
"""
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from minitome.cli.device import native_bf16
from minitome.clip import CLIPTextConfig, CLIPTextModel
from minitome.deepcache import DeepCacheConfig
from minitome.pipeline import generate
from minitome.taesd import TinyConfig, TinyDecoder
from minitome.vae import VAEConfig, VAEDecoder
from sampler import unet_calls
from unet import UNetConfig, packed_conv
from .common import random_unet
from .jobs import tome_from
from .methods import Method
from .runner import ROOT
from .stage_clock import Clock, watched

PROMPT = "a photograph of an astronaut riding a horse"
VOCAB = Path(os.environ.get("MINITOME_VOCAB", ROOT / ".cache" / "bpe_simple_vocab_16e6.txt.gz"))


@dataclass(frozen=True)
class ImageRun:
    """One way to make the image: sampler, steps, guidance and decoder."""
    label: str
    sampler: str
    spacing: str
    steps: int
    guidance: float
    decoder: str  # "vae" (SD's VAE) or "taesd"


RUNS = (ImageRun("default: PLMS 50, guidance 7.5, VAE", "plms", "leading", 50, 7.5, "vae"),
        ImageRun("DPM++ 2M Karras 20, guidance 7.5, VAE", "dpm++2m", "karras", 20, 7.5, "vae"),
        ImageRun("LCM 4, guidance 1, VAE", "lcm", "leading", 4, 1.0, "vae"),
        ImageRun("LCM 4, guidance 1, TAESD", "lcm", "leading", 4, 1.0, "taesd"))
MEASURED = (0, 1, 3, 2)  # the order the runs are measured in: each new batch and decoder warmed up once


def methods(args) -> list:
    return [Method("alone"), Method(f"ToMe {args.tome_ratio:g}", tome={"ratio": args.tome_ratio}),
            Method(f"DeepCache {args.deepcache_interval}", deep_cache={"interval": args.deepcache_interval, "branch": 0})]


def dtypes(name: str, device: torch.device) -> tuple:
    """(the dtypes to measure, what to say of bfloat16): float32, and bfloat16 where the CPU computes it natively
    (float16 on CUDA); or the one --dtype names."""
    if name != "auto":
        return [getattr(torch, name)], None
    if device.type != "cpu":
        return [torch.float32, torch.float16], None
    native = native_bf16()
    return [torch.float32] + ([torch.bfloat16] if native else []), "native here" if native else "not native here"


def minitome_image(sd, tiny, run: ImageRun, method: Method, size: tuple, clock: Clock, folder: Path) -> float:
    """Seconds from the prompt to the written PNG, minitome's pipeline, the clock around its models."""
    model = replace(sd, vae=tiny) if run.decoder == "taesd" else sd
    deep_cache = DeepCacheConfig(**method.deep_cache) if method.deep_cache else None
    with watched((model.text_encoder, "forward", clock.timed("text")), (model.unet, "forward", clock.unet),
                 (model.vae, "forward", clock.timed("decoder"))):
        start = time.perf_counter()
        image = generate(model, PROMPT, steps=run.steps, guidance=run.guidance, seed=0, width=size[0], height=size[1],
                         sampler=run.sampler, spacing=run.spacing, tome=tome_from(method.tome), deep_cache=deep_cache)[0]
        clock.write(image, folder / "minitome.png", f"{PROMPT}\n{run.label}, {method.label}")
        return time.perf_counter() - start


def minitome_kind(method: Method):
    """kind(i, args) of minitome's i-th call: the run's rule (minitome/run.py), a whole call every `interval` calls."""
    interval = method.deep_cache["interval"] if method.deep_cache else None
    return lambda i, args: "shallow" if interval and i % interval else "whole"


def diffusers_kind(pipe, method: Method):
    """kind(i, args) of a diffusers call: DeepCacheSDHelper's rule, a whole call where the place of the call's
    timestep in the scheduler's list is a multiple of the interval from the first call's."""
    places = []

    def kind(i, args):
        if method.deep_cache is None:
            return "whole"
        places.append([float(t) for t in pipe.scheduler.timesteps].index(float(args[1])))
        return "shallow" if (places[-1] - places[0]) % method.deep_cache["interval"] else "whole"
    return kind


def diffusers_image(pipe, run: ImageRun, method: Method, size: tuple, clock: Clock, folder: Path) -> float:
    """Seconds from the prompt to the written PNG, diffusers' pipeline (tomesd, DeepCacheSDHelper as the method
    asks), the clock around its models."""
    import tomesd
    from DeepCache import DeepCacheSDHelper
    from .diffusers_pipeline import scheduler_of
    pipe.scheduler = scheduler_of(run.sampler, run.spacing)
    helper = None
    if method.tome is not None:
        tomesd.apply_patch(pipe, ratio=method.tome["ratio"])
    if method.deep_cache is not None:
        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=method.deep_cache["interval"], cache_branch_id=method.deep_cache["branch"])
        helper.enable()
    try:
        with watched((pipe.text_encoder, "forward", clock.timed("text")), (pipe.unet, "forward", clock.unet),
                     (pipe.vae, "decode", clock.timed("decoder"))):
            start = time.perf_counter()
            image = pipe(PROMPT, num_inference_steps=run.steps, guidance_scale=run.guidance, width=size[0],
                         height=size[1], generator=torch.Generator("cpu").manual_seed(0)).images[0]
            clock.write(image, folder / "diffusers.png", f"{PROMPT}\n{run.label}, {method.label}")
            return time.perf_counter() - start
    finally:
        if helper is not None:
            helper.disable()
        tomesd.remove_patch(pipe)


def model(args, device, dtype) -> tuple:
    """(the pipeline's parts, a TAESD decoder): random weights of SD 1.5's shapes (the tests' tiny ones with --tiny),
    the same in every process, or --weights; on the device, in the dtype."""
    from weights.load import StableDiffusion, load
    from weights.tokenizer import read_tokenizer
    torch.manual_seed(0)
    tiny = TinyDecoder(TinyConfig.tiny() if args.tiny else TinyConfig()).to(device, dtype).eval()
    if args.weights:
        return load(args.weights, device=device, dtype=dtype), tiny
    text = CLIPTextModel(CLIPTextConfig.tiny() if args.tiny else CLIPTextConfig()).to(device, dtype).eval()
    vae = VAEDecoder(VAEConfig.tiny() if args.tiny else VAEConfig()).to(device, dtype).eval()
    config = UNetConfig.tiny(context_dim=text.config.width) if args.tiny else UNetConfig()
    return StableDiffusion(random_unet(config, device, dtype), text, read_tokenizer(VOCAB), vae), tiny


def budget(args, method: Method):
    """How many UNet calls of a run to time: all (None) without --calls; with DeepCache at least one of each kind."""
    if args.calls is None:
        return None
    return max(args.calls, 2) if method.deep_cache and method.deep_cache["interval"] > 1 else args.calls


def measure_rows(args, device, dtype, size: tuple) -> list:
    """Every run × method in one dtype: minitome's image and (--compare) diffusers', one after the other, the side
    that goes first alternating from row to row."""
    sd, tiny = model(args, device, dtype)
    pipes = None
    if args.compare:
        from .diffusers_pipeline import pipelines_of
        pipes = pipelines_of(sd, tiny)
    packed_conv.packed(sd.unet)  # as the command line runs it (float32 on the CPU)
    name, rows, warm = str(dtype).replace("torch.", ""), [], set()
    sides = {"minitome": lambda run, m, clock, f: minitome_image(sd, tiny, run, m, size, clock, f),
             "diffusers": lambda run, m, clock, f: diffusers_image(pipes[run.decoder], run, m, size, clock, f)}
    kinds = {"minitome": lambda run, m: minitome_kind(m), "diffusers": lambda run, m: diffusers_kind(pipes[run.decoder], m)}
    with tempfile.TemporaryDirectory() as folder:
        for run in (RUNS[i] for i in MEASURED):
            for method in methods(args):
                row = {"run": run.label, "method": method.label, "dtype": name, "calls": unet_calls(run.sampler, run.steps)}
                order = ["minitome", "diffusers"] if args.compare else ["minitome"]
                for side in order if len(rows) % 2 == 0 else order[::-1]:
                    new = {(side, "batch", run.guidance > 1), (side, "decoder", run.decoder)} - warm
                    if new:  # one untimed run with one UNet call
                        print(f"[{name}] warm-up: {side}, {run.label}", file=sys.stderr, flush=True)
                        sides[side](run, method, Clock(device, 1, kinds[side](run, method)), Path(folder))
                        warm |= new
                    clock = Clock(device, budget(args, method), kinds[side](run, method))
                    row[side] = clock.figures(sides[side](run, method, clock, Path(folder)))
                    print(f"[{name}] {run.label}, {method.label}: {side} {'~' if row[side]['estimated'] else ''}"
                          f"{row[side]['total']:.2f} s", file=sys.stderr, flush=True)
                if args.compare:
                    row["ratio"] = row["minitome"]["total"] / row["diffusers"]["total"]
                rows.append(row)
    labels = [run.label for run in RUNS]
    return sorted(rows, key=lambda row: labels.index(row["run"]))  # stable: the methods keep their order


def image_table(args, device, results: dict) -> int:
    """--image: every run × method × dtype, then the ratios, targets and the markdown table (one_image_table.py)."""
    from .one_image_table import report
    size = args.sizes[0]
    kinds, bf16 = dtypes(args.dtype, device)
    rows = []
    for dtype in kinds:  # one dtype's models at a time: the last ones freed first
        gc.collect()
        rows += measure_rows(args, device, dtype, size)
    result = {"size": list(size), "dtypes": [str(d).replace("torch.", "") for d in kinds], "bfloat16": bf16,
              "calls": args.calls, "compare": args.compare, "rows": rows}
    results["tables"].append(result)
    report(args, result, results)
    return 0
