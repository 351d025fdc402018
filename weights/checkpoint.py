"""Reading safetensors files, and the strict loading every part of the model goes through.

Where this sits: `weights/unet.py` (and the text encoder and VAE loaders) name the tensors they
need; this file opens the file, checks it, and moves each tensor into a module built on the
`meta` device, so the weights exist once in memory (no second copy in a state dict).

Strict means: every tensor of the part is used or on a named ignore list; a missing or unexpected
name, or a wrong shape, is a `WeightsError` naming it. Pickle checkpoints (`.ckpt`, `.pt`) are
refused: unpickling runs arbitrary code.
"""
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded; the message is one line that names the problem."""


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class SafetensorsFile:
    """The tensors of one .safetensors file, read lazily: names and shapes first, data on demand."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise WeightsError(f"{self.path}: no such file")
        if self.path.suffix in PICKLE_SUFFIXES:
            raise WeightsError(f"{self.path}: pickle checkpoints are refused (loading one can run arbitrary code); "
                               "convert it to .safetensors first, e.g. with safetensors.torch.save_file")
        try:
            self._file = safe_open(str(self.path), framework="pt")
            self.names = list(self._file.keys())
            self.shapes = {name: tuple(self._file.get_slice(name).get_shape()) for name in self.names}
        except (SafetensorError, OSError, ValueError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise WeightsError(f"{self.path}: not a readable safetensors file ({reason})") from None

    def tensor(self, name: str) -> torch.Tensor:
        try:
            return self._file.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightsError(f"{self.path}: tensor {name!r} cannot be read ({error})") from None


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
