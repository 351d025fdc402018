"""Token Merging for Stable Diffusion (ToMe-SD), as small pure functions.

Where this sits: every `BasicTransformerBlock` (`unet/attention.py`) calls `tome_plan` on its input
and wraps its attention (and, if asked, its cross-attention and MLP) in the plan's merge / unmerge.
Paper: Bolya & Hoffman, "Token Merging for Fast Stable Diffusion", arXiv 2303.17604, §3–4.
Behaviour follows tomesd 0.1.3 (`tomesd/merge.py`, `tomesd/patch.py`); the differences are named
where they occur (a clear error for an out-of-range ratio, the identity where tomesd crashes).

The algorithm, for one block whose N = h·w tokens x (B, N, C) come from an h × w grid:

1. partition: cut the grid into sy × sx cells; in each full cell one token is a destination (dst),
   at a random position (top-left with use_rand off). Every other token is a source (src), the
   leftover bottom rows and right columns included. One partition for the whole batch (as tomesd),
   or one per image with rand_per_image (the paper's "randomness fixed across the batch or not").
   partition="random" or "alternating" swaps the cells for the paper's contrasts (its Figure 5).
2. similarity: cosine similarity of every src to every dst, on the block input x.
3. matching (bipartite soft matching): each src picks its most similar dst; the r = int(N · ratio)
   src with the highest similarity merge (r at most the number of src).
4. merge: each dst becomes the mean of itself and the src merged into it. N − r tokens remain.
5. attention runs on the N − r tokens.
6. unmerge: every position takes back the value of the token it ended in.

Steps 4 and 6 share one index, `slot` (B, N): the merged token that position n belongs to.
merge averages all positions with the same slot; unmerge reads each position's slot. The N − r
tokens that merging leaves are called `tokens_left` below.
"""
import math
from dataclasses import dataclass

import torch

from .checks import check_seed, real_number, whole_number

PARTITIONS = ("cells", "random", "alternating")  # how the dst are chosen (the paper's Figure 5)
MERGE_TARGETS = ("attn", "crossattn", "mlp")      # the sub-layers merging can wrap: ToMeConfig.merge_<target>


