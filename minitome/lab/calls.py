"""The kinds of UNet call the benchmark times, minitome's and diffusers' (with tomesd or DeepCache's helper).

Where this sits: measure.py, in the measuring child, makes one `Configuration` per `CallKind` (jobs.py) and calls
`prepare` before each timed call and `call` to time it. diffusers' model is one object shared by its kinds,
patched in place: tomesd's ratio is set, or DeepCache's helper wrapped around it, in `prepare`, outside the clock.
"""
import dataclasses
from types import SimpleNamespace

import torch

from minitome.deepcache import DeepCacheConfig
from minitome.run import Run
from minitome.todo import ToDoConfig
from unet import UNetModel
from .jobs import CallKind, Job, tome_from

HELPERS = {}  # id(diffusers model) → the DeepCacheSDHelper wrapped around it now


def as_diffusers(unet: UNetModel, job: Job):
    """The same weights in diffusers' UNet2DConditionModel (AttnProcessor for plain attention)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from weights.unet import diffusers_names, to_diffusers_name
    c = unet.config
    reference = UNet2DConditionModel(
        block_out_channels=tuple(c.model_channels * m for m in c.channel_mult), layers_per_block=c.num_res_blocks,
        attention_head_dim=c.num_heads, cross_attention_dim=c.context_dim, norm_num_groups=c.norm_groups)
    table = diffusers_names(c)
    reference.load_state_dict({to_diffusers_name(name, table): t for name, t in unet.state_dict().items()})
    reference = reference.to(next(unet.parameters()).device, next(unet.parameters()).dtype).eval().requires_grad_(False)
    if job.attention == "plain":
        reference.set_attn_processor(AttnProcessor())  # softmax(QKᵀ/√D)V in plain PyTorch
    return reference


class Configuration:
    """One kind of call: `prepare(x, t, context)` before each call, then `call(x, t, context)`. minitome's kept plan
    and deep features live in a run, made here, once (a Run): the first call fills them, every later one reuses
    them. diffusers' deep features are kept by DeepCache's `DeepCacheSDHelper`, wrapped around the model and
    filled by a whole call in `prepare`; the timed call is then told the schedule's second timestep, which the
    helper's uniform schedule skips."""

    def __init__(self, spec: CallKind, model):
        self.spec, self.model = spec, model
        self.tome = tome_from(spec.tome)
        self.todo = ToDoConfig(**spec.todo) if spec.todo else None
        # one run for all the calls of this kind: a plan made at its first call only (reuse), the deep features
        # kept from its first call only (cached); ToMe's partitions from the generator of seed tome.seed
        tome = dataclasses.replace(self.tome, replan_calls=(0,)) if spec.reuse else self.tome
        deep_cache = DeepCacheConfig(interval=2 ** 62, branch=spec.branch) if spec.cached else None
        self.run = Run(tome=tome, todo=self.todo, deep_cache=deep_cache)

    def prepare(self, x, t, context):
        if self.spec.impl != "diffusers":
            return
        import tomesd
        helper = HELPERS.pop(id(self.model), None)
        if helper is not None:
            helper.disable()
        if self.tome is not None:
            tomesd.apply_patch(self.model, ratio=self.tome.ratio, max_downsample=self.tome.max_downsample)
        else:
            tomesd.remove_patch(self.model)
        if self.spec.cached:
            from DeepCache import DeepCacheSDHelper
            first = torch.as_tensor(t).flatten()[0]
            schedule = SimpleNamespace(timesteps=torch.stack([first, first - 1]))  # the run's first two timesteps
            helper = DeepCacheSDHelper(pipe=SimpleNamespace(unet=self.model, scheduler=schedule))
            helper.set_params(cache_interval=2 ** 62, cache_branch_id=self.spec.branch)
            helper.enable()
            self.model(x, first, context)  # a whole call: the helper keeps its deep features
            HELPERS[id(self.model)] = helper

    def call(self, x, t, context):
        if self.spec.impl == "diffusers":
            if self.spec.cached:  # the second timestep: the helper runs the shallow branch on its kept features
                return self.model(x, torch.as_tensor(t).flatten()[0] - 1, context).sample
            return self.model(x, t, context).sample
        return self.run.call(self.model, x, t, context)
