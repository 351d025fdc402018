"""DeepCache: reuse the UNet's deep features between calls, recompute only its shallow branch.

Where this sits: a sampling run (minitome/run.py) keeps the deep features and counts the calls; it tells each
UNet call whether to reuse them, and `UNetModel.predict` (unet/model.py) runs the whole UNet or only its shallow
branch accordingly; nothing is kept inside the model. Paper: Ma et al., "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024, arXiv
2312.00858; behaviour follows the `DeepCache` package's `DeepCacheSDHelper` (uniform schedule).

The UNet's output is the sum of what the skip connections carry up and what comes back from below.
Between neighbouring steps the deep part (the bottom levels and the middle) changes little, the
shallow part (the top of the way down, its skips and the end of the way up) much more. So every
`interval`-th call runs whole and keeps the deep features: the input of the up path where the shallow
branch joins it. The calls in between run only the shallow branch: the first `branch + 1` input blocks
(input_blocks[0] is conv_in), and the last `branch + 1` output blocks, fed with the kept features.

`branch` numbers the places the branch can end, as the package's `cache_branch_id` does: 0 is the
shallowest (conv_in alone, and the last output block), 3 ends after SD 1.5's first level, and so on;
the skips the shallow output blocks read always come from the shallow input blocks, so they are fresh.
Calls are counted, not steps: PLMS's first step makes two calls.
"""
from dataclasses import dataclass

from .checks import Refusal, whole_number


@dataclass(frozen=True)
class DeepCacheConfig:
    interval: int = 3   # one whole call in `interval`; the calls between reuse the deep features (1: off)
    branch: int = 0     # how deep the recomputed shallow branch reaches: input_blocks[:branch + 1] (0 … 10 in SD 1.5)

    def __post_init__(self):
        whole_number(self.interval, 1, "DeepCache interval"), whole_number(self.branch, 0, "DeepCache branch")

    def check_layout(self, unet_config):
        """The branch against a UNet's layout: it must end above the deepest input block."""
        deepest = len(unet_config.layout()["input_blocks"]) - 2
        if self.branch > deepest:
            raise Refusal(f"DeepCache branch must be at most {deepest} for this UNet, got {self.branch}")
