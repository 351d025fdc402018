"""LoRA: a low-rank update people put on top of a checkpoint, added into its weights once, before sampling.

Where this sits: `weights.load(path, loras=[(file, weight), …])` reads each file's header beside the checkpoint's:
`parse` groups its tensor names into layers, `LoraFile` checks each layer against the model (every check runs
before any tensor is read), then `fuse` adds the updates into the loaded modules, before the CPU's convolution
packing takes the weights out of `parameters()`.

A LoRA for a layer of weight W (out × in, or out × in × kh × kw for a convolution) holds two thin matrices, down
(r × in…) and up (out × r), and a number α. The layer becomes

    W' = W + s · (α / r) · up · down

with s the weight given (`--lora PATH:s`). r · (out + in) numbers stand for an out × in update: at rank 8, a
768 × 768 projection's update takes 12,288 numbers instead of 589,824. α / r keeps the update's size the same
when a trainer changes r (its numbers are initialised to shrink as 1/r). Added into W, the update costs nothing
at sampling time, and token merging, which acts on tokens, never sees it. The update is computed one layer at
a time, so no second copy of the UNet is ever held.

Two file formats:
- kohya/A1111: `lora_unet_<layer>.lora_down.weight`, `.lora_up.weight`, `.alpha` (and `lora_te_<layer>…` for the
  text encoder), the layer path written with underscores; diffusers' names (`down_blocks_0_attentions_0_…`) or
  the official file's (`input_blocks_1_1_…`). A 3×3 down with a 1×1 up on a convolution (LoCon) is the same sum.
- diffusers/PEFT: `unet.<layer>.lora_A.weight` (down), `.lora_B.weight` (up), `text_encoder.<layer>…`. No
  alpha in the tensors: α = r, unless the header's `lora_adapter_metadata` gives `lora_alpha` or an
  `alpha_pattern` (and `use_rslora`, where the factor is α / √r).
"""
import json
import math
import re
import sys
from dataclasses import dataclass

import torch

from .checkpoint import FLOAT_DTYPES, Checkpoint, WeightsError
from .unet import diffusers_names, to_diffusers_name

KOHYA = (".lora_down.weight", ".lora_up.weight")  # and an optional ".alpha"
PEFT = (".lora_A.weight", ".lora_B.weight")
SUFFIXES = KOHYA + PEFT + (".alpha",)
# refused by what they leave in a file's names, marker → what the file is: other models' LoRAs (a name starting
# with the marker, or holding it after a dot), then other kinds of adapter (a name holding the marker)
OTHER_MODELS = {marker: "SDXL" for marker in ("lora_te1_", "lora_te2_", "text_encoder_2.", "clip_g", "conditioner.")}
OTHER_KINDS = {"hada_w": "a LyCORIS LoHa", "lokr_w": "a LyCORIS LoKr",
               "lora_mid": "a LyCORIS LoCon with a Tucker middle (lora_mid)",
               "dora_scale": "a DoRA", "lora_magnitude_vector": "a DoRA",
               ".diff": "a LyCORIS full difference (.diff)", "oft_": "an OFT", "ia3": "an IA³",
               ".lora.down.": "an old diffusers attention-processor LoRA",
               "_lora.down.": "an old diffusers attention-processor LoRA"}
CONTEXT_OF = {1024: "SD 2.x", 2048: "SDXL"}  # the text context width each family's cross-attention reads


@dataclass(frozen=True)
class Layer:
    """One layer of a LoRA file, as its tensor names give it."""
    name: str          # the file's: lora_unet_down_blocks_0_…_to_k (kohya) or unet.down_blocks.0.….to_k (PEFT)
    down: str          # its tensors' names: down (r, in…), up (out, r[, 1, 1])
    up: str
    alpha: str = None  # kohya's α, one number, when the file has it


