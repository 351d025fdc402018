"""Loading the official Stable Diffusion 1.5 weights into minitome's modules (strict, safetensors only).

`load(path)`: all four parts (`weights/load.py`); `load_unet(path)`: the UNet alone (`weights/unet.py`).
The text encoder and VAE decoder loaders are in `weights/text_vae.py`; reading the file and the
strict fill of each module in `weights/checkpoint.py`.
"""
from .checkpoint import WeightsError
from .load import StableDiffusion, load
from .unet import load_unet

__all__ = ["StableDiffusion", "WeightsError", "load", "load_unet"]
