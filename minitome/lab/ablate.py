"""`python -m minitome.lab.ablate`: the paper's design experiments (ToMe-SD §4), rerunnable on this machine.

Where this sits: beside `bench.py` in the lab; it calls `minitome/tome.py` and the UNet and prints
markdown tables (the ones in tutorial.md come from a CPU run of this command). The token-level
experiments (1–2) are measured in `ablate_tokens.py`, the UNet ones (3–7) here.

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
   tomesd) or one per image (`AblationToMe.rand_per_image`), measured like 5;
7. the partitions of 1, in the UNet (`AblationToMe.partition`, `use_rand`, minitome/lab/partitions.py), measured like 3.
Experiments 1–2 run on tokens: the 8 × 8 patches of a drawn picture (`visualize.py`), 64 × 64 of them
as in a 512² latent's first blocks, or with --weights the real input of the first transformer block at
the last UNet call of a --steps run of --prompt (`common.block_input`).
"""
import argparse
import sys

import torch

from minitome.checks import check_size
from minitome.cli.flags import check_steps_flag
from minitome.pipeline import noise_estimate
from minitome.tome import ToMeConfig
from sampler import sample
from .ablate_tokens import kmeans_rows, partition_rows, tokens
from .common import ImageComparison, markdown_table, random_unet, stopwatch
from .partitions import PAPER_PARTITIONS, AblationToMe, linear_schedule


def load_model(args):
    """(sd, unet): with --weights the loaded parts (for images) and their UNet; else None and a random-weight
    UNet of the full SD 1.5 size. Loaded once, shared by the UNet experiments."""
    if args.weights:
        import weights
        sd = weights.load(args.weights)
        return sd, sd.unet.channels_last()
    return None, random_unet()


def comparison(sd, args, size: int, steps: int):
    """PSNR / SSIM of each row's image against the first row's (every table starts with "no merging")."""
    return ImageComparison(sd, [args.prompt], (size, size), steps) if sd is not None else None


def change(out: torch.Tensor, reference: torch.Tensor) -> str:
    """‖out − reference‖ / ‖reference‖, as a table cell."""
    return f"{((out - reference).norm() / reference.norm()).item():.4f}"


def unet_rows(args, model, configs: list) -> list:
    """Seconds per UNet call, how far ε moves (and PSNR/SSIM with --weights) for each (label, ToMeConfig or None)."""
    sd, unet = model
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, args.size // 8, args.size // 8, generator=g)
    context = torch.randn(2, 77, unet.config.context_dim, generator=g)
    rows, base, eps0, images = [], None, None, comparison(sd, args, args.size, args.steps)
    for label, tome in configs:
        with torch.no_grad():
            eps, seconds = stopwatch(lambda: unet(x, 500, context, tome=tome),
                                     repeats=args.repeats)
        base, eps0 = base or seconds, eps if eps0 is None else eps0
        rows.append([label, f"{seconds:.2f}", f"{base / seconds:.2f}×", change(eps, eps0)] +
                    (images.cells(tome) if images else []))
        print(f"  {label}: {seconds:.2f} s", file=sys.stderr, flush=True)
    return rows


def when_rows(args, model, schedules: list) -> list:
    """Seconds of a whole PLMS run, how far its latent moves (and PSNR/SSIM with --weights) for each
    (label, schedule t → ToMeConfig)."""
    sd, unet = model
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 4, args.when_size // 8, args.when_size // 8, generator=g)
    context = torch.randn(2, 77, unet.config.context_dim, generator=g)  # [uncond, cond]
    rows, base, z0, images = [], None, None, comparison(sd, args, args.when_size, args.when_steps)
    for label, schedule in schedules:
        eps_model = noise_estimate(unet, context, 7.5, schedule)
        with torch.no_grad():
            eps_model(noise, 999)  # warm-up
            z, seconds = stopwatch(lambda: sample("plms", eps_model, noise, args.when_steps), repeats=1, warmup=False)
        base, z0 = base or seconds, z if z0 is None else z0
        rows.append([label, f"{seconds:.1f}", f"{base / seconds:.2f}×", change(z, z0)] +
                    (images.cells(schedule) if images else []))
        print(f"  {label}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minitome.lab.ablate", description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--size", type=int, default=512, help="image size for the UNet experiments (multiple of 64)")
    p.add_argument("--repeats", type=int, default=2, help="timed UNet calls per row")
    p.add_argument("--weights", help="official file or diffusers folder: real hidden states and PSNR/SSIM")
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--when-size", type=int, default=256, help="image size for the schedule runs (5, 6)")
    p.add_argument("--when-steps", type=int, default=10, help="PLMS steps for the schedule runs (5, 6)")
    p.add_argument("--tau", type=int, default=500, help="noise-level threshold (a timestep, 0–999) for 5")
    p.add_argument("--sections", type=int, nargs="+", default=list(range(1, 8)), choices=range(1, 8),
                   metavar="N", help="which experiments to run (1–7; default all)")
    args = p.parse_args(argv)
    show = set(args.sections)  # --sections 1 2: only the token experiments, no UNet
    try:
        ToMeConfig(ratio=args.ratio)
        if args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
        check_steps_flag(args.when_steps, "--when-steps")
        if args.weights:
            check_steps_flag(args.steps, "--steps")
        if not 0 <= args.tau < 1000:
            raise ValueError(f"--tau must be a timestep in 0 … 999, got {args.tau}")
        check_size(args.size, args.when_size, 64, ("--size", "--when-size"))
        model = load_model(args) if args.weights or show - {1, 2} else (None, None)
        x, hw, where = tokens(args, model[0]) if show & {1, 2} else (None, None, None)  # with weights: a whole run
    except (ValueError, OSError) as error:  # WeightsError is a ValueError
        print(f"minitome.lab.ablate: error: {error}", file=sys.stderr)
        return 2
    if 1 in show:
        print(f"## 1. Partition, ratio {args.ratio} ({where})\n")
        print(markdown_table(["partition", "r merged", "merge error", "ms"], partition_rows(x, hw, args.ratio)), flush=True)
    if 2 in show:
        print(f"\n## 2. Bipartite matching vs k-means, ratio {args.ratio} ({where})\n")
        print(markdown_table(["merge", "tokens left", "merge error", "ms"], kmeans_rows(x, hw, args.ratio)), flush=True)
    unet_sections(args, model, show)
    return 0


def unet_sections(args, model, show: set):
    """Experiments 3–7, each printed as soon as it is measured."""
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
                        ("one per image", lambda t: AblationToMe(ratio=r, rand_per_image=True))]),
        7: (f"Partition, in the UNet, ratio {r}, attn ({call})", head, unet_rows, [("no merging", None)] + [
            (name, AblationToMe(ratio=r, partition=kind, use_rand=use_rand)) for name, (kind, use_rand) in PAPER_PARTITIONS.items()]),
    }
    for number, (title, columns, rows, settings) in sections.items():
        if number in show:
            print(f"\n## {number}. {title}\n")
            print(markdown_table(columns, rows(args, model, settings)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
