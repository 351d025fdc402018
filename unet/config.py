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

    def __post_init__(self):
        if self.attention not in ("sdpa", "plain"):
            raise ValueError(f"attention must be 'sdpa' or 'plain', got {self.attention!r}")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @classmethod
    def tiny(cls, **overrides) -> "UNetConfig":
        return cls(**{"model_channels": 32, "channel_mult": (1, 2, 2, 2), "context_dim": 32, **overrides})
