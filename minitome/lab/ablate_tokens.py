"""The token-level experiments of `python -m minitome.lab.ablate` (1: partition, 2: bipartite vs k-means).

Where this sits: `ablate.py` prints the tables; this file measures them on one set of tokens, (1, N, C)
on an h × w grid: how much of the tokens merging loses, ‖unmerge(merge(x)) − x‖ / ‖x‖, and the time of
plan + merge + unmerge. The k-means contrast comes from ToMe for ViTs (Bolya et al. 2023, its ablation
of the matching algorithm), not from ToMe-SD: cosine k-means into N − r groups, each group averaged,
against ToMe's one-shot bipartite matching.
"""
import torch

from minitome.tome import match, merge, partition, unmerge
from .common import block_input, stopwatch
from .partitions import PAPER_PARTITIONS, paper_partition
from .visualize import landscape, patch_tokens


def merge_error(x: torch.Tensor, slot: torch.Tensor, tokens_left: int) -> float:
    """‖unmerge(merge(x)) − x‖ / ‖x‖: how much of the tokens merging loses."""
    return ((unmerge(merge(x, slot, tokens_left), slot) - x).norm() / x.norm()).item()


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
    for name, (kind, use_rand) in PAPER_PARTITIONS.items():
        def run():
            src, dst = paper_partition(*hw, 2, 2, torch.Generator().manual_seed(0) if use_rand else None, kind)
            r = min(int(x.shape[1] * ratio), src.numel())
            slot = match(x, src, dst, r)
            return unmerge(merge(x, slot, x.shape[1] - r), slot), slot, r
        (_, slot, r), seconds = stopwatch(run, repeats=5)
        rows.append([name, f"{r}", f"{merge_error(x, slot, x.shape[1] - r):.4f}", f"{1000 * seconds:.1f}"])
    return rows


def kmeans_rows(x: torch.Tensor, hw, ratio: float) -> list:
    N = x.shape[1]
    src, dst = partition(*hw, 2, 2, torch.Generator().manual_seed(0))
    r = min(int(N * ratio), src.numel())

    def bipartite():
        return match(x, src, dst, r)

    (slot_b, t_b), (slot_k, t_k) = stopwatch(bipartite, repeats=5), stopwatch(lambda: kmeans_slot(x, N - r), repeats=3)
    return [["bipartite (ToMe)", f"{N - r}", f"{merge_error(x, slot_b, N - r):.4f}", f"{1000 * t_b:.1f}"],
            ["k-means, 5 iterations", f"{N - r}", f"{merge_error(x, slot_k, N - r):.4f}", f"{1000 * t_k:.1f}"]]


def tokens(args, sd):
    """The tokens of experiments 1–2: (x (1, N, C), (h, w), a description for the titles)."""
    if sd is None:
        x, hw = patch_tokens(landscape(args.size))
        return x, hw, f"the {hw[0]}×{hw[1]} patch tokens of a drawn {args.size}² picture"
    x, hw, _ = block_input(sd, args.prompt, args.size, args.steps)
    return x, hw, f"the {hw[0]}×{hw[1]} input tokens of the first transformer block, last of {args.steps} steps"
