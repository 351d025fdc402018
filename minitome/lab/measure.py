"""The benchmark's measurements, each in a process of its own (`python -m minitome.lab.bench` starts these).

Where this sits: `bench.py` runs `python -m minitome.lab.measure '<json job>'`, once per image
size and attention kind to time every configuration (implementation × ToMe ratio) of that table, then
once per configuration to measure its memory. Prints one JSON line.

Timing ("part": "time"): both implementations are loaded with the same weights, every configuration
is called once as a warm-up, then `repeats` rounds call each configuration once, in an order that
rotates from round to round. On a shared machine the speed drifts by ±5–10% over minutes; a
configuration timed minutes after another would carry that drift into their ratio. Interleaved, the
calls of one round share the machine's state, so bench.py reports each ratio (speed-up, minitome /
diffusers) as the median over rounds of that round's ratio. Per configuration:
- times: one per round, in round order; seconds: their median;
- gflop (minitome): the call's floating-point operations, counted by torch's FlopCounterMode during
  the warm-up;
- merge_seconds (minitome): the same ToMe functions (plan = similarity + matching, merge, unmerge)
  timed on the block shapes of this call, outside the UNet; tokens: N → N − r for each merged block.

Memory ("part": "memory"): one configuration alone in its process, so the peak is its own: one call as
a warm-up, then the peak of one call above the memory just before it. CUDA: max allocated. CPU: the
process's peak resident set (reset through /proc/self/clear_refs), measured with glibc's
MALLOC_MMAP_THRESHOLD_ at 256 KiB (bench.py sets it). With that setting every freed tensor goes back
to the system at once, so the resident set follows the tensors alive (at 512², plain attention, it
equals the profiler's count of live tensor bytes to the MB: 1,134 and 331 MB at ratios 0 and 0.5);
with glibc's defaults it also holds whatever freed memory the allocator kept, 100–200 MB that varied
by ±30 MB from run to run. The setting slows calls (9.5 → 11.3 s), which is why timing runs in a
process with the defaults.
"""
import dataclasses
import json
import statistics
import sys
from dataclasses import dataclass

import torch

from minitome.tome import IDENTITY, BlockSettings, ToMeConfig, tome_plan
from unet import UNetConfig, UNetModel, packed_conv
from .common import random_unet, stopwatch, sync


@dataclass
class Job:
    """What one child process measures (sent to it as JSON)."""
    part: str                 # "time" (every configuration, interleaved) or "memory" (one configuration)
    latent: list              # [h, w]
    batch: int
    attention: str            # "sdpa" or "plain"
    max_downsample: int
    repeats: int
    device: str
    dtype: str                # "float32", …
    weights: str = None       # a checkpoint, or None for random SD 1.5-size weights
    configs: list = None      # "time": [[impl, ratio], …]
    impl: str = None          # "memory": "minitome" or "diffusers"
    ratio: float = None       # "memory"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set


def memory_now(device) -> float:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else rss_mb("VmRSS")


