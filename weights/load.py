"""`weights.load(path)`: the whole SD 1.5 model (UNet, text encoder, tokenizer, VAE decoder) from one path.

Where this sits: the entry point of `weights/`; `minitome/pipeline.py` and the command lines use it.
`path` is an SD 1.x single file (`v1-5-pruned-emaonly.safetensors` and its community relatives; see
`weights/single_file.py` for what each tensor is) or a diffusers folder (unet/, text_encoder/, vae/,
tokenizer/). Everything is checked before the first tensor is read: every header, every name and
shape, the tokenizer files; a bad input costs milliseconds, not a 4 GB read.
"""
from dataclasses import dataclass
from pathlib import Path

import torch

from minitome.clip import CLIPTextModel
from minitome.taesd import TinyDecoder, TinyEncoder
from minitome.tokenizer import Tokenizer
from minitome.vae import VAEDecoder, VAEEncoder
from unet import UNetModel
from .checkpoint import Checkpoint, WeightsError
from .clip import text_encoder_part, text_encoder_part_diffusers
from .embedding import add_embedding, read_embedding
from .lora import LoraFile, is_lora
from .tokenizer import read_tokenizer
from .single_file import split, unet_name_of
from .unet import unet_part, unet_part_diffusers
from .taesd import is_tiny, refuse_pickle, tiny_folder, tiny_names, tiny_part
from .vae import encoder_part, vae_part, vae_part_from


@dataclass
class StableDiffusion:
    """The four parts, as `load` returns them: plain modules (and the tokenizer); `vae_encoder` only when asked for
    (`load(..., encoder=True)`), for a run that starts from an image. With a TAESD as the VAE, `vae` and `vae_encoder`
    are its TinyDecoder and TinyEncoder (minitome/taesd.py)."""
    unet: UNetModel
    text_encoder: CLIPTextModel
    tokenizer: Tokenizer
    vae: VAEDecoder | TinyDecoder
    vae_encoder: VAEEncoder | TinyEncoder = None


def find_tokenizer(path: Path, tokenizer) -> Tokenizer:
    if tokenizer is None:
        base = path if path.is_dir() else path.parent
        candidates = [base / "tokenizer", base / "bpe_simple_vocab_16e6.txt.gz"]
        tokenizer = next((c for c in candidates if c.exists()), None)
        if tokenizer is None:
            raise WeightsError(f"{base}: no tokenizer found (tokenizer/ with vocab.json + merges.txt, or "
                               "bpe_simple_vocab_16e6.txt.gz); pass tokenizer=PATH (--tokenizer)")
    return read_tokenizer(tokenizer)


def load(path, tokenizer=None, device="cpu", dtype=torch.float32, vae=None, ema: bool = False,
         attention: str = "sdpa", check=None, encoder: bool = False, loras=(), embeddings=()) -> StableDiffusion:
    """The four parts of SD 1.5.

    tokenizer: a folder with vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz (default: found beside path).
    vae: a VAE file (LDM or diffusers names) or folder that replaces the baked-in decoder, or supplies a missing one;
    or a TAESD (an AutoencoderTiny folder or file, taesd_decoder.safetensors: weights/taesd.py).
    ema: from a file that holds both UNets, load the EMA copy (default: the non-EMA one, said in a WeightsNotice).
    attention: "sdpa" (torch's fused kernel) or "plain" (softmax(QKᵀ/√D)V written out) in the UNet.
    check: called as check(unet_config, vae_config) once every header is checked, before any tensor is read:
    where a caller checks what depends on the model's shape (the command line: image size, memory).
    encoder: also load the VAE's encoder, as `vae_encoder` (a run from an image needs it), from where the decoder
    comes from; without it `vae_encoder` is None.
    loras: (file, weight) pairs, each LoRA added into the UNet and text encoder's weights (weights/lora.py).
    embeddings: (file, token or None) pairs, textual-inversion tokens for the tokenizer and text encoder
    (weights/embedding.py). Both are checked with the headers, before any tensor of the model is read.
    """
    path = Path(path)
    # parse and check: every header (the model's, the tokenizer, each add-on's) before any tensor is read
    unet, text_encoder, decoder = parts(path, vae, ema, attention)
    if unet.config.context_dim != text_encoder.config.width:
        raise WeightsError(f"{path}: the UNet attends to {unet.config.context_dim}-wide text but the text encoder "
                           f"gives {text_encoder.config.width}")
    if unet.config.in_channels != decoder.config.z_channels:
        raise WeightsError(f"{decoder.checkpoint.path}: the VAE decodes {decoder.config.z_channels}-channel latents, "
                           f"the UNet makes {unet.config.in_channels}")
    vae_encoder = encoder_part(decoder) if encoder else None
    tokens = find_tokenizer(path, tokenizer)
    lora_files = [(LoraFile(file, unet.expected, text_encoder.expected, unet.config), weight) for file, weight in loras]
    added, names = [], set()  # the embeddings read so far, and every name they take (token, token_1, …), lower-cased
    for file, token in embeddings:
        token, vectors = read_embedding(file, token, text_encoder.config.width,
                                        lambda name: tokens.known(name) or name.lower() in names)
        names.update(n.lower() for n in [token] + [f"{token}_{i}" for i in range(1, len(vectors))])
        added.append((token, vectors))
    if check is not None:
        check(unet.config, decoder.config)
    # load: the tensors, then the add-ons into them
    sd = StableDiffusion(unet.load(device, dtype).channels_last(), text_encoder.load(device, dtype), tokens,
                         decoder.load(device, dtype), vae_encoder.load(device, dtype) if encoder else None)
    for lora, weight in lora_files:
        lora.fuse({"unet": sd.unet, "text_encoder": sd.text_encoder}, weight)
    for token, vectors in added:
        add_embedding(sd, token, vectors)
    return sd


