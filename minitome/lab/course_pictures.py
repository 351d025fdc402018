"""Five pictures for tutorial.md, each drawn from the modules and shapes it shows (`python -m minitome.lab.visualize`).

Where this sits: beside visualize.py's token pictures; nothing here is typed in that the code can say.
- `noise.png` (chapter 0): ᾱ_t and σ_t = √((1 − ᾱ_t) / ᾱ_t) against t, from `sampler/schedule.py`, and x_t of
  the drawn landscape at five t, made by the forward process;
- `unet.png` (chapter 3): the UNet as a U, from `UNetConfig.layout()`: its input blocks going down, the middle,
  its output blocks coming up, each skip, the 16 transformer blocks, and DeepCache's shallow branch (branch 0)
  against the deep part it keeps;
- `block.png` (chapter 4): one transformer block with merge and unmerge inside its self-attention residual, its
  token counts from `tome_plan` at ratio 0.5 on a full-resolution grid;
- `worked.png` (chapter 4): the 4 × 4 worked example, an arrow from each merged src to its dst, from `match`;
- `attention_share.png` (chapter 5): the share of a UNet call that the five full-resolution self-attentions take,
  against the image size, counted by torch's FlopCounterMode on the `meta` device.
ASCII labels: the font (common.FONT) has no Greek letters.
"""
import math
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.flop_counter import FlopCounterMode

from minitome.tome import BlockSettings, ToMeConfig, match, partition, tome_plan
from sampler.schedule import alphas_cumprod
from unet import UNetConfig, UNetModel
from unet.attention import BasicTransformerBlock
from .common import FONT

WORKED = [[1, 0], [4, 1], [0, 1], [1, 5], [3, 2], [3, 4], [0, 2], [-1, 3],
          [-1, 0], [-6, -1], [0, -1], [2, -7], [-5, 2], [-3, -5], [2, -1], [-5, -4]]  # chapter 4's 16 tokens
ORANGE, BLUE, GREEN, GREY = (235, 150, 60), (40, 70, 170), (60, 140, 60), (120, 120, 120)


def plot(d, box: tuple, xs, ys, colour, y_range: tuple, log: bool = False):
    """A polyline of (xs, ys) inside box (left, top, right, bottom); xs over their own range."""
    left, top, right, bottom = box
    lo, hi = (math.log10(v) for v in y_range) if log else y_range
    x_lo, x_hi = min(xs), max(xs)
    points = [(left + (right - left) * (x - x_lo) / (x_hi - x_lo),
               bottom - (bottom - top) * ((math.log10(y) if log else y) - lo) / (hi - lo)) for x, y in zip(xs, ys)]
    d.line(points, fill=colour, width=2)
    return points


