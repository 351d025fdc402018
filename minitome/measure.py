"""One benchmark configuration, measured in a process of its own (`python -m minitome.bench` starts these).

Where this sits: `minitome/bench.py` runs `python -m minitome.measure '<json settings>'` once per row and
implementation, so every peak-memory figure belongs to that configuration alone. Prints one JSON line:

- seconds: median of `repeats` UNet calls after one warm-up call;
- peak_mb: memory above the loaded weights at the peak of those calls. CUDA: max allocated. CPU: the
  process's peak resident set (reset through /proc/self/clear_refs) during one call after a warm-up,
  above the resident set just before it, measured in a second process of its own (settings
  "part": "memory") that bench.py starts with glibc's MALLOC_MMAP_THRESHOLD_ at 256 KiB. With that
  setting every freed tensor goes back to the system at once, so the resident set follows the
  tensors alive (at 512², plain attention, it equals the profiler's count of live tensor bytes to the
  MB: 1,134 and 331 MB at ratios 0 and 0.5); with glibc's defaults it also holds whatever freed
  memory the allocator kept, 100–200 MB that varied by ±30 MB from run to run. The setting slows
  calls (9.5 → 11.3 s), which is why the timing runs in the first process, with the defaults;
- gflop: the call's floating-point operations, counted by torch's FlopCounterMode during the warm-up;
- merge_seconds (minitome only): the same ToMe functions (plan = similarity + matching, merge, unmerge)
  timed on the block shapes of this call, outside the UNet; tokens: N → N − r for each merged block.
"""
import json
import statistics
import sys
import time

import torch

from unet import UNetConfig, UNetModel, packed_conv
from .tome import ToMeArgs, ToMeConfig, tome_plan, IDENTITY


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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_unet(s: dict, device, dtype) -> UNetModel:
    if s.get("weights"):
        from weights import load_unet
        return load_unet(s["weights"], device, dtype, s["attention"])
    torch.manual_seed(0)  # the same random weights in every process, minitome's and diffusers'
    unet = UNetModel(UNetConfig(attention=s["attention"]))
    return unet.to(device=device, dtype=dtype).eval().requires_grad_(False).channels_last().pack_convolutions()


def as_diffusers(unet: UNetModel, s: dict):
    """The same weights in diffusers' UNet2DConditionModel, with tomesd applied when ratio > 0."""
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
    if s["attention"] == "plain":
        reference.set_attn_processor(AttnProcessor())  # softmax(QKᵀ/√D)V in plain PyTorch
    if s["ratio"] > 0:
        import tomesd
        tomesd.apply_patch(reference, ratio=s["ratio"], max_downsample=s["max_downsample"])
    return lambda x, t, context: reference(x, t, context).sample


def merged_blocks(unet: UNetModel, s: dict, batch: int, device, dtype) -> list:
    """(B, N, C), (h, w) and N − r of every transformer block that merges in this call."""
    c, (H, W) = unet.config, s["latent"]
    grids, h, w = [], H, W
    for level, mult in enumerate(c.channel_mult):
        if level in c.attention_levels:
            grids += [((h, w), c.model_channels * mult)] * (2 * c.num_res_blocks + 1)  # down + up
        if level != len(c.channel_mult) - 1:
            h, w = (h + 1) // 2, (w + 1) // 2
    grids.append(((h, w), c.model_channels * c.channel_mult[-1]))  # the middle block
    config = ToMeConfig(ratio=s["ratio"], max_downsample=s["max_downsample"])
    blocks = []
    for (h, w), C in grids:
        x = torch.randn(batch, h * w, C, device=device, dtype=dtype)
        plan = tome_plan(x, (h, w), ToMeArgs(config, (H, W), torch.Generator().manual_seed(0)))
        if plan is not IDENTITY:
            blocks.append((x, (h, w), plan.num_merged))
    return blocks


def time_merging(blocks, s, device, repeats: int = 5) -> float:
    """Seconds per UNet call spent in the ToMe functions themselves, on this call's block shapes."""
    config = ToMeConfig(ratio=s["ratio"], max_downsample=s["max_downsample"])
    generator = torch.Generator().manual_seed(0)

    def once():
        for x, hw, _ in blocks:
            plan = tome_plan(x, hw, ToMeArgs(config, tuple(s["latent"]), generator))
            plan.unmerge_attn(plan.merge_attn(x))

    once()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    sync(device)
    return (time.perf_counter() - start) / repeats


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


@torch.no_grad()
def measure(s: dict) -> dict:
    device, dtype = torch.device(s["device"]), getattr(torch, s["dtype"])
    unet = build_unet(s, device, dtype)
    batch, (H, W) = s["batch"], s["latent"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, H, W, generator=g).to(device, dtype)
    context = torch.randn(batch, 77, unet.config.context_dim, generator=g).to(device, dtype)
    t = torch.full((batch,), 500, device=device)
    result = {}
    if s["impl"] == "diffusers":
        call = as_diffusers(unet, s)
        del unet
    else:
        tome = ToMeConfig(ratio=s["ratio"], max_downsample=s["max_downsample"]) if s["ratio"] > 0 else None
        generator = torch.Generator().manual_seed(0)

        def call(x, t, context):
            return unet(x, t, context, tome=tome, tome_generator=generator)

        blocks = merged_blocks(unet, s, batch, device, dtype) if tome and s.get("part") != "memory" else []
        result["tokens"] = [f"{x.shape[1]}→{kept}" for x, _, kept in blocks]
        result["merge_seconds"] = time_merging(blocks, s, device) if blocks else 0.0
        del blocks
    if s.get("part") == "memory":  # the CPU's memory process (see above): one call after a warm-up
        call(x, t, context)
        baseline = memory_now(device)
        reset_peak(device)
        call(x, t, context)
        return {"peak_mb": memory_peak(device) - baseline}
    sync(device)
    if device.type == "cuda":  # the CPU's memory figure comes from its own process ("part": "memory")
        baseline = memory_now(device)
        reset_peak(device)
    with flop_counter() as counter:  # the warm-up call, counted
        call(x, t, context)
    times = []
    for _ in range(s["repeats"]):
        sync(device)
        start = time.perf_counter()
        call(x, t, context)
        sync(device)
        times.append(time.perf_counter() - start)
    result.update(seconds=statistics.median(times), times=times, gflop=counter.get_total_flops() / 1e9)
    if device.type == "cuda":
        result["peak_mb"] = memory_peak(device) - baseline
    return result


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
