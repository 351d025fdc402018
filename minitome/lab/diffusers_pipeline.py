"""minitome's model, weight for weight, as diffusers' `StableDiffusionPipeline`: what `--image --compare` runs beside it.

Where this sits: one_image.py builds one model (random weights of SD 1.5's shapes, or `--weights`) and hands its
parts here; each becomes the diffusers (or transformers) module a user of diffusers would load, with the same
tensors copied in:

- the UNet: `UNet2DConditionModel` (calls.py's `as_diffusers`, the name table of weights/unet.py);
- the text encoder: transformers' `CLIPTextModel`, whose names are ours under `text_model.`;
- the VAE decoder: `AutoencoderKL`'s decoder and post_quant_conv (weights/vae.py's names, read the other way; the
  mid-block attention's 1×1 convolutions become Linear weights); its encoder is left random, a text-to-image run
  never calls it;
- the tiny autoencoder: `AutoencoderTiny`, whose `decoder.layers.i` is our TinyDecoder's module i + 1 (our module 0
  is the clamp, diffusers' DecoderTiny applies it in its forward); its encoder likewise left random;
- the tokenizer: transformers' `CLIPTokenizer` from our vocabulary and merges, written out as vocab.json and
  merges.txt;
- the schedulers, from SD 1.5's scheduler config as `from_config` reads it: `PNDMScheduler` (skip_prk_steps) for
  PLMS, `DPMSolverMultistepScheduler` with Karras σ's for DPM++ 2M Karras (samplers.py), `LCMScheduler` for LCM.
No safety checker and no progress bar: neither is part of an image's work.
"""
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from .calls import as_diffusers
from .samplers import diffusers_scheduler


def copied(reference: torch.nn.Module, tensors: dict) -> torch.nn.Module:
    """reference with `tensors` (its names → ours) copied in, each reshaped to the reference's shape (a 1×1
    convolution's weight into a Linear's); every one of its other tensors is left as it was."""
    state = reference.state_dict()
    state.update({name: t.reshape(state[name].shape) for name, t in tensors.items()})
    reference.load_state_dict(state)
    return reference


def text_encoder_of(clip):
    """transformers' CLIPTextModel with our text encoder's weights (SD 1.5's text_encoder/config.json, widths ours)."""
    from transformers import CLIPTextConfig, CLIPTextModel
    c = clip.config
    reference = CLIPTextModel(CLIPTextConfig(vocab_size=c.vocab_size, max_position_embeddings=c.positions,
                                             hidden_size=c.width, num_hidden_layers=c.layers, num_attention_heads=c.heads,
                                             intermediate_size=c.mlp, layer_norm_eps=c.eps, hidden_act="quick_gelu"))
    ours = clip.state_dict()
    names = {name: name.removeprefix("text_model.") for name in reference.state_dict()}
    return copied(reference, {name: ours[o] for name, o in names.items() if o in ours})


def vae_of(decoder):
    """diffusers' AutoencoderKL whose decoder half is our VAEDecoder's."""
    from diffusers import AutoencoderKL
    from weights.vae import our_names
    c = decoder.config
    levels = len(c.ch_mult)
    reference = AutoencoderKL(in_channels=c.out_channels, out_channels=c.out_channels, latent_channels=c.z_channels,
                              block_out_channels=tuple(c.ch * m for m in c.ch_mult), layers_per_block=c.num_res_blocks,
                              norm_num_groups=c.groups, down_block_types=("DownEncoderBlock2D",) * levels,
                              up_block_types=("UpDecoderBlock2D",) * levels)
    ours = decoder.state_dict()
    return copied(reference, {theirs: ours[o] for o, theirs in our_names(list(reference.state_dict())).items()})


def tiny_of(decoder):
    """diffusers' AutoencoderTiny whose decoder is our TinyDecoder (diffusers' layer i = our module i + 1)."""
    from diffusers import AutoencoderTiny
    c = decoder.config
    reference = AutoencoderTiny(encoder_block_out_channels=(c.width,) * len(c.encoder_blocks),
                                decoder_block_out_channels=(c.width,) * len(c.decoder_blocks),
                                num_encoder_blocks=c.encoder_blocks, num_decoder_blocks=c.decoder_blocks,
                                latent_channels=c.z_channels)
    tensors = {}
    for name, t in decoder.state_dict().items():
        index, rest = name.split(".", 1)
        tensors[f"decoder.layers.{int(index) - 1}.{rest}"] = t
    return copied(reference, tensors)


def tokenizer_of(tokenizer):
    """transformers' CLIPTokenizer reading our vocabulary and merges (written to a temporary folder)."""
    from transformers import CLIPTokenizer
    with tempfile.TemporaryDirectory() as folder:
        vocab, merges = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        vocab.write_text(json.dumps(tokenizer.vocab, ensure_ascii=False), encoding="utf-8")
        pairs = sorted(tokenizer.ranks, key=tokenizer.ranks.get)
        merges.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in pairs), encoding="utf-8")
        return CLIPTokenizer(str(vocab), str(merges), model_max_length=77)


def scheduler_of(sampler: str, spacing: str):
    """The diffusers scheduler a run of minitome's `sampler` is compared with, from SD 1.5's scheduler config."""
    if sampler == "lcm":
        import diffusers
        return diffusers.LCMScheduler.from_config(diffusers_scheduler("plms", "leading").config)
    return diffusers_scheduler(sampler, spacing)


def pipelines_of(sd, tiny) -> dict:
    """{"vae": the pipeline with AutoencoderKL, "taesd": the same pipeline with AutoencoderTiny}, every part on the
    device and in the dtype of our UNet."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging
    p, verbosity = next(sd.unet.parameters()), logging.get_verbosity()
    logging.set_verbosity_error()  # .to() on a model built here warns that none of its modules is kept in float32
    parts = dict(unet=as_diffusers(sd.unet, SimpleNamespace(attention=sd.unet.config.attention)),
                 text_encoder=text_encoder_of(sd.text_encoder), tokenizer=tokenizer_of(sd.tokenizer),
                 scheduler=scheduler_of("plms", "leading"), safety_checker=None, feature_extractor=None,
                 requires_safety_checker=False)
    pipes = {}
    for name, vae in (("vae", vae_of(sd.vae)), ("taesd", tiny_of(tiny))):
        pipe = StableDiffusionPipeline(vae=vae, **parts).to(device=p.device, dtype=p.dtype)
        pipe.set_progress_bar_config(disable=True)
        pipes[name] = pipe
    logging.set_verbosity(verbosity)
    for module in (parts["unet"], parts["text_encoder"], *(pipe.vae for pipe in pipes.values())):
        module.eval().requires_grad_(False)
    return pipes
