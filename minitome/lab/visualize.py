"""`python -m minitome.lab.visualize`: pictures of token merging, for readers (saved as PNG, used in tutorial.md).

Where this sits: a reader's companion to `minitome/tome.py`; it only calls the functions there.
Without weights it uses the 8 × 8 pixel patches of a picture it draws (a landscape: sky, sun,
hills, lake) as tokens, 64 × 64 of them for 512², like the latent of a 512² image. Pictures:

- `partitions.png`: the dst choices of the paper's Figure 5 (random one-of-2×2, 2-stride grid, fully
  random, alternating), dst filled, over a 12 × 12 corner of the token grid with the 2 × 2 cells drawn;
- `merges.png`: which tokens merge at ratios 0.3, 0.5 and 0.6: each dst and the src merged into it
  share a colour; kept src show the picture;
- `similarity.png`: each src's best cosine similarity to a dst (bright: merged first);
- `schedule.png`: tokens left in each of SD 1.5's 16 transformer blocks at every UNet call of a
  50-step PLMS run at 512², merging 60% → 40% over the run with max_downsample 2;
- `pipeline.png`: the map of one 512² image's run, every stage with its tensors' shapes (diagram.py);
- `spacings.png`: the timesteps each spacing visits for 4, 10 and 20 steps (spacing_picture.py);
- `hires.png`: the chain of a 512² → 1024² hires image, each stage as wide as its arithmetic (hires_picture.py);
- `noise.png`, `unet.png`, `block.png`, `worked.png`, `attention_share.png`: the schedule and the forward process,
  the UNet as a U, one transformer block with merge and unmerge, the worked example's merges, and the share of a
  call in self-attention by image size (course_pictures.py).

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

from minitome.checks import check_size
from minitome.cli.flags import check_steps_flag, writable_folder
from minitome.tome import IDENTITY, BlockSettings, match, partition, tome_plan
from sampler import call_timesteps
from unet import UNetConfig
from .common import FONT, block_input
from .course_pictures import block_picture, noise_picture, share_picture, unet_picture, worked_picture
from .diagram import pipeline_picture
from .hires_picture import hires_picture
from .partitions import PAPER_PARTITIONS, linear_schedule, paper_partition
from .spacing_picture import spacing_picture

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


def patch_tokens(img: Image.Image) -> tuple:
    """((1, N, 3·8·8) tokens, (h, w) their grid): each 8 × 8 patch's pixels, centred on the picture's mean colour."""
    a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255)
    h, w = a.shape[0] // PATCH, a.shape[1] // PATCH
    patches = a[: h * PATCH, : w * PATCH].reshape(h, PATCH, w, PATCH, 3).permute(0, 2, 1, 3, 4).reshape(h * w, -1)
    return (patches - patches.mean(0))[None], (h, w)


def grid_picture(rows: int, cols: int, cell: int, fill, borders: tuple = (2, 2), label_cells: bool = False) -> Image.Image:
    """A rows × cols grid of squares, fill(r, c) → colour, with thin lines between tokens and thick ones
    every `borders` (sx, sy) tokens: the cells of the partition."""
    out = Image.new("RGB", (cols * cell + 1, rows * cell + 1), "white")
    d = ImageDraw.Draw(out)
    for r in range(rows):
        for c in range(cols):
            d.rectangle([c * cell, r * cell, (c + 1) * cell, (r + 1) * cell], fill=fill(r, c), outline=(170, 170, 170))
    sx, sy = borders
    for c in range(0, cols + 1, sx):
        d.line([(c * cell, 0), (c * cell, rows * cell)], fill=(40, 40, 40), width=2)
    for r in range(0, rows + 1, sy):
        d.line([(0, r * cell), (cols * cell, r * cell)], fill=(40, 40, 40), width=2)
    return out


def titled(panels: list, titles: list, pad: int = 12, legend: str = "") -> Image.Image:
    """Panels side by side, a title above each and a legend line under all."""
    height = max(p.height for p in panels) + 2 * pad + 20 + (18 if legend else 0)
    out = Image.new("RGB", (sum(p.width + pad for p in panels) + pad, height), "white")
    d, x = ImageDraw.Draw(out), pad
    for panel, title in zip(panels, titles):
        d.text((x, pad // 2), title, fill="black", font=FONT)
        out.paste(panel, (x, pad + 14))
        x += panel.width + pad
    if legend:
        d.text((pad, height - 18), legend, fill="black", font=FONT)
    return out


def partitions_picture(seed: int = 0, size: int = 12, cell: int = 18) -> Image.Image:
    """The paper's Figure 5: which tokens are dst (red) under each partition, on a 12 × 12 corner of the grid."""
    panels, titles = [], []
    for name, (kind, use_rand) in PAPER_PARTITIONS.items():
        _, dst = paper_partition(size, size, 2, 2, torch.Generator().manual_seed(seed) if use_rand else None, kind)
        dst = set(dst.tolist())
        panels.append(grid_picture(size, size, cell, lambda r, c: (220, 60, 60) if r * size + c in dst else (238, 238, 238)))
        titles.append(f"{name.replace('×', 'x')}: {len(dst)} dst")  # the picture's font has no ×
    return titled(panels, titles, legend="red: dst (destinations), grey: src; thick lines: the 2 x 2 cells")