def parse(names: list, path) -> list:
    """The file's layers, from its tensor names alone. Another model's or another adapter's names, a name of no LoRA
    format, or a layer with one matrix of two are a WeightsError."""
    for marker, model in OTHER_MODELS.items():
        if any(n.startswith(marker) or f".{marker}" in n for n in names):
            raise WeightsError(f"{path}: a LoRA for {model} ({marker!r} in its names); minitome runs SD 1.x")
    for marker, kind in OTHER_KINDS.items():
        if any(marker in n for n in names):
            raise WeightsError(f"{path}: {kind} file ({marker!r} in its names); minitome takes LoRA and "
                               "LoCon (kohya/A1111 lora_down/lora_up, diffusers/PEFT lora_A/lora_B)")
    unknown = [n for n in names if not n.endswith(SUFFIXES)]
    if unknown:
        raise WeightsError(f"{path}: {len(unknown)} tensor(s) no LoRA format names, first "
                           f"{', '.join(map(repr, unknown[:3]))} (minitome takes kohya/A1111 lora_down/lora_up/"
                           "alpha and diffusers/PEFT lora_A/lora_B files)")
    if not names:
        raise WeightsError(f"{path}: holds no tensors, so no LoRA")
    tensors = {}  # layer name → {suffix: tensor name}
    for n in names:
        suffix = next(s for s in SUFFIXES if n.endswith(s))
        tensors.setdefault(n[:-len(suffix)], {})[suffix] = n
    layers = []
    for name, found in sorted(tensors.items()):
        down, up = KOHYA if name.startswith("lora_") else PEFT
        missing = [name + s for s in (down, up) if s not in found]
        if missing:
            raise WeightsError(f"{path}: layer {name!r} lacks {missing[0]!r}, one of its two matrices")
        if ".alpha" in found and down == PEFT[0]:
            raise WeightsError(f"{path}: {name}.alpha: PEFT files carry α in their metadata, not as a tensor")
        layers.append(Layer(name, found[down], found[up], found.get(".alpha")))
    return layers


def layer_names(unet_shapes: dict, text_shapes: dict, unet_config) -> dict:
    """Every name a file may give a layer → (part, our weight name, the name PEFT matches patterns against)."""
    table, names = diffusers_names(unet_config), {}
    for weight, shape in unet_shapes.items():
        if weight.endswith(".weight") and len(shape) in (2, 4):
            ours, theirs = weight[:-len(".weight")], to_diffusers_name(weight, table)[:-len(".weight")]
            for form in (theirs, ours):
                names["lora_unet_" + form.replace(".", "_")] = ("unet", weight, theirs)
            names["unet." + theirs] = ("unet", weight, theirs)
    for weight, shape in text_shapes.items():
        if weight.endswith(".weight") and len(shape) == 2 and not weight.startswith("embeddings."):
            ours = "text_model." + weight[:-len(".weight")]
            for form in (ours, ours[len("text_model."):]):
                names["lora_te_" + form.replace(".", "_")] = ("text_encoder", weight, ours)
                names["text_encoder." + form] = ("text_encoder", weight, ours)
    return names


PATTERN = re.compile(r"[\w.]+")  # a module name: PEFT's files write α's per-layer keys as names, which as regular
# expressions have no quantifier, so matching one takes time linear in the name; any other pattern is refused


