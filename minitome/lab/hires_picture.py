"""`hires.png`: the chain of a hires image, each stage drawn as wide as its arithmetic (tutorial chapter 5).

Where this sits: `python -m minitome.lab.visualize` draws it beside the token pictures; the benchmark's `--hires`
mode (hires.py) times the same chain. The FLOPs are counted, not typed in: SD 1.5-size modules run on the `meta`
device (shapes only) under torch's FlopCounterMode, one guided UNet call (batch 2) at each size and the VAE
decoder at the large one. The chain: DPM++ 2M Karras, 20 steps at 512²; the latents upscaled 2×; an img2img pass
of 20 steps at strength 0.5 (10 UNet calls) at 1024²; the decoder. Inside each pass, the share of its five
full-resolution self-attentions, what ToMe at max_downsample 1 merges, is drawn darker.
"""
from functools import lru_cache

import torch
from PIL import Image, ImageDraw
from torch.utils.flop_counter import FlopCounterMode

from minitome.vae import VAEDecoder
from unet import UNetModel
from unet.attention import BasicTransformerBlock
from .common import FONT

FIRST, SCALE, FIRST_CALLS, HIRES_CALLS = 512, 2, 20, 10


def counted(run) -> float:
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 1e9


def call_gflop(unet: UNetModel, side: int) -> tuple:
    """(GFLOP of one guided UNet call at a side × side image, GFLOP of its full-resolution self-attentions)."""
    latent = side // 8
    full = [m.attn1 for m in unet.modules() if isinstance(m, BasicTransformerBlock)
            and m.attn1.to_q.in_features == unet.config.model_channels]
    seen = []
    hooks = [a.register_forward_hook(lambda m, args, out: seen.append(args[0].shape)) for a in full]
    try:
        total = counted(lambda: unet(torch.zeros(2, 4, latent, latent), torch.tensor([500, 500]), torch.zeros(2, 77, 768)))
    finally:
        for hook in hooks:
            hook.remove()
    attention = sum(counted(lambda s=s: full[0](torch.zeros(s))) for s in seen)
    return total, attention


@lru_cache()
def chain() -> list:
    """(label, GFLOP, GFLOP of full-resolution self-attention) for each stage of the chain (counted once per process)."""
    with torch.device("meta"):
        unet, vae = UNetModel(), VAEDecoder()
    large = FIRST * SCALE
    first, first_attention = call_gflop(unet, FIRST)
    hires, hires_attention = call_gflop(unet, large)
    decoder = counted(lambda: vae(torch.zeros(1, 4, large // 8, large // 8)))
    return [(f"first pass, {FIRST}x{FIRST}: {FIRST_CALLS} UNet calls", FIRST_CALLS * first, FIRST_CALLS * first_attention),
            (f"latents upscaled x{SCALE} (bilinear)", 0.0, 0.0),
            (f"hires pass, {large}x{large}: {HIRES_CALLS} UNet calls", HIRES_CALLS * hires, HIRES_CALLS * hires_attention),
            (f"VAE decoder, {large}x{large}", decoder, 0.0)]


def hires_picture(width: int = 760) -> Image.Image:
    stages = chain()
    total = sum(g for _, g, _ in stages)
    font = FONT
    left, top, bar, gap = 10, 46, 34, 52
    span = width - 2 * left
    out = Image.new("RGB", (width, top + len(stages) * gap + 40), "white")
    d = ImageDraw.Draw(out)
    d.text((left, 10), f"a {FIRST}x{FIRST} -> {FIRST * SCALE}x{FIRST * SCALE} hires image, guided: {total / 1000:,.0f} "
                       "TFLOP; each bar as wide as its stage's arithmetic", fill="black", font=font)
    d.text((left, 26), "dark: the full-resolution self-attention, what ToMe merges", fill=(40, 40, 140), font=font)
    x = left
    for i, (label, gflop, attention) in enumerate(stages):
        y = top + i * gap
        w = span * gflop / total
        if gflop:
            d.rectangle([x, y, x + w, y + bar], fill=(170, 190, 230), outline="black")
            d.rectangle([x, y, x + span * attention / total, y + bar], fill=(40, 40, 140))
        share = f", {100 * attention / gflop:.0f}% self-attention" if attention else ""
        text = f"{label}: {gflop / 1000:,.1f} TFLOP ({100 * gflop / total:.0f}%){share}" if gflop else label
        below = y + bar + 2 if gflop else y + bar // 2 - 7  # a stage without arithmetic: its name on its row
        d.text((min(x, width - 10 - d.textlength(text, font=font)), below), text, fill="black", font=font)
        x += w
    return out