@dataclass(frozen=True)
class ToMeConfig:
    ratio: float = 0.5            # share of a block's tokens removed by merging, r = int(N · ratio)
    max_downsample: int = 1       # merge only in blocks at most this much downsampled (1, 2, 4 or 8)
    sx: int = 2                   # cell width: one dst per sx × sy cell
    sy: int = 2                   # cell height
    use_rand: bool = True         # random dst position in each cell; False: top-left
    merge_attn: bool = True       # merge around self-attention
    merge_crossattn: bool = False  # merge around cross-attention
    merge_mlp: bool = False       # merge around the feed-forward
    rand_per_image: bool = False  # one random partition per image of the batch (tomesd: one for all)
    partition: str = "cells"      # "cells" (one dst per sx × sy cell); the paper's contrasts: "random", "alternating"
    seed: int = 0                 # seeds the partition's own generator, apart from the image noise
    # CA-ToMe (arXiv 2501.00946): merge by similarity instead of by count, and plan less often
    threshold: float = None       # merge the src whose best cosine similarity is >= this (instead of ratio)
    reuse: int = 1                # plan at one UNet call in `reuse`, apply that plan in between (1: every call)
    replan_calls: tuple = None    # or plan exactly at these UNet calls (0 = the first), e.g. CA-ToMe's schedules

    def __post_init__(self):
        whole_number(self.sx, 1, "ToMe sx"), whole_number(self.sy, 1, "ToMe sy")
        real_number(self.ratio, "ToMe ratio"), check_seed(self.seed, "ToMe seed")
        if self.threshold is not None:
            real_number(self.threshold, "ToMe threshold")
        if self.partition not in PARTITIONS:
            raise ValueError(f"ToMe partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        if self.partition == "random" and not self.use_rand:
            raise ValueError("ToMe partition 'random' draws its dst, so it needs use_rand=True")
        if isinstance(self.max_downsample, bool) or self.max_downsample not in (1, 2, 4, 8):
            raise ValueError(f"ToMe max_downsample must be one of 1, 2, 4, 8, got {self.max_downsample!r}")
        if self.threshold is not None and not -1 <= self.threshold <= 1:
            raise ValueError(f"ToMe threshold must be a cosine similarity in [-1, 1], got {self.threshold!r}")
        whole_number(self.reuse, 1, "ToMe reuse")  # plan every `reuse` UNet calls
        if self.replan_calls is not None and (not isinstance(self.replan_calls, tuple) or 0 not in self.replan_calls):
            raise ValueError(f"ToMe replan_calls must be a tuple of UNet calls that includes 0, got {self.replan_calls!r}")
        top = 1 - 1 / (self.sx * self.sy)
        if not 0 <= self.ratio <= top:
            raise ValueError(f"ToMe ratio must be in [0, {top!r}] (1 - 1/(sx·sy)) for sx={self.sx}, sy={self.sy}, "
                             f"got {self.ratio!r}")


    def check_latent(self, latent_hw: tuple):
        """Merging happens somewhere at a latent of (H, W): a whole sy × sx cell fits its full-resolution grid
        and, by ratio, r = int(H·W · ratio) >= 1 there (ratio 0 is the chosen identity). A ValueError otherwise:
        the command line's check, since `tome_plan` takes such settings as the identity, as tomesd does."""
        h, w = latent_hw
        if self.partition == "cells" and (self.sx > w or self.sy > h):
            raise ValueError(f"ToMe sx {self.sx} and sy {self.sy}: no whole cell fits the {h}x{w} latent grid, so "
                             "nothing would merge")
        if self.threshold is None and self.ratio > 0 and int(h * w * self.ratio) == 0:
            least = 1 / (h * w)
            while int(h * w * least) == 0:
                least = math.nextafter(least, 1)
            raise ValueError(f"ToMe ratio {self.ratio!r} merges none of the {h * w} tokens of the {h}x{w} latent "
                             f"(int({h * w} · {self.ratio!r}) = 0): use at least {least!r}, or 0 for none")


@dataclass(frozen=True)
class BlockSettings:
    """What every transformer block reads for one UNet call: the latent's (H, W); ToMe's settings and the
    generator its random partitions are drawn from; ToDo's settings (minitome/todo.py). Plain data: the
    run that made it (minitome/run.py) keeps whatever lives longer than a call."""
    latent_hw: tuple
    tome: ToMeConfig = None
    generator: torch.Generator = None
    todo: object = None


def downsample_level(latent_hw: tuple, num_tokens: int) -> int:
    """tomesd's level of a block: ⌈√(H·W // N)⌉ (1 at full resolution, then 2, 4, 8)."""
    return math.ceil(math.sqrt(latent_hw[0] * latent_hw[1] // num_tokens))


def partition(h: int, w: int, sx: int = 2, sy: int = 2, generator: torch.Generator = None, kind: str = "cells"):
    """Split the raster-ordered tokens of an h × w grid into (src, dst) index tensors, both ascending.

    "cells" (ToMe-SD): one dst per full sy × sx cell, at offset k ∈ [0, sy·sx) inside it (row k // sx,
    column k % sx); k is drawn from `generator` per cell, or 0 (top-left) when generator is None. The draw
    is `randint(sy·sx, (h // sy, w // sx))`, the same numbers tomesd draws from the same generator.
    The paper's contrasts (its Figure 5): "random", as many dst as there are full cells but anywhere
    (drawn from `generator`); "alternating", every other token in raster order (ToMe for ViTs).
    Returns None when no full cell exists (h < sy or w < sx) for "cells".
    """
    for name, value, least in (("h", h, 1), ("w", w, 1), ("sx", sx, 1), ("sy", sy, 1)):
        whole_number(value, least, f"partition {name}")
    cells_y, cells_x = h // sy, w // sx
    is_dst = torch.zeros(h * w, dtype=torch.bool)
    if kind == "alternating":
        is_dst[::2] = True
    elif kind == "random":
        device = "cpu" if generator is None else generator.device
        is_dst[torch.randperm(h * w, generator=generator, device=device).cpu()[:max(1, cells_y * cells_x)]] = True
    elif kind == "cells":
        if cells_y == 0 or cells_x == 0:
            return None
        if generator is None:
            offset = torch.zeros(cells_y, cells_x, dtype=torch.long)
        else:
            offset = torch.randint(sy * sx, (cells_y, cells_x), generator=generator, device=generator.device).cpu()
        rows = torch.arange(cells_y)[:, None] * sy + offset // sx  # (cells_y, cells_x)
        cols = torch.arange(cells_x)[None, :] * sx + offset % sx
        is_dst[(rows * w + cols).flatten()] = True
    else:
        raise ValueError(f"partition must be one of {', '.join(PARTITIONS)}, got {kind!r}")
    return (~is_dst).nonzero().squeeze(1), is_dst.nonzero().squeeze(1)


def match(metric: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, r: int = 0, threshold: float = None) -> torch.Tensor:
    """Bipartite soft matching: returns `slot` (B, N), the merged token each position ends in.

    metric (B, N, C) is the block input; src and dst are one partition for the batch, (num_src,) and
    (num_dst,), or one per image, (B, num_src) and (B, num_dst). The r src with the highest similarity
    merge; with a threshold instead (CA-ToMe), r is the most src any image of the batch has whose best
    similarity reaches it. The merged tokens are numbered like tomesd's output: first the src that stay (in
    descending order of their best similarity), then every dst; so slot.max() + 1 tokens are left.
    """
    B, N, _ = metric.shape
    src, dst = src.to(metric.device).expand(B, -1), dst.to(metric.device).expand(B, -1)  # (B, ·) either way
    num_src, num_dst = src.shape[1], dst.shape[1]
    if num_src + num_dst != N:
        raise ValueError(f"match: {num_src} src and {num_dst} dst do not partition the {N} tokens of metric")
    if threshold is None and not 0 <= whole_number(r, 0, "match r") <= num_src:
        raise ValueError(f"match r must be at most the {num_src} src, got {r}")
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        batch = torch.arange(B, device=metric.device)[:, None]
        a, b = metric[batch, src], metric[batch, dst]               # src and dst tokens, (B, ·, C)
        scores = a @ b.transpose(1, 2)                              # (B, num_src, num_dst) cosine similarity
        best, best_dst = scores.max(dim=-1)                         # each src's most similar dst
        if threshold is not None:  # CA-ToMe: as many as the batch's most mergeable image, one r for all
            r = int((best >= threshold).sum(dim=-1).max())
        order = best.argsort(dim=-1, descending=True, stable=True)  # src by similarity, most similar first
        merged, kept = order[:, :r], order[:, r:]                   # positions within `src`
        slot = torch.empty(B, N, dtype=torch.long, device=metric.device)
        ids = torch.arange(num_src + num_dst, device=metric.device).expand(B, -1)  # merged-token numbers
        slot.scatter_(1, src.gather(1, kept), ids[:, :num_src - r])  # kept src: slots 0 … num_src − r − 1
        slot.scatter_(1, dst, ids[:, num_src - r:num_src - r + num_dst])  # dst after them
        slot.scatter_(1, src.gather(1, merged), best_dst.gather(1, merged) + (num_src - r))  # merged src: their dst's
    return slot


def merge(x: torch.Tensor, slot: torch.Tensor, tokens_left: int) -> torch.Tensor:
    """(B, N, C) → (B, tokens_left, C): each merged token is the mean of the positions in its slot.

    Written as a sum and a count over the batch laid end to end (image b's slots numbered from
    b · tokens_left), then a division: on the CPU several times faster than scatter_reduce("mean") or a
    per-image scatter_add_ with an index expanded over C, with the same bits as the latter.
    A slot nobody maps to (possible for other groupings, never for a plan's) stays 0.
    """
    B, N, C = x.shape
    flat = (slot + torch.arange(B, device=slot.device)[:, None] * tokens_left).flatten()  # (B·N,)
    sums = x.new_zeros(B * tokens_left, C).index_add_(0, flat, x.flatten(0, 1))
    counts = x.new_zeros(B * tokens_left).index_add_(0, flat, x.new_ones(B * N))
    return sums.div_(counts.clamp_min(1)[:, None]).view(B, tokens_left, C)


def unmerge(y: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """(B, tokens_left, C) → (B, N, C): every position copies the merged token of its slot.
    Indexing, y[b, slot[b, n]], rather than gather with an index expanded over C: the same numbers,
    without materialising a (B, N, C) index (about three times faster on the CPU)."""
    return y[torch.arange(y.shape[0], device=y.device)[:, None], slot]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class Plan:
    """One block's merge / unmerge pair, or the identity, for each of attn, crossattn and mlp."""

    def __init__(self, slot: torch.Tensor = None, tokens_left: int = 0, config: ToMeConfig = None):
        self.slot, self.tokens_left = slot, tokens_left
        on = slot is not None
        self.merge_attn, self.unmerge_attn = self._pair(on and config.merge_attn)
        self.merge_cross, self.unmerge_cross = self._pair(on and config.merge_crossattn)
        self.merge_mlp, self.unmerge_mlp = self._pair(on and config.merge_mlp)

    def _pair(self, on: bool):
        if not on:
            return _identity, _identity
        return (lambda x: merge(x, self.slot, self.tokens_left)), (lambda y: unmerge(y, self.slot))


IDENTITY = Plan()


def tome_plan(x: torch.Tensor, hw: tuple, settings: BlockSettings = None) -> Plan:
    """The plan for one transformer block whose input x (B, N, C) lies on an (h, w) grid.

    The identity when there are no ToMe settings, when the block is downsampled more than max_downsample,
    when r = int(N · ratio) is 0 (or the threshold is 1 or more), or when the grid has no full sy × sx
    cell. With use_rand the partition is drawn from settings.generator (its only side effect: the generator
    advances); without it, or without a generator, the top-left of each cell. With rand_per_image image b of
    the batch gets the b-th partition drawn. Keeping plans between calls is the run's (minitome/run.py).
    """
    if settings is None or settings.tome is None:
        return IDENTITY
    cfg, N = settings.tome, x.shape[1]
    if hw[0] * hw[1] != N:
        raise ValueError(f"ToMe: the grid {tuple(hw)} holds {hw[0] * hw[1]} tokens, x holds {N}")
    if N == 0 or x.shape[0] == 0:
        return IDENTITY  # nothing to merge
    if downsample_level(settings.latent_hw, N) > cfg.max_downsample:
        return IDENTITY
    r = int(N * cfg.ratio)
    if (r <= 0 and cfg.threshold is None) or (cfg.threshold is not None and cfg.threshold >= 1):
        return IDENTITY  # checked before the draw, as tomesd and ca-tome do, so the generator advances identically
    generator = settings.generator if cfg.use_rand else None
    draws = x.shape[0] if cfg.rand_per_image and generator is not None else 1  # partitions to draw
    parts = [partition(hw[0], hw[1], cfg.sx, cfg.sy, generator, cfg.partition) for _ in range(draws)]
    if parts[0] is None or parts[0][0].numel() == 0:  # no full cell, or no src (a 1-token "alternating" grid)
        return IDENTITY
    src, dst = torch.stack([s for s, _ in parts]), torch.stack([d for _, d in parts])  # (draws, ·)
    slot = match(x, src, dst, min(r, src.shape[1]), cfg.threshold)
    return Plan(slot, int(slot.max()) + 1, cfg)
