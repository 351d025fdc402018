"""One sampling run: its methods (ToMe, ToDo, DeepCache) and everything they keep from UNet call to UNet call.

Where this sits: the sampler's noise estimate (`noise_estimate`, minitome/pipeline.py) makes one `Run` per image
batch; before each UNet call it opens that call's record (`open`, a `Call`, unet/call.py) and hands it to the
UNet, and after it closes it (`close`). Nothing is kept inside the model, so a model can serve two runs at once,
and a run's state can be read in one place:

- ToMe's partition generator, one per seed, so that each call and each block draws its own partition
  from one stream, apart from the image noise;
- the plans kept between calls (CA-ToMe's reuse and replan_calls), one per transformer block, keyed by the
  block itself, never by the order blocks ask in: a DeepCache call that runs only the shallow branch asks fewer;
- the calls made, which say when ToDo stops (`until`) and when a plan is made;
- DeepCache's deep features (minitome/deepcache.py).
"""
from dataclasses import dataclass, field

import torch

from unet.call import Call, check_methods
from .deepcache import DeepCacheConfig
from .todo import ToDoConfig
from .tome import BlockSettings


@dataclass
class Run:
    """One sampling run's methods and state. tome: a ToMeConfig, None, or a schedule t → ToMeConfig or None;
    todo: a ToDoConfig, on for the first `todo.calls_on(calls)` of the run's `calls` UNet calls (all of them
    when calls is None); deep_cache: a DeepCacheConfig. The sampler's noise estimate makes one per run."""
    tome: object = None
    todo: ToDoConfig = None
    deep_cache: DeepCacheConfig = None
    calls: int = None
    made: int = 0                                     # UNet calls made so far
    generators: dict = field(default_factory=dict)    # ToMe seed → its partition generator
    kept: dict = field(default_factory=dict)          # ToMeConfig → {block → Plan}
    tome_calls: dict = field(default_factory=dict)    # ToMeConfig → calls made with it (its planning clock)
    deep_calls: int = 0                               # DeepCache: the UNet calls counted for its interval
    features: torch.Tensor = None                     # DeepCache: the deep features of the last whole call
    shape: tuple = None                               # the latent's (B, C, H, W) that the kept state belongs to

    def __post_init__(self):
        check_methods(None if callable(self.tome) else self.tome, self.todo, self.deep_cache)  # a schedule: its door's

    def open(self, t, latent: torch.Tensor) -> Call:
        """The record of the next UNet call, at timestep t on the latent (B, C, H, W) it is handed."""
        if tuple(latent.shape) != self.shape:  # kept plans and deep features fit one latent shape: another starts afresh
            self.shape = tuple(latent.shape)
            self.kept.clear()
            self.features = None
        tome = self.tome(torch.as_tensor(t).flatten()[0].item()) if callable(self.tome) else self.tome
        on = self.todo is not None and (self.calls is None or self.made < self.todo.calls_on(self.calls))
        self.made += 1
        generator = None if tome is None else self.generators.setdefault(tome.seed, torch.Generator().manual_seed(tome.seed))
        call = Call(BlockSettings(tuple(latent.shape[-2:]), tome, generator, self.todo if on else None))
        if tome is not None and (tome.reuse > 1 or tome.replan_calls is not None):
            count = self.tome_calls.get(tome, 0)
            self.tome_calls[tome] = count + 1
            call.plans = self.kept.setdefault(tome, {})
            call.planning = count in tome.replan_calls if tome.replan_calls is not None else count % tome.reuse == 0
        if self.deep_cache is not None:  # a whole call every `interval`, and whenever nothing is kept
            call.reuse_deep = self.deep_calls % self.deep_cache.interval != 0 and self.features is not None
            call.depth, call.deep_features = self.deep_cache.branch + 1, self.features if call.reuse_deep else None
            self.deep_calls += 1
        return call

    def call(self, unet, x: torch.Tensor, t, context: torch.Tensor, timestep_cond: torch.Tensor = None) -> torch.Tensor:
        """One UNet call of this run: its record opened, handed to the UNet, closed. timestep_cond: an LCM-distilled
        UNet's guidance embedding (unet/blocks.py, `guidance_embedding`), the same at every call of the run."""
        record = self.open(t, x)
        eps = unet(x, t, context, call=record, timestep_cond=timestep_cond)
        self.close(record)
        return eps

    def close(self, call: Call):
        """After the call: DeepCache keeps the deep features of a whole call."""
        if self.deep_cache is not None and not call.reuse_deep:
            self.features = call.deep_features
