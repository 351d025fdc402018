"""Loading the CLIP text encoder and the VAE decoder, from the single file and from a diffusers folder.

Where this sits: `weights/load.py` calls these for `weights.load(path)`. As for the UNet
(`weights/unet.py`), our attribute names are the official single file's, so that layout needs only
its prefix removed; widths are read off the tensor shapes. The diffusers layout differs:

- text encoder: the same names as ours, with or without a leading `text_model.` (newer transformers
  save without it); widths come from `text_encoder/config.json`;
- VAE: diffusers renames the decoder's blocks (`up_blocks.0` is our `up.3`) and stores the
  mid-block attention's q, k, v, proj_out as Linear (C, C) weights where the checkpoint has
  1×1 convolutions (C, C, 1, 1); the table below is built from the architecture.
The checkpoint's `position_ids` buffer and the VAE encoder are ignored by name.
"""
import json

import torch

from minitome.clip import CLIPTextConfig, CLIPTextModel
from minitome.vae import VAEConfig, VAEDecoder
from .checkpoint import SafetensorsFile, WeightsError, find_safetensors, load_strict

TEXT_PREFIX = "cond_stage_model.transformer.text_model."
VAE_PREFIX = "first_stage_model."
TEXT_IGNORED = ("embeddings.position_ids",)
VAE_IGNORED_PARTS = ("encoder.", "quant_conv.")  # the encoder half of the autoencoder: text-to-image never encodes


def read_json(path):
    if not path.exists():
        raise WeightsError(f"{path.parent.parent}: no {path.parent.name}/{path.name} (not a diffusers pipeline folder)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path}: not valid JSON ({error})") from None


def check_text_width(width: int, source):
    if width == 1024:
        raise WeightsError(f"{source}: text encoder width 1024 is SD 2.x's (OpenCLIP ViT-H); minitome loads SD 1.x")


