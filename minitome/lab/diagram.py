"""The pipeline map for tutorial.md: every stage of one 512² image with guidance, and its tensors' shapes.

Where this sits: `python -m minitome.lab.visualize` draws it as `docs/pictures/pipeline.png`. The shapes
are not typed in: the SD 1.5-size modules run on the `meta` device (shapes only, no memory, no
arithmetic), and ToMe's token counts come from `tome_plan` on tokens of each block's size.
"""
import torch
from PIL import Image, ImageDraw

from minitome.clip import CLIPTextModel
from minitome.tome import IDENTITY, BlockSettings, ToMeConfig, tome_plan
from minitome.vae import VAEDecoder
from unet import UNetConfig, UNetModel
from .common import FONT


def shapes(size: int = 512, steps: int = 50, ratio: float = 0.5) -> dict:
    """The shapes of one image's run: ids, context, latents, the UNet's input and output, the image; and per
    transformer block level (h, w, channels, blocks, tokens after ToMe at `ratio`)."""
    with torch.device("meta"):
        clip, unet, vae = CLIPTextModel(), UNetModel(), VAEDecoder()
        ids = torch.zeros(2, 77, dtype=torch.long)  # [negative prompt, prompt]
        context = clip(ids)
        latents = torch.zeros(1, 4, size // 8, size // 8)
        pair = torch.cat([latents, latents])
        eps = unet(pair, torch.tensor([981, 981]), context)
        image = vae(latents)
    levels = {}
    for h, w, channels in UNetConfig().transformer_grids(tuple(latents.shape[-2:])):
        plan = tome_plan(torch.randn(1, h * w, 4), (h, w), BlockSettings((size // 8, size // 8), ToMeConfig(ratio=ratio)))
        left = h * w if plan is IDENTITY else plan.tokens_left
        entry = levels.setdefault((h, w, channels), [0, left])
        entry[0] += 1
    return {"ids": tuple(ids.shape), "context": tuple(context.shape), "latents": tuple(latents.shape),
            "pair": tuple(pair.shape), "eps": tuple(eps.shape), "image": tuple(image.shape), "steps": steps,
            "ratio": ratio, "levels": [(h, w, c, n, left) for (h, w, c), (n, left) in levels.items()]}


def fmt(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def pipeline_picture(size: int = 512) -> Image.Image:
    """The map (ASCII labels: the picture's font has no Greek letters or arrows)."""
    s = shapes(size)
    width, box_w, x0 = 860, 380, 30
    out = Image.new("RGB", (width, 760), "white")
    d = ImageDraw.Draw(out)
    y = 20

    def box(title: str, lines: list, colour=(230, 238, 250)):
        nonlocal y
        height = 22 + 16 * len(lines)
        d.rectangle([x0, y, x0 + box_w, y + height], fill=colour, outline=(90, 90, 120))
        d.text((x0 + 8, y + 5), title, fill="black", font=FONT)
        for i, line in enumerate(lines):
            d.text((x0 + 16, y + 22 + 16 * i), line, fill=(40, 40, 40), font=FONT)
        y += height

    def arrow(label: str):
        nonlocal y
        mid = x0 + box_w // 2
        d.line([(mid, y), (mid, y + 26)], fill="black", width=2)
        d.polygon([(mid - 5, y + 20), (mid + 5, y + 20), (mid, y + 27)], fill="black")
        d.text((mid + 10, y + 7), label, fill=(30, 30, 150), font=FONT)
        y += 28

    box("prompt, negative prompt", ["two strings"])
    arrow(f"tokenizer: ids {fmt(s['ids'])}")
    box("CLIP text encoder", [f"context {fmt(s['context'])}: [uncond, cond]"])
    arrow("the UNet's cross-attention reads it at every call")
    loop_top = y
    box(f"sampler loop: PLMS, {s['steps']} steps = {s['steps'] + 1} UNet calls", [
        f"noise latents {fmt(s['latents'])} (torch.randn, seeded, on the CPU)",
        f"doubled for guidance: {fmt(s['pair'])}, t for both",
        f"UNet -> eps {fmt(s['eps'])}, split: eps_uncond, eps_cond",
        "eps = eps_uncond + 7.5 * (eps_cond - eps_uncond)",
        f"a PLMS step: latents {fmt(s['latents'])}, one noise level lower"], colour=(236, 246, 232))
    d.line([(x0 + box_w + 4, y - 12), (x0 + box_w + 20, y - 12), (x0 + box_w + 20, loop_top + 10),
            (x0 + box_w + 4, loop_top + 10)], fill=(60, 120, 60), width=2)
    d.text((x0 + box_w + 24, (loop_top + y) // 2 - 8), "repeat", fill=(60, 120, 60), font=FONT)
    arrow("latents / 0.18215")
    box("VAE decoder", [f"image {fmt(s['image'])} in [-1, 1]", "(x + 1) / 2, * 255, rounded: an 8-bit PNG"])
    # the UNet's transformer blocks, beside the loop
    ux, uy = x0 + box_w + 70, 150
    d.text((ux, uy), "inside each UNet call: 16 transformer blocks", fill="black", font=FONT)
    uy += 22
    for h, w, c, n, left in s["levels"]:
        merged = left < h * w
        fill = (250, 228, 200) if merged else (240, 240, 240)
        d.rectangle([ux, uy, ux + 340, uy + 40], fill=fill, outline=(120, 120, 120))
        d.text((ux + 8, uy + 4), f"{n} block(s) at {h}x{w}: N = {h * w} tokens, C = {c}", fill="black", font=FONT)
        note = f"ToMe {s['ratio']:g}: {h * w} -> {left} tokens in self-attention" if merged else "no merging (max_downsample 1)"
        d.text((ux + 8, uy + 21), note, fill=(150, 70, 0) if merged else (90, 90, 90), font=FONT)
        uy += 48
    d.text((ux, uy + 4), "orange: where ToMe merges, around self-attention", fill=(150, 70, 0), font=FONT)
    return out.crop((0, 0, width, max(y, uy + 30) + 20))
