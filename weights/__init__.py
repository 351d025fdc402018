"""Loading Stable Diffusion 1.x weights into minitome's modules (strict, safetensors only).

`load(path)`: all four parts, as a `StableDiffusion` (`weights/load.py`); `load_unet(path)`: the UNet alone
(`weights/unet.py`). Each loader parses a file's header, checks it (refusals as tables beside the code), then loads.
What each tensor of a single file is: `weights/single_file.py`; the text encoder and the VAE decoder:
`weights/clip.py`, `weights/vae.py` (the tiny autoencoder: `weights/taesd.py`, and `load_preview_decoder` for the
command line's --preview-vae); reading files and the strict fill of each module:
`weights/checkpoint.py`; diffusers' `config.json` files: `weights/config_files.py`.
"""
from .checkpoint import WeightsError, WeightsNotice
from .load import StableDiffusion, load, load_preview_decoder
from .unet import load_unet

__all__ = ["StableDiffusion", "WeightsError", "WeightsNotice", "load", "load_preview_decoder", "load_unet"]