def noise_picture(x0: Image.Image, ts=(0, 250, 500, 750, 999), thumb: int = 120) -> Image.Image:
    acp = alphas_cumprod().double()
    sigma = ((1 - acp) / acp).sqrt()
    out = Image.new("RGB", (40 + len(ts) * (thumb + 30) + 20, 440), "white")
    d = ImageDraw.Draw(out)
    t_axis = list(range(1000))
    panels = [("alpha-bar_t: the signal's share of the variance (0 to 1)", acp, (0, 1), False, BLUE),
              ("sigma_t, log scale (0.02 to 20)", sigma, (0.02, 20), True, ORANGE)]
    for i, (title, values, y_range, log, colour) in enumerate(panels):
        left = 40 + i * (out.width - 60) // 2
        box = (left, 40, left + (out.width - 140) // 2, 200)
        d.rectangle(box, outline=GREY)
        d.text((box[0], 18), title, fill="black", font=FONT)
        plot(d, box, t_axis, values.tolist(), colour, y_range, log)
        for t, anchor in ((0, "la"), (500, "ma"), (999, "ra")):
            x = box[0] + (box[2] - box[0]) * t / 999
            d.text((x, box[3] + 4), f"t={t}", fill="black", font=FONT, anchor=anchor)
    pixels = torch.from_numpy(np.asarray(x0.resize((thumb, thumb)), dtype=np.float32) / 127.5 - 1)
    noise = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
    d.text((40, 226), "sigma_t = sqrt((1 - alpha-bar_t) / alpha-bar_t), the noise's size against the signal's.",
           fill="black", font=FONT)
    d.text((40, 242), "Below: x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) noise, on a picture's pixels in [-1, 1]",
           fill="black", font=FONT)
    for k, t in enumerate(ts):
        x_t = acp[t].sqrt() * pixels + (1 - acp[t]).sqrt() * noise
        image = Image.fromarray(((x_t.clamp(-1, 1) + 1) * 127.5).round().byte().numpy())
        x = 40 + k * (thumb + 30)
        out.paste(image, (x, 262))
        d.text((x, 262 + thumb + 4), f"t = {t}", fill="black", font=FONT)
        d.text((x, 262 + thumb + 20), f"alpha-bar {acp[t]:.3f}", fill="black", font=FONT)
    return out


def unet_picture() -> Image.Image:
    layout = UNetConfig().layout()
    ins, outs, middle = layout["input_blocks"], layout["output_blocks"], layout["middle_block"]
    row, bw, bh, shift = 34, 170, 26, 46  # block rows, box size, the indent of each level
    out = Image.new("RGB", (900, 80 + row * len(ins) + 90), "white")
    d = ImageDraw.Draw(out)
    shallow = {("input", 0), ("output", len(outs) - 1)}  # DeepCache branch 0: conv_in, and the last output block

    def block(x, y, layers, name, kind):
        attn = sum(layer.kind == "attn" for layer in layers)
        kept = (kind, name) not in shallow
        d.rectangle([x, y, x + bw, y + bh], fill=(225, 225, 225) if kept else (215, 240, 215),
                    outline=ORANGE if attn else GREY, width=3 if attn else 1)
        label = f"{kind[0]}{name}: " + " + ".join(layer.kind for layer in layers) + f", level {layers[0].level}"
        d.text((x + 6, y + 6), label, fill="black", font=FONT)
        return attn

    transformers = 0
    for i, layers in enumerate(ins):
        transformers += block(20 + shift * layers[-1].level, 64 + row * i, layers, i, "input")
    for j, layers in enumerate(outs):
        i = len(outs) - 1 - j  # output block j sits level with input block i, its skip's source
        x = out.width - 20 - bw - shift * layers[0].level
        transformers += block(x, 64 + row * i, layers, j, "output")
        skip_from = 20 + shift * ins[i][-1].level + bw
        d.line([(skip_from, 64 + row * i + bh // 2), (x, 64 + row * i + bh // 2)], fill=(150, 150, 200), width=1)
    y = 64 + row * len(ins) + 12
    transformers += block(out.width // 2 - bw // 2, y, list(middle), "", "middle")
    bottom = 64 + row * (len(ins) - 1) + bh  # the deepest blocks hand on to the middle, and take from it
    d.line([(20 + shift * 3 + bw // 2, bottom), (out.width // 2 - bw // 2, y + bh // 2)], fill=GREY, width=2)
    d.line([(out.width // 2 + bw // 2, y + bh // 2), (out.width - 20 - shift * 3 - bw // 2, bottom)], fill=GREY, width=2)
    d.text((20, 6), "the UNet as a U: input blocks (i) down the left, the middle (m), output blocks (o) up the right;",
           fill="black", font=FONT)
    d.text((20, 22), f"a line from each input block to its twin: the skip it concatenates; orange: the {transformers} "
                     "transformer blocks", fill="black", font=FONT)
    d.text((20, 38), "DeepCache, branch 0: green = the shallow branch, run at every call; grey = the deep part, kept "
                     "from the last whole call", fill=GREEN, font=FONT)
    return out.crop((0, 0, out.width, y + bh + 14))


def block_picture(side: int = 64, ratio: float = 0.5) -> Image.Image:
    n = side * side
    left = tome_plan(torch.randn(1, n, 4), (side, side), BlockSettings((side, side), ToMeConfig(ratio=ratio))).tokens_left
    with torch.device("meta"):
        c = BasicTransformerBlock(320, 768, 8, "sdpa").attn1.to_q.in_features
    out = Image.new("RGB", (700, 520), "white")
    d = ImageDraw.Draw(out)
    d.text((20, 8), f"one transformer block at full resolution ({side} x {side} latent, 512 x 512 image),",
           fill="black", font=FONT)
    d.text((20, 24), f"ToMe {ratio:g} inside its self-attention residual; with ToMe off, merge and unmerge do nothing",
           fill="black", font=FONT)
    x, w, y = 230, 300, 56

    def box(label, fill, width=w):
        nonlocal y
        d.rectangle([x, y, x + width, y + 34], fill=fill, outline=GREY)
        d.text((x + 8, y + 10), label, fill="black", font=FONT)
        d.line([(x + w // 2, y + 34), (x + w // 2, y + 50)], fill="black", width=2)
        y += 50

    box(f"x: N = {n} tokens of C = {c}", (255, 255, 255))
    top = y - 8
    box("LayerNorm (norm1)", (240, 240, 240))
    box(f"merge: {n} -> {left} tokens (averages)", (250, 220, 190))
    box(f"self-attention (attn1) on {left} tokens", (250, 235, 210))
    box(f"unmerge: {left} -> {n} tokens (copies back)", (250, 220, 190))
    d.ellipse([x + w // 2 - 11, y, x + w // 2 + 11, y + 22], outline="black", width=2)
    d.text((x + w // 2, y + 11), "+", fill="black", font=FONT, anchor="mm")
    d.line([(x + w // 2, top), (x - 40, top), (x - 40, y + 11), (x + w // 2 - 11, y + 11)], fill=BLUE, width=2)
    d.text((20, (top + y) // 2 - 8), "the residual: x itself,", fill=BLUE, font=FONT)
    d.text((20, (top + y) // 2 + 8), f"all {n} tokens, unmerged", fill=BLUE, font=FONT)
    d.line([(x + w // 2, y + 22), (x + w // 2, y + 38)], fill="black", width=2)
    y += 38
    box("norm2, cross-attention (attn2) to the 77 text tokens, +", (235, 240, 250), w + 60)
    box("norm3, feed-forward (ff), +", (235, 240, 250), w + 60)
    return out.crop((0, 0, out.width, y - 14))


def worked_picture(cell: int = 70) -> Image.Image:
    x = torch.tensor(WORKED, dtype=torch.float32)[None]
    src, dst = partition(4, 4, sx=2, sy=2)
    slot = match(x, src, dst, 8)
    kept = len(src) - 8
    out = Image.new("RGB", (4 * cell + 300, 4 * cell + 70), "white")
    d = ImageDraw.Draw(out)
    centre = lambda n: (20 + (n % 4) * cell + cell // 2, 40 + (n // 4) * cell + cell // 2 + 8)  # below the label  # noqa: E731
    for n in range(16):
        cx, cy = centre(n)
        cy -= 8
        fill = (240, 170, 170) if n in dst.tolist() else (235, 235, 235) if slot[0, n] < kept else (255, 255, 255)
        d.rectangle([cx - cell // 2, cy - cell // 2, cx + cell // 2, cy + cell // 2], fill=fill, outline=GREY)
        d.text((cx - cell // 2 + 4, cy - cell // 2 + 3), f"{n}: ({WORKED[n][0]}, {WORKED[n][1]})", fill="black", font=FONT)
    for r in range(0, 5, 2):
        d.line([(20, 40 + r * cell), (20 + 4 * cell, 40 + r * cell)], fill="black", width=2)
        d.line([(20 + r * cell, 40), (20 + r * cell, 40 + 4 * cell)], fill="black", width=2)
    for n in src.tolist():
        if slot[0, n] >= kept:
            (ax, ay), (bx, by) = centre(n), centre(dst[int(slot[0, n]) - kept].item())
            length = math.hypot(bx - ax, by - ay)
            ux, uy = (bx - ax) / length, (by - ay) / length
            tip = (bx - 14 * ux, by - 14 * uy)
            d.line([(ax + 10 * ux, ay + 10 * uy), tip], fill=BLUE, width=2)
            d.polygon([tip, (tip[0] - 9 * ux + 5 * uy, tip[1] - 9 * uy - 5 * ux),
                       (tip[0] - 9 * ux - 5 * uy, tip[1] - 9 * uy + 5 * ux)], fill=BLUE)
    d.text((20, 12), "chapter 4's worked example at ratio 0.5: 8 src merge, each arrow to its dst", fill="black", font=FONT)
    notes = ["red: the dst (top-left of each 2 x 2 cell)", "white: a src that merges", "grey: a src that stays",
             "", "thick lines: the 2 x 2 cells"]
    for k, note in enumerate(notes):
        d.text((40 + 4 * cell, 60 + 18 * k), note, fill="black", font=FONT)
    return out


@lru_cache()
def attention_share(sides=(32, 48, 64, 96, 128, 160, 192)) -> list:
    """(image side in pixels, the share of one UNet call's FLOPs in the five full-resolution self-attentions)."""
    with torch.device("meta"):  # counted once per process (the FLOPs of a shape never change)
        unet = UNetModel()
    shares = []
    for side in sides:
        with torch.device("meta"), FlopCounterMode(display=False) as counter:
            unet(torch.zeros(1, 4, side, side), torch.tensor([500]), torch.zeros(1, 77, 768))
        n, c = side * side, unet.config.model_channels
        shares.append((8 * side, 5 * (8 * n * c * c + 4 * n * n * c) / counter.get_total_flops()))
    return shares


def share_picture() -> Image.Image:
    shares = attention_share()
    out = Image.new("RGB", (720, 330), "white")
    d = ImageDraw.Draw(out)
    box = (60, 40, 690, 270)
    d.rectangle(box, outline=GREY)
    d.text((20, 12), "share of a UNet call in the five full-resolution self-attentions (what ToMe merges), by image side",
           fill="black", font=FONT)
    half = (box[1] + box[3]) // 2
    d.line([(box[0], half), (box[2], half)], fill=(220, 220, 220))
    d.text((box[0] - 36, half - 7), "50%", fill=GREY, font=FONT)
    points = plot(d, box, [s for s, _ in shares], [v for _, v in shares], ORANGE, (0, 1))
    for (side, value), (px, py) in zip(shares, points):
        d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=ORANGE)
        d.text((px - 12, py - 20), f"{100 * value:.0f}%", fill="black", font=FONT)
        d.text((px - 14, box[3] + 6), str(side), fill="black", font=FONT)
    d.text((box[0], box[3] + 26), "image side in pixels (the latent is side / 8); 0% at the bottom, 100% at the top",
           fill="black", font=FONT)
    return out
