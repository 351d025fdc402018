"""Loading the CLIP text encoder, from the official single file and from a diffusers folder.

Where this sits: `weights/load.py` calls these for `weights.load(path)`. Our attribute names are the
official file's `cond_stage_model.transformer.text_model.*` names without the prefix, and they are
transformers' `CLIPTextModel` names too, so no renaming is needed, only two spellings of one prefix:

- with `text_model.` (the official file; transformers before 5 saved its CLIPTextModel so);
- without it (transformers 5 and later, and NovelAI-lineage merges:
  `cond_stage_model.transformer.{embeddings,encoder,final_layer_norm}.*`).
Both in one file is ambiguous, and an error. Widths are read off the tensor shapes (single file) or
`text_encoder/config.json` (folder). The `embeddings.position_ids` buffer is ignored by name: the
model always counts positions 0 … 76 itself, since merged files are known to carry corrupted ones.
"""
from pathlib import Path

from minitome.clip import CLIPTextConfig, CLIPTextModel
from .checkpoint import Checkpoint, Part, WeightsError, dims, find_safetensors
from .config_files import field, read_json

IGNORED = ("embeddings.position_ids",)
ROOTS = ("embeddings.", "encoder.", "final_layer_norm.")  # where our names start


def our_names(names: list, prefix: str, source) -> dict:
    """Our parameter name → the file's, for the text encoder's tensors `prefix` + [`text_model.`] + ours."""
    rest = {name[len(prefix):]: name for name in names if name.startswith(prefix)}
    wrapped = {r for r in rest if r.startswith("text_model.")}
    bare = {r for r in rest if r.startswith(ROOTS)}
    if wrapped and bare:
        raise WeightsError(f"{source}: the text encoder is stored twice, as {prefix}text_model.* and as {prefix}"
                           f"{{embeddings,encoder,final_layer_norm}}.*; keep one")
    ours = {(r[len("text_model."):] if r in wrapped else r): name for r, name in rest.items()}
    return {o: name for o, name in ours.items() if o not in IGNORED}


def config_from_shapes(shapes: dict, source) -> CLIPTextConfig:
    vocab, width = dims(shapes, "embeddings.token_embedding.weight", 2, source)
    if width == 1024:
        raise WeightsError(f"{source}: text encoder width 1024 is SD 2.x's (OpenCLIP ViT-H); minitome loads SD 1.x")
    layers = [int(n.split(".")[2]) for n in shapes if n.startswith("encoder.layers.") and n.split(".")[2].isdigit()]
    # heads are not in the shapes; CLIP text towers use a head dim of 64 (768 → 12)
    return CLIPTextConfig(vocab_size=vocab, positions=dims(shapes, "embeddings.position_embedding.weight", 2, source)[0],
                          width=width, layers=1 + max(layers, default=-1), heads=max(1, width // 64),
                          mlp=dims(shapes, "encoder.layers.0.mlp.fc1.weight", 2, source)[0])


def text_encoder_part(checkpoint: Checkpoint, names: dict) -> Part:
    """names: our parameter name → the file's."""
    source = f"{checkpoint.path} (text encoder)"
    if not names:
        raise WeightsError(f"{source}: no CLIP text encoder tensors (embeddings.token_embedding)")
    config = config_from_shapes({ours: checkpoint.shapes[theirs] for ours, theirs in names.items()}, source)
    return Part(lambda: CLIPTextModel(config), checkpoint, names, "text encoder")


def text_encoder_part_diffusers(folder: Path) -> Part:
    """text_encoder/config.json + text_encoder/model.safetensors, as transformers saves them."""
    path = folder / "text_encoder" / "config.json"
    raw = read_json(path)
    width = field(raw, "hidden_size", 768, path)
    if width == 1024:
        raise WeightsError(f"{path}: text encoder width 1024 is SD 2.x's (OpenCLIP ViT-H); minitome loads SD 1.x")
    heads = field(raw, "num_attention_heads", 12, path)
    if width % heads:
        raise WeightsError(f"{path}: hidden_size {width} is not divisible by num_attention_heads {heads}")
    if field(raw, "hidden_act", "quick_gelu", path, "text") != "quick_gelu":
        raise WeightsError(f"{path}: hidden_act {raw['hidden_act']!r}; CLIP's text encoder uses quick_gelu")
    config = CLIPTextConfig(vocab_size=field(raw, "vocab_size", 49408, path),
                            positions=field(raw, "max_position_embeddings", 77, path), width=width,
                            layers=field(raw, "num_hidden_layers", 12, path), heads=heads,
                            mlp=field(raw, "intermediate_size", 3072, path),
                            eps=field(raw, "layer_norm_eps", 1e-5, path, "number"))
    checkpoint = Checkpoint(find_safetensors(folder / "text_encoder", "model"))
    return Part(lambda: CLIPTextModel(config), checkpoint, our_names(checkpoint.names, "", checkpoint.path),
                "text encoder")