def parts(path: Path, vae, ema: bool, attention: str) -> tuple:
    """The (UNet, text encoder, VAE decoder) parts of a single file or a diffusers folder, checked from the headers."""
    if not path.exists():
        raise WeightsError(f"{path}: no such file or folder")
    if path.is_dir():
        if tiny_folder(path) == path:
            raise WeightsError(f"{path}: a TAESD (the tiny autoencoder), not a checkpoint: give it with --vae {path} "
                               "beside --weights")
        if ema:
            raise WeightsError(f"{path}: ema=True / --ema picks a UNet copy inside a single file; a diffusers "
                               "folder has one UNet")
        return (unet_part_diffusers(path, attention), text_encoder_part_diffusers(path),
                vae_part_from(vae if vae is not None else path))
    checkpoint = Checkpoint(path)
    refuse_add_ons(checkpoint)
    names = split(checkpoint, ema)
    unet = unet_part(checkpoint, names["unet"], attention, unet_name_of(ema))
    text_encoder = text_encoder_part(checkpoint, names["text_encoder"])
    if vae is None and not names["vae"]:
        raise WeightsError(f"{path}: no VAE in this file (first_stage_model.*); pass one with vae=PATH (--vae)")
    return unet, text_encoder, vae_part_from(vae) if vae is not None else vae_part(checkpoint, names["vae"])


def refuse_add_ons(checkpoint: Checkpoint):
    """A LoRA, an embedding or a TAESD given as the weights is named, with the flag that takes it."""
    names, shapes, path = checkpoint.names, checkpoint.shapes, checkpoint.path
    embedding = bool(names) and len(names) <= 8 and all(1 <= len(shapes[n]) <= 2 and shapes[n][-1] in (768, 1024, 1280)
                                                        for n in names)
    for found, what, flag in ((is_lora(names), "a LoRA", f"--lora {path}[:WEIGHT]"),
                              (tiny_names(names), "a TAESD (the tiny autoencoder)", f"--vae {path}"),
                              (embedding, "a textual-inversion embedding", f"--embedding {path}[:TOKEN]")):
        if found:
            raise WeightsError(f"{path}: {what}, not a checkpoint: give it with {flag} beside --weights")


def load_preview_decoder(path, device="cpu", dtype=torch.float32, z_channels: int = 4) -> TinyDecoder:
    """A TAESD's decoder alone (any form weights/taesd.py reads), for the command line's --preview-vae: it decodes
    each step's estimate of the clean latent. A full VAE, or anything else, is refused in one line."""
    path = Path(path)
    refuse_pickle(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file or folder")
    if not is_tiny(path):
        try:
            vae_part_from(path)
        except WeightsError:
            raise WeightsError(f"{path}: not a TAESD; --preview-vae takes one (taesd_decoder.safetensors or an "
                               "AutoencoderTiny folder)") from None
        raise WeightsError(f"{path} is a full VAE; --preview-vae takes a TAESD (taesd_decoder.safetensors or an "
                           "AutoencoderTiny folder)")
    decoder = tiny_part(path)
    if decoder.config.z_channels != z_channels:
        raise WeightsError(f"{decoder.checkpoint.path}: this TAESD decodes {decoder.config.z_channels}-channel "
                           f"latents, the UNet makes {z_channels} (another model's TAESD?)")
    return decoder.load(device, dtype)