def groups_overlay(img: Image.Image, slot: torch.Tensor, kept: int, hw) -> Image.Image:
    """The picture with each merged group (a dst and its src) painted one random colour."""
    h, w = hw
    ph, pw = img.height // h, img.width // w  # pixels per token
    colours = np.random.default_rng(1).integers(40, 256, (int(slot.max()) + 1, 3))
    a = np.asarray(img).copy()
    members = np.bincount(slot.numpy(), minlength=len(colours))
    for n, s in enumerate(slot.tolist()):
        if s >= kept and members[s] > 1:  # a dst that took at least one src
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
    return titled(panels, [what] + [f"ratio {r}" for r in ratios],
                  legend="one colour: a dst and the src merged into it; the picture shows through where tokens stay")


def similarity_picture(img: Image.Image, tokens: torch.Tensor, hw, seed: int = 0) -> Image.Image:
    h, w = hw
    src, dst = partition(h, w, 2, 2, torch.Generator().manual_seed(seed))
    unit = tokens[0] / tokens[0].norm(dim=-1, keepdim=True)
    best = (unit[src] @ unit[dst].T).max(dim=-1).values
    grid = torch.zeros(h * w)
    grid[src] = best.argsort().argsort().float() / max(1, src.numel() - 1)  # the rank: 1 is merged first
    shade = (grid.reshape(h, w).numpy() * 255).astype(np.uint8)
    heat = Image.fromarray(shade).resize((img.width, img.height), Image.NEAREST).convert("RGB")
    a = np.asarray(heat).copy()
    ph, pw = img.height // h, img.width // w
    for n in dst.tolist():  # dst in red: they are the targets, not ranked
        r, c = divmod(n, w)
        a[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = (200, 40, 40)
    return titled([img, Image.fromarray(a)], ["tokens", "each src ranked by its best similarity to a dst"],
                  legend="white: the most similar src (merged first), black: the least; red: the dst")


def schedule_picture(schedule=linear_schedule(0.6, 0.4, max_downsample=2), steps: int = 50) -> Image.Image:
    """Tokens kept in each of SD 1.5's 16 transformer blocks at every UNet call of a PLMS run at 512²."""
    grids = UNetConfig().transformer_grids((64, 64))
    calls = call_timesteps("plms", steps)  # PLMS: the first step calls the UNet twice
    kept = np.ones((len(grids), len(calls)))
    for j, t in enumerate(calls):
        for i, (h, w, _) in enumerate(grids):
            plan = tome_plan(torch.ones(1, h * w, 1), (h, w), BlockSettings((64, 64), schedule(t), None))
            kept[i, j] = 1.0 if plan is IDENTITY else plan.tokens_left / (h * w)
    cw, ch, left, top = 10, 16, 175, 28
    caption = (f"call 1 (t={calls[0]}) ... call {len(calls)} (t={calls[-1]}); ratio 0.6 at the start (40% of the tokens "
               "kept), 0.4 at the end (60% kept), blocks down to 32 x 32 (max_downsample 2)")
    width = max(left + cw * len(calls) + 70, int(FONT.getlength(caption)) + left + 10)
    out = Image.new("RGB", (width, top + ch * len(grids) + 40), "white")
    d = ImageDraw.Draw(out)
    d.text((left, 6), f"share of tokens kept, per block and UNet call ({steps} PLMS steps, 512 x 512)", fill="black", font=FONT)
    def shade(share):  # all tokens kept: light grey; 40% kept: dark blue
        v = min(1.0, max(0.0, (share - 0.4) / 0.6))
        return tuple(int(dark + v * (235 - dark)) for dark in (20, 40, 190))

    for i, (h, w, channels) in enumerate(grids):
        d.text((4, top + i * ch + 2), f"block {i:2d}: {h}x{w}, {channels} ch", fill="black", font=FONT)
        for j in range(len(calls)):
            d.rectangle([left + j * cw, top + i * ch, left + (j + 1) * cw - 1, top + (i + 1) * ch - 2],
                        fill=shade(kept[i, j]), outline=(255, 255, 255))
    for k, value in enumerate((1.0, 0.6, 0.4)):  # the legend: what a shade means
        x = left + cw * len(calls) + 10
        d.rectangle([x, top + k * 22, x + 14, top + k * 22 + 14], fill=shade(value), outline=(120, 120, 120))
        d.text((x + 18, top + k * 22 + 2), f"{value:.0%}", fill="black", font=FONT)
    d.text((left, top + ch * len(grids) + 8), caption, fill="black", font=FONT)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minitome.lab.visualize", description=__doc__.splitlines()[0])
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
        check_size(args.size, args.size, step, ("--size", "--size"))
        if not args.out.strip():
            raise ValueError("--out is empty: name the folder for the pictures")
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
        print(f"minitome.lab.visualize: error: {error}", file=sys.stderr)
        return 2
    pictures = [("partitions", partitions_picture()), ("merges", merges_picture(img, tokens, hw, what=what)),
                ("similarity", similarity_picture(img, tokens, hw)), ("schedule", schedule_picture()),
                ("pipeline", pipeline_picture()), ("spacings", spacing_picture()), ("hires", hires_picture()),
                ("noise", noise_picture(landscape(256))), ("unet", unet_picture()), ("block", block_picture()),
                ("worked", worked_picture()), ("attention_share", share_picture())]
    pictures = [(name, picture.quantize(colors=256)) for name, picture in pictures]  # small files to commit
    try:
        for name, picture in pictures + ([("image", img)] if args.weights else []):
            picture.save(out / f"{name}.png", optimize=True)
            print(out / f"{name}.png")
    except OSError as error:
        print(f"minitome.lab.visualize: error: {out}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