def finite_number(value) -> bool:
    """A JSON number that is a finite float (not a boolean, not NaN, not an integer too large for a float)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def adapter_metadata(checkpoint: Checkpoint) -> dict:
    """The `lora_adapter_metadata` of the header (PEFT's LoraConfig per part, keys `unet.lora_alpha`, …), or {}."""
    try:
        metadata = json.loads(checkpoint.metadata.get("lora_adapter_metadata") or "{}")
    except json.JSONDecodeError as error:
        raise WeightsError(f"{checkpoint.path}: lora_adapter_metadata in its header is not JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise WeightsError(f"{checkpoint.path}: lora_adapter_metadata in its header is not a JSON object")
    return metadata


class LoraFile:
    """A LoRA file's layers, checked against the model from the headers: `LoraFile(path, unet_shapes,
    text_shapes, unet_config)`, then `fuse(modules, weight)`. Every problem is a WeightsError naming the file."""

    def __init__(self, path, unet_shapes: dict, text_shapes: dict, unet_config):
        self.checkpoint = c = Checkpoint(path)
        self.path = c.path
        layers = parse(c.names, self.path)
        targets = layer_names(unet_shapes, text_shapes, unet_config)
        strangers = [layer.name for layer in layers if layer.name not in targets]
        if len(strangers) == len(layers):
            raise WeightsError(f"{self.path}: none of its {len(layers)} layer(s) is a layer of this SD 1.x model's UNet "
                               f"or text encoder (first {strangers[0]!r}): a LoRA for another model?")
        if strangers:
            raise WeightsError(f"{self.path}: {len(strangers)} of its {len(layers)} layer(s) name no layer of this "
                               f"model, first {', '.join(map(repr, strangers[:3]))}")
        c.check_floating(f"floating point ({', '.join(FLOAT_DTYPES)})")
        metadata = adapter_metadata(c)
        shapes = {"unet": unet_shapes, "text_encoder": text_shapes}
        self.updates, named = [], {}  # updates: (layer, part, our weight name, α / r)
        for layer in layers:
            part, weight, peft_name = targets[layer.name]
            if (part, weight) in named:
                raise WeightsError(f"{self.path}: layers {named[part, weight]!r} and {layer.name!r} are one layer of "
                                   "the model, named twice")
            named[part, weight] = layer.name
            rank = self.check_shapes(layer.name, c.shapes[layer.down], c.shapes[layer.up], shapes[part][weight])
            self.updates.append((layer, part, weight, self.factor(layer, rank, metadata, part, peft_name)))

    def check_shapes(self, name: str, down: tuple, up: tuple, weight: tuple) -> int:
        """The rank r, once down (r, in…) and up (out, r[, 1, 1]) are checked to make an update of W's shape."""
        if len(down) < 2 or len(up) < 2 or math.prod(up[2:]) != 1:
            raise WeightsError(f"{self.path}: layer {name!r}: down {list(down)} and up {list(up)} are not the two "
                               "matrices of a LoRA (up must be out × r, or out × r × 1 × 1)")
        if down[0] == 0:
            raise WeightsError(f"{self.path}: layer {name!r} has rank 0")
        if down[0] != up[1]:
            raise WeightsError(f"{self.path}: layer {name!r}: down has rank {down[0]}, up rank {up[1]}; they must match")
        inputs = math.prod(down[1:])
        if up[0] != weight[0] or inputs != math.prod(weight[1:]):
            family = CONTEXT_OF.get(down[1]) if name.replace("_", ".").endswith(("attn2.to.k", "attn2.to.v")) else None
            if family:
                raise WeightsError(f"{self.path}: a LoRA for {family} ({down[1]}-wide text context in {name!r}); "
                                   "minitome runs SD 1.x (768)")
            raise WeightsError(f"{self.path}: layer {name!r} updates a {up[0]} × {inputs} weight, the model's is "
                               f"{weight[0]} × {math.prod(weight[1:])} ({list(weight)})")
        return down[0]

    def factor(self, layer: Layer, rank: int, metadata: dict, part: str, peft_name: str) -> float:
        """α / r of one layer (α / √r for rank-stabilised LoRA): α is the kohya `.alpha` tensor, or PEFT's metadata
        (a pattern matching the layer's name, else the part's lora_alpha), else r."""
        if layer.alpha is not None:
            shape = self.checkpoint.shapes[layer.alpha]
            if math.prod(shape) != 1:
                raise WeightsError(f"{self.path}: {layer.alpha!r} has shape {list(shape)}; α is one number")
            return float(self.checkpoint.tensor(layer.alpha, dtype=torch.float64).item()) / rank
        config = {k[len(part) + 1:]: v for k, v in metadata.items() if k.startswith(part + ".")}
        patterns = config.get("alpha_pattern") or {}
        if not isinstance(patterns, dict) or not all(isinstance(k, str) and PATTERN.fullmatch(k) for k in patterns):
            raise WeightsError(f"{self.path}: lora_adapter_metadata's {part}.alpha_pattern is not a map from module "
                               "names (letters, digits, _ and .) to numbers")
        # PEFT's per-layer override: the first pattern that matches the end of the layer's name
        alpha = next((v for k, v in patterns.items() if re.match(rf"(.*\.)?({k})$", peft_name)), None)
        alpha = alpha if alpha is not None else config.get("lora_alpha", rank)
        if not finite_number(alpha):
            raise WeightsError(f"{self.path}: lora_adapter_metadata gives {part} layer {peft_name!r} the alpha "
                               f"{str(alpha)[:40]}, not a finite number")
        if config.get("use_dora"):
            raise WeightsError(f"{self.path}: a DoRA (use_dora in its metadata); minitome takes LoRA and LoCon")
        rslora = config.get("use_rslora", False)
        if not isinstance(rslora, bool):
            raise WeightsError(f"{self.path}: lora_adapter_metadata's {part}.use_rslora is {rslora!r}, not true or false")
        return float(alpha) / (math.sqrt(rank) if rslora else rank)

    @torch.no_grad()
    def fuse(self, modules: dict, weight: float = 1.0):
        """W += weight · (α / r) · up · down for each layer, in place, one layer at a time (modules: part → module).
        The product is formed in float32 (float64 for a float64 model) and rounded once into W's dtype."""
        parameters = {part: dict(module.named_parameters()) for part, module in modules.items()}
        for layer, part, name, factor in self.updates:
            w = parameters[part][name]
            dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
            down = self.checkpoint.tensor(layer.down, w.device, dtype).flatten(1)  # (r, in · kh · kw)
            up = self.checkpoint.tensor(layer.up, w.device, dtype).flatten(1)      # (out, r)
            w.add_(((weight * factor) * (up @ down)).reshape(w.shape).to(w.dtype))
            if not torch.isfinite(w).all():
                raise WeightsError(f"{self.path}: at weight {weight:g}, layer {layer.name!r} makes the model's {name} "
                                   f"overflow {str(w.dtype).replace('torch.', '')}")


def is_lora(names: list) -> bool:
    """Whether a file's tensor names are a LoRA's (for the error when one is given as the weights)."""
    return bool(names) and all(n.endswith(SUFFIXES) for n in names)
