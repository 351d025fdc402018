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

An LCM-distilled UNet (LCM_Dreamshaper_v7's folder) is SD 1.5's with one more tensor: its config sets
`time_cond_proj_dim` N and its weights hold `time_embedding.cond_proj.weight` (model_channels, N), our
`time_cond_proj.weight`. Config and weights must agree on it, checked from the header (`check_time_cond_proj`).
The official layout has no name for it: a single file holds SD 1.5's UNets only.
"""
import dataclasses
from pathlib import Path

import torch

from unet import UNetConfig, UNetModel
from .checkpoint import Checkpoint, Part, WeightsError, dims, find_safetensors
from .config_files import field, read_json

PREFIX = "model.diffusion_model."

# inside a ResBlock: our (checkpoint) name → diffusers' name
RESNET_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def diffusers_names(c: UNetConfig) -> dict:
    """Our module prefix → (diffusers module prefix, is_resnet), for every layer of `c.layout()`.

    diffusers numbers layers within a level (down_blocks.1.resnets.0) where the checkpoint numbers the
    blocks straight through (input_blocks.4.0), and counts the way up from the bottom (up_blocks.0 is
    the deepest level)."""
    table = {"time_embed.0": ("time_embedding.linear_1", False), "time_embed.2": ("time_embedding.linear_2", False),
             "out.0": ("conv_norm_out", False), "out.2": ("conv_out", False),
             "middle_block.0": ("mid_block.resnets.0", True), "middle_block.1": ("mid_block.attentions.0", False),
             "middle_block.2": ("mid_block.resnets.1", True)}
    if c.time_cond_proj_dim is not None:  # an LCM-distilled UNet's guidance projection
        table["time_cond_proj"] = ("time_embedding.cond_proj", False)
    layout, top = c.layout(), len(c.channel_mult) - 1
    for part, blocks, prefix in (("input_blocks", layout["input_blocks"], "down_blocks"),
                                 ("output_blocks", layout["output_blocks"], "up_blocks")):
        seen = {}  # (level, kind) → how many so far
        for n, block in enumerate(blocks):
            for k, layer in enumerate(block):
                j = seen[layer.level, layer.kind] = seen.get((layer.level, layer.kind), -1) + 1
                level = f"{prefix}.{layer.level if part == 'input_blocks' else top - layer.level}"
                ours = f"{part}.{n}.{k}" + {"down": ".op", "up": ".conv"}.get(layer.kind, "")  # the conv inside
                table[ours] = {"conv_in": ("conv_in", False), "res": (f"{level}.resnets.{j}", True),
                               "attn": (f"{level}.attentions.{j}", False), "down": (f"{level}.downsamplers.0.conv", False),
                               "up": (f"{level}.upsamplers.0.conv", False)}[layer.kind]
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


def check_text_to_image(in_channels: int, out_channels: int, source):
    """SD 1.x text-to-image UNets take and predict the 4-channel latent; variants that take more are named."""
    if in_channels != 4:
        kind = KNOWN_INPUTS.get(in_channels, f"a UNet with {in_channels} input channels")
        raise WeightsError(f"{source}: {kind}; minitome generates from text, with 4 input channels")
    if out_channels != 4:
        raise WeightsError(f"{source}: a UNet with {out_channels} output channels; SD 1.x predicts the 4-channel noise")


KNOWN_INPUTS = {9: "an inpainting UNet (9 input channels: the latent, the mask, the masked image's latent)",
                8: "an instruct-pix2pix UNet (8 input channels: the latent and the input image's latent)"}


def config_from_diffusers(config: dict, source) -> UNetConfig:
    """Our UNetConfig from diffusers' `unet/config.json`; anything that is not SD 1.x is an error."""
    def refuse(why):
        raise WeightsError(f"{source}: {why}; minitome loads SD 1.x UNets")

    if field(config, "use_linear_projection", False, source, "flag"):
        refuse("use_linear_projection=true (an SD 2.x UNet)")
    for key in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type"):
        if config.get(key) is not None:
            refuse(f"{key}={config[key]!r} is set (an SDXL-style or conditioned UNet)")
    widths = field(config, "block_out_channels", [320, 640, 1280, 1280], source, "positive ints")
    if any(w % widths[0] for w in widths):
        refuse(f"block_out_channels {widths} are not multiples of the first")
    layers = config.get("transformer_layers_per_block", 1)
    if layers != 1 and layers != [1] * len(widths):
        refuse(f"transformer_layers_per_block={layers!r}")
    name = "num_attention_heads" if config.get("num_attention_heads") is not None else "attention_head_dim"
    heads = config.get(name, 8)  # SD 1.x's config misnames its head count attention_head_dim
    heads = field({name: heads if isinstance(heads, list) else [heads]}, name, None, source, "positive ints")
    if len(set(heads)) != 1:
        refuse(f"a different head count per level {heads}")
    down = field(config, "down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], source, "texts")
    if len(down) != len(widths):
        raise WeightsError(f"{source}: {len(down)} down_block_types for {len(widths)} block_out_channels")
    in_channels, out_channels = field(config, "in_channels", 4, source), field(config, "out_channels", 4, source)
    check_text_to_image(in_channels, out_channels, source)
    time_cond_proj_dim = config.get("time_cond_proj_dim")  # set: an LCM-distilled UNet
    if time_cond_proj_dim is not None:
        field(config, "time_cond_proj_dim", None, source)
    if time_cond_proj_dim in (2, 3):  # its embedding divides by dim/2 − 1 (unet/blocks.py, guidance_embedding)
        refuse(f"time_cond_proj_dim={time_cond_proj_dim} (its guidance embedding needs at least 2 frequencies)")
    heads, norm_groups = heads[0], field(config, "norm_num_groups", 32, source)
    for width in widths:
        if width % heads or width % norm_groups:
            raise WeightsError(f"{source}: width {width} is not divisible by {heads} heads and {norm_groups} norm groups")
    return UNetConfig(
        in_channels=in_channels, out_channels=out_channels, model_channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths), num_res_blocks=field(config, "layers_per_block", 2, source),
        attention_levels=tuple(i for i, kind in enumerate(down) if kind.startswith("CrossAttn")),
        num_heads=heads, context_dim=field(config, "cross_attention_dim", 768, source), norm_groups=norm_groups,
        time_cond_proj_dim=time_cond_proj_dim)


COND_PROJ = "time_embedding.cond_proj.weight"  # an LCM-distilled UNet's guidance projection, diffusers' name


def check_time_cond_proj(config: UNetConfig, shapes: dict, source):
    """The config's time_cond_proj_dim N and the weights agree: `time_embedding.cond_proj.weight` is there, of
    shape (model_channels, N), exactly when N is set."""
    dim, shape = config.time_cond_proj_dim, shapes.get(COND_PROJ)
    if dim is None and shape is not None:
        raise WeightsError(f"{source}: the weights hold {COND_PROJ} {list(shape)} (an LCM-distilled UNet) but "
                           "config.json sets no time_cond_proj_dim")
    if dim is not None and shape != (config.model_channels, dim):
        held = "no such tensor" if shape is None else f"{COND_PROJ} of shape {list(shape)}"
        raise WeightsError(f"{source}: config.json says time_cond_proj_dim={dim} but the weights hold {held}, "
                           f"expected {COND_PROJ} of shape {[config.model_channels, dim]}")


def config_from_shapes(shapes: dict, source) -> UNetConfig:
    """Our UNetConfig read off an official-layout UNet's tensor shapes (our names: the file's without its prefix)."""
    if "input_blocks.0.0.weight" not in shapes:
        raise WeightsError(f"{source}: no SD UNet tensors (input_blocks.0.0, out.2) under {PREFIX!r}")
    if any(name.endswith("proj_in.weight") and len(shape) == 2 for name, shape in shapes.items()):
        raise WeightsError(f"{source}: linear proj_in (an SD 2.x or SDXL UNet); minitome loads SD 1.x UNets")
    model_channels, in_channels = dims(shapes, "input_blocks.0.0.weight", 4, source)[:2]
    check_text_to_image(in_channels, dims(shapes, "out.2.weight", 4, source)[0], source)
    entries = 1 + max(int(part) for part in (name.split(".")[1] for name in shapes if name.startswith("input_blocks."))
                      if part.isdigit())
    levels = 1 + sum(1 for name in shapes if name.startswith("input_blocks.") and name.endswith(".0.op.weight"))
    res_blocks = entries // levels - 1
    if res_blocks < 1 or entries != levels * (res_blocks + 1):
        raise WeightsError(f"{source}: {entries} input blocks do not make {levels} levels of ResBlocks and a downsample")
    mult, attention = [], []
    for level in range(levels):
        first = 1 + level * (res_blocks + 1)  # the level's first ResBlock
        mult.append(dims(shapes, f"input_blocks.{first}.0.out_layers.3.weight", 4, source)[0] // model_channels)
        if f"input_blocks.{first}.1.proj_in.weight" in shapes:
            attention.append(level)
    context = next((shape[-1] for name, shape in shapes.items() if name.endswith("attn2.to_k.weight")), 768)
    return UNetConfig(in_channels=in_channels, out_channels=4, model_channels=model_channels,
                      channel_mult=tuple(mult), num_res_blocks=res_blocks, attention_levels=tuple(attention),
                      context_dim=context)


def unet_part(checkpoint: Checkpoint, names: dict, attention: str = "sdpa", name_of=None) -> Part:
    """The UNet of an official single file; names: our parameter name → the file's (with the prefix or EMA form);
    name_of: the file's name for a parameter it lacks."""
    config = config_from_shapes({ours: checkpoint.shapes[theirs] for ours, theirs in names.items()}, checkpoint.path)
    config = dataclasses.replace(config, attention=attention)
    return Part(lambda: UNetModel(config), checkpoint, names, "unet", name_of=name_of)


def unet_part_diffusers(folder: Path, attention: str = "sdpa") -> Part:
    """The UNet of a diffusers folder: unet/config.json + unet/diffusion_pytorch_model.safetensors."""
    config = config_from_diffusers(read_json(folder / "unet" / "config.json"), folder / "unet" / "config.json")
    config = dataclasses.replace(config, attention=attention)
    checkpoint = Checkpoint(find_safetensors(folder / "unet", "diffusion_pytorch_model"))
    check_time_cond_proj(config, checkpoint.shapes, checkpoint.path)
    with torch.device("meta"):
        ours = UNetModel(config).state_dict().keys()
    table = diffusers_names(config)
    ours_to_theirs = {name: to_diffusers_name(name, table) for name in ours}
    unknown = sorted(set(checkpoint.names) - set(ours_to_theirs.values()))
    if unknown:
        raise WeightsError(f"{checkpoint.path}: {len(unknown)} unexpected tensor(s) for this config, first {unknown[0]!r}")
    present = {o: t for o, t in ours_to_theirs.items() if t in checkpoint.shapes}  # a missing one is named by Part
    return Part(lambda: UNetModel(config), checkpoint, present, "unet", name_of=ours_to_theirs.get)


def load_unet(path, device="cpu", dtype=torch.float32, attention: str = "sdpa", ema: bool = False) -> UNetModel:
    """The UNet of an official single file (.safetensors) or of a diffusers folder.
    ema: from a file holding both UNets, the EMA copy (the non-EMA one by default, said in a WeightsNotice)."""
    from .single_file import unet_names, unet_name_of
    path = Path(path)
    if path.is_dir():
        part = unet_part_diffusers(path, attention)
    else:
        checkpoint = Checkpoint(path)
        part = unet_part(checkpoint, unet_names(checkpoint, ema), attention, unet_name_of(ema))
    return part.load(device, dtype).channels_last()
