"""What each tensor of an SD 1.x single file is: which part it belongs to, or why it is ignored or refused.

Where this sits: `weights/load.py` asks `split(checkpoint)` for the names of each part before any
tensor is read. The official `v1-5-pruned-emaonly.safetensors` holds 1,145 tensors:

    model.diffusion_model.*                     the UNet (686)
    first_stage_model.*                         the VAE (248): decoder + post_quant_conv used, encoder + quant_conv not
    cond_stage_model.transformer.text_model.*   the CLIP text encoder (196) + its position_ids buffer (ignored)
    betas, alphas_cumprod, …                    the training schedule (12): sampler/ computes its own
    model_ema.decay, model_ema.num_updates      the EMA's bookkeeping

`v1-5-pruned.safetensors` adds the EMA copy of the UNet, each name written as `model_ema.` + the UNet
name without `model.` and without its dots (`model_ema.diffusion_modelinput_blocks00weight`): the
non-EMA UNet loads by default, said in one line, the EMA one with `ema=True`. Community files spell
the text encoder without `text_model.` (weights/clip.py), bake VAEs in diffusers names
(weights/vae.py), and carry extras that are ignored with one line saying so. Other models' files are
refused by name, and so is any tensor this file does not know: strictness is what catches a wrong file.
"""
import warnings
from collections import Counter

from .checkpoint import Checkpoint, WeightsError, WeightsNotice
from . import clip, vae

UNET = "model.diffusion_model."
EMA = "model_ema."
TEXT = "cond_stage_model.transformer."
VAE = "first_stage_model."

SCHEDULE_BUFFERS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "logvar"}
EMA_BOOKKEEPING = {"model_ema.decay", "model_ema.num_updates"}

# name prefix → what it is: harmless extras that A1111, ComfyUI and kohya files carry, ignored with a notice
EXTRAS = {"cond_stage_model.logit_scale": "CLIP's logit scale", "cond_stage_model.text_projection": "CLIP's text projection",
          "lora_te_": "LoRA weights for the text encoder", "lora_unet_": "LoRA weights for the UNet",
          "embedding_manager.": "textual-inversion embeddings"}
# name prefix → what file this is: refused, with the reason
REFUSED = {"control_model.": "a ControlNet bundle (control_model.*): load the SD 1.x checkpoint without it",
           "conditioner.embedders.": "an SDXL checkpoint (conditioner.embedders.*)",
           "cond_stage_model.model.": "an SD 2.x checkpoint (cond_stage_model.model.*, OpenCLIP)"}


def ema_name(ours: str) -> str:
    """Where the EMA copy of UNet parameter `ours` lives: input_blocks.0.0.weight → model_ema.diffusion_modelinput_blocks00weight."""
    return EMA + ("diffusion_model." + ours).replace(".", "")


def unet_name_of(ema: bool):
    """Our UNet parameter name → the file's: with the prefix, or in the EMA copy's form."""
    return ema_name if ema else (lambda ours: UNET + ours)


def unet_names(checkpoint: Checkpoint, ema: bool = False) -> dict:
    """Our UNet parameter name → the file's, for the non-EMA UNet, or its EMA copy with ema=True."""
    names = {name[len(UNET):]: name for name in checkpoint.names if name.startswith(UNET)}
    has_ema = any(name.startswith(EMA) and name not in EMA_BOOKKEEPING for name in checkpoint.names)
    if not names and has_ema:
        raise WeightsError(f"{checkpoint.path}: the UNet is here only as an EMA copy (model_ema.*), without the "
                           f"{UNET}* names it is read by")
    if ema:
        if not has_ema:
            raise WeightsError(f"{checkpoint.path}: no EMA copy of the UNet (model_ema.diffusion_model*) to load with "
                               "ema=True / --ema")
        return {ours: ema_name(ours) for ours in names}
    if has_ema:
        warnings.warn(f"{checkpoint.path}: holds the UNet twice; loaded the non-EMA weights (ema=True / --ema loads "
                      "the EMA copy, which SD 1.5 was published for sampling with)", WeightsNotice, stacklevel=3)
    return names


def split(checkpoint: Checkpoint, ema: bool = False) -> dict:
    """The names of each part, {"unet", "text_encoder", "vae"} → {our name → the file's}; "vae" is empty
    when no VAE is baked in. Refused files and unknown tensors are a WeightsError; extras a WeightsNotice."""
    names = checkpoint.names
    for prefix, what in REFUSED.items():
        if any(name.startswith(prefix) for name in names):
            raise WeightsError(f"{checkpoint.path}: {what}; minitome loads SD 1.x")
    parts = {"unet": unet_names(checkpoint, ema),
             "text_encoder": clip.our_names(names, TEXT, checkpoint.path),
             "vae": {ours: VAE + theirs for ours, theirs in vae.our_names([n[len(VAE):] for n in names
                                                                          if n.startswith(VAE)]).items()}}
    used = {theirs for part in parts.values() for theirs in part.values()}
    unet = [name[len(UNET):] for name in names if name.startswith(UNET)]
    used |= {UNET + ours for ours in unet} | {ema_name(ours) for ours in unet}  # both UNet copies, one read
    known = used | SCHEDULE_BUFFERS | EMA_BOOKKEEPING | {TEXT + "text_model.embeddings.position_ids",
                                                          TEXT + "embeddings.position_ids"}
    rest = [name for name in names if name not in known and not name.startswith(tuple(VAE + p for p in vae.ENCODER))]
    unknown = [name for name in rest if not name.startswith(tuple(EXTRAS))]
    if unknown:
        raise WeightsError(f"{checkpoint.path}: {len(unknown)} tensor(s) of no SD 1.x part, first {unknown[0]!r}")
    extras = Counter(next(p for p in EXTRAS if name.startswith(p)) for name in rest)
    if extras:
        listed = ", ".join(f"{prefix}* ({EXTRAS[prefix]}, {count})" for prefix, count in extras.items())
        warnings.warn(f"{checkpoint.path}: ignored {sum(extras.values())} tensor(s) that no SD 1.x part uses: {listed}",
                      WeightsNotice, stacklevel=2)
    return parts
