"""The UNet's shape, as a frozen dataclass.

Everything that decides the size of a tensor in `unet/model.py` is a field here. The defaults are
Stable Diffusion 1.5 (CompVis `v1-inference.yaml`, `unet_config.params`); `tiny()` is the same
architecture shrunk for tests: four levels, two ResBlocks per level, attention at the first three,
so it has the 16 transformer blocks of SD 1.5 but runs in milliseconds.

Two SD 1.x constants cannot be read off a checkpoint's tensor shapes: the number of attention
heads (8) and of GroupNorm groups (32). `tiny()` keeps both, so a tiny single-file checkpoint
loads with the same shape inference as the real one (`weights/unet.py`).
"""
from dataclasses import dataclass

from minitome.checks import Refusal


@dataclass(frozen=True)
class Layer:
    """One layer of the UNet, where the checkpoint has it: what it is, its level, its widths."""
    kind: str         # "conv_in", "res" (ResBlock), "attn" (SpatialTransformer), "down" (Downsample), "up" (Upsample)
    level: int        # 0 at the latent's resolution; each level halves it
    channels: int     # width out
    in_channels: int  # width in (a ResBlock on the way up also takes the skip)


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4              # latent channels in
    out_channels: int = 4             # predicted noise channels out
    model_channels: int = 320         # width of level 0; level i is model_channels * channel_mult[i]
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2           # ResBlocks per level on the way down (one more on the way up)
    attention_levels: tuple = (0, 1, 2)  # levels whose ResBlocks are followed by a SpatialTransformer
    num_heads: int = 8                # heads in every attention layer (head dim = width / heads)
    context_dim: int = 768            # width of the text context (CLIP ViT-L/14 hidden size)
    norm_groups: int = 32             # GroupNorm groups everywhere
    attention: str = "sdpa"           # "sdpa": torch's fused kernel; "plain": softmax(QKᵀ/√D)V written out
    time_cond_proj_dim: int = None    # an LCM-distilled UNet: width of the guidance embedding added to t's; None in SD 1.5

    def __post_init__(self):
        if self.attention not in ("sdpa", "plain"):
            raise Refusal(f"attention must be 'sdpa' or 'plain', got {self.attention!r}")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def guided(self, guidance: float) -> bool:
        """Whether classifier-free guidance runs the guided pair [uncond, cond]: guidance > 1, and a UNet that
        takes no guidance embedding (an LCM-distilled one was distilled from the guided pair: it is handed
        w = g − 1 instead and runs one latent per call, as diffusers' pipelines decide)."""
        return guidance > 1 and self.time_cond_proj_dim is None

    def layout(self) -> dict:
        """The whole architecture, block by block, as `UNetModel` builds it and the checkpoint numbers it:
        {"input_blocks": [[Layer, …], …], "middle_block": [Layer, …], "output_blocks": [[Layer, …], …]}.
        The one place the UNet's shape is worked out: the model, the diffusers name table and the
        tools that need each transformer block's grid all read it here."""
        widths = [self.model_channels * m for m in self.channel_mult]
        last = len(widths) - 1
        ch = self.model_channels
        input_blocks, skips = [[Layer("conv_in", 0, ch, self.in_channels)]], [ch]
        for level, width in enumerate(widths):  # the way down: each block's output is a skip for the way up
            for _ in range(self.num_res_blocks):
                block = [Layer("res", level, width, ch)] + ([Layer("attn", level, width, width)]
                                                             if level in self.attention_levels else [])
                input_blocks.append(block)
                ch = width
                skips.append(ch)
            if level != last:
                input_blocks.append([Layer("down", level, ch, ch)])
                skips.append(ch)
        middle = [Layer("res", last, ch, ch), Layer("attn", last, ch, ch), Layer("res", last, ch, ch)]
        output_blocks = []
        for level, width in reversed(list(enumerate(widths))):  # the way up: one more ResBlock per level
            for i in range(self.num_res_blocks + 1):
                block = [Layer("res", level, width, ch + skips.pop())]
                ch = width
                block += [Layer("attn", level, ch, ch)] if level in self.attention_levels else []
                block += [Layer("up", level, ch, ch)] if level != 0 and i == self.num_res_blocks else []
                output_blocks.append(block)
        return {"input_blocks": input_blocks, "middle_block": middle, "output_blocks": output_blocks}

    def transformer_grids(self, latent_hw: tuple) -> list:
        """(h, w, channels) of every transformer block, in the order a call runs them, for an H × W latent
        (each level halves the grid, rounding up: 64 → 32 → 16 → 8, and 65 → 33 → 17 → 9)."""
        layout = self.layout()
        layers = [layer for block in layout["input_blocks"] for layer in block] + layout["middle_block"] + \
            [layer for block in layout["output_blocks"] for layer in block]
        grids = []
        for layer in layers:
            if layer.kind == "attn":
                h, w = latent_hw
                for _ in range(layer.level):
                    h, w = (h + 1) // 2, (w + 1) // 2
                grids.append((h, w, layer.channels))
        return grids

    def fewest_normalized(self, latent_hw: tuple, batch: int) -> int:
        """The fewest values any GroupNorm of a call normalises together: batch · channels per group · h · w.
        At 1 GroupNorm has no variance to divide by (a narrow level at a 1 × 1 grid, one latent per call)."""
        layout = self.layout()
        widths = [(c, layer.level) for block in layout["input_blocks"] + [layout["middle_block"]] + layout["output_blocks"]
                  for layer in block if layer.kind in ("res", "attn") for c in (layer.in_channels, layer.channels)]
        h, w = latent_hw
        grids = [(h, w)] + [(h := (h + 1) // 2, w := (w + 1) // 2) for _ in self.channel_mult[1:]]
        return min(batch * (c // self.norm_groups) * grids[level][0] * grids[level][1] for c, level in widths)

    @classmethod
    def tiny(cls, **overrides) -> "UNetConfig":
        return cls(**{"model_channels": 32, "channel_mult": (1, 2, 2, 2), "context_dim": 32, **overrides})
