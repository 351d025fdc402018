"""The VAE: the decoder makes a (B, 4, H, W) latent a (B, 3, 8H, 8W) image in [-1, 1]; the encoder goes back.

Where this sits: the decoder is the last stage of the pipeline (`minitome/pipeline.py`), which calls it on
latents / 0.18215 (the scale SD 1.5 was trained with). The encoder (`VAEEncoder`, at the end of this file) is
for a run that starts from an image; `weights.load(..., encoder=True)` loads it as `sd.vae_encoder`. Mirrors
CompVis `ldm/modules/diffusionmodules/model.py` (Encoder, Decoder) and diffusers' `AutoencoderKL`; attribute
names are the official `first_stage_model.*` keys.

Shape for SD 1.5: post_quant_conv (1×1, 4→4), conv_in (4→512), mid (ResBlock, single-head
self-attention over all h·w positions, ResBlock), then four up levels of 3 ResBlocks each at widths
512, 512, 256, 128, each but the last followed by ×2 nearest upsampling and a 3×3 conv. They are
numbered as in the checkpoint: `up.3` runs first, `up.0` last. GroupNorm eps 1e-6 throughout.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

SCALE = 0.18215  # latents were scaled by this in training; the decoder takes latents / SCALE


@dataclass(frozen=True)
class VAEConfig:
    ch: int = 128                # width of the last (full-resolution) level
    ch_mult: tuple = (1, 2, 4, 4)  # level i has ch · ch_mult[i] channels; up.{len−1} runs first
    num_res_blocks: int = 2      # the encoder's count; the decoder has one more per level
    z_channels: int = 4
    out_channels: int = 3
    groups: int = 32

    @property
    def scale_factor(self) -> int:
        """Pixels per latent cell in each direction: 2^(levels − 1), 8 for SD."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def peak_channels(self) -> int:
        """The width the command line's memory estimate counts two values per pixel of (the decoder's peak, one
        image at a time): its last two levels', 128 + 256 in SD 1.5."""
        return self.ch * (self.ch_mult[0] + self.ch_mult[1])

    @classmethod
    def tiny(cls, **overrides) -> "VAEConfig":
        return cls(**{"ch": 32, "ch_mult": (1, 1, 2, 2), "num_res_blocks": 1, **overrides})


def norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), with a 1×1 `nin_shortcut` where the width changes."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # SiLU and the add in place, on tensors made here (x + h and h + x are the same floats): at the
        # full-resolution levels each saves one image-sized buffer, a quarter of the decoder's peak memory
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over the h·w positions; q, k, v and proj_out are 1×1 convolutions."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = norm(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, h, w = x.shape
        y = self.norm(x)
        # (B, 1, h·w, C), laid out contiguously: given strided views, the CPU's fused kernel is skipped for the
        # plain formula, which holds the whole (h·w)² score matrix (1 GiB per image at 1024², 16 GiB at 2048²)
        q, k, v = (conv(y).flatten(2).transpose(1, 2)[:, None].contiguous() for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(QKᵀ/√C)V
        return x + self.proj_out(out[:, 0].transpose(1, 2).unflatten(2, (h, w)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class UpLevel(nn.Module):
    def __init__(self, cin: int, cout: int, blocks: int, groups: int, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout, groups) for j in range(blocks))
        if upsample:  # no module at all otherwise: the checkpoint has no `up.0.upsample`
            self.upsample = Upsample(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return self.upsample(x) if hasattr(self, "upsample") else x


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        self.conv_in = nn.Conv2d(c.z_channels, widths[-1], 3, padding=1)
        self.mid = Mid(widths[-1], c.groups)
        # up[i] has width widths[i] and takes its input from up[i + 1] (the widest level for the last one)
        self.up = nn.ModuleList(
            UpLevel(widths[min(i + 1, len(widths) - 1)], widths[i], c.num_res_blocks + 1, c.groups, upsample=i != 0)
            for i in range(len(widths)))
        self.norm_out = norm(widths[0], c.groups)
        self.conv_out = nn.Conv2d(widths[0], c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):  # up.3 first
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x), inplace=True))


class VAEDecoder(nn.Module):
    scaling = SCALE  # the pipeline decodes latents / scaling (the tiny autoencoder's is 1.0: minitome/taesd.py)

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = config
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)
        self.decoder = Decoder(config)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z = latents / 0.18215, (B, 4, H, W) → image (B, 3, 8H, 8W), roughly in [-1, 1]."""
        # channels-last (NHWC) activations: oneDNN convolves them as they are, where a (B, C, h, w) layout is
        # first copied into its own: one image-sized buffer less at every convolution (a third of the peak)
        z = z.contiguous(memory_format=torch.channels_last)
        return self.decoder(self.post_quant_conv(z)).contiguous()


# ---- the encoder: an image to the Gaussian its latent is drawn from ----

class Downsample(nn.Module):
    """Halve h and w: pad one row at the bottom and one column at the right, then a 3×3 convolution of stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class DownLevel(nn.Module):
    def __init__(self, cin: int, cout: int, blocks: int, groups: int, downsample: bool):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout, groups) for j in range(blocks))
        if downsample:  # none after the last level: the checkpoint has no `down.3.downsample`
            self.downsample = Downsample(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return self.downsample(x) if hasattr(self, "downsample") else x


class Encoder(nn.Module):
    """The decoder's mirror: conv_in (3→128), four down levels of 2 ResBlocks at widths 128, 256, 512, 512, each but
    the last halving the grid, the same mid (ResBlock, attention, ResBlock), then GroupNorm, SiLU and conv_out to
    2 · 4 channels: the mean and the log-variance of each latent value."""

    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        self.conv_in = nn.Conv2d(c.out_channels, c.ch, 3, padding=1)
        self.down = nn.ModuleList(
            DownLevel(c.ch if i == 0 else widths[i - 1], widths[i], c.num_res_blocks, c.groups, i != len(widths) - 1)
            for i in range(len(widths)))
        self.mid = Mid(widths[-1], c.groups)
        self.norm_out = norm(widths[-1], c.groups)
        self.conv_out = nn.Conv2d(widths[-1], 2 * c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:  # down.0 first
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(self.mid(x)), inplace=True))


class VAEEncoder(nn.Module):
    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.z_channels, 1)

    def forward(self, image: torch.Tensor) -> tuple:
        """image (B, 3, 8H, 8W) in [-1, 1] → (mean, log-variance), each (B, 4, H, W): the Gaussian of the latent.
        The log-variance is clamped to [−30, 20], as CompVis and diffusers clamp it."""
        image = image.contiguous(memory_format=torch.channels_last)
        mean, logvar = self.quant_conv(self.encoder(image)).contiguous().chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def sample(self, image: torch.Tensor, generator: torch.Generator = None) -> torch.Tensor:
        """A latent drawn from the image's Gaussian, mean + std · z, and scaled by 0.18215, as diffusers'
        img2img draws it (`latent_dist.sample(generator)`; z from `generator`, on the CPU when it is a CPU one)."""
        mean, logvar = self(image)
        device = generator.device if generator is not None else mean.device
        z = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype).to(mean.device)
        return (mean + torch.exp(0.5 * logvar) * z) * SCALE
