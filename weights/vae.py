"""Loading the VAE: baked into a single file, from a VAE file of its own, or from a diffusers folder.

Where this sits: `weights/load.py` calls these for `weights.load(path, vae=...)`. Our attribute names
are the official file's `first_stage_model.*` names (the LDM layout) without the prefix. VAEs
circulate in two namings, and both appear baked into single files too:

- LDM (the official file, `vae-ft-mse-840000-ema-pruned.safetensors`): `decoder.up.3.block.0.conv1`,
  `decoder.mid.attn_1.q`, …, numbered in the order of the encoder, so `up.3` runs first;
- diffusers (`vae/diffusion_pytorch_model.safetensors`): `decoder.up_blocks.0.resnets.0.conv1`,
  `decoder.mid_block.attentions.0.to_q` (older diffusers: `query`), numbered in the order they run.
The mid-block attention's q, k, v and output projection are 1×1 convolutions (C, C, 1, 1) in LDM
files and Linear layers (C, C) in diffusers files; either shape loads in either naming. Widths are read off
the decoder's shapes. The encoder (`encoder.*` and `quant_conv`, `encoder.down.0` first in both namings) is
loaded only for a run that starts from an image (`encoder_part`), from the file the decoder came from. A TAESD
(the tiny autoencoder) given as the VAE is read by `weights/taesd.py`.
"""
import re
from pathlib import Path

from minitome.taesd import TinyConfig
from minitome.vae import SCALE, VAEConfig, VAEDecoder, VAEEncoder
from .checkpoint import Checkpoint, Part, WeightsError, dims, find_safetensors
from .config_files import field, read_json
from .taesd import is_tiny, refuse_pickle, tiny_encoder_part, tiny_part

ENCODER = ("encoder.", "quant_conv.")           # the encoding half: never used here
PREFIXES = ("first_stage_model.", "vae.")       # how a VAE file extracted from a full checkpoint may name it
ATTENTION = {"group_norm": "norm", "to_q": "q", "query": "q", "to_k": "k", "key": "k", "to_v": "v", "value": "v",
             "to_out.0": "proj_out", "proj_attn": "proj_out"}  # diffusers' names (new, old) → LDM's
# the mid-block attention's 1×1 convolutions, which diffusers files store as Linear (C, C)
LINEAR = re.compile(r"(de|en)coder\.mid\.attn_1\.(q|k|v|proj_out)\.weight")


