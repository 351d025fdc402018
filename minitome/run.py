"""One sampling run: its methods (ToMe, ToDo, DeepCache) and everything they keep from UNet call to UNet call.

Where this sits: the sampler loop (`noise_estimate`, minitome/pipeline.py) makes one `Run` per image batch and
hands it to every UNet call (`unet(x, t, context, run=run)`). `UNetModel.forward` asks it, once per call,
for that call's `Call`: the settings every transformer block reads, and the plans it keeps. Nothing is
kept inside the modules, so a model can serve two runs at once, and a run's state can be read in one place:

- ToMe's partition generator, one per seed, so that each call and each block draws its own partition
  from one stream, apart from the image noise;
- the plans kept between calls (CA-ToMe's reuse and replan_calls), one per transformer block, keyed by the
  block's place in the UNet (its module name, e.g. `input_blocks.1.1.transformer_blocks.0`), never by the
  order blocks ask in: a DeepCache call that runs only the shallow branch asks fewer blocks;
- the calls made, which say when ToDo stops (`until`) and when a plan is made;
- DeepCache's deep features (minitome/deepcache.py).

`check_methods` is the one place that says which methods run together (see its docstring).
`unet(x, t, context, tome=..., todo=...)` without a run makes a one-call run: exactly what that call
did before runs existed.
"""
from dataclasses import dataclass, field

import torch

from .deepcache import DeepCache, DeepCacheConfig
from .todo import ToDoConfig
from .tome import IDENTITY, BlockSettings, Plan, ToMeConfig, tome_plan


def check_methods(tome: ToMeConfig = None, todo: ToDoConfig = None, deep_cache: DeepCacheConfig = None):
    """Which methods run together; a ValueError for the combination that makes no sense.

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
        raise ValueError("ToMe's self-attention merging (--tome-merge attn) and ToDo (--todo-factor) both change "
                         "self-attention's tokens: use one of them, or merge only crossattn or mlp beside ToDo")


@dataclass
class Call:
    """What one UNet call hands every transformer block: its settings (pure data, minitome/tome.py) and,
    when the run keeps plans, the kept plans by block place and whether this call makes new ones."""
    settings: BlockSettings
    kept: dict = None          # place → Plan, the run's plans for this call's ToMeConfig; None: nothing kept
    planning: bool = True      # this call makes new plans; between planning calls each block applies its kept plan
    reuse_deep: bool = False   # DeepCache: this call runs only the shallow branch, on the kept deep features
    depth: int = 0             # DeepCache: the shallow branch's input (and output) blocks; 0 without DeepCache

    def plan(self, place: str, x: torch.Tensor, hw: tuple) -> Plan:
        """The ToMe plan of the block at `place` for its input x (B, N, C) on an (h, w) grid: on a planning
        call a new one (kept, when the run keeps plans); between them the one this block made at its last
        planning call (a block that has none yet, skipped then by DeepCache, makes one now and keeps it)."""
        if self.settings.tome is None:
            return IDENTITY
        if self.kept is not None and not self.planning and place in self.kept:
            return self.kept[place]
        plan = tome_plan(x, hw, self.settings)
        if self.kept is not None:
            self.kept[place] = plan
        return plan


PLAIN = Call(BlockSettings(latent_hw=None))  # SD 1.5 as trained: no method on


@dataclass
class Run:
    """One sampling run's methods and state. tome: a ToMeConfig, None, or a schedule t → ToMeConfig or None;
    todo: a ToDoConfig, on for the first `todo.calls_on(calls)` of the run's `calls` UNet calls (all of them
    when calls is None); deep_cache: a DeepCacheConfig. The sampler loop makes one per run."""
    tome: object = None
    todo: ToDoConfig = None
    deep_cache: DeepCacheConfig = None
    calls: int = None
    made: int = 0                                     # UNet calls made so far
    generators: dict = field(default_factory=dict)    # ToMe seed → its partition generator
    kept: dict = field(default_factory=dict)          # ToMeConfig → {block place → Plan}
    tome_calls: dict = field(default_factory=dict)    # ToMeConfig → calls made with it (its planning clock)
    cache: DeepCache = None
    shape: tuple = None                               # the latent's (B, C, H, W) that the kept state belongs to

    def __post_init__(self):
        check_methods(None if callable(self.tome) else self.tome, self.todo, self.deep_cache)  # a schedule: per call
        if self.deep_cache is not None:
            self.cache = DeepCache(self.deep_cache)

    def begin(self, t, latent: torch.Tensor) -> Call:
        """Called once at the start of each UNet call, with its timestep and latent (B, C, H, W)."""
        if tuple(latent.shape) != self.shape:  # kept plans and deep features fit one latent shape: another starts afresh
            self.shape = tuple(latent.shape)
            self.kept.clear()
            if self.cache is not None:
                self.cache.features = None
        tome = self.tome(torch.as_tensor(t).flatten()[0].item()) if callable(self.tome) else self.tome
        if self.todo is not None:
            self.todo.check_latent(tuple(latent.shape[-2:]))
        on = self.todo is not None and (self.calls is None or self.made < self.todo.calls_on(self.calls))
        todo = self.todo if on else None
        if callable(self.tome):  # a schedule's config of this call (the pipeline checks them all before it starts)
            check_methods(tome, self.todo, self.deep_cache)
        self.made += 1
        generator = None if tome is None else self.generators.setdefault(tome.seed, torch.Generator().manual_seed(tome.seed))
        call = Call(BlockSettings(tuple(latent.shape[-2:]), tome, generator, todo))
        if tome is not None:
            if tome.reuse > 1 or tome.replan_calls is not None:
                count = self.tome_calls.get(tome, 0)
                self.tome_calls[tome] = count + 1
                call.kept = self.kept.setdefault(tome, {})
                call.planning = count in tome.replan_calls if tome.replan_calls is not None else count % tome.reuse == 0
        if self.cache is not None:
            call.reuse_deep = self.cache.reuse()
            call.depth = self.deep_cache.branch + 1
        return call
