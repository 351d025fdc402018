"""Token Merging for Stable Diffusion (ToMe-SD), as small pure functions.

Where this sits: every `BasicTransformerBlock` (`unet/attention.py`) calls `tome_plan` on its input
and wraps its attention (and, if asked, its cross-attention and MLP) in the plan's merge / unmerge.
Paper: Bolya & Hoffman, "Token Merging for Fast Stable Diffusion", arXiv 2303.17604, §3–4.
Behaviour follows tomesd 0.1.3 (`tomesd/merge.py`, `tomesd/patch.py`); the differences are named
where they occur (a clear error for an out-of-range ratio, the identity where tomesd crashes).

The algorithm, for one block whose N = h·w tokens x (B, N, C) come from an h × w grid:

1. partition: cut the grid into sy × sx cells; in each full cell one token is a destination (dst),
   at a random position (top-left with use_rand off). Every other token is a source (src), the
   leftover bottom rows and right columns included. One partition for the whole batch, as tomesd.
   (The paper's other partitions and per-image randomness, its ablations, are minitome/lab/partitions.py's.)
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

from .checks import Refusal, check_seed, real_number, whole_number

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
    seed: int = 0                 # seeds the partition's own generator, apart from the image noise
    # CA-ToMe (arXiv 2501.00946): merge by similarity instead of by count, and plan less often
    threshold: float = None       # merge the src whose best cosine similarity is >= this (instead of ratio)
    reuse: int = 1                # plan at one UNet call in `reuse`, apply that plan in between (1: every call)
    replan_calls: tuple = None    # or plan exactly at these UNet calls (0 = the first), e.g. CA-ToMe's schedules

    def __post_init__(self):
        whole_number(self.sx, 1, "ToMe sx"), whole_number(self.sy, 1, "ToMe sy")
        real_number(self.ratio, "ToMe ratio"), check_seed(self.seed, "ToMe seed")
        whole_number(self.reuse, 1, "ToMe reuse")
        top = 1 - 1 / (self.sx * self.sy)
        for wrong, message in (
                (isinstance(self.max_downsample, bool) or self.max_downsample not in (1, 2, 4, 8),
                 f"max_downsample must be one of 1, 2, 4, 8, got {self.max_downsample!r}"),
                (self.threshold is not None and not -1 <= real_number(self.threshold, "ToMe threshold") <= 1,
                 f"threshold must be a cosine similarity in [-1, 1], got {self.threshold!r}"),
                (self.replan_calls is not None and (not isinstance(self.replan_calls, tuple) or 0 not in self.replan_calls),
                 f"replan_calls must be a tuple of UNet calls that includes 0, got {self.replan_calls!r}"),
                (not 0 <= self.ratio <= top,
                 f"ratio must be in [0, {top!r}] (1 - 1/(sx·sy)) for sx={self.sx}, sy={self.sy}, got {self.ratio!r}")):
            if wrong:
                raise Refusal(f"ToMe {message}")

    def partitions(self, h: int, w: int, generator: torch.Generator, batch: int):
        """(src, dst) for a block on an h × w grid, each (1, ·): one partition for the whole batch, so that the
        guidance pair [uncond, cond] sees one; None when no full cell exists. (The lab's ablations override it.)"""
        part = partition(h, w, self.sx, self.sy, generator if self.use_rand else None)
        return None if part is None else (part[0][None], part[1][None])


@dataclass(frozen=True)
class BlockSettings:
    """What every transformer block reads for one UNet call: the latent's (H, W); ToMe's settings and the
    generator its random partitions are drawn from; ToDo's settings (minitome/todo.py). Plain data."""
    latent_hw: tuple
    tome: ToMeConfig = None
    generator: torch.Generator = None
    todo: object = None


def downsample_level(latent_hw: tuple, num_tokens: int) -> int:
    """tomesd's level of a block: ⌈√(H·W // N)⌉ (1 at full resolution, then 2, 4, 8)."""
    return math.ceil(math.sqrt(latent_hw[0] * latent_hw[1] // num_tokens))


def partition(h: int, w: int, sx: int = 2, sy: int = 2, generator: torch.Generator = None):
    """Split the raster-ordered tokens of an h × w grid into (src, dst) index tensors, both ascending.

    One dst per full sy × sx cell, at offset k ∈ [0, sy·sx) inside it (row k // sx, column k % sx); k is drawn
    from `generator` per cell, or 0 (top-left) when generator is None. The draw is
    `randint(sy·sx, (h // sy, w // sx))`, the same numbers tomesd draws from the same generator.
    Returns None when no full cell exists (h < sy or w < sx).
    """
    cells_y, cells_x = h // sy, w // sx
    if cells_y == 0 or cells_x == 0:
        return None
    if generator is None:
        offset = torch.zeros(cells_y, cells_x, dtype=torch.long)
    else:
        offset = torch.randint(sy * sx, (cells_y, cells_x), generator=generator, device=generator.device).cpu()
    rows = torch.arange(cells_y)[:, None] * sy + offset // sx  # (cells_y, cells_x)
    cols = torch.arange(cells_x)[None, :] * sx + offset % sx
    is_dst = torch.zeros(h * w, dtype=torch.bool)
    is_dst[(rows * w + cols).flatten()] = True
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
    advances); without it, or without a generator, the top-left of each cell. Keeping plans between calls is
    the run's (minitome/run.py).
    """
    cfg = settings.tome if settings is not None else None
    if cfg is None or x.numel() == 0 or downsample_level(settings.latent_hw, x.shape[1]) > cfg.max_downsample:
        return IDENTITY
    r = int(x.shape[1] * cfg.ratio)
    if (r <= 0 and cfg.threshold is None) or (cfg.threshold is not None and cfg.threshold >= 1):
        return IDENTITY  # checked before the draw, as tomesd and ca-tome do, so the generator advances identically
    parts = cfg.partitions(hw[0], hw[1], settings.generator, x.shape[0])
    if parts is None or parts[0].shape[1] == 0:  # no full cell, or no src (cells of one token)
        return IDENTITY
    slot = match(x, *parts, min(r, parts[0].shape[1]), cfg.threshold)
    return Plan(slot, int(slot.max()) + 1, cfg)