def ldm_name(name: str, levels: int) -> str:
    """A diffusers VAE name → the LDM name, e.g. decoder.up_blocks.0.resnets.1.conv_shortcut.weight →
    decoder.up.3.block.1.nin_shortcut.weight (levels: how many up blocks; diffusers counts the decoder's up blocks
    the other way, the encoder's down blocks the same way)."""
    rules = [  # the middle and the output norm are named alike in both halves
        (r"^(decoder|encoder)\.conv_norm_out\.", lambda m: f"{m[1]}.norm_out."),
        (r"^(decoder|encoder)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"^(decoder|encoder)\.mid_block\.attentions\.0\.(" + "|".join(map(re.escape, ATTENTION)) + r")\.",
         lambda m: f"{m[1]}.mid.attn_1.{ATTENTION[m[2]]}."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (r"\.conv_shortcut\.", lambda m: ".nin_shortcut."),
    ]
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def our_names(names: list, encoder: bool = False) -> dict:
    """Our parameter name → the given name, for the decoder's tensors among `names` (no prefix), or the encoder's,
    either naming."""
    half = [n for n in names if n.startswith(ENCODER) == encoder]
    if any(n.startswith(("decoder.up_blocks.", "decoder.mid_block.", "encoder.down_blocks.", "encoder.mid_block."))
           for n in names):  # the diffusers naming
        ups = [int(n.split(".")[2]) for n in names if n.startswith("decoder.up_blocks.") and n.split(".")[2].isdigit()]
        levels = 1 + max(ups, default=-1)
        return {ldm_name(n, levels): n for n in half}
    return {n: n for n in half}


def config_from_shapes(shapes: dict, source, groups: int = 32) -> VAEConfig:
    """Our VAEConfig read off the decoder's tensor shapes (our names)."""
    if "decoder.conv_out.weight" not in shapes and "post_quant_conv.weight" not in shapes:
        raise WeightsError(f"{source}: no VAE decoder tensors (decoder.conv_out, post_quant_conv)")
    out_channels, ch = dims(shapes, "decoder.conv_out.weight", 4, source)[:2]
    levels = 1 + max((int(n.split(".")[2]) for n in shapes if n.startswith("decoder.up.") and n.split(".")[2].isdigit()),
                     default=-1)
    blocks = 1 + max((int(n.split(".")[4]) for n in shapes if n.startswith("decoder.up.0.block.")
                      and n.split(".")[4].isdigit()), default=-1)
    if levels < 1 or blocks < 2:
        raise WeightsError(f"{source}: no decoder levels with two ResBlocks or more (decoder.up.0.block.1)")
    mult = tuple(dims(shapes, f"decoder.up.{i}.block.0.conv2.weight", 4, source)[0] // ch for i in range(levels))
    return VAEConfig(ch=ch, ch_mult=mult, num_res_blocks=blocks - 1, out_channels=out_channels, groups=groups,
                     z_channels=dims(shapes, "post_quant_conv.weight", 4, source)[0])


def vae_part(checkpoint: Checkpoint, names: dict, groups: int = 32) -> Part:
    """names: the decoder's tensors, our parameter name → the file's (see `our_names`)."""
    source = f"{checkpoint.path} (vae)"
    config = config_from_shapes({ours: checkpoint.shapes[theirs] for ours, theirs in names.items()}, source, groups)
    return Part(lambda: VAEDecoder(config), checkpoint, names, "vae", LINEAR)


def encoder_part(decoder: Part) -> Part:
    """The VAE's encoder, from the file (and under the prefix, in the naming) its decoder came from; a TAESD's from
    where weights/taesd.py finds it."""
    if isinstance(decoder.config, TinyConfig):
        return tiny_encoder_part(decoder)
    prefix = decoder.names["post_quant_conv.weight"][: -len("post_quant_conv.weight")]
    checkpoint = decoder.checkpoint
    names = our_names([n[len(prefix):] for n in checkpoint.names if n.startswith(prefix)], encoder=True)
    if not names:
        raise WeightsError(f"{checkpoint.path}: no VAE encoder in it ({prefix}encoder.*, {prefix}quant_conv), and a run "
                           "from an image needs one: pass a whole VAE with --vae")
    names = {ours: prefix + theirs for ours, theirs in names.items()}
    return Part(lambda: VAEEncoder(decoder.config), checkpoint, names, "vae encoder", LINEAR)


def vae_part_from_file(path) -> Part:
    """A VAE file of its own (e.g. vae-ft-mse-840000-ema-pruned.safetensors, LDM names, or a diffusers VAE's
    diffusion_pytorch_model.safetensors), its names bare or under `first_stage_model.` / `vae.`."""
    checkpoint = Checkpoint(path)
    prefix = next((p for p in PREFIXES if any(n.startswith(p) for n in checkpoint.names)), "")
    foreign = [n for n in checkpoint.names if not n.startswith(prefix)]
    if foreign:
        raise WeightsError(f"{checkpoint.path}: {len(foreign)} tensor(s) outside the VAE ({prefix or 'no prefix'}), "
                           f"first {foreign[0]!r}; pass a VAE file, or a whole checkpoint as the weights")
    names = our_names([n[len(prefix):] for n in checkpoint.names])
    return vae_part(checkpoint, {ours: prefix + theirs for ours, theirs in names.items()})


def vae_part_diffusers(folder: Path) -> Part:
    """A diffusers VAE: `folder/config.json` + `folder/diffusion_pytorch_model.safetensors`, where folder is a
    VAE folder or a pipeline folder's `vae/`."""
    folder = folder / "vae" if (folder / "vae").is_dir() else folder
    path = folder / "config.json"
    raw = read_json(path)
    scale = field(raw, "scaling_factor", SCALE, path, "number")
    if scale != SCALE:
        raise WeightsError(f"{path}: scaling_factor {scale}, SD 1.x's VAE uses {SCALE} (another model's VAE?)")
    checkpoint = Checkpoint(find_safetensors(folder, "diffusion_pytorch_model"))
    return vae_part(checkpoint, our_names(checkpoint.names), field(raw, "norm_num_groups", 32, path))


def vae_part_from(path) -> Part:
    """`weights.load(..., vae=path)`: a VAE file or folder, or a TAESD's (weights/taesd.py)."""
    path = Path(path)
    refuse_pickle(path)
    if is_tiny(path):
        return tiny_part(path)
    return vae_part_diffusers(path) if path.is_dir() else vae_part_from_file(path)

