"""What one UNet call is handed besides (x, t, context): which methods act in it, and what a run keeps for it.

Where this sits: a sampling run (minitome/run.py) opens one `Call` for each UNet call and hands it to
`UNetModel.forward(x, t, context, call=call)`, which hands it down to every transformer block. The model reads
it and keeps nothing: a block asks it for its ToMe plan (`plan`), and the UNet fills one slot a run asks for,
the deep features of a whole call that DeepCache keeps. `check_methods` says which methods run together, for
the doors that take them (a run's start, `UNetModel.forward`'s `tome=` / `todo=`).
"""
from dataclasses import dataclass

import torch

from minitome.checks import Refusal
from minitome.deepcache import DeepCacheConfig
from minitome.todo import ToDoConfig
from minitome.tome import IDENTITY, BlockSettings, Plan, ToMeConfig, tome_plan


def check_methods(tome: ToMeConfig = None, todo: ToDoConfig = None, deep_cache: DeepCacheConfig = None):
    """Which methods run together; a Refusal for the combination that makes no sense.

    ToMe (by ratio or threshold, with or without reuse, or a schedule over t), ToDo and DeepCache each run
    alone and beside each other, with one exception: ToMe merging around self-attention (merge_attn) and
    ToDo (factor > 1) both change self-attention's tokens, and one would undo the other's saving. ToMe
    merging only cross-attention or the MLP runs beside ToDo. DeepCache skips the deep blocks on some calls,
    which composes with anything the blocks do (the blocks that run keep their own plans).
    A TypeError for what is not a config (`tome=0.5`: the ratio goes in `ToMeConfig(ratio=0.5)`).
    """
    for value, kind, name, example in ((tome, ToMeConfig, "tome", "ratio"), (todo, ToDoConfig, "todo", "factor"),
                                       (deep_cache, DeepCacheConfig, "deep_cache", "interval")):
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{name} must be a {kind.__name__} or None, got {value!r}: e.g. "
                            f"{kind.__name__}({example}={value!r})")
    if tome is not None and tome.merge_attn and todo is not None and todo.factor > 1:
        raise Refusal("ToMe's self-attention merging (--tome-merge attn) and ToDo (--todo-factor) both change "
                      "self-attention's tokens: use one of them, or merge only crossattn or mlp beside ToDo")


@dataclass
class Call:
    """One UNet call's record: the settings every transformer block reads (pure data, minitome/tome.py) and,
    when the run keeps plans or deep features, where they are."""
    settings: BlockSettings = BlockSettings(latent_hw=None)
    plans: dict = None            # block → Plan: the run's kept plans for this call's ToMeConfig; None: nothing kept
    planning: bool = True         # this call makes new plans; between planning calls each block applies its kept plan
    reuse_deep: bool = False      # DeepCache: this call runs only the shallow branch, on `deep_features`
    depth: int = 0                # DeepCache: the shallow branch's input (and output) blocks; 0 without DeepCache
    deep_features: torch.Tensor = None  # DeepCache: the features reused; after a whole call, the ones to keep

    def plan(self, block, x: torch.Tensor, hw: tuple) -> Plan:
        """The ToMe plan of `block` for its input x (B, N, C) on an (h, w) grid: on a planning call a new one
        (kept, when the run keeps plans); between them the one this block made at its last planning call (a
        block that has none yet, skipped then by DeepCache, makes one now and keeps it)."""
        if self.settings.tome is None:
            return IDENTITY
        if self.plans is not None and not self.planning and block in self.plans:
            return self.plans[block]
        plan = tome_plan(x, hw, self.settings)
        if self.plans is not None:
            self.plans[block] = plan
        return plan

    @staticmethod
    def once(latent_hw: tuple, tome: ToMeConfig = None, todo: ToDoConfig = None) -> "Call":
        """The record of a call that belongs to no run: ToMe's partitions drawn from a generator seeded with
        tome.seed, nothing kept."""
        generator = None if tome is None else torch.Generator().manual_seed(tome.seed)
        return Call(BlockSettings(latent_hw, tome, generator, todo))


PLAIN = Call()  # SD 1.5 as trained: no method on
