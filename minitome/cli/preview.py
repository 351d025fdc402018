"""The live preview: one PNG, rewritten after every sampler step, showing what the image is becoming.

Where this sits: `python -m minitome.sample --preview PATH` hands the pipeline one step callback (`each_step`)
that says the step on the terminal (console.py's Progress) and calls a `Preview`. The sampler passes it x̂₀, its
current estimate of the clean latent (B, 4, h, w), in the latent's own units (sampler/__init__.py); the preview
draws the batch's first image from it, after every step of both passes (the hires pass's at its own size).

Two ways from a latent to pixels:
- with `--preview-vae` a TAESD decoder (minitome/taesd.py): x̂₀ / its scaling (1.0) decoded, as the run's own
  decoder would, at a small fraction of the full VAE's time;
- without, the cheap linear map ComfyUI publishes for SD 1.5 (comfy/latent_formats.py, class SD15,
  `latent_rgb_factors`, with no bias), applied as its Latent2RGBPreviewer (latent_preview.py) applies it:

      [R G B] = [z₀ z₁ z₂ z₃] · F,  F = ⎡ 0.3512  0.2297  0.3227⎤  (rows: latent channels)
                                        ⎢ 0.3250  0.4974  0.2350⎥
                                        ⎢−0.2829  0.1762  0.2721⎥
                                        ⎣−0.2120 −0.2616 −0.7177⎦
      pixel = round((clamp(RGB, −1, 1) + 1) · 127.5)

  on the latents as the UNet makes them (ComfyUI's sampler works in them too). One pixel per latent cell, so the
  image is then resized to the run's size (8 pixels a cell, Pillow's bilinear). A1111's "Approx cheap"
  (modules/sd_vae_approx.py, `cheap_approximation`) is the same kind of map with other numbers (its first row
  0.298, 0.207, 0.208); this one is ComfyUI's.

Each rewrite goes whole to a hidden temporary file in the preview's folder, which then replaces the last preview
in one rename (os.replace), so an image viewer watching the file never reads half of one; an error, Ctrl-C or
SIGTERM while it is written removes the temporary file.
"""
import os
from pathlib import Path

import torch
from PIL import Image

from ..pipeline import to_pil

# ComfyUI's SD15.latent_rgb_factors (comfy/latent_formats.py): (4 latent channels, RGB); SD 1.5's has no bias
LATENT_RGB = torch.tensor([[0.3512, 0.2297, 0.3227],
                           [0.3250, 0.4974, 0.2350],
                           [-0.2829, 0.1762, 0.2721],
                           [-0.2120, -0.2616, -0.7177]])


def latent_rgb(x0: torch.Tensor) -> Image.Image:
    """The batch's first latent (4, h, w) as an 8-bit RGB image of h × w pixels, by ComfyUI's linear map."""
    rgb = torch.einsum("chw,cr->rhw", x0[0].float().cpu(), LATENT_RGB)  # (3, h, w), about [-1, 1]
    return to_pil(((rgb + 1) / 2).clamp(0, 1)[None])[0]  # round((clamp(rgb, -1, 1) + 1) · 127.5)


class Preview:
    """`preview(i, t, x0)`: the image x̂₀ of the batch's first image shows, written over `path`.
    decoder: a TAESD decoder (`weights.load_preview_decoder`), or None for the linear map; factor: pixels per
    latent cell (the run's VAE's, 8 in SD)."""

    def __init__(self, path: Path, decoder=None, factor: int = 8):
        self.path, self.decoder, self.factor = Path(path), decoder, factor
        self.temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.part")  # named before it exists
        self.writes = 0

    @torch.no_grad()
    def image(self, x0: torch.Tensor) -> Image.Image:
        if self.decoder is not None:
            z = x0[:1].to(next(self.decoder.parameters()).dtype) / self.decoder.scaling
            return to_pil((self.decoder(z) * 0.5 + 0.5).clamp(0, 1))[0]
        h, w = x0.shape[-2:]
        return latent_rgb(x0).resize((w * self.factor, h * self.factor), Image.Resampling.BILINEAR)

    def __call__(self, i: int, t, x0: torch.Tensor):
        self.write(self.image(x0))

    def write(self, image: Image.Image):
        """The image whole into the temporary file, then renamed over the last preview."""
        try:
            with open(self.temporary, "wb") as f:  # the mode the umask leaves, as any new file
                image.save(f, format="PNG", compress_level=1)  # fast: it is rewritten at every step
            os.replace(self.temporary, self.path)
        except BaseException:  # an error, Ctrl-C, SIGTERM: no half-written file stays
            self.temporary.unlink(missing_ok=True)
            raise
        self.writes += 1


def each_step(*callbacks):
    """One step callback `(i, t, x0)` that calls each of `callbacks` in turn (None ones left out)."""
    callbacks = [c for c in callbacks if c is not None]

    def on_step(i, t, x0=None):
        for callback in callbacks:
            callback(i, t, x0)
    return on_step
