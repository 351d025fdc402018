"""Loading the tiny autoencoder (TAESD, `minitome/taesd.py`) from the three forms it circulates in.

Where this sits: `weights/vae.py`'s `vae_part_from` hands a `--vae` path here when it holds a TAESD, and its
`encoder_part` hands a TAESD decoder's encoder here; `weights.load_preview_decoder` (weights/load.py) reads the
command line's `--preview-vae` here. The forms:

- a diffusers `AutoencoderTiny` folder: `config.json` (`_class_name` "AutoencoderTiny", scaling_factor 1.0, ReLU,
  nearest ×2 upsampling) + `diffusion_pytorch_model.safetensors`; or a pipeline folder whose `vae/` is one;
- that safetensors file alone: `decoder.layers.i.*` (our module `i + 1`: diffusers keeps the clamp in the forward)
  and `encoder.layers.i.*` (our `i`);
- the original files, `taesd_decoder.safetensors` and `taesd_encoder.safetensors`: bare module indices of taesd.py's
  `nn.Sequential`s, `1.weight`, `3.conv.0.weight`, …: the decoder's start at `1.`, its index 0 being the clamp.
  The encoder of a bare decoder file is the file beside it whose name says "encoder" where the decoder's says
  "decoder" (taesd_encoder.safetensors), read only for a run from an image.

The original `.pth` files are pickles (loading one can run arbitrary code): refused with the one line of Python that
converts one. The layer counts and the width are read off the names and shapes, from the headers, before any tensor
is read: convolutions (`i.weight`) and Blocks (`i.conv.0.weight`) alternate, and each run of Blocks between two
convolutions is a level; `Part` (weights/checkpoint.py) then checks every name and shape against the module.
"""
import dataclasses
import re
from pathlib import Path

from minitome.taesd import TinyConfig, TinyDecoder, TinyEncoder
from .checkpoint import Checkpoint, Part, WeightsError, dims, find_safetensors
from .config_files import field, read_json

DIFFUSERS = ("decoder.layers.", "encoder.layers.")  # the halves' prefixes in an AutoencoderTiny file
TINY_NAME = re.compile(r"((de|en)coder\.layers\.)?\d+\..+")
# config.json fields the tensors cannot tell, as SD 1.x's TAESD has them
FIELDS = (("scaling_factor", 1.0, "number"), ("act_fn", "relu", "text"), ("upsample_fn", "nearest", "text"),
          ("upsampling_scaling_factor", 2, "number"))


def refuse_pickle(path: Path):
    """TAESD's original files are `.pth` pickles: the refusal says how to convert one."""
    if path.suffix.lower() == ".pth":
        out = path.with_suffix(".safetensors")
        raise WeightsError(f"{path}: a pickle, refused (loading one can run arbitrary code); convert it to safetensors "
                           f"with: python -c \"import torch; from safetensors.torch import save_file; "
                           f"save_file(torch.load('{path}', weights_only=True), '{out}')\"")


def tiny_names(names) -> bool:
    """Whether a file's tensors are a TAESD's: every name a module index, bare or under decoder./encoder.layers."""
    return bool(names) and all(TINY_NAME.fullmatch(n) for n in names)


def tiny_folder(folder: Path):
    """The folder whose config.json is an AutoencoderTiny's: `folder` itself or its `vae/`; None when neither."""
    for config in (folder / "config.json", folder / "vae" / "config.json"):
        if config.is_file() and read_json(config).get("_class_name") == "AutoencoderTiny":
            return config.parent
    return None


def is_tiny(path: Path) -> bool:
    return tiny_folder(path) is not None if path.is_dir() else tiny_names(Checkpoint(path).names)


def half(checkpoint: Checkpoint, which: str) -> dict:
    """Our names → the file's, for the decoder's or the encoder's tensors of a TAESD file (empty when it has none)."""
    names = checkpoint.names
    if not any(n.startswith(DIFFUSERS) for n in names):  # a bare file holds one half: the encoder's has a module 0
        return {n: n for n in names} if ("0.weight" in names) == (which == "encoder") else {}
    stray = [n for n in names if not n.startswith(DIFFUSERS)]
    if stray:
        raise WeightsError(f"{checkpoint.path}: {len(stray)} tensor(s) outside decoder.layers / encoder.layers, "
                           f"first {stray[0]!r}")
    prefix, shift = f"{which}.layers.", 1 if which == "decoder" else 0
    return {f"{int(n[len(prefix):].split('.')[0]) + shift}.{n[len(prefix):].split('.', 1)[1]}": n
            for n in names if n.startswith(prefix)}