def memory_peak(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else rss_mb("VmHWM")


def build_unet(job: Job, device, dtype) -> UNetModel:
    """The job's UNet, packed for the CPU: the weights, or random ones (the same in every process)."""
    if job.weights:
        from weights import load_unet
        unet = load_unet(job.weights, device, dtype, job.attention)
    else:
        unet = random_unet(UNetConfig(attention=job.attention), device, dtype)
    return unet.pack_convolutions()


def as_diffusers(unet: UNetModel, job: Job):
    """The same weights in diffusers' UNet2DConditionModel (AttnProcessor for plain attention)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from weights.unet import diffusers_names, to_diffusers_name
    c = unet.config
    reference = UNet2DConditionModel(
        block_out_channels=tuple(c.model_channels * m for m in c.channel_mult), layers_per_block=c.num_res_blocks,
        attention_head_dim=c.num_heads, cross_attention_dim=c.context_dim, norm_num_groups=c.norm_groups)
    table = diffusers_names(c)
    state = {to_diffusers_name(name, table): t for name, t in unet.state_dict().items()}
    reference.load_state_dict(state)
    reference = reference.to(next(unet.parameters()).device, next(unet.parameters()).dtype).eval().requires_grad_(False)
    if job.attention == "plain":
        reference.set_attn_processor(AttnProcessor())  # softmax(QKᵀ/√D)V in plain PyTorch
    return reference


class Configuration:
    """One implementation at one ratio: `prepare()` before each call (tomesd patches the diffusers
    model in place, so the model switches ratio there), then `call(x, t, context)`."""

    def __init__(self, impl: str, ratio: float, job: Job, model):
        self.impl, self.ratio, self.model = impl, ratio, model
        self.max_downsample = job.max_downsample
        if impl == "minitome":
            self.tome = ToMeConfig(ratio=ratio, max_downsample=job.max_downsample) if ratio > 0 else None
            self.generator = torch.Generator().manual_seed(0)

    def prepare(self):
        if self.impl == "diffusers":
            import tomesd
            if self.ratio > 0:
                tomesd.apply_patch(self.model, ratio=self.ratio, max_downsample=self.max_downsample)
            else:
                tomesd.remove_patch(self.model)

    def call(self, x, t, context):
        if self.impl == "diffusers":
            return self.model(x, t, context).sample
        return self.model(x, t, context, tome=self.tome, tome_generator=self.generator)

    def name(self) -> str:
        return f"{self.impl} ratio {self.ratio:g}"


def merged_blocks(unet: UNetModel, config: ToMeConfig, latent: tuple, batch: int, device, dtype) -> list:
    """(B, N, C), (h, w) and the tokens left of every transformer block that merges in this call."""
    blocks = []
    for h, w, channels in unet.config.transformer_grids(latent):
        x = torch.randn(batch, h * w, channels, device=device, dtype=dtype)
        plan = tome_plan(x, (h, w), BlockSettings(latent, config, torch.Generator().manual_seed(0)))
        if plan is not IDENTITY:
            blocks.append((x, (h, w), plan.tokens_left))
    return blocks


def time_merging(blocks, config: ToMeConfig, latent: tuple, device, repeats: int = 5) -> float:
    """Seconds per UNet call spent in the ToMe functions themselves, on this call's block shapes."""
    generator = torch.Generator().manual_seed(0)

    def once():
        for x, hw, _ in blocks:
            plan = tome_plan(x, hw, BlockSettings(latent, config, generator))
            plan.unmerge_attn(plan.merge_attn(x))

    return stopwatch(once, repeats, device)[1]


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
    """One configuration's peak memory above the loaded weights (see the module's docstring)."""
    device, dtype = torch.device(job.device), getattr(torch, job.dtype)
    unet = build_unet(job, device, dtype)
    x, t, context = inputs(unet, job, device, dtype)
    if job.impl == "diffusers":
        unet = as_diffusers(unet, job)  # the minitome copy is dropped: only the measured model stays loaded
    c = Configuration(job.impl, job.ratio, job, unet)
    c.prepare()
    c.call(x, t, context)  # warm-up
    return {"peak_mb": peak_above(lambda: c.call(x, t, context), device)}


def peak_above(call, device) -> float:
    """MB: the peak memory during call() above the memory in use just before it."""
    sync(device)
    baseline = memory_now(device)
    reset_peak(device)
    call()
    sync(device)
    return memory_peak(device) - baseline


@torch.no_grad()
def measure_time(job: Job) -> dict:
    """Every configuration in job.configs ([impl, ratio] pairs) timed, interleaved (see the module's docstring)."""
    device, dtype = torch.device(job.device), getattr(torch, job.dtype)
    unet = build_unet(job, device, dtype)
    x, t, context = inputs(unet, job, device, dtype)
    reference = as_diffusers(unet, job) if any(impl == "diffusers" for impl, _ in job.configs) else None
    configs = [Configuration(impl, ratio, job, unet if impl == "minitome" else reference) for impl, ratio in job.configs]
    results = [{"impl": c.impl, "ratio": c.ratio, "times": []} for c in configs]
    latent = tuple(job.latent)
    for i, (c, result) in enumerate(zip(configs, results)):
        progress(f"warm-up {i + 1}/{len(configs)}: {c.name()}")
        c.prepare()
        if c.impl == "minitome":
            with flop_counter() as counter:  # the warm-up call, counted
                c.call(x, t, context)
            blocks = merged_blocks(unet, c.tome, latent, job.batch, device, dtype) if c.tome else []
            result.update(gflop=counter.get_total_flops() / 1e9, tokens=[f"{b[0].shape[1]}→{b[2]}" for b in blocks],
                          merge_seconds=time_merging(blocks, c.tome, latent, device) if blocks else 0.0)
            del blocks
        else:
            c.call(x, t, context)
    for k in range(job.repeats):
        for j in range(len(configs)):
            i = (j + k) % len(configs)  # each round starts one configuration further on
            configs[i].prepare()
            _, seconds = stopwatch(lambda: configs[i].call(x, t, context), 1, device, warmup=False)
            results[i]["times"].append(seconds)
            progress(f"round {k + 1}/{job.repeats}: {configs[i].name()} {seconds:.2f} s")
    for result in results:
        result["seconds"] = statistics.median(result["times"])
    return {"configs": results}


def measure(job: Job) -> dict:
    return measure_memory(job) if job.part == "memory" else measure_time(job)


if __name__ == "__main__":
    print(json.dumps(measure(Job(**json.loads(sys.argv[1])))))
