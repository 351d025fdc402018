"""The benchmark's measurements, each in a process of its own (`python -m minitome.lab.bench` starts these).

Where this sits: `bench.py` and `methods.py` run `python -m minitome.lab.measure '<json job>'`; it prints one
JSON line. A job is one of:

- "time": every kind of UNet call in `calls` (an implementation, and what accelerates it: ToMe, ToDo, a
  reused plan, DeepCache's shallow branch) timed in one process, interleaved. Each is called as a warm-up
  (a call that reuses a plan or the deep features is preceded by the call that makes them), then `repeats`
  rounds call each once, in an order that rotates from round to round. A shared machine's speed drifts
  by more than the differences measured; the calls of one round share its state, so the ratios bench.py
  reports are medians over rounds of one round's ratio. Per kind of call: the times, round by round; the
  FLOPs (torch's FlopCounterMode, taught two operators it misses); the blocks that merged or downsampled
  (caught with forward pre-hooks on the call's own transformer blocks) and the time ToMe's functions
  take on them, outside the UNet (planning: similarity + matching; then merge and unmerge).
- "memory": one kind of call alone in its process, so the peak is its own (memory.py says how).
- "parts" and "image" (methods.py, samplers.py): the text encoder and the VAE decoder; one whole run, timed.
- "decode" (memory.py): the VAE decoder's peak memory and seconds on one image, minitome's or diffusers'.
- "vae" (hires.py): seconds of each VAE half in `calls` ({"impl", "half", "latent"}) on one image, in one process.
- "hires-image" (hires.py): one whole hires chain, timed: two passes and the decoder at the large size.
"""
import dataclasses
import json
import statistics
import sys

import torch

from minitome.deepcache import DeepCacheConfig
from minitome.clip import CLIPTextModel
from minitome.pipeline import noise_estimate
from minitome.vae import VAEDecoder
from sampler import sample, unet_calls
from unet.attention import BasicTransformerBlock
from minitome.todo import ToDoConfig, downsample_kv
from minitome.tome import IDENTITY, BlockSettings, tome_plan
from unet import UNetConfig, UNetModel, packed_conv
from .common import random_unet, stopwatch
from .calls import Configuration, as_diffusers
from .hires import hires_image
from .jobs import CallKind, Job, tome_from
from .memory import measure_decode, peak_above, vae_half, vae_input


def build_unet(job: Job, device, dtype, packed: bool = True) -> UNetModel:
    """The job's UNet, packed for the CPU unless asked: the weights, or random ones (the same in every process)."""
    if job.weights:
        from weights import load_unet
        unet = load_unet(job.weights, device, dtype, job.attention)
    else:
        unet = random_unet(UNetConfig(attention=job.attention), device, dtype)
    return packed_conv.packed(unet) if packed else unet


