"""The benchmark's wire types: what a parent process asks a measuring child for, sent as one JSON argument.

Where this sits: at the bottom of minitome/lab/. The modes (bench.py's table, methods.py, decode.py) build
`Job`s and hand them to runner.py, which starts `python -m minitome.lab.measure '<json job>'`; measure.py
turns the JSON back into a Job and measures it. Nothing here imports the rest of the lab.
"""
import dataclasses
import json
from dataclasses import dataclass

import torch

from minitome.tome import ToMeConfig


@dataclass
class CallKind:
    """One kind of UNet call (sent as JSON)."""
    label: str = "none"
    impl: str = "minitome"   # or "diffusers" (merged by tomesd when tome is set, DeepCache's helper when cached)
    tome: dict = None        # ToMeConfig's fields
    todo: dict = None        # ToDoConfig's fields
    reuse: bool = False      # apply the plan kept from the call before (CA-ToMe's calls between plans)
    cached: bool = False     # DeepCache: the shallow branch only, on the deep features of the call before
    branch: int = 0          # DeepCache's branch
    packed: bool = True      # minitome with its convolutions packed for the CPU (unet/packed_conv.py), or plain


@dataclass
class Job:
    """What one child process measures (sent to it as JSON)."""
    part: str                 # "time", "memory", "parts", "image" or "decode"
    latent: list              # [h, w]
    batch: int
    attention: str            # "sdpa" or "plain"
    repeats: int
    device: str
    dtype: str                # "float32", …
    weights: str = None       # a checkpoint, or None for random SD 1.5-size weights
    calls: list = None        # "time": the kinds of call (CallKind fields); "memory": one
    method: dict = None       # "image": {"tome", "todo", "deep_cache"}: each config's fields, or None
    steps: int = 50           # "image": the sampler's steps
    sampler: str = "plms"     # "image": which sampler (sampler/), and its spacing
    spacing: str = "leading"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    def torch_device_dtype(self) -> tuple:
        """(torch.device, torch.dtype) the child measures on, from the names the JSON carries."""
        return torch.device(self.device), getattr(torch, self.dtype)


def tome_from(fields: dict) -> ToMeConfig:
    """A ToMeConfig from its fields as JSON carries them (replan_calls comes as a list)."""
    if not fields:
        return None
    calls = fields.get("replan_calls")
    return ToMeConfig(**{**fields, "replan_calls": tuple(calls) if calls is not None else None})
