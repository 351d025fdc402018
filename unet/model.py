"""The SD 1.5 UNet: predicts the noise ε in a latent x_t, given the timestep t and the text context.

Where this sits: the sampler (`sampler/`) calls it once or twice per step; its input is the
(B, 4, H, W) latent and its output has the same shape. Mirrors CompVis
`ldm/modules/diffusionmodules/openaimodel.py` (UNetModel), whose attribute names are the official
checkpoint's `model.diffusion_model.*` keys, so loading is a strict `load_state_dict`.

Shape of the SD 1.5 network (widths 320, 640, 1280, 1280; levels at H, H/2, H/4, H/8):

    input_blocks  0: conv_in
                  1, 2: ResBlock + SpatialTransformer   (level 0)    3: Downsample
                  4, 5: ResBlock + SpatialTransformer   (level 1)    6: Downsample
                  7, 8: ResBlock + SpatialTransformer   (level 2)    9: Downsample
                  10, 11: ResBlock                      (level 3)
    middle_block  ResBlock, SpatialTransformer, ResBlock
    output_blocks 0–2: ResBlock (level 3; 2 ends with Upsample)
                  3–5, 6–8, 9–11: ResBlock + SpatialTransformer (levels 2, 1, 0; 5 and 8 end with Upsample)
    out           GroupNorm, SiLU, conv_out

Every output block first concatenates the skip saved by the matching input block.
ToMe, ToDo and DeepCache: `forward(..., call=call)` takes the record of this call (unet/call.py), which a
sampling run (minitome/run.py) opens: the settings every transformer block reads, the plans it keeps.
DeepCache acts here, in forward: a call may skip the deep part and reuse its features. `tome=` and `todo=`
are shorthands for a record of one call. With none of them, forward is exactly SD 1.5.
An LCM-distilled UNet (config.time_cond_proj_dim set) has one more layer, `time_cond_proj`, a bias-free Linear
that adds the guidance embedding of w = g − 1 to the timestep's sinusoids before `time_embed` (diffusers'
`TimestepEmbedding`: sample + cond_proj(condition), then linear_1); forward takes it as `timestep_cond`.
`forward` is the model's door: it checks its inputs once, on entry; nothing below it checks.
"""
import torch
import torch.nn as nn

from minitome.checks import Refusal
from minitome.todo import ToDoConfig
from minitome.tome import ToMeConfig
from .attention import SpatialTransformer
from .blocks import Downsample, ResBlock, Upsample, timestep_embedding
from .call import Call, check_methods
from .config import UNetConfig


class Sequence(nn.ModuleList):
    """One numbered entry of input_blocks / output_blocks: its layers, which UNetModel.forward runs in order
    (a ModuleList, not an nn.Sequential: the layers take different arguments, see `run_layer`)."""


def run_layer(layer: nn.Module, x, emb, context, call: Call, upsample_size=None):
    """One layer of a block, given what it needs."""
    if isinstance(layer, ResBlock):
        return layer(x, emb)
    if isinstance(layer, SpatialTransformer):
        return layer(x, context, call)
    if isinstance(layer, Upsample):
        return layer(x, upsample_size)
    return layer(x)  # conv_in, Downsample


