"""The paper's ablations of ToMe's partition, as ToMe settings the UNet can run: other ways of choosing the
destinations (its Figure 5) and one random partition per image instead of one for the batch.

Where this sits: `python -m minitome.lab.ablate` (6 and 7) and the tutorial's pictures use them; the model never
needs them. `AblationToMe` is a `ToMeConfig` (minitome/tome.py) whose `partitions` draws these instead of
tomesd's one-per-cell, so it runs anywhere a ToMeConfig does.
"""
from dataclasses import dataclass

import torch

from minitome.checks import Refusal
from minitome.tome import ToMeConfig, partition

PARTITIONS = ("cells", "random", "alternating")  # how the dst are chosen (the paper's Figure 5)
# the paper's names for the partitions (its Figure 5), as (AblationToMe.partition, use_rand)
PAPER_PARTITIONS = {"random 2×2 (ToMe-SD)": ("cells", True), "2-stride grid": ("cells", False),
                    "random": ("random", True), "alternating": ("alternating", True)}


def paper_partition(h: int, w: int, sx: int = 2, sy: int = 2, generator: torch.Generator = None, kind: str = "cells"):
    """(src, dst) of an h × w grid for each of the paper's partitions: "cells" is ToMe-SD's (`tome.partition`);
    "random", as many dst as there are full cells but anywhere (drawn from `generator`); "alternating", every
    other token in raster order (ToMe for ViTs)."""
    if kind == "cells":
        return partition(h, w, sx, sy, generator)
    is_dst = torch.zeros(h * w, dtype=torch.bool)
    if kind == "alternating":
        is_dst[::2] = True
    else:
        device = "cpu" if generator is None else generator.device
        is_dst[torch.randperm(h * w, generator=generator, device=device).cpu()[:max(1, (h // sy) * (w // sx))]] = True
    return (~is_dst).nonzero().squeeze(1), is_dst.nonzero().squeeze(1)


@dataclass(frozen=True)
class AblationToMe(ToMeConfig):
    rand_per_image: bool = False  # one random partition per image of the batch (tomesd: one for all)
    partition: str = "cells"      # "cells" (one dst per sx × sy cell); the paper's contrasts: "random", "alternating"

    def __post_init__(self):
        super().__post_init__()
        if self.partition not in PARTITIONS:
            raise Refusal(f"ToMe partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        if self.partition == "random" and not self.use_rand:
            raise Refusal("ToMe partition 'random' draws its dst, so it needs use_rand=True")

    def partitions(self, h: int, w: int, generator: torch.Generator, batch: int):
        """(src, dst), each (draws, ·): with rand_per_image (and a generator) image b of the batch gets the b-th
        partition drawn, else one for all."""
        generator = generator if self.use_rand else None
        draws = batch if self.rand_per_image and generator is not None else 1
        parts = [paper_partition(h, w, self.sx, self.sy, generator, self.partition) for _ in range(draws)]
        if parts[0] is None:
            return None
        return torch.stack([s for s, _ in parts]), torch.stack([d for _, d in parts])


def linear_schedule(start: float, end: float, **config):
    """A ToMe schedule for `generate`: the ratio going from `start` at t = 1000 to `end` at t = 0."""
    return lambda t: ToMeConfig(ratio=round(end + (start - end) * t / 1000, 4), **config)
