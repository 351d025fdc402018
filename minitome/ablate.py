"""`python -m minitome.ablate`: the paper's design experiments (ToMe-SD §4), rerunnable on this machine.

Where this sits: beside `minitome/bench.py`; it calls `minitome/tome.py` and the UNet and prints
markdown tables (the ones in tutorial.md come from a CPU run of this command). The token-level
experiments (1–2) are measured in `minitome/ablate_tokens.py`, the UNet ones (3–7) here.

Experiments:
1. partition: how dst are chosen (alternating, 2-stride grid, fully random, random one-of-2×2), by the
   merge error ‖unmerge(merge(x)) − x‖ / ‖x‖ and the time of plan + merge + unmerge;
2. bipartite matching against a k-means merge (tokens clustered into N − r groups by cosine k-means,
   each group averaged): error and time at the same number of merged tokens;
3. what to merge (attn / attn+crossattn / attn+crossattn+mlp) and 4. where (max_downsample 1, 2, 4, 8):
   seconds per UNet call at the full SD 1.5 size (random weights unless --weights) and how far the
   call's output ε moves, ‖ε − ε₀‖ / ‖ε₀‖ against the unmerged call; with --weights also the PSNR /
   SSIM of a generated image against the unmerged one;
5. when: a whole PLMS run with classifier-free guidance and a schedule of ToMe settings over its steps
   (constant, 60% → 40%, only on the noisy steps t > τ, only on the clean ones; --tau, default 500):
   seconds per run, how far the final latent moves, ‖z − z₀‖ / ‖z₀‖, and PSNR / SSIM with --weights;
6. randomness across the batch: one random partition shared by the guidance pair [uncond, cond] (as
   tomesd) or one per image (`rand_per_image`), measured like 5;
7. the partitions of 1, in the UNet (`dst_choice`, `use_rand`), measured like 3.
Experiments 1–2 run on tokens: the 8 × 8 patches of a drawn picture (`minitome/visualize.py`), 64 × 64
of them as in a 512² latent's first blocks, or with --weights the real input of the first transformer
block at the last UNet call of a --steps run of --prompt (`visualize.block_input`).
"""
import argparse
import sys
import time

import torch

from .ablate_tokens import kmeans_rows, partition_rows, timed, tokens
from .checks import check_steps_flag
from .tome import ToMeConfig


def load_model(args):
    """(sd, unet): with --weights the loaded parts (for images) and their UNet; else None and a random-weight
    UNet of the full SD 1.5 size. Loaded once, shared by the UNet experiments."""
    from unet import UNetConfig, UNetModel
    if args.weights:
        import weights
        sd = weights.load(args.weights)
        return sd, sd.unet
    torch.manual_seed(0)
    return None, UNetModel(UNetConfig()).eval().requires_grad_(False).channels_last()


class Quality:
    """PSNR / SSIM of each row's image against the first row's (every table starts with "no merging")."""

    def __init__(self, sd, args, size: int, steps: int):
        self.sd, self.args, self.size, self.steps, self.reference = sd, args, size, steps, None

    def cells(self, tome) -> list:
        if self.sd is None:
            return []
        import numpy as np
        from .pipeline import generate
        from .quality import psnr, ssim
        image = np.asarray(generate(self.sd, self.args.prompt, steps=self.steps, seed=0, width=self.size,
                                    height=self.size, tome=tome)[0])
        self.reference = image if self.reference is None else self.reference
        return [f"{psnr(image, self.reference):.1f}", f"{ssim(image, self.reference):.3f}"]


def change(out: torch.Tensor, reference: torch.Tensor) -> str:
    """‖out − reference‖ / ‖reference‖, as a table cell."""
    return f"{((out - reference).norm() / reference.norm()).item():.4f}"


def unet_rows(args, model, configs: list) -> list:
    """Seconds per UNet call, how far ε moves (and PSNR/SSIM with --weights) for each (label, ToMeConfig or None)."""
    sd, unet = model
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, args.size // 8, args.size // 8, generator=g)
    context = torch.randn(2, 77, unet.config.context_dim, generator=g)
    rows, base, eps0, quality = [], None, None, Quality(sd, args, args.size, args.steps)
    for label, tome in configs:
        with torch.no_grad():
            eps, seconds = timed(lambda: unet(x, 500, context, tome=tome, tome_generator=torch.Generator().manual_seed(0)),
                                 repeats=args.repeats)
        base, eps0 = base or seconds, eps if eps0 is None else eps0
        rows.append([label, f"{seconds:.2f}", f"{base / seconds:.2f}×", change(eps, eps0)] + quality.cells(tome))
        print(f"  {label}: {seconds:.2f} s", file=sys.stderr, flush=True)
    return rows


