"""Token Downsampling (ToDo), ToMe's simplest successor: self-attention's keys and values from a coarser grid.

Where this sits: `BasicTransformerBlock.forward` (`unet/attention.py`) hands `downsample_kv` its
normalised tokens; the result is the context self-attention computes its keys and values from.
Paper: Smith et al., "ToDo: Token Downsampling for Efficient Generation of High-Resolution Images",
arXiv 2402.13573; behaviour follows ImprovedTokenMerge (its `downsample_method="nearest-exact"`).

Self-attention at the full-resolution blocks compares N = h·w queries with N keys. Neighbouring
tokens of the latent grid are much alike, so ToDo keeps every query but computes the keys and values
from the block's tokens downsampled on their 2-D grid by `factor` in each direction (nearest-exact
interpolation): N × N/factor² scores instead of N × N. There is no similarity, no matching, no
unmerge, so nothing is planned and nothing is copied back: the output has all N tokens.

Odd grids are sized down: an h × w grid becomes ⌊h / factor⌋ × ⌊w / factor⌋ (at least 1 × 1), as
ImprovedTokenMerge sizes them at the full-resolution level. `until` keeps ToDo on for that share of
a run's UNet calls (the first ones, the noisiest); the sampler loop applies it (minitome/pipeline.py).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import Refusal, real_number, whole_number
from .tome import downsample_level


@dataclass(frozen=True)
class ToDoConfig:
    factor: int = 2            # keys and values from a grid this many times coarser in each direction (1: off)
    max_downsample: int = 1    # in blocks at most this much downsampled: 1 the full-resolution ones, 2 the next too
    until: float = 1.0         # share of the run's UNet calls that downsample: the first round(until · calls)

    def __post_init__(self):
        whole_number(self.factor, 1, "ToDo factor"), real_number(self.until, "ToDo until")
        if isinstance(self.max_downsample, bool) or self.max_downsample not in (1, 2, 4, 8):
            raise Refusal(f"ToDo max_downsample must be one of 1, 2, 4, 8, got {self.max_downsample!r}")
        if not 0 < self.until <= 1:
            raise Refusal(f"ToDo until must be a share of the UNet calls in (0, 1], got {self.until!r}")

    def check_latent(self, latent_hw: tuple):
        """The factor against a latent (H, W): no coarser than its shorter side (the full-resolution grid)."""
        shorter = min(latent_hw)
        if self.factor > shorter:
            raise Refusal(f"ToDo factor {self.factor} is coarser than the latent grid itself ({shorter} cells on its "
                             f"shorter side at this size): at most {shorter}")

    def calls_on(self, calls: int) -> int:
        """How many of a run's `calls` UNet calls, from the first, downsample."""
        return round(self.until * calls)


def downsample_kv(tokens: torch.Tensor, hw: tuple, settings) -> torch.Tensor:
    """The input self-attention computes its keys and values from: tokens (B, N, C) on an (h, w) grid,
    downsampled to (B, ⌊h/f⌋·⌊w/f⌋, C); None (the tokens themselves) when ToDo is off for this block.
    settings: the call's BlockSettings (its `todo`, and the latent's size, which gives the block's level)."""
    todo = settings.todo if settings is not None else None
    if todo is None or todo.factor == 1 or downsample_level(settings.latent_hw, tokens.shape[1]) > todo.max_downsample:
        return None
    h, w = hw
    grid = tokens.transpose(1, 2).unflatten(2, (h, w))                                  # (B, C, h, w)
    small = F.interpolate(grid, size=(max(1, h // todo.factor), max(1, w // todo.factor)), mode="nearest-exact")
    return small.flatten(2).transpose(1, 2)                                             # (B, N / f², C)
