"""Single files in the official SD 1.x layout, written from reference modules, their names checked by
diffusers' own single-file converters (`diffusers.loaders.single_file_utils`), never by minitome.

The official `v1-5-pruned-emaonly.safetensors` holds 1,145 tensors: the UNet under
`model.diffusion_model.` (686), the whole VAE under `first_stage_model.` (248, encoder and `quant_conv`
included), the text encoder under `cond_stage_model.transformer.text_model.` (196, and a
`position_ids` buffer), the 12 buffers of CompVis' training schedule (`register_schedule`), and
`model_ema.decay` / `model_ema.num_updates`. `v1-5-pruned.safetensors` adds the EMA UNet as
`model_ema.` + the UNet name without `model.` and without dots.
"""
import re

import torch

UNET, TEXT, VAE = "model.diffusion_model.", "cond_stage_model.transformer.", "first_stage_model."
SCHEDULE = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
            "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"]


def ldm_vae_name(name: str, levels: int) -> str:
    """A diffusers AutoencoderKL name (encoder or decoder) → the CompVis name. Written here, apart from
    minitome's loader, and checked by `check_vae` against diffusers' converter."""
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    rules = [(r"conv_norm_out\.", "norm_out."), (r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
             (r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.", lambda m: f"mid.attn_1.{attention[m[1]]}."),
             (r"encoder\.down_blocks\.(\d)\.resnets\.", r"encoder.down.\1.block."),
             (r"encoder\.down_blocks\.(\d)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
             (r"decoder\.up_blocks\.(\d)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block."),
             (r"decoder\.up_blocks\.(\d)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample."),
             (r"conv_shortcut", "nin_shortcut")]
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def is_attention_weight(name: str) -> bool:
    return bool(re.search(r"mid(\.attn_1\.(q|k|v|proj_out)|_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0))\.weight$", name))


def vae_tensors(vae, naming: str = "ldm", attention_2d: bool = False) -> dict:
    """The whole VAE (encoder too) as a single file holds it, in LDM or diffusers names, its mid-block
    attention weights as 1×1 convolutions (C, C, 1, 1) or Linear (C, C)."""
    levels = len(vae.config.block_out_channels)
    tensors = {}
    for name, t in vae.state_dict().items():
        name = ldm_vae_name(name, levels) if naming == "ldm" else name
        if is_attention_weight(name):
            t = t.reshape(t.shape[:2]) if attention_2d else t.reshape(*t.shape[:2], 1, 1)
        tensors[name] = t.contiguous()
    return tensors


def check_vae(tensors: dict, vae):
    """diffusers' converter of official files turns the LDM names back into the reference's state dict."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    converted = convert_ldm_vae_checkpoint({VAE + n: t for n, t in tensors.items()}, dict(vae.config))
    expected = vae.state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(torch.equal(converted[n].reshape(expected[n].shape), expected[n]) for n in expected)


def check_unet(tensors: dict, unet, extract_ema: bool = False):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    converted = convert_ldm_unet_checkpoint(tensors, dict(unet.config), extract_ema=extract_ema)
    expected = unet.state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(torch.equal(converted[n], expected[n]) for n in expected)


def check_text(tensors: dict, text_encoder):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    converted = {re.sub(r"^text_model\.", "", n): t for n, t in convert_ldm_clip_checkpoint(tensors).items()}
    converted.pop("embeddings.position_ids")
    expected = text_encoder.state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(torch.equal(converted[n], expected[n]) for n in expected)


def official_tensors(pipe, unet_names: dict, text: str = "text_model.", vae: str = "ldm", attention_2d: bool = False,
                     ema_unet=None) -> dict:
    """{name: tensor} of an official-layout single file holding `pipe`'s weights (a diffusers pipeline).

    unet_names: the official UNet name (without prefix) of each of pipe.unet's parameters, as a dict
    diffusers name → official name; it is checked, like every other name here, with diffusers' converters.
    text: "text_model." (the official form) or "" (transformers 5, NovelAI-lineage merges).
    vae: "ldm" or "diffusers" names, attention weights 4-D or 2-D; None: no VAE baked in.
    ema_unet: a second UNet of the same shape, stored as the EMA copy.
    """
    unet_state = pipe.unet.state_dict()
    tensors = {UNET + unet_names[n]: t.contiguous() for n, t in unet_state.items()}
    check_unet(tensors, pipe.unet)
    if ema_unet is not None:
        ema_state = ema_unet.state_dict()
        tensors.update({"model_ema." + ("diffusion_model." + unet_names[n]).replace(".", ""): t.contiguous()
                        for n, t in ema_state.items()})
        check_unet(tensors, ema_unet, extract_ema=True)
    tensors.update({TEXT + text + n: t.contiguous() for n, t in pipe.text_encoder.state_dict().items()})
    tensors[TEXT + text + "embeddings.position_ids"] = torch.arange(77)[None]
    check_text(tensors, pipe.text_encoder)
    if vae is not None:
        baked = vae_tensors(pipe.vae, vae, attention_2d)
        if vae == "ldm":
            check_vae(baked, pipe.vae)
        tensors.update({VAE + n: t for n, t in baked.items()})
    g = torch.Generator().manual_seed(0)
    tensors.update({name: torch.rand(1000, generator=g) for name in SCHEDULE})
    tensors.update({"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(0, dtype=torch.int32)})
    return tensors
