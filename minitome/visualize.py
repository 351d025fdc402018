"""`python -m minitome.visualize`: pictures of token merging, for readers (saved as PNG, used in tutorial.md).

Where this sits: a reader's companion to `minitome/tome.py`; it only calls the functions there.
Without weights it uses the 8 × 8 pixel patches of a picture it draws (a landscape: sky, sun,
hills, lake) as tokens, 64 × 64 of them for 512², like the latent of a 512² image. Pictures:

- `partitions.png`: the dst choices of the paper's Figure 5 (alternating, 2-stride grid, fully
  random, random one-of-2×2), dst filled, over a 16 × 16 corner of the token grid;
- `merges.png`: which tokens merge at ratios 0.3, 0.5 and 0.6: each dst and the src merged into it
  share a colour; kept src show the picture;
- `similarity.png`: each src's best cosine similarity to a dst (bright: merged first);
- `schedule.png`: tokens left in each of SD 1.5's 16 transformer blocks at every UNet call of a
  50-step PLMS run at 512², merging 60% → 40% over the run with max_downsample 2.

With --weights the tokens of `merges.png` and `similarity.png` are real: the input of one transformer
block (--block, 0–15 in the order the UNet runs them) at one UNet call (--call, -1: the last) while
generating --prompt, drawn over the generated image (also saved, as `image.png`).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .checks import check_steps_flag, writable_folder
from .tome import IDENTITY, PARTITION_METHODS, ToMeArgs, ToMeConfig, match, partition, partition_variant, tome_plan

PATCH = 8


def landscape(size: int = 512) -> Image.Image:
    """A drawn scene with large smooth regions (sky, lake) and detail (sun, hills, reeds), with grain."""
    img = Image.new("RGB", (size, size))
    d = ImageDraw.Draw(img)
    for y in range(size // 2):  # sky: a vertical gradient
        t = y / (size / 2)
        d.line([(0, y), (size, y)], fill=(int(90 + 120 * t), int(150 + 80 * t), int(235 - 20 * t)))
    d.ellipse([size * 0.68, size * 0.1, size * 0.86, size * 0.28], fill=(255, 220, 90))
    d.polygon([(0, size * 0.55), (size * 0.3, size * 0.3), (size * 0.55, size * 0.52), (size * 0.8, size * 0.35),
               (size, size * 0.5), (size, size * 0.62), (0, size * 0.62)], fill=(70, 120, 60))
    d.rectangle([0, size * 0.62, size, size], fill=(40, 90, 140))  # lake
    rng = np.random.default_rng(0)
    for x in rng.integers(0, size, 40):  # reeds in the foreground
        d.line([(int(x), size), (int(x) + int(rng.integers(-15, 15)), int(size * 0.8))], fill=(30, 60, 20), width=3)
    grain = rng.normal(0, 6, (size, size, 3))  # film grain: no two patches exactly equal, as in a photograph
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + grain, 0, 255).round().astype(np.uint8))


def patch_tokens(img: Image.Image) -> torch.Tensor:
    """(1, N, 3·8·8) tokens: each 8 × 8 patch's pixels, centred on the picture's mean colour."""
    a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255)
    h, w = a.shape[0] // PATCH, a.shape[1] // PATCH
    patches = a[: h * PATCH, : w * PATCH].reshape(h, PATCH, w, PATCH, 3).permute(0, 2, 1, 3, 4).reshape(h * w, -1)
    return (patches - patches.mean(0))[None], (h, w)


def block_input(sd, prompt: str, size: int, steps: int, block: int = 0, call: int = -1, seed: int = 0):
    """Generate an image and catch the input of transformer block `block` at UNet call `call` (-1: the
    last): returns (tokens (1, N, C) of the prompt's half of the guidance batch, (h, w), the image)."""
    from unet.attention import BasicTransformerBlock
    from .pipeline import generate
    blocks = [m for m in sd.unet.modules() if isinstance(m, BasicTransformerBlock)]
    if not 0 <= block < len(blocks):
        raise ValueError(f"block must be in 0 … {len(blocks) - 1}, got {block}")
    caught, calls = {}, [0]

    def catch(module, args):  # args of BasicTransformerBlock.forward: (x, context, hw, tome)
        if call in (-1, calls[0]):
            caught["tokens"], caught["hw"] = args[0][-1:].float().cpu(), args[2]  # [uncond, cond]: the cond half
        calls[0] += 1

    hook = blocks[block].register_forward_pre_hook(catch)
    try:
        image = generate(sd, prompt, steps=steps, seed=seed, width=size, height=size)[0]
    finally:
        hook.remove()
    if "tokens" not in caught:
        raise ValueError(f"call must be -1 or in 0 … {calls[0] - 1} (the UNet calls of {steps} steps), got {call}")
    return caught["tokens"], caught["hw"], image


def draw_partition(ax: ImageDraw.ImageDraw, origin, dst, h, w, cell):
    x0, y0 = origin
    dst = set(dst.tolist())
    for n in range(h * w):
        r, c = divmod(n, w)
        box = [x0 + c * cell, y0 + r * cell, x0 + (c + 1) * cell - 2, y0 + (r + 1) * cell - 2]
        ax.rectangle(box, fill=(220, 60, 60) if n in dst else (235, 235, 235), outline=(150, 150, 150))


def partitions_picture(seed: int = 0) -> Image.Image:
    h = w = 16
    cell, pad, label = 14, 20, 24
    panel = w * cell
    out = Image.new("RGB", (len(PARTITION_METHODS) * (panel + pad) + pad, panel + 2 * pad + label), "white")
    d = ImageDraw.Draw(out)
    for i, method in enumerate(("alternating", "grid", "random", "random2x2")):
        _, dst = partition_variant(h, w, method, torch.Generator().manual_seed(seed))
        x0 = pad + i * (panel + pad)
        d.text((x0, pad // 2), f"{method}: {len(dst)} dst (red)", fill="black")
        draw_partition(d, (x0, pad + label), dst, h, w, cell)
    return out


def groups_overlay(img: Image.Image, slot: torch.Tensor, num_kept: int, hw) -> Image.Image:
    """The picture with each merged group (a dst and its src) painted one random colour."""
    h, w = hw
    ph, pw = img.height // h, img.width // w  # pixels per token
    colours = np.random.default_rng(1).integers(40, 256, (int(slot.max()) + 1, 3))
    a = np.asarray(img).copy()
    members = np.bincount(slot.numpy(), minlength=len(colours))
    for n, s in enumerate(slot.tolist()):
        if s >= num_kept and members[s] > 1:  # a dst that took at least one src
            r, c = divmod(n, w)
            a[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = colours[s]
    return Image.fromarray(a)


def merges_picture(img: Image.Image, tokens: torch.Tensor, hw, ratios=(0.3, 0.5, 0.6), seed: int = 0,
                   what: str = "tokens (8x8 patches)") -> Image.Image:
    h, w = hw
    src, dst = partition(h, w, 2, 2, torch.Generator().manual_seed(seed))
    panels = [img]
    for ratio in ratios:
        r = min(int(h * w * ratio), src.numel())
        slot = match(tokens, src, dst, r)[0]
        panels.append(groups_overlay(img, slot, src.numel() - r, (h, w)))
    pad, label = 10, 20
    out = Image.new("RGB", (len(panels) * (img.width + pad) + pad, img.height + label + pad), "white")
    d = ImageDraw.Draw(out)
    for i, (panel, title) in enumerate(zip(panels, [what] + [f"ratio {r}" for r in ratios])):
        out.paste(panel, (pad + i * (img.width + pad), label))
        d.text((pad + i * (img.width + pad), 4), title, fill="black")
    return out


def similarity_picture(img: Image.Image, tokens: torch.Tensor, hw, seed: int = 0) -> Image.Image:
    h, w = hw
    src, dst = partition(h, w, 2, 2, torch.Generator().manual_seed(seed))
    unit = tokens[0] / tokens[0].norm(dim=-1, keepdim=True)
    best = (unit[src] @ unit[dst].T).max(dim=-1).values
    grid = torch.zeros(h * w)
    grid[src] = (best.clamp(-1, 1) + 1) / 2
    grid[dst] = 0
    pixels = (grid.reshape(h, w).numpy() * 255).astype(np.uint8)
    return Image.fromarray(pixels).resize((img.width, img.height), Image.NEAREST)


def linear_schedule(start: float, end: float, **config):
    """ratio going from `start` at t = 1000 to `end` at t = 0: a ToMe schedule for `generate`."""
    return lambda t: ToMeConfig(ratio=round(end + (start - end) * t / 1000, 4), **config)


def schedule_picture(schedule=linear_schedule(0.6, 0.4, max_downsample=2), steps: int = 50) -> Image.Image:
    from sampler.schedule import timesteps
    grids = [64] * 5 + [32] * 5 + [16] * 5 + [8]  # the 16 blocks at a 64 × 64 latent, by level
    ts = timesteps(steps)
    calls = [ts[0], ts[1]] + ts[1:]  # PLMS: the first step calls the UNet twice
    kept = np.ones((len(grids), len(calls)))
    for j, t in enumerate(calls):
        for i, n in enumerate(grids):
            plan = tome_plan(torch.zeros(1, n * n, 1) + 1, (n, n), ToMeArgs(schedule(t), (64, 64), None))
            kept[i, j] = 1.0 if plan is IDENTITY else plan.num_merged / (n * n)
    cw, ch, left, top = 8, 14, 120, 24
    out = Image.new("RGB", (left + cw * len(calls) + 10, top + ch * len(grids) + 24), "white")
    d = ImageDraw.Draw(out)
    d.text((left, 4), "tokens kept per block and UNet call (white: all; darker: fewer)", fill="black")
    for i, n in enumerate(grids):
        d.text((4, top + i * ch), f"block {i + 1:2d}: {n}x{n}", fill="black")
        for j in range(len(calls)):
            v = int(255 * (kept[i, j] - 0.3) / 0.7)
            d.rectangle([left + j * cw, top + i * ch, left + (j + 1) * cw - 1, top + (i + 1) * ch - 2], fill=(v, v, 255))
    d.text((left, top + ch * len(grids) + 6), f"call 1 (t={calls[0]}) ... call {len(calls)} (t={calls[-1]})", fill="black")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minitome.visualize", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/pictures", help="folder for the PNG files")
    p.add_argument("--size", type=int, default=256, help="picture size in pixels (a multiple of 16; with --weights, of 8)")
    p.add_argument("--weights", help="official file or diffusers folder: real hidden states over a generated image")
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--block", type=int, default=0, help="transformer block whose input is drawn (0–15)")
    p.add_argument("--call", type=int, default=-1, help="UNet call whose tokens are drawn (-1: the last)")
    args = p.parse_args(argv)
    step = 8 if args.weights else 16
    try:
        if args.size <= 0 or args.size % step:
            raise ValueError(f"--size must be a positive multiple of {step}, got {args.size}")
        out = writable_folder(Path(args.out), "--out")
        if args.weights:
            check_steps_flag(args.steps, "--steps")
            import weights
            sd = weights.load(args.weights)
            tokens, hw, img = block_input(sd, args.prompt, args.size, args.steps, args.block, args.call)
            what = f"block {args.block}, call {args.call}: {hw[0]}x{hw[1]} tokens"
        else:
            img = landscape(args.size)
            (tokens, hw), what = patch_tokens(img), "tokens (8x8 patches)"
    except (ValueError, OSError) as error:  # WeightsError is a ValueError
        print(f"minitome.visualize: error: {error}", file=sys.stderr)
        return 2
    pictures = [("partitions", partitions_picture()), ("merges", merges_picture(img, tokens, hw, what=what)),
                ("similarity", similarity_picture(img, tokens, hw)), ("schedule", schedule_picture())]
    pictures = [(name, picture.quantize(colors=256)) for name, picture in pictures]  # small files to commit
    try:
        for name, picture in pictures + ([("image", img)] if args.weights else []):
            picture.save(out / f"{name}.png", optimize=True)
            print(out / f"{name}.png")
    except OSError as error:
        print(f"minitome.visualize: error: {out}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
