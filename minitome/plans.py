"""CA-ToMe's plan reuse: ToMe plans kept between UNet calls, and the calls that make new ones.

Where this sits: the sampler loop (`noise_estimate`, minitome/pipeline.py) makes one PlanStore per
sampling run when its ToMeConfig has `reuse` > 1 or `replan_calls`, and hands it to every UNet call;
`tome_plan` (minitome/tome.py) asks it for a transformer block's kept plan and gives it the new ones.
Paper: Saghatchian et al., "Cached Adaptive Token Merging", arXiv 2501.00946; behaviour follows the
`ca-tome` package (its per-block cache, recomputed at the steps of a schedule).

Neighbouring steps' tokens are alike, so a plan (the partition and the matching: the `slot` of each
position) made at one call still groups similar tokens a few calls later. Between planning calls,
merging costs only the merge and the unmerge: no similarity, no sort, no draw from the generator.
"""
from .tome import Plan, ToMeConfig


class PlanStore:
    """ToMe plans kept between UNet calls, for `ToMeConfig.reuse` / `replan_calls` (CA-ToMe's cache).

    One per sampling run: the sampler loop makes it and hands it to every UNet call, which calls
    `begin_call()` first; each transformer block then asks `reused()` for its plan (blocks are told apart
    by the order a call runs them in), and `keep()`s the one it makes on a planning call."""

    def __init__(self, config: ToMeConfig):
        self.config, self.call, self.block, self.plans = config, -1, 0, {}

    def begin_call(self):
        self.call, self.block = self.call + 1, 0

    def planning(self) -> bool:
        if self.config.replan_calls is not None:
            return self.call in self.config.replan_calls
        return self.call % self.config.reuse == 0

    def reused(self):
        """This block's kept plan on a call between plans (None on a planning call, or before any plan)."""
        self.block += 1
        return None if self.planning() else self.plans.get(self.block - 1)

    def keep(self, plan: Plan) -> Plan:
        self.plans[self.block - 1] = plan
        return plan
