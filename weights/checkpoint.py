"""Reading safetensors files, and the strict loading every part of the model goes through.

Where this sits: `weights/unet.py` (and the text encoder and VAE loaders) name the tensors they
need; this file opens the file, checks it, and moves each tensor into a module built on the
`meta` device, so the weights exist once in memory (no second copy in a state dict).

Strict means: every tensor of the part is used or on a named ignore list; a missing or unexpected
name, or a wrong shape, is a `WeightsError` naming it. Pickle checkpoints (`.ckpt`, `.pt`) are
refused: unpickling runs arbitrary code.
"""
import json
from pathlib import Path

import torch
import torch.nn as nn


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded; the message is one line that names the problem."""


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


# safetensors dtype names → torch dtypes
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


class SafetensorsFile:
    """The tensors of one .safetensors file: names and shapes from its header, data read on demand.

    The format: 8 bytes (little-endian length n), n bytes of JSON {name: {dtype, shape,
    data_offsets: [begin, end]}, "__metadata__": {...}}, then the tensors' bytes. Each tensor is read
    straight into a fresh (aligned) tensor with `readinto`: no memory map stays resident beside the
    loaded weights, so loading needs the weights' size plus one tensor.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise WeightsError(f"{self.path}: no such file")
        if self.path.suffix in PICKLE_SUFFIXES:
            raise WeightsError(f"{self.path}: pickle checkpoints are refused (loading one can run arbitrary code); "
                               "convert it to .safetensors first, e.g. with safetensors.torch.save_file")
        if self.path.is_dir():
            raise WeightsError(f"{self.path}: a folder, not a .safetensors file")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= n <= min(size - 8, 100 << 20):
                raise self._unreadable("no safetensors header")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise self._unreadable("its header is not JSON") from None
        self.data_start = 8 + n
        header.pop("__metadata__", None)
        self.entries = {}
        for name, info in header.items():
            try:
                dtype, shape, (begin, end) = DTYPES[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise self._unreadable(f"bad header entry for {name!r}") from None
            numel = 1
            for dim in shape:
                numel *= dim
            if end - begin != numel * dtype.itemsize or begin < 0:
                raise self._unreadable(f"tensor {name!r} has {end - begin} bytes for shape {list(shape)}")
            if self.data_start + end > size:
                raise self._unreadable(f"truncated: tensor {name!r} ends past the file's {size} bytes")
            self.entries[name] = (dtype, shape, begin)
        self.names = list(self.entries)
        self.shapes = {name: entry[1] for name, entry in self.entries.items()}

    def _unreadable(self, reason: str) -> WeightsError:
        return WeightsError(f"{self.path}: not a readable safetensors file ({reason})")

    def tensor(self, name: str) -> torch.Tensor:
        dtype, shape, begin = self.entries[name]
        out = torch.empty(shape, dtype=dtype)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            f.readinto(out.reshape(-1).view(torch.uint8).numpy())  # bytes straight into the tensor
        return out


def find_safetensors(folder: Path, stem: str) -> Path:
    """`stem.safetensors`, else its fp16 variant `stem.fp16.safetensors`."""
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (folder / name).exists():
            return folder / name
    if any(folder.glob(f"{stem}*.bin")):
        raise WeightsError(f"{folder}: only pickle weights ({stem}.bin) found; pickle checkpoints are refused "
                           "(loading one can run arbitrary code): save the model with safe_serialization=True")
    raise WeightsError(f"{folder}: no {stem}.safetensors")


def load_strict(make_module, tensors: dict, shapes: dict, what: str, device="cpu", dtype=torch.float32) -> nn.Module:
    """Build `make_module()` on the meta device and fill it from `tensors`.

    tensors: our parameter name → a function returning the tensor (read when needed).
    shapes: our parameter name → its shape in the checkpoint, to check before anything is read.
    what: the part's name for error messages, e.g. "unet".
    """
    with torch.device("meta"):
        module = make_module()
    expected = {name: tuple(p.shape) for name, p in module.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise WeightsError(f"{what}: {len(missing)} tensor(s) missing from the checkpoint, first {missing[0]!r}")
    if unexpected:
        raise WeightsError(f"{what}: {len(unexpected)} unexpected tensor(s) in the checkpoint, first {unexpected[0]!r}")
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise WeightsError(f"{what}: tensor {name!r} has shape {list(shapes[name])}, expected {list(shape)}")
    state = {name: read().to(device=device, dtype=dtype) for name, read in tensors.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)
