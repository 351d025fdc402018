"""Textual inversion: new rows for the text encoder's token table, and the words that call them.

Where this sits: `weights.load(path, embeddings=[(file, token), …])` reads each file before any tensor of the
model (they are small), then `add_embedding` gives the tokenizer (`minitome/tokenizer.py`) the new token and the
text encoder (`minitome/clip.py`) its rows.

An embedding is n vectors of the text encoder's width (768 for SD 1.x), learned so that a word stands for a
style or an object the model never had a word for. The model is unchanged: the token table (49,408 rows)
grows by n rows, at ids 49,408 and up, and the tokenizer learns to read the token's name as those ids. A
prompt uses the token as diffusers' `load_textual_inversion` lets it: anywhere in the text, upper or lower
case alike (the prompt is lower-cased first), the longest name first; an n-vector token reads as n ids, the
names `token`, `token_1`, …, `token_{n-1}` (each of which may also be written alone, for its own vector).

The token's name: `PATH:TOKEN` if given, else the key of a `{token: vector}` file, else the file's stem (as
A1111 names it). Files: a safetensors file holding `emb_params` (A1111's), or one `{token: vector}` (diffusers'
`learned_embeds.safetensors`); an A1111 `.pt`, read with `torch.load(weights_only=True)`, PyTorch's restricted
unpickler, which builds tensors and plain containers and runs no code (`string_to_param["*"]`, or a
`{token: vector}`). Other pickle files (.bin, .ckpt) are refused: convert them to safetensors.
"""
import pickle
from pathlib import Path

import torch

from .checkpoint import Checkpoint, WeightsError, existing_file

WIDTH_OF = {1024: "SD 2.x", 1280: "SDXL"}  # other families' text widths


def read_vectors(path) -> tuple:
    """(the token its file names, or None; the vectors (n, width)) of an embedding file."""
    path = Path(path)
    if path.suffix.lower() == ".pt":
        if not path.is_file():
            existing_file(path)  # names what it is (missing, a folder, a FIFO)
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as error:
            raise WeightsError(f"{path}: not an embedding torch.load(weights_only=True) reads "
                               f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
        except OSError as error:
            raise WeightsError(f"{path}: cannot be read ({error.strerror or error})") from None
        if isinstance(content, torch.Tensor):  # a bare tensor: its token is PATH:TOKEN's, or the file's stem
            return None, content
        if not isinstance(content, dict):
            raise WeightsError(f"{path}: holds a {type(content).__name__}, not an embedding (a dict or a tensor)")
        if "string_to_param" in content:  # A1111's: {"string_to_param": {"*": vectors}, "name": …, "step": …}
            params = content["string_to_param"]
            if not isinstance(params, dict) or len(params) != 1:
                raise WeightsError(f"{path}: string_to_param must hold one tensor")
            return None, next(iter(params.values()))
        tensors = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}
    else:
        checkpoint = Checkpoint(path)
        if len(checkpoint.names) > 8:
            raise WeightsError(f"{path}: {len(checkpoint.names)} tensors, not an embedding (a checkpoint or a LoRA?); "
                               "give checkpoints with --weights, LoRAs with --lora")
        checkpoint.check_floating("floating-point vectors")
        tensors = {n: checkpoint.tensor(n, dtype=torch.float64) for n in checkpoint.names}
    for name in ("clip_g", "clip_l"):
        if name in tensors:
            raise WeightsError(f"{path}: an SDXL embedding ({'clip_g, clip_l' if len(tensors) > 1 else name}); "
                               "minitome runs SD 1.x")
    if "emb_params" in tensors:
        return None, tensors["emb_params"]
    if len(tensors) == 1:
        return next(iter(tensors.items()))  # (its key as the token, its vectors)
    raise WeightsError(f"{path}: not a textual-inversion embedding (it holds {', '.join(sorted(tensors)[:4]) or 'no tensor'}; "
                       "expected emb_params, string_to_param, or one {token: vector})")


def read_embedding(path, token: str, width: int, taken) -> tuple:
    """(token, vectors (n, width) float64) of an embedding file, checked: finite, the model's width, a token
    `taken(name)` says is free (the vocabulary, and earlier embeddings). WeightsError naming the file otherwise."""
    named, vectors = read_vectors(path)
    path = Path(path)
    if (not isinstance(vectors, torch.Tensor) or not vectors.is_floating_point() or vectors.dim() not in (1, 2)
            or vectors.layout != torch.strided or vectors.device.type != "cpu"):
        raise WeightsError(f"{path}: the embedding must be dense floating-point vectors (n × width) on the CPU, got "
                           f"{getattr(vectors, 'shape', type(vectors).__name__)}")
    vectors = vectors.detach().to(torch.float64).reshape(-1, vectors.shape[-1])
    if vectors.shape[-1] != width:
        family = WIDTH_OF.get(vectors.shape[-1])
        raise WeightsError(f"{path}: vectors of width {vectors.shape[-1]}" + (f", an embedding for {family}" if family else "")
                           + f"; this text encoder's is {width}")
    if vectors.shape[0] == 0 or not torch.isfinite(vectors).all():
        raise WeightsError(f"{path}: {'no vector' if vectors.shape[0] == 0 else 'holds NaN or infinity'}")
    token = token or named or path.stem  # as token_of
    if not token or any(c.isspace() for c in token):
        raise WeightsError(f"{path}: token {token!r} is empty or holds a space; give one with --embedding {path}:TOKEN")
    names = [token] + [f"{token}_{i}" for i in range(1, vectors.shape[0])]
    clash = next((n for n in names if taken(n)), None)
    if clash is not None:
        raise WeightsError(f"{path}: token {clash!r} is already in the tokenizer's vocabulary (or given twice); rename "
                           f"the file or give another token with --embedding {path}:TOKEN")
    return token, vectors


def token_of(path, token: str = None) -> str:
    """The token an embedding file is loaded as: `token` if given, else the key its file names, else its stem."""
    return token or read_vectors(path)[0] or Path(path).stem


def add_embedding(sd, token: str, vectors: torch.Tensor):
    """The text encoder's table grows by the vectors' rows; the tokenizer reads `token` as their ids."""
    first = sd.text_encoder.add_token_rows(vectors)
    sd.tokenizer.add_token(token, list(range(first, first + vectors.shape[0])))

