"""The tiny autoencoder (TAESD): SD's latents to pixels and back with about a million parameters per half.

What it is: TAESD ("Tiny AutoEncoder for Stable Diffusion", madebyollin) is a small convolutional network distilled
to imitate SD's VAE in the same latent space: a (B, 4, H, W) latent becomes a (B, 3, 8H, 8W) image and back. It has
no GroupNorm, no attention and no Gaussian, only 3×3 convolutions of one width (64) and ReLUs, so it decodes a 512²
image in a small fraction of the full decoder's time. A1111 and ComfyUI use it for live previews and as a fast
decoder; it gives softer detail than the VAE.

Where this sits: `--vae` given a TAESD (`weights/taesd.py` reads its files) makes `TinyDecoder` the pipeline's
`sd.vae` and `TinyEncoder` its `sd.vae_encoder` (a run from an image, the hires pass's Lanczos path); the command
line's `--preview-vae` decodes each step's estimate x̂₀ with a TinyDecoder.

Its scaling, as diffusers' `AutoencoderTiny` applies it:
- the scale: SD's VAE was trained on latents multiplied by 0.18215, so the pipeline decodes latents / 0.18215. TAESD
  was distilled on the latents as the UNet makes them: its scaling factor is 1.0, the latents are decoded as they
  are. So the pipeline divides by the autoencoder's own `scaling` (`VAEDecoder.scaling` = 0.18215,
  `TinyDecoder.scaling` = 1.0) instead of a fixed number;
- the decoder first clamps softly, z ↦ tanh(z / 3) · 3 (into (−3, 3), its module 0), and its layers give an image
  in about [0, 1], which it returns as 2x − 1, in [−1, 1] as the VAE's;
- the encoder takes the image in [−1, 1] and maps it to [0, 1], (x + 1) / 2, before its layers, whose output is the
  latent itself: no mean and variance, so no noise is drawn when encoding. A run from an image then draws its
  first noise where the full VAE's run drew the latent's: the same seed gives another image than with the full VAE,
  as in diffusers (`retrieve_latents` returns an `AutoencoderTinyOutput`'s latents without a draw).

The layers, decoder (SD 1.5's: 3, 3, 3, 1 Blocks per level):
  clamp, conv 4→64, ReLU, then per level: Blocks, and between levels ×2 nearest upsampling and a bias-free conv;
  last a conv 64→3.
encoder (1, 3, 3, 3 Blocks per level): conv 3→64, then per level: a bias-free conv of stride 2 (from the second
level on) and Blocks; last a conv 64→4. A Block is relu(conv(relu(conv(relu(conv(x))))) + x).

Mirrors madebyollin/taesd `taesd.py` (Clamp, Block, Encoder, Decoder): both halves are `nn.Sequential`s whose module
indices name the tensors of `taesd_decoder.safetensors` / `taesd_encoder.safetensors`, the decoder's from `1.` since
its index 0 is the clamp. diffusers' `EncoderTiny` / `DecoderTiny` (models/autoencoders/vae.py) hold the same layers
as `encoder.layers.i` (our `i`) and `decoder.layers.i` (our `i + 1`: the clamp is in its forward instead).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class TinyConfig:
    width: int = 64                       # channels of every layer between the two ends (TAESD has one width)
    decoder_blocks: tuple = (3, 3, 3, 1)  # Blocks at each decoder level, the coarsest first
    encoder_blocks: tuple = (1, 3, 3, 3)  # Blocks at each encoder level, the full resolution first
    z_channels: int = 4

    @property
    def scale_factor(self) -> int:
        """Pixels per latent cell in each direction: 2^(levels − 1), 8 for SD."""
        return 2 ** (len(self.decoder_blocks) - 1)

    @property
    def peak_channels(self) -> int:
        """The width the command line's memory estimate counts two values per pixel of (the decoder's peak, one
        image at a time): a Block at full resolution holds its input and two convolutions' outputs, 3 · width
        values per pixel."""
        return 3 * self.width // 2

    @classmethod
    def tiny(cls, **overrides) -> "TinyConfig":
        return cls(**{"width": 16, "decoder_blocks": (2, 1, 1, 1), "encoder_blocks": (1, 1, 1, 2), **overrides})


def conv(cin: int, cout: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """A soft clamp of the latents into (−3, 3): tanh(z / 3) · 3, close to z near 0."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / 3) * 3


class Block(nn.Module):
    """relu(conv(relu(conv(relu(conv(x))))) + x): three 3×3 convolutions beside the identity (TAESD's `skip` is the
    identity at one width, and has no tensor)."""

    def __init__(self, channels: int):
        super().__init__()
        # ReLU in place: each acts on a convolution's fresh output
        self.conv = nn.Sequential(conv(channels, channels), nn.ReLU(inplace=True), conv(channels, channels),
                                  nn.ReLU(inplace=True), conv(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).add_(x).relu_()


class TinyDecoder(nn.Sequential):
    """Latents (B, 4, H, W), as the sampler makes them, → image (B, 3, 8H, 8W) in about [−1, 1]."""
    scaling = 1.0  # the pipeline decodes latents / scaling: TAESD takes them as they are

    def __init__(self, config: TinyConfig = TinyConfig()):
        w, levels = config.width, len(config.decoder_blocks)
        layers = [Clamp(), conv(config.z_channels, w), nn.ReLU(inplace=True)]
        for i, blocks in enumerate(config.decoder_blocks):
            layers += [Block(w) for _ in range(blocks)]
            if i < levels - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(w, w, bias=False)]
        layers.append(conv(w, 3))
        super().__init__(*layers)
        self.config = config

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # channels-last (NHWC) activations, as the VAE's: oneDNN convolves them without copying each into its layout
        image = super().forward(z.contiguous(memory_format=torch.channels_last))
        return (image * 2 - 1).contiguous()  # TAESD's image in [0, 1] → [−1, 1]


class TinyEncoder(nn.Sequential):
    """Image (B, 3, 8H, 8W) in [−1, 1] → latents (B, 4, H, W), as the sampler takes them."""
    scaling = 1.0

    def __init__(self, config: TinyConfig = TinyConfig()):
        w = config.width
        layers = []
        for i, blocks in enumerate(config.encoder_blocks):
            layers.append(conv(3, w) if i == 0 else conv(w, w, stride=2, bias=False))
            layers += [Block(w) for _ in range(blocks)]
        layers.append(conv(w, config.z_channels))
        super().__init__(*layers)
        self.config = config

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image = (image + 1) / 2  # [−1, 1] → TAESD's [0, 1]
        return super().forward(image.contiguous(memory_format=torch.channels_last)).contiguous()

    def sample(self, image: torch.Tensor, generator: torch.Generator = None) -> torch.Tensor:
        """The latents of `image`, times the scaling 1.0; nothing is drawn (`generator` is left as it is), as
        diffusers' img2img takes an `AutoencoderTinyOutput`'s latents."""
        return self(image) * self.scaling
