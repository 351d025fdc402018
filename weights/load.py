"""`weights.load(path)`: the whole SD 1.5 model (UNet, text encoder, tokenizer, VAE decoder) from one path.

Where this sits: the entry point of `weights/`; `minitome/pipeline.py` and the command lines use it.
`path` is the official single file (`v1-5-pruned-emaonly.safetensors`, CompVis layout, fp32 or fp16)
or a diffusers folder (unet/, text_encoder/, vae/, tokenizer/). Every tensor of a single file is
accounted for: it belongs to a part, or to a named ignore list below; anything else is an error.
"""
from dataclasses import dataclass
from pathlib import Path

import torch

from minitome.clip import CLIPTextModel
from minitome.tokenizer import Tokenizer
from minitome.vae import VAEDecoder
from unet import UNetModel
from .checkpoint import SafetensorsFile, WeightsError
from .text_vae import (TEXT_PREFIX, VAE_PREFIX, text_encoder_from_folder, text_encoder_from_single_file,
                       vae_from_folder, vae_from_single_file)
from .unet import PREFIX as UNET_PREFIX, load_unet_diffusers, load_unet_single_file

# tensors of the official single file that no part uses, by name
SCHEDULE_BUFFERS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "logvar"}  # the training schedule: sampler/ has its own
IGNORED_PREFIXES = ("model_ema.",)  # the EMA copy's bookkeeping (decay, num_updates) or a second UNet copy
OTHER_MODELS = {"conditioner.embedders.": "an SDXL checkpoint", "cond_stage_model.model.": "an SD 2.x checkpoint"}
PARTS = (UNET_PREFIX, TEXT_PREFIX, VAE_PREFIX)


@dataclass
class StableDiffusion:
    unet: UNetModel
    text_encoder: CLIPTextModel
    tokenizer: Tokenizer
    vae: VAEDecoder


def check_single_file_names(file: SafetensorsFile):
    for prefix, what in OTHER_MODELS.items():
        if any(name.startswith(prefix) for name in file.names):
            raise WeightsError(f"{file.path}: {what} ({prefix}* tensors); minitome loads SD 1.x")
    unknown = [n for n in file.names if not n.startswith(PARTS + IGNORED_PREFIXES) and n not in SCHEDULE_BUFFERS]
    if unknown:
        raise WeightsError(f"{file.path}: {len(unknown)} tensor(s) of no SD 1.x part, first {unknown[0]!r}")


def find_tokenizer(path: Path, tokenizer) -> Tokenizer:
    if tokenizer is None:
        base = path if path.is_dir() else path.parent
        candidates = [base / "tokenizer", base / "bpe_simple_vocab_16e6.txt.gz"]
        tokenizer = next((c for c in candidates if c.exists()), None)
        if tokenizer is None:
            raise WeightsError(f"{base}: no tokenizer found (tokenizer/ with vocab.json + merges.txt, or "
                               "bpe_simple_vocab_16e6.txt.gz); pass tokenizer=PATH")
    try:
        return Tokenizer.from_files(tokenizer)
    except FileNotFoundError as error:
        raise WeightsError(str(error)) from None


def load(path, tokenizer=None, device="cpu", dtype=torch.float32, attention: str = "sdpa") -> StableDiffusion:
    """The four parts of SD 1.5; tokenizer: a folder with vocab.json + merges.txt, or the .txt.gz file."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file or folder")
    if path.is_dir():
        unet = load_unet_diffusers(path, device, dtype, attention)
        text_encoder = text_encoder_from_folder(path, device, dtype)
        vae = vae_from_folder(path, device, dtype)
    else:
        file = SafetensorsFile(path)
        check_single_file_names(file)
        unet = load_unet_single_file(file, device, dtype, attention)
        text_encoder = text_encoder_from_single_file(file, device, dtype)
        vae = vae_from_single_file(file, device, dtype)
    if unet.config.context_dim != text_encoder.config.width:
        raise WeightsError(f"{path}: the UNet attends to {unet.config.context_dim}-wide text but the text encoder "
                           f"gives {text_encoder.config.width}")
    return StableDiffusion(unet, text_encoder, find_tokenizer(path, tokenizer), vae)
