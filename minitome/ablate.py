"""`python -m minitome.ablate`: the paper's design experiments (ToMe-SD §4), rerunnable on this machine.

Where this sits: beside `minitome/bench.py`; it calls `minitome/tome.py` and the UNet and prints
markdown tables (the ones in tutorial.md come from a CPU run of this command).

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
   tomesd) or one per image (`rand_per_image`), measured like 5.
Experiments 1–2 run on tokens: the 8 × 8 patches of a drawn picture (`minitome/visualize.py`), 64 × 64
of them as in a 512² latent's first blocks, or with --weights the real input of the first transformer
block at the last UNet call of a --steps run of --prompt (`visualize.block_input`).
"""
import argparse
import statistics
import sys
import time

import torch

from .tome import PARTITION_METHODS, ToMeConfig, match, merge, partition_variant, unmerge


def merge_error(x: torch.Tensor, slot: torch.Tensor, num_merged: int) -> float:
    """‖unmerge(merge(x)) − x‖ / ‖x‖: how much of the tokens merging loses."""
    return ((unmerge(merge(x, slot, num_merged), slot) - x).norm() / x.norm()).item()


def timed(fn, repeats: int = 5):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def kmeans_slot(x: torch.Tensor, clusters: int, iterations: int = 5, seed: int = 0) -> torch.Tensor:
    """Cosine k-means of the tokens of each batch element into `clusters` groups: slot (B, N)."""
    unit = x / x.norm(dim=-1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    centres = unit[:, torch.randperm(x.shape[1], generator=g)[:clusters]]  # (B, K, C)
    for _ in range(iterations):
        slot = (unit @ centres.transpose(1, 2)).argmax(dim=-1)  # (B, N): the most similar centre
        centres = merge(unit, slot, clusters)                   # each centre: its members' mean
        centres = centres / centres.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (unit @ centres.transpose(1, 2)).argmax(dim=-1)


def partition_rows(x: torch.Tensor, hw, ratio: float) -> list:
    rows = []
    for method in PARTITION_METHODS:
        def run():
            src, dst = partition_variant(*hw, method, torch.Generator().manual_seed(0))
            r = min(int(x.shape[1] * ratio), src.numel())
            slot = match(x, src, dst, r)
            return unmerge(merge(x, slot, x.shape[1] - r), slot), slot, r
        (_, slot, r), seconds = timed(run)
        rows.append([method, f"{r}", f"{merge_error(x, slot, x.shape[1] - r):.4f}", f"{1000 * seconds:.1f}"])
    return rows


def kmeans_rows(x: torch.Tensor, hw, ratio: float) -> list:
    N = x.shape[1]
    src, dst = partition_variant(*hw, "random2x2", torch.Generator().manual_seed(0))
    r = min(int(N * ratio), src.numel())

    def bipartite():
        slot = match(x, src, dst, r)
        return slot, unmerge(merge(x, slot, N - r), slot)

    def kmeans():
        slot = kmeans_slot(x, N - r)
        return slot, unmerge(merge(x, slot, N - r), slot)

    (slot_b, _), t_b = timed(bipartite)
    (slot_k, _), t_k = timed(kmeans, repeats=3)
    return [["bipartite (ToMe)", f"{N - r}", f"{merge_error(x, slot_b, N - r):.4f}", f"{1000 * t_b:.1f}"],
            ["k-means, 5 iterations", f"{N - r}", f"{merge_error(x, slot_k, N - r):.4f}", f"{1000 * t_k:.1f}"]]


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


def tokens(args, sd):
    """The tokens of experiments 1–2: (x (1, N, C), (h, w), a description for the titles)."""
    from .visualize import block_input, landscape, patch_tokens
    if sd is None:
        x, hw = patch_tokens(landscape(args.size))
        return x, hw, f"the {hw[0]}×{hw[1]} patch tokens of a drawn {args.size}² picture"
    x, hw, _ = block_input(sd, args.prompt, args.size, args.steps)
    return x, hw, f"the {hw[0]}×{hw[1]} input tokens of the first transformer block, last of {args.steps} steps"


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
    args = p.parse_args(argv)
    try:
        ToMeConfig(ratio=args.ratio)
        if not 0 <= args.tau < 1000:
            raise ValueError(f"--tau must be a timestep in 0 … 999, got {args.tau}")
        for name in ("size", "when_size"):
            if getattr(args, name) <= 0 or getattr(args, name) % 64:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive multiple of 64, got {getattr(args, name)}")
        model = load_model(args) if args.weights or not args.skip_unet else (None, None)
        x, hw, where = tokens(args, model[0])
    except (ValueError, OSError) as error:  # WeightsError is a ValueError
        print(f"minitome.ablate: error: {error}", file=sys.stderr)
        return 2
    print(f"## 1. Partition, ratio {args.ratio} ({where})\n")
    print(markdown(["dst choice", "r merged", "merge error", "ms"], partition_rows(x, hw, args.ratio)))
    print(f"\n## 2. Bipartite matching vs k-means, ratio {args.ratio} ({where})\n")
    print(markdown(["merge", "tokens left", "merge error", "ms"], kmeans_rows(x, hw, args.ratio)), flush=True)
    if args.skip_unet:
        return 0
    quality = ["PSNR dB", "SSIM"] if args.weights else []
    head = ["setting", "s/UNet call", "speed-up", "ε change"] + quality
    what = "SD 1.5 weights" if args.weights else "random SD 1.5-size weights"
    r = args.ratio
    print(f"\n## 3. What to merge, ratio {r}, max_downsample 1 ({args.size}², batch 2, {what})\n")
    print(markdown(head, unet_rows(args, model, [
        ("no merging", None), ("attn", ToMeConfig(ratio=r)),
        ("attn + crossattn", ToMeConfig(ratio=r, merge_crossattn=True)),
        ("attn + crossattn + mlp", ToMeConfig(ratio=r, merge_crossattn=True, merge_mlp=True))])), flush=True)
    print(f"\n## 4. Where: max_downsample, ratio {r}, attn ({args.size}², batch 2, {what})\n")
    print(markdown(head, unet_rows(args, model, [("no merging", None)] + [
        (f"max_downsample {m} ({n}/16 blocks)", ToMeConfig(ratio=r, max_downsample=m))
        for m, n in ((1, 5), (2, 10), (4, 15), (8, 16))])), flush=True)
    from .visualize import linear_schedule
    cfg, tau = ToMeConfig(ratio=r), args.tau
    run_head = ["setting", "s/run", "speed-up", "latent change"] + quality
    print(f"\n## 5. When: a schedule over {args.when_steps} PLMS steps ({args.when_size}², CFG, {what})\n")
    print(markdown(run_head, when_rows(args, model, [
        ("no merging", lambda t: None), (f"{r} on every step", lambda t: cfg),
        ("0.6 → 0.4 over the run", linear_schedule(0.6, 0.4)),
        (f"{r} only while t > {tau} (noisy)", lambda t: cfg if t > tau else None),
        (f"{r} only while t ≤ {tau} (clean)", lambda t: cfg if t <= tau else None)])), flush=True)
    per_image = ToMeConfig(ratio=r, rand_per_image=True)
    print(f"\n## 6. Randomness: one partition for the guidance pair or one per image, ratio {r} "
          f"({args.when_steps} PLMS steps, {args.when_size}², CFG, {what})\n")
    print(markdown(run_head, when_rows(args, model, [
        ("no merging", lambda t: None), ("shared by uncond and cond (tomesd)", lambda t: cfg),
        ("one per image", lambda t: per_image)])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