class UNetModel(nn.Module):
    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = c = config
        emb_dim = c.time_embed_dim

        def make(layer):  # a Layer of config.layout() → its module
            if layer.kind == "conv_in":
                return nn.Conv2d(layer.in_channels, layer.channels, 3, padding=1)
            if layer.kind == "res":
                return ResBlock(layer.in_channels, layer.channels, emb_dim, c.norm_groups)
            if layer.kind == "attn":
                return SpatialTransformer(layer.channels, c.context_dim, c.num_heads, c.norm_groups, c.attention)
            return Downsample(layer.channels) if layer.kind == "down" else Upsample(layer.channels)

        layout = c.layout()
        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if c.time_cond_proj_dim is not None:  # an LCM-distilled UNet: the guidance embedding, into the sinusoids' width
            self.time_cond_proj = nn.Linear(c.time_cond_proj_dim, c.model_channels, bias=False)
        self.input_blocks = nn.ModuleList(Sequence(map(make, block)) for block in layout["input_blocks"])
        self.middle_block = Sequence(map(make, layout["middle_block"]))
        self.output_blocks = nn.ModuleList(Sequence(map(make, block)) for block in layout["output_blocks"])
        self.out = nn.Sequential(
            nn.GroupNorm(c.norm_groups, c.model_channels), nn.SiLU(), nn.Conv2d(c.model_channels, c.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t, context: torch.Tensor, tome: ToMeConfig = None, todo: ToDoConfig = None,
                call: Call = None, timestep_cond: torch.Tensor = None) -> torch.Tensor:
        """x (B, 4, H, W), t (B,) or a scalar, context (B, T, context_dim) → ε (B, 4, H, W).

        call: this call's record (unet/call.py), opened by the sampling run it belongs to (minitome/run.py):
        which methods act (ToMe, ToDo, DeepCache) and what they keep from call to call. tome= and todo= are
        shorthands for a record of this one call (ToMe's partitions then drawn from a generator seeded with
        tome.seed). All None: exactly SD 1.5.
        timestep_cond: an LCM-distilled UNet's guidance embedding (B or 1, time_cond_proj_dim), `guidance_embedding`
        (unet/blocks.py) of w = g − 1; without it the UNet runs on t alone, as diffusers' does.
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise Refusal(f"the UNet takes latents (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        dim = self.config.time_cond_proj_dim
        if timestep_cond is not None and dim is None:
            raise Refusal("timestep_cond is for an LCM-distilled UNet (config.time_cond_proj_dim); this one takes none")
        if timestep_cond is not None and (timestep_cond.ndim != 2 or timestep_cond.shape[0] not in (1, x.shape[0])
                                          or timestep_cond.shape[1] != dim):
            raise Refusal(f"timestep_cond must be (B or 1, {dim}), got {tuple(timestep_cond.shape)}")
        if call is not None and (tome is not None or todo is not None):
            raise Refusal("give the methods to the run (Run(tome=..., todo=...)) or to the call, not both")
        if call is None:
            check_methods(tome, todo)
            if todo is not None:
                todo.check_latent(tuple(x.shape[-2:]))
            call = Call.once(tuple(x.shape[-2:]), tome, todo)
        return self.predict(x, t, context, call, timestep_cond)

    def predict(self, x: torch.Tensor, t, context: torch.Tensor, call: Call, timestep_cond: torch.Tensor = None) \
            -> torch.Tensor:
        """The network itself, past the door: ε for x (B, 4, H, W) at t with the text context, as `call` says
        (and the guidance embedding timestep_cond, for an LCM-distilled UNet)."""
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        sinusoids = timestep_embedding(t, self.config.model_channels).to(x.dtype)  # (B, model_channels)
        if timestep_cond is not None:  # an LCM-distilled UNet: its guidance embedding, projected, added before time_embed
            sinusoids = sinusoids + self.time_cond_proj(timestep_cond.to(x.dtype))
        emb = self.time_embed(sinusoids)

        # DeepCache: a call that reuses the deep features runs only the shallow branch, the first `call.depth`
        # input blocks and the last `call.depth` output blocks (every block, on a whole call or without it)
        deep = len(self.output_blocks) - call.depth  # the output blocks of the deep part

        # channels-last (NHWC) activations: oneDNN convolves them without first copying them into its own
        # layout (about 6% of a call on the CPU), and a (B, C, h, w) map becomes (B, h·w, C) tokens and back
        # as a free view instead of a copy. Weights are made channels-last by `channels_last()`.
        x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for block in self.input_blocks[:call.depth] if call.reuse_deep else self.input_blocks:
            for layer in block:
                x = run_layer(layer, x, emb, context, call)
            skips.append(x)
        if call.reuse_deep:
            x = call.deep_features
        else:
            for layer in self.middle_block:
                x = run_layer(layer, x, emb, context, call)
            x = self.up(self.output_blocks[:deep], x, skips, emb, context, call)
            if call.depth:  # DeepCache: the run keeps them
                call.deep_features = x
        x = self.up(self.output_blocks[deep:], x, skips, emb, context, call)
        return self.out(x).contiguous()

    @staticmethod
    def up(blocks, x, skips: list, emb, context, call: Call):
        """The way up through `blocks`, each first concatenating the skip its twin on the way down saved."""
        for block in blocks:
            # layer by layer, not as one module call: a call would hold the concatenation as its argument
            # until the block's end; here it is freed once the ResBlock has read it, before the attention
            # (about a tenth less memory at the peak of a merged call with plain attention)
            x = torch.cat([x, skips.pop()], dim=1)
            size = skips[-1].shape[-2:] if skips else None  # Upsample to the next skip's size
            for layer in block:
                x = run_layer(layer, x, emb, context, call, size)
        return x

    def channels_last(self) -> "UNetModel":
        """Store the convolution weights channels-last, the layout forward() runs its activations in."""
        return self.to(memory_format=torch.channels_last)