def layout(checkpoint: Checkpoint, names: dict, which: str) -> tuple:
    """(width, Blocks per level, latent channels) read off one half's names and shapes (our names)."""
    source = f"{checkpoint.path} (TAESD {which})"
    shapes = {ours: checkpoint.shapes[theirs] for ours, theirs in names.items()}
    indices = sorted({int(n.split(".")[0]) for n in shapes})
    runs = []  # a convolution opens a run of Blocks: [level 0's, level 1's, …, 0 after the last convolution]
    for i in indices:
        if f"{i}.conv.0.weight" in shapes and runs:
            runs[-1] += 1
        elif f"{i}.conv.0.weight" not in shapes:
            runs.append(0)
    if len(runs) < 2 or runs[-1] != 0 or f"{indices[0]}.weight" not in shapes:
        raise WeightsError(f"{source}: its layers are not TAESD's (a convolution, Blocks, …, a convolution)")
    first, last = dims(shapes, f"{indices[0]}.weight", 4, source), dims(shapes, f"{indices[-1]}.weight", 4, source)
    return first[0], tuple(runs[:-1]), first[1] if which == "decoder" else last[0]


def check_config(folder: Path):
    path = folder / "config.json"
    raw = read_json(path)
    for name, expected, kind in FIELDS:
        value = field(raw, name, expected, path, kind)
        if value != expected:
            raise WeightsError(f"{path}: {name} {value!r}, SD 1.x's TAESD has {expected!r} (another model's "
                               "autoencoder?)")


def tiny_part(path: Path) -> Part:
    """The decoder of a TAESD folder or file (`is_tiny(path)`)."""
    if path.is_dir():
        folder = tiny_folder(path)
        check_config(folder)
        checkpoint = Checkpoint(find_safetensors(folder, "diffusion_pytorch_model"))
    else:
        checkpoint = Checkpoint(path)
    names = half(checkpoint, "decoder")
    if not names:
        raise WeightsError(f"{checkpoint.path}: TAESD's encoder alone; --vae takes its decoder "
                           "(taesd_decoder.safetensors, the encoder is read from beside it) or an AutoencoderTiny "
                           "folder")
    width, blocks, z_channels = layout(checkpoint, names, "decoder")
    config = TinyConfig(width=width, decoder_blocks=blocks, z_channels=z_channels)
    return Part(lambda: TinyDecoder(config), checkpoint, names, "TAESD decoder")


def tiny_encoder_part(decoder: Part) -> Part:
    """The encoder of a TAESD whose decoder is `decoder`: from the same file, or beside a bare decoder file."""
    checkpoint = decoder.checkpoint
    if not any(n.startswith(DIFFUSERS) for n in checkpoint.names):
        path = checkpoint.path
        beside = path.with_name(path.name.replace("decoder", "encoder") if "decoder" in path.name
                                else "taesd_encoder.safetensors")
        if not beside.is_file():
            raise WeightsError(f"{beside}: no such file, and a run from an image needs TAESD's encoder: put "
                               f"taesd_encoder.safetensors there, beside {path.name}")
        checkpoint = Checkpoint(beside)
        if not tiny_names(checkpoint.names):
            raise WeightsError(f"{beside}: not a TAESD encoder (its tensors are not module indices)")
    names = half(checkpoint, "encoder")
    if not names:
        raise WeightsError(f"{checkpoint.path}: no TAESD encoder in it (encoder.layers.*, or module 0), and a run from "
                           "an image needs one")
    width, blocks, z_channels = layout(checkpoint, names, "encoder")
    theirs = (decoder.config.z_channels, len(decoder.config.decoder_blocks))
    if (z_channels, len(blocks)) != theirs:
        raise WeightsError(f"{checkpoint.path}: its encoder makes {z_channels}-channel latents over {len(blocks)} "
                           f"levels, the decoder takes {theirs[0]} over {theirs[1]}")
    config = dataclasses.replace(decoder.config, width=width, encoder_blocks=blocks)
    return Part(lambda: TinyEncoder(config), checkpoint, names, "TAESD encoder")