def blocks_run(unet: UNetModel, call) -> list:
    """(input tokens (B, N, C), (h, w)) of every transformer block a call runs, caught with forward pre-hooks."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((args[0].detach().clone(), args[2])))
             for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    try:
        call()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def token_work(blocks: list, c: Configuration, latent: tuple, device) -> tuple:
    """(the tokens of each block that merges or downsamples, the seconds ToMe's own functions take on them),
    on the blocks' own inputs in the call: what a threshold merges depends on them."""
    tokens, plans = [], []
    for x, hw in blocks:
        shape = x.shape
        settings = BlockSettings(latent, c.tome, torch.Generator().manual_seed(0), c.todo)
        plan = tome_plan(x, hw, settings)
        kv = downsample_kv(x, hw, settings)
        if plan is not IDENTITY:
            tokens.append(f"{shape[1]}→{plan.tokens_left}")
            plans.append((x, hw, plan))
        elif kv is not None:
            tokens.append(f"{shape[1]}, keys {kv.shape[1]}")

    def once():  # as in a call: plan (unless it is reused), merge, unmerge
        for x, hw, plan in plans:
            if not c.spec.reuse:
                plan = tome_plan(x, hw, BlockSettings(latent, c.tome, torch.Generator().manual_seed(0)))
            plan.unmerge_attn(plan.merge_attn(x))

    return tokens, (stopwatch(once, 5, device)[1] if plans else 0.0)


def flop_counter():
    """torch's FlopCounterMode, taught two operators it does not count: a packed convolution
    (unet/packed_conv.py) and the CPU's fused attention kernel (what SDPA runs on the CPU)."""
    from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

    def packed(x_shape, w_shape, *args, out_shape=None, **kwargs):
        return conv_flop_count(x_shape, w_shape, out_shape)

    def attention(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q_shape, k_shape, v_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention}
    if packed_conv.available():
        mapping[torch.ops.mkldnn._convolution_pointwise] = packed
    return FlopCounterMode(display=False, custom_mapping=mapping)


def inputs(unet: UNetModel, job: Job, device, dtype):
    """The same latent, timestep and text context in every process."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(job.batch, 4, *job.latent, generator=g).to(device, dtype)
    context = torch.randn(job.batch, 77, unet.config.context_dim, generator=g).to(device, dtype)
    return x, torch.full((job.batch,), 500, device=device), context


def progress(text: str):
    print(f"progress: {text}", file=sys.stderr, flush=True)  # bench.py shows these lines


@torch.no_grad()
def measure_memory(job: Job) -> dict:
    """One kind of call's peak memory above the loaded weights (memory.py)."""
    device, dtype = job.torch_device_dtype()
    unet = build_unet(job, device, dtype)
    x, t, context = inputs(unet, job, device, dtype)
    spec = CallKind(**job.calls[0])
    c = Configuration(spec, as_diffusers(unet, job) if spec.impl == "diffusers" else unet)
    del unet  # with diffusers, only the measured model stays loaded
    c.prepare(x, t, context)
    c.call(x, t, context)  # warm-up
    return {"peak_mb": peak_above(lambda: c.call(x, t, context), device)}


@torch.no_grad()
def measure_time(job: Job) -> dict:
    """Every kind of call in job.calls timed, interleaved (see the module's docstring)."""
    device, dtype = job.torch_device_dtype()
    unet = build_unet(job, device, dtype)
    x, t, context = inputs(unet, job, device, dtype)
    specs = [CallKind(**c) for c in job.calls]
    reference = as_diffusers(unet, job) if any(s.impl == "diffusers" for s in specs) else None
    plain = build_unet(job, device, dtype, packed=False) if any(not s.packed for s in specs) else None
    configs = [Configuration(s, reference if s.impl == "diffusers" else unet if s.packed else plain) for s in specs]
    results = [{**dataclasses.asdict(c.spec), "times": []} for c in configs]
    for i, (c, result) in enumerate(zip(configs, results)):
        progress(f"warm-up {i + 1}/{len(configs)}: {c.spec.impl} {c.spec.label}")
        c.prepare(x, t, context)
        if c.spec.impl == "diffusers":
            c.call(x, t, context)
            continue
        if c.spec.reuse or c.spec.cached:
            c.call(x, t, context)  # the call that makes the plan or keeps the deep features
        with flop_counter() as counter:  # the warm-up call, counted
            blocks = blocks_run(c.model, lambda: c.call(x, t, context))
        tokens, seconds = token_work(blocks, c, tuple(job.latent), device)
        result.update(gflop=counter.get_total_flops() / 1e9, tokens=tokens, merge_seconds=seconds)
    for k in range(job.repeats):
        for j in range(len(configs)):
            i = (j + k) % len(configs)  # each round starts one configuration further on
            configs[i].prepare(x, t, context)
            _, seconds = stopwatch(lambda: configs[i].call(x, t, context), 1, device, warmup=False)
            results[i]["times"].append(seconds)
            progress(f"round {k + 1}/{job.repeats}: {configs[i].spec.impl} {configs[i].spec.label} {seconds:.2f} s")
    for result in results:
        result["seconds"] = statistics.median(result["times"])
    return {"calls": results}


@torch.no_grad()
def measure_parts(job: Job) -> dict:
    """Seconds for the text encoder on a CFG pair of prompts and the VAE decoder on one image (measure.py's "parts"
    job): the weights' own, or random SD 1.5 ones."""
    device, dtype = job.torch_device_dtype()
    if job.weights:
        import weights
        sd = weights.load(job.weights, device=device, dtype=dtype)
        clip, vae = sd.text_encoder, sd.vae
    else:
        torch.manual_seed(0)
        clip, vae = CLIPTextModel().to(device, dtype).eval(), VAEDecoder().to(device, dtype).eval()
    ids = torch.randint(0, 49408, (2, 77), generator=torch.Generator().manual_seed(0)).to(device)
    z = torch.randn(1, 4, *job.latent, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    return {"text_seconds": stopwatch(lambda: clip(ids), job.repeats, device)[1],
            "decode_seconds": stopwatch(lambda: vae(z), job.repeats, device)[1]}


def eps_model_of(unet):
    """(context, method fields, calls) → the guided noise estimate of a pass run with that method."""
    def make(context, method: dict, calls: int):
        todo = ToDoConfig(**method["todo"]) if method.get("todo") else None
        deep_cache = DeepCacheConfig(**method["deep_cache"]) if method.get("deep_cache") else None
        return noise_estimate(unet, context, 7.5, tome_from(method.get("tome")), todo, deep_cache, calls)
    return make


@torch.no_grad()
def measure_image(job: Job) -> dict:
    """One whole run of job.sampler (job.steps steps, job.spacing, CFG on a batch of one) with job.method, timed
    (measure.py's "image" job): the UNet calls and the sampler's own arithmetic, as the pipeline runs them."""
    device, dtype = job.torch_device_dtype()
    unet = build_unet(job, device, dtype)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 4, *job.latent, generator=g).to(device, dtype)
    context = torch.randn(2, 77, unet.config.context_dim, generator=g).to(device, dtype)
    eps_model = eps_model_of(unet)(context, job.method, unet_calls(job.sampler, job.steps))
    _, seconds = stopwatch(lambda: sample(job.sampler, eps_model, noise, job.steps, job.spacing, generator=g), 1, device,
                           warmup=False)
    return {"seconds": seconds}


@torch.no_grad()
def measure_vae(job: Job) -> dict:
    """Seconds of each VAE half in job.calls on one image of its latent size, one after another in this process."""
    device, dtype = job.torch_device_dtype()
    seconds = []
    for c in job.calls:
        run, x = vae_half(c["impl"], c["half"], device, dtype), vae_input(c["half"], c["latent"], device, dtype)
        seconds.append({**c, "seconds": stopwatch(lambda: run(x), job.repeats, device, warmup=False)[1]})
    return {"vae": seconds}


@torch.no_grad()
def measure_hires_image(job: Job) -> dict:
    """One whole hires chain (hires.py) on the job's UNet and SD 1.5's VAE decoder (random weights), timed."""
    device, dtype = job.torch_device_dtype()
    unet = build_unet(job, device, dtype)
    torch.manual_seed(0)
    vae = VAEDecoder().to(device, dtype).eval()
    return {"seconds": hires_image(unet, vae, job, eps_model_of(unet))}


def measure(job: Job) -> dict:
    return {"time": measure_time, "memory": measure_memory, "parts": measure_parts, "image": measure_image,
            "decode": measure_decode, "vae": measure_vae,
            "hires-image": measure_hires_image}[job.part](job)


if __name__ == "__main__":
    print(json.dumps(measure(Job(**json.loads(sys.argv[1])))))