def when_rows(args, model, schedules: list) -> list:
    """Seconds of a whole PLMS run, how far its latent moves (and PSNR/SSIM with --weights) for each
    (label, schedule t → ToMeConfig)."""
    from sampler import plms_sample
    sd, unet = model
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 4, args.when_size // 8, args.when_size // 8, generator=g)
    context = torch.randn(2, 77, unet.config.context_dim, generator=g)  # [uncond, cond]
    rows, base, z0, quality = [], None, None, Quality(sd, args, args.when_size, args.when_steps)
    for label, schedule in schedules:
        generator = torch.Generator().manual_seed(0)

        def eps_model(x, t):
            eps_uncond, eps_cond = unet(torch.cat([x, x]), t, context, tome=schedule(t), tome_generator=generator).chunk(2)
            return eps_uncond + 7.5 * (eps_cond - eps_uncond)

        with torch.no_grad():
            eps_model(noise, 999)  # warm-up
            start = time.perf_counter()
            z = plms_sample(eps_model, noise, args.when_steps)
            seconds = time.perf_counter() - start
        base, z0 = base or seconds, z if z0 is None else z0
        rows.append([label, f"{seconds:.1f}", f"{base / seconds:.2f}×", change(z, z0)] + quality.cells(schedule))
        print(f"  {label}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return rows


def markdown(head: list, rows: list) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(r) + " |" for r in rows])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minitome.ablate", description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--size", type=int, default=512, help="image size for the UNet experiments (multiple of 64)")
    p.add_argument("--repeats", type=int, default=2, help="timed UNet calls per row")
    p.add_argument("--weights", help="official file or diffusers folder: real hidden states and PSNR/SSIM")
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--when-size", type=int, default=256, help="image size for the schedule runs (5, 6)")
    p.add_argument("--when-steps", type=int, default=10, help="PLMS steps for the schedule runs (5, 6)")
    p.add_argument("--tau", type=int, default=500, help="noise-level threshold (a timestep, 0–999) for 5")
    p.add_argument("--skip-unet", action="store_true", help="only the token experiments (1–2)")
    p.add_argument("--sections", type=int, nargs="+", default=list(range(1, 8)), choices=range(1, 8),
                   metavar="N", help="which experiments to run (1–7; default all)")
    args = p.parse_args(argv)
    show = set(args.sections) & ({1, 2} if args.skip_unet else set(range(1, 8)))
    try:
        ToMeConfig(ratio=args.ratio)
        if args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
        check_steps_flag(args.when_steps, "--when-steps")
        if args.weights:
            check_steps_flag(args.steps, "--steps")
        if not 0 <= args.tau < 1000:
            raise ValueError(f"--tau must be a timestep in 0 … 999, got {args.tau}")
        for name in ("size", "when_size"):
            if getattr(args, name) <= 0 or getattr(args, name) % 64:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive multiple of 64, got {getattr(args, name)}")
        model = load_model(args) if args.weights or show - {1, 2} else (None, None)
        x, hw, where = tokens(args, model[0]) if show & {1, 2} else (None, None, None)  # with weights: a whole run
    except (ValueError, OSError) as error:  # WeightsError is a ValueError
        print(f"minitome.ablate: error: {error}", file=sys.stderr)
        return 2
    if 1 in show:
        print(f"## 1. Partition, ratio {args.ratio} ({where})\n")
        print(markdown(["dst choice", "r merged", "merge error", "ms"], partition_rows(x, hw, args.ratio)), flush=True)
    if 2 in show:
        print(f"\n## 2. Bipartite matching vs k-means, ratio {args.ratio} ({where})\n")
        print(markdown(["merge", "tokens left", "merge error", "ms"], kmeans_rows(x, hw, args.ratio)), flush=True)
    unet_sections(args, model, show)
    return 0


def unet_sections(args, model, show: set):
    """Experiments 3–7, each printed as soon as it is measured."""
    from .visualize import linear_schedule
    quality = ["PSNR dB", "SSIM"] if args.weights else []
    head = ["setting", "s/UNet call", "speed-up", "ε change"] + quality
    run_head = ["setting", "s/run", "speed-up", "latent change"] + quality
    what = "SD 1.5 weights" if args.weights else "random SD 1.5-size weights"
    call = f"{args.size}², batch 2, {what}"
    run = f"{args.when_steps} PLMS steps, {args.when_size}², CFG, {what}"
    r, tau = args.ratio, args.tau
    cfg = ToMeConfig(ratio=r)
    sections = {
        3: (f"What to merge, ratio {r}, max_downsample 1 ({call})", head, unet_rows, [
            ("no merging", None), ("attn", cfg), ("attn + crossattn", ToMeConfig(ratio=r, merge_crossattn=True)),
            ("attn + crossattn + mlp", ToMeConfig(ratio=r, merge_crossattn=True, merge_mlp=True))]),
        4: (f"Where: max_downsample, ratio {r}, attn ({call})", head, unet_rows, [("no merging", None)] + [
            (f"max_downsample {m} ({n}/16 blocks)", ToMeConfig(ratio=r, max_downsample=m))
            for m, n in ((1, 5), (2, 10), (4, 15), (8, 16))]),
        5: (f"When: a schedule over the steps, ratio {r} ({run})", run_head, when_rows, [
            ("no merging", lambda t: None), (f"{r} on every step", lambda t: cfg),
            ("0.6 → 0.4 over the run", linear_schedule(0.6, 0.4)),
            (f"{r} only while t > {tau} (noisy)", lambda t: cfg if t > tau else None),
            (f"{r} only while t ≤ {tau} (clean)", lambda t: cfg if t <= tau else None)]),
        6: (f"Randomness: one partition for the guidance pair or one per image, ratio {r} ({run})", run_head,
            when_rows, [("no merging", lambda t: None), ("shared by uncond and cond (tomesd)", lambda t: cfg),
                        ("one per image", lambda t: ToMeConfig(ratio=r, rand_per_image=True))]),
        7: (f"Partition, in the UNet, ratio {r}, attn ({call})", head, unet_rows, [
            ("no merging", None), ("random2x2 (ToMe-SD)", cfg), ("grid", ToMeConfig(ratio=r, use_rand=False)),
            ("random", ToMeConfig(ratio=r, dst_choice="random")),
            ("alternating", ToMeConfig(ratio=r, dst_choice="alternating"))]),
    }
    for number, (title, columns, rows, settings) in sections.items():
        if number in show:
            print(f"\n## {number}. {title}\n")
            print(markdown(columns, rows(args, model, settings)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
