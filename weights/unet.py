"""Loading the UNet from the two official layouts.

Where this sits: `weights.load_unet(path)` (and `weights.load`) call `load_unet`; the module it
fills is `unet.UNetModel`, whose parameter names *are* the official single file's names without
the `model.diffusion_model.` prefix. So:

- the official single file (CompVis layout) needs no renaming; its widths are read off the tensor
  shapes (`config_from_shapes`), with SD 1.x's 8 heads and 32 GroupNorm groups;
- a diffusers folder (`unet/config.json` + `unet/diffusion_pytorch_model.safetensors`) names the same
  tensors differently (`down_blocks.0.resnets.1.conv1` is our `input_blocks.2.0.in_layers.2`); the
  table `diffusers_names(config)` is built by walking the architecture the config describes,
  the same walk `UNetModel.__init__` does. Inside a SpatialTransformer both layouts agree.
"""
import dataclasses
import json
from pathlib import Path

import torch

from unet import UNetConfig, UNetModel
from .checkpoint import SafetensorsFile, WeightsError, find_safetensors, load_strict

PREFIX = "model.diffusion_model."

# inside a ResBlock: our (checkpoint) name → diffusers' name
RESNET_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def diffusers_names(c: UNetConfig) -> dict:
    """Our module prefix → (diffusers module prefix, is_resnet), for every block of the architecture."""
    table = {"time_embed.0": ("time_embedding.linear_1", False), "time_embed.2": ("time_embedding.linear_2", False),
             "input_blocks.0.0": ("conv_in", False), "out.0": ("conv_norm_out", False), "out.2": ("conv_out", False),
             "middle_block.0": ("mid_block.resnets.0", True), "middle_block.1": ("mid_block.attentions.0", False),
             "middle_block.2": ("mid_block.resnets.1", True)}
    levels, n = len(c.channel_mult), 1
    for level in range(levels):
        for j in range(c.num_res_blocks):
            table[f"input_blocks.{n}.0"] = (f"down_blocks.{level}.resnets.{j}", True)
            if level in c.attention_levels:
                table[f"input_blocks.{n}.1"] = (f"down_blocks.{level}.attentions.{j}", False)
            n += 1
        if level != levels - 1:
            table[f"input_blocks.{n}.0.op"] = (f"down_blocks.{level}.downsamplers.0.conv", False)
            n += 1
    n = 0
    for up, level in enumerate(reversed(range(levels))):
        for j in range(c.num_res_blocks + 1):
            table[f"output_blocks.{n}.0"] = (f"up_blocks.{up}.resnets.{j}", True)
            next_index = 1
            if level in c.attention_levels:
                table[f"output_blocks.{n}.1"] = (f"up_blocks.{up}.attentions.{j}", False)
                next_index = 2
            if level != 0 and j == c.num_res_blocks:
                table[f"output_blocks.{n}.{next_index}.conv"] = (f"up_blocks.{up}.upsamplers.0.conv", False)
            n += 1
    return table


