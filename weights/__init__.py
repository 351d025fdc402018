"""Loading the official Stable Diffusion 1.5 weights into minitome's modules (strict, safetensors only).

`load_unet(path)`: the UNet of an official single file or a diffusers folder (`weights/unet.py`).
"""
from .checkpoint import WeightsError
from .unet import load_unet

__all__ = ["WeightsError", "load_unet"]
