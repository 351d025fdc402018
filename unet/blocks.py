"""The UNet's convolutional parts: timestep embedding (and an LCM's guidance embedding), ResBlock, Downsample, Upsample.

Where this sits: `unet/model.py` stacks these into levels; `unet/attention.py` holds the
transformer parts that sit between them. Mirrors CompVis `ldm/modules/diffusionmodules/openaimodel.py`
and `util.py`. Attribute names equal the official checkpoint's keys (`in_layers.2`, `emb_layers.1`,
`out_layers.3`, `skip_connection`, `op`, `conv`), so the state dict loads with no renaming; an
`nn.Identity` stands where the original has a parameter-free layer (dropout) to keep indices aligned.
`guidance_embedding` is the input of an LCM-distilled UNet's `time_cond_proj` (diffusers'
`get_guidance_scale_embedding`, from VDM's `get_timestep_embedding`).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the timesteps t (B,) → (B, dim).

    freqs_i = max_period^(−i / (dim/2)) for i = 0 … dim/2 − 1, and the embedding is
    cat([cos(t · freqs), sin(t · freqs)]) (cosine first, as in CompVis; diffusers' flip_sin_to_cos=True).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """The guidance embedding an LCM-distilled UNet takes: w (B,) → (B, dim), in float32.

    w = g − 1 (the guidance scale in the form the LCM was distilled with), scaled by 1000 like a timestep;
    freqs_i = exp(−i · log(10000) / (dim/2 − 1)) for i = 0 … dim/2 − 1, the embedding
    cat([sin(1000·w · freqs), cos(1000·w · freqs)]) (sine first, unlike the timestep's), a zero column after it
    when dim is odd. Every step in float32, in diffusers' order, so the embedding is its bits exactly.
    """
    half = dim // 2
    scale = torch.log(torch.tensor(10000.0)) / (half - 1)  # a float32 tensor, as diffusers divides it
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -scale)
    args = (w * 1000.0).float()[:, None] * freqs[None]  # (B, half)
    return F.pad(torch.cat([torch.sin(args), torch.cos(args)], dim=1), (0, dim % 2))


def group_norm(channels: int, groups: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=eps)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + Linear(SiLU(emb)); out = skip(x) + conv(SiLU(GN(h)))."""

    def __init__(self, channels: int, out_channels: int, emb_dim: int, groups: int):
        super().__init__()
        # SiLU in place on the norm's fresh output (not on emb, which every ResBlock shares)
        self.in_layers = nn.Sequential(
            group_norm(channels, groups), nn.SiLU(inplace=True), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(
            group_norm(out_channels, groups), nn.SiLU(inplace=True),
            nn.Identity(),  # dropout in training; index kept so `out_layers.3` is the checkpoint's conv
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        # a 1×1 conv only where the width changes; the checkpoint has no tensor otherwise
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # the adds go into tensors made here (in place: no new (B, C, h, w) buffer to allocate;
        # a + b and b + a are the same floats), never into x or emb, which the caller still holds
        h = self.in_layers(x)
        h += self.emb_layers(emb)[:, :, None, None]  # (B, C, 1, 1): one shift per channel
        return self.out_layers(h).add_(self.skip_connection(x))


class Downsample(nn.Module):
    """3×3 convolution with stride 2: (h, w) → (⌈h/2⌉, ⌈w/2⌉)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to `size`, then a 3×3 convolution.

    `size` is the spatial size of the skip connection this output will be concatenated with:
    2h × 2w for even sizes, and one less where the way down had an odd size (33 → 17 → 33), as in
    diffusers' `upsample_size`. CompVis always doubles, which breaks on odd latents.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))