def to_diffusers_name(name: str, table: dict) -> str:
    """`input_blocks.2.0.in_layers.2.weight` → `down_blocks.0.resnets.1.conv1.weight`."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # longest matching prefix first
        prefix, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
        if prefix in table:
            theirs, is_resnet = table[prefix]
            if is_resnet:
                inner, leaf = rest.rsplit(".", 1)
                rest = f"{RESNET_NAMES[inner]}.{leaf}"
            return f"{theirs}.{rest}"
    raise KeyError(name)


def config_from_diffusers(config: dict, source) -> UNetConfig:
    """Our UNetConfig from diffusers' `unet/config.json`; anything that is not SD 1.x is an error."""
    def refuse(why):
        raise WeightsError(f"{source}: {why}; minitome loads SD 1.x UNets")

    if config.get("use_linear_projection"):
        refuse("use_linear_projection=true (an SD 2.x UNet)")
    for key in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim"):
        if config.get(key) is not None:
            refuse(f"{key}={config[key]!r} is set (an SDXL-style or conditioned UNet)")
    if config.get("transformer_layers_per_block", 1) not in (1, [1] * len(config.get("block_out_channels", []))):
        refuse(f"transformer_layers_per_block={config['transformer_layers_per_block']!r}")
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)  # SD 1.x misnames heads
    if isinstance(heads, list):
        if len(set(heads)) != 1:
            refuse(f"a different head count per level {heads}")
        heads = heads[0]
    widths = config["block_out_channels"]
    if any(w % widths[0] for w in widths):
        refuse(f"block_out_channels {widths} are not multiples of the first")
    down = config.get("down_block_types", [])
    return UNetConfig(
        in_channels=config.get("in_channels", 4), out_channels=config.get("out_channels", 4),
        model_channels=widths[0], channel_mult=tuple(w // widths[0] for w in widths),
        num_res_blocks=config.get("layers_per_block", 2),
        attention_levels=tuple(i for i, kind in enumerate(down) if kind.startswith("CrossAttn")),
        num_heads=heads, context_dim=config.get("cross_attention_dim", 768),
        norm_groups=config.get("norm_num_groups", 32))


def config_from_shapes(shapes: dict, source) -> UNetConfig:
    """Our UNetConfig read off an official-layout UNet's tensor shapes (names without the prefix)."""
    if "input_blocks.0.0.weight" not in shapes or "out.2.weight" not in shapes:
        raise WeightsError(f"{source}: no SD UNet tensors (input_blocks.0.0, out.2) under {PREFIX!r}")
    if any(name.endswith("proj_in.weight") and len(shape) == 2 for name, shape in shapes.items()):
        raise WeightsError(f"{source}: linear proj_in (an SD 2.x or SDXL UNet); minitome loads SD 1.x UNets")
    model_channels, in_channels = shapes["input_blocks.0.0.weight"][:2]
    entries = 1 + max(int(name.split(".")[1]) for name in shapes if name.startswith("input_blocks."))
    levels = 1 + sum(1 for name in shapes if name.startswith("input_blocks.") and name.endswith(".0.op.weight"))
    res_blocks = entries // levels - 1
    mult, attention = [], []
    for level in range(levels):
        first = 1 + level * (res_blocks + 1)  # the level's first ResBlock
        mult.append(shapes[f"input_blocks.{first}.0.out_layers.3.weight"][0] // model_channels)
        if f"input_blocks.{first}.1.proj_in.weight" in shapes:
            attention.append(level)
    context = next((shape[1] for name, shape in shapes.items() if name.endswith("attn2.to_k.weight")), 768)
    return UNetConfig(in_channels=in_channels, out_channels=shapes["out.2.weight"][0], model_channels=model_channels,
                      channel_mult=tuple(mult), num_res_blocks=res_blocks, attention_levels=tuple(attention),
                      context_dim=context)


def load_unet(path, device="cpu", dtype=torch.float32, attention: str = "sdpa") -> UNetModel:
    """The UNet of an official single file (.safetensors) or of a diffusers folder."""
    path = Path(path)
    if path.is_dir():
        return load_unet_diffusers(path, device, dtype, attention)
    return load_unet_single_file(SafetensorsFile(path), device, dtype, attention)


def load_unet_single_file(file: SafetensorsFile, device="cpu", dtype=torch.float32, attention="sdpa") -> UNetModel:
    names = {name[len(PREFIX):]: name for name in file.names if name.startswith(PREFIX)}
    shapes = {ours: file.shapes[theirs] for ours, theirs in names.items()}
    config = config_from_shapes(shapes, file.path)
    config = dataclasses.replace(config, attention=attention)
    tensors = {ours: (lambda theirs=theirs: file.tensor(theirs)) for ours, theirs in names.items()}
    unet = load_strict(lambda: UNetModel(config), tensors, shapes, f"{file.path} (unet)", device, dtype)
    return unet.channels_last().pack_convolutions()  # the second: float32 on the CPU only


def load_unet_diffusers(folder: Path, device="cpu", dtype=torch.float32, attention="sdpa") -> UNetModel:
    config_path = folder / "unet" / "config.json"
    if not config_path.exists():
        raise WeightsError(f"{folder}: no unet/config.json (not a diffusers pipeline folder)")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{config_path}: not valid JSON ({error})") from None
    config = config_from_diffusers(raw, config_path)
    config = dataclasses.replace(config, attention=attention)
    file = SafetensorsFile(find_safetensors(folder / "unet", "diffusion_pytorch_model"))
    with torch.device("meta"):
        ours = UNetModel(config).state_dict().keys()
    table = diffusers_names(config)
    theirs_to_ours = {to_diffusers_name(name, table): name for name in ours}
    unknown = [name for name in file.names if name not in theirs_to_ours]
    if unknown:
        raise WeightsError(f"{file.path}: {len(unknown)} unexpected tensor(s) for this config, first {unknown[0]!r}")
    tensors = {theirs_to_ours[name]: (lambda name=name: file.tensor(name)) for name in file.names}
    shapes = {theirs_to_ours[name]: file.shapes[name] for name in file.names}
    unet = load_strict(lambda: UNetModel(config), tensors, shapes, f"{file.path} (unet)", device, dtype)
    return unet.channels_last().pack_convolutions()  # the second: float32 on the CPU only
