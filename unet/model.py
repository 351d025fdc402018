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
ToMe: `forward(..., tome=ToMeConfig(...))` passes the settings, the latent size and the partition
generator down to each transformer block as plain arguments; `tome=None` is exactly SD 1.5.
"""
import torch
import torch.nn as nn

from minitome.tome import ToMeArgs, ToMeConfig
from .attention import SpatialTransformer
from .blocks import Downsample, ResBlock, Upsample, timestep_embedding
from .config import UNetConfig
from .packed_conv import pack_convolutions


class Sequence(nn.ModuleList):
    """One numbered entry of input_blocks / output_blocks: layers that UNetModel.forward runs in order."""


def run_layer(layer: nn.Module, x, emb, context, tome, upsample_size=None):
    """One layer of a block, given what it needs."""
    if isinstance(layer, ResBlock):
        return layer(x, emb)
    if isinstance(layer, SpatialTransformer):
        return layer(x, context, tome)
    if isinstance(layer, Upsample):
        return layer(x, upsample_size)
    return layer(x)  # conv_in, Downsample


class UNetModel(nn.Module):
    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = c = config
        emb_dim = c.time_embed_dim
        widths = [c.model_channels * m for m in c.channel_mult]

        def transformer(ch):
            return SpatialTransformer(ch, c.context_dim, c.num_heads, c.norm_groups, c.attention)

        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        # the way down: remember each block's output width, the skip the way up will concatenate
        self.input_blocks = nn.ModuleList([Sequence([nn.Conv2d(c.in_channels, c.model_channels, 3, padding=1)])])
        skip_widths, ch = [c.model_channels], c.model_channels
        for level, width in enumerate(widths):
            for _ in range(c.num_res_blocks):
                layers = [ResBlock(ch, width, emb_dim, c.norm_groups)]
                ch = width
                if level in c.attention_levels:
                    layers.append(transformer(ch))
                self.input_blocks.append(Sequence(layers))
                skip_widths.append(ch)
            if level != len(widths) - 1:
                self.input_blocks.append(Sequence([Downsample(ch)]))
                skip_widths.append(ch)

        self.middle_block = Sequence([
            ResBlock(ch, ch, emb_dim, c.norm_groups), transformer(ch), ResBlock(ch, ch, emb_dim, c.norm_groups)])

        # the way up: one more ResBlock per level than on the way down, each eating one skip
        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_widths.pop(), width, emb_dim, c.norm_groups)]
                ch = width
                if level in c.attention_levels:
                    layers.append(transformer(ch))
                if level != 0 and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(Sequence(layers))

        self.out = nn.Sequential(
            nn.GroupNorm(c.norm_groups, ch), nn.SiLU(), nn.Conv2d(ch, c.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t, context: torch.Tensor,
                tome: ToMeConfig = None, tome_generator: torch.Generator = None) -> torch.Tensor:
        """x (B, 4, H, W), t (B,) or a scalar, context (B, T, context_dim) → ε (B, 4, H, W).

        tome_generator: where the random partitions are drawn from (any device; a CPU one is
        cheapest). A sampling run passes one generator for all its steps, so each step and block
        gets its own partition; when None, a fresh one seeded with tome.seed is used for this call.
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"the UNet takes latents (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        args = None
        if tome is not None:
            if tome.use_rand and tome_generator is None:
                tome_generator = torch.Generator().manual_seed(tome.seed)
            args = ToMeArgs(tome, tuple(x.shape[-2:]), tome_generator if tome.use_rand else None)

        # channels-last (NHWC) activations: oneDNN's convolutions run ~6% faster on them on the CPU, and a
        # (B, C, h, w) map becomes (B, h·w, C) tokens and back as a free view instead of a copy (measured at
        # 512², batch 2, 2 cores: 11.6 s → 10.9 s per call). Weights are made channels-last by `channels_last()`.
        x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for block in self.input_blocks:
            for layer in block:
                x = run_layer(layer, x, emb, context, args)
            skips.append(x)
        for layer in self.middle_block:
            x = run_layer(layer, x, emb, context, args)
        for block in self.output_blocks:
            # layer by layer, not as one module call: a call would hold the concatenation as its argument
            # until the block's end; here it is freed once the ResBlock has read it, before the attention
            # (live tensors at the peak, 512², batch 2, plain attention, ratio 0.5: 361 → 331 MB)
            x = torch.cat([x, skips.pop()], dim=1)
            size = skips[-1].shape[-2:] if skips else None  # Upsample to the next skip's size
            for layer in block:
                x = run_layer(layer, x, emb, context, args, size)
        return self.out(x).contiguous()

    def channels_last(self) -> "UNetModel":
        """Store the convolution weights channels-last, the layout forward() runs its activations in."""
        return self.to(memory_format=torch.channels_last)

    def pack_convolutions(self) -> "UNetModel":
        """For inference on the CPU in float32: each convolution's weight laid out once for oneDNN
        (unet/packed_conv.py); elsewhere nothing changes. Call it last, after `.to(...)` and
        `channels_last()`: packed weights no longer follow `.to`.
        """
        pack_convolutions(self)
        return self
