"""The token-level experiments of `python -m minitome.ablate` (1: partition, 2: bipartite vs k-means).

Where this sits: `minitome/ablate.py` prints the tables; this file measures them on one set of tokens,
(1, N, C) on an h × w grid: how much of the tokens merging loses, ‖unmerge(merge(x)) − x‖ / ‖x‖, and
the time of plan + merge + unmerge. k-means is the contrast some summaries of the paper describe:
cosine k-means into N − r groups, each group averaged, against ToMe's one-shot bipartite matching.
"""
import statistics
import time

import torch

from .tome import PARTITION_METHODS, match, merge, partition_variant, unmerge


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


def tokens(args, sd):
    """The tokens of experiments 1–2: (x (1, N, C), (h, w), a description for the titles)."""
    from .visualize import block_input, landscape, patch_tokens
    if sd is None:
        x, hw = patch_tokens(landscape(args.size))
        return x, hw, f"the {hw[0]}×{hw[1]} patch tokens of a drawn {args.size}² picture"
    x, hw, _ = block_input(sd, args.prompt, args.size, args.steps)
    return x, hw, f"the {hw[0]}×{hw[1]} input tokens of the first transformer block, last of {args.steps} steps"