def text_config_from_shapes(shapes: dict, source) -> CLIPTextConfig:
    if "embeddings.token_embedding.weight" not in shapes:
        raise WeightsError(f"{source}: no CLIP text encoder tensors (embeddings.token_embedding)")
    vocab, width = shapes["embeddings.token_embedding.weight"]
    check_text_width(width, source)
    layers = 1 + max(int(n.split(".")[2]) for n in shapes if n.startswith("encoder.layers."))
    # heads are not in the shapes; CLIP text towers use a head dim of 64 (768 → 12)
    return CLIPTextConfig(vocab_size=vocab, positions=shapes["embeddings.position_embedding.weight"][0], width=width,
                          layers=layers, heads=max(1, width // 64), mlp=shapes["encoder.layers.0.mlp.fc1.weight"][0])


def load_text_encoder(file: SafetensorsFile, names: dict, config: CLIPTextConfig, device, dtype) -> CLIPTextModel:
    """names: our parameter name → the file's name."""
    names = {ours: theirs for ours, theirs in names.items() if ours not in TEXT_IGNORED}
    tensors = {ours: (lambda theirs=theirs: file.tensor(theirs)) for ours, theirs in names.items()}
    shapes = {ours: file.shapes[theirs] for ours, theirs in names.items()}
    return load_strict(lambda: CLIPTextModel(config), tensors, shapes, f"{file.path} (text encoder)", device, dtype)


def text_encoder_from_single_file(file: SafetensorsFile, device, dtype) -> CLIPTextModel:
    names = {n[len(TEXT_PREFIX):]: n for n in file.names if n.startswith(TEXT_PREFIX)}
    config = text_config_from_shapes({ours: file.shapes[theirs] for ours, theirs in names.items()}, file.path)
    return load_text_encoder(file, names, config, device, dtype)


def text_encoder_from_folder(folder, device, dtype) -> CLIPTextModel:
    raw = read_json(folder / "text_encoder" / "config.json")
    check_text_width(raw.get("hidden_size", 768), folder / "text_encoder" / "config.json")
    config = CLIPTextConfig(vocab_size=raw.get("vocab_size", 49408), positions=raw.get("max_position_embeddings", 77),
                            width=raw.get("hidden_size", 768), layers=raw.get("num_hidden_layers", 12),
                            heads=raw.get("num_attention_heads", 12), mlp=raw.get("intermediate_size", 3072),
                            eps=raw.get("layer_norm_eps", 1e-5))
    file = SafetensorsFile(find_safetensors(folder / "text_encoder", "model"))
    names = {(n[len("text_model."):] if n.startswith("text_model.") else n): n for n in file.names}
    return load_text_encoder(file, names, config, device, dtype)


def vae_config_from_shapes(shapes: dict, source) -> VAEConfig:
    if "decoder.conv_out.weight" not in shapes or "post_quant_conv.weight" not in shapes:
        raise WeightsError(f"{source}: no VAE decoder tensors (decoder.conv_out, post_quant_conv)")
    ch = shapes["decoder.conv_out.weight"][1]
    levels = 1 + max(int(n.split(".")[2]) for n in shapes if n.startswith("decoder.up."))
    blocks = 1 + max(int(n.split(".")[4]) for n in shapes if n.startswith("decoder.up.0.block."))
    mult = tuple(shapes[f"decoder.up.{i}.block.0.conv2.weight"][0] // ch for i in range(levels))
    return VAEConfig(ch=ch, ch_mult=mult, num_res_blocks=blocks - 1, z_channels=shapes["post_quant_conv.weight"][0],
                     out_channels=shapes["decoder.conv_out.weight"][0])


def load_vae(file: SafetensorsFile, names: dict, config: VAEConfig, device, dtype, reshape=()) -> VAEDecoder:
    """names: our parameter name → the file's name; reshape: our names whose tensor is a Linear stored for a 1×1 conv."""
    with torch.device("meta"):
        expected = {n: tuple(p.shape) for n, p in VAEDecoder(config).state_dict().items()}

    def reader(ours, theirs):
        if ours in reshape:
            return lambda: file.tensor(theirs).reshape(expected[ours])
        return lambda: file.tensor(theirs)

    tensors = {ours: reader(ours, theirs) for ours, theirs in names.items()}
    shapes = {ours: (file.shapes[theirs] + (1, 1) if ours in reshape else file.shapes[theirs])
              for ours, theirs in names.items()}
    return load_strict(lambda: VAEDecoder(config), tensors, shapes, f"{file.path} (vae)", device, dtype)


def vae_from_single_file(file: SafetensorsFile, device, dtype) -> VAEDecoder:
    names = {n[len(VAE_PREFIX):]: n for n in file.names
             if n.startswith(VAE_PREFIX) and not n[len(VAE_PREFIX):].startswith(VAE_IGNORED_PARTS)}
    config = vae_config_from_shapes({ours: file.shapes[theirs] for ours, theirs in names.items()}, file.path)
    return load_vae(file, names, config, device, dtype)


# diffusers' names for the parts of a VAE decoder block: ours → theirs (both old and new diffusers attention names)
VAE_RESNET = {"nin_shortcut": "conv_shortcut"}
VAE_ATTENTION = {"norm": ("group_norm",), "q": ("to_q", "query"), "k": ("to_k", "key"), "v": ("to_v", "value"),
                 "proj_out": ("to_out.0", "proj_attn")}


def vae_diffusers_names(c: VAEConfig, available: set) -> dict:
    """Our parameter name → the diffusers name present in `available`, for every decoder tensor."""
    with torch.device("meta"):
        ours = VAEDecoder(c).state_dict().keys()
    levels, table = len(c.ch_mult), {}
    for name in ours:
        parts = name.split(".")
        if parts[1] == "mid" and parts[2] == "attn_1":
            candidates = [f"decoder.mid_block.attentions.0.{t}.{parts[-1]}" for t in VAE_ATTENTION[parts[3]]]
        else:
            if parts[1] == "mid":  # decoder.mid.block_1 → decoder.mid_block.resnets.0
                block = f"decoder.mid_block.resnets.{int(parts[2][-1]) - 1}"
                rest = parts[3:]
            elif parts[1] == "up" and parts[3] == "block":  # decoder.up.i.block.j → up_blocks.(L−1−i).resnets.j
                block = f"decoder.up_blocks.{levels - 1 - int(parts[2])}.resnets.{parts[4]}"
                rest = parts[5:]
            elif parts[1] == "up":  # decoder.up.i.upsample.conv → up_blocks.(L−1−i).upsamplers.0.conv
                block, rest = f"decoder.up_blocks.{levels - 1 - int(parts[2])}.upsamplers.0", parts[4:]
            else:  # post_quant_conv, decoder.conv_in, decoder.conv_out; norm_out is conv_norm_out
                block, rest = {"decoder.norm_out": "decoder.conv_norm_out"}.get(".".join(parts[:-1]), ".".join(parts[:-1])), parts[-1:]
            rest = [VAE_RESNET.get(p, p) for p in rest]
            candidates = [".".join([block] + rest)]
        table[name] = next((c for c in candidates if c in available), candidates[0])
    return table


def vae_from_folder(folder, device, dtype) -> VAEDecoder:
    raw = read_json(folder / "vae" / "config.json")
    widths = raw.get("block_out_channels", [128, 256, 512, 512])
    config = VAEConfig(ch=widths[0], ch_mult=tuple(w // widths[0] for w in widths),
                       num_res_blocks=raw.get("layers_per_block", 2), z_channels=raw.get("latent_channels", 4),
                       out_channels=raw.get("out_channels", 3), groups=raw.get("norm_num_groups", 32))
    file = SafetensorsFile(find_safetensors(folder / "vae", "diffusion_pytorch_model"))
    table = vae_diffusers_names(config, set(file.names))
    used = set(table.values())
    unknown = [n for n in file.names if n not in used and not n.startswith(VAE_IGNORED_PARTS)]
    if unknown:
        raise WeightsError(f"{file.path}: {len(unknown)} unexpected tensor(s) for this config, first {unknown[0]!r}")
    names = {ours: theirs for ours, theirs in table.items() if theirs in file.shapes}
    reshape = {ours for ours, theirs in names.items() if ".attn_1." in ours and ours.endswith("weight")
               and not ours.endswith("norm.weight") and len(file.shapes[theirs]) == 2}
    return load_vae(file, names, config, device, dtype, reshape)
