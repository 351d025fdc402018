"""Reading checkpoint files, and the strict loading every part of the model goes through.

Where this sits: `weights/unet.py`, `weights/clip.py` and `weights/vae.py` say which tensors of a
file belong to which parameter; this file opens the file, checks it, and moves each tensor into a
module built on the `meta` device, so the weights exist once in memory (no second copy in a state dict).

The file format is read by the `safetensors` library, which validates the header (JSON of the right
form, offsets that tile the data, nothing truncated) and knows every dtype (float8 included). What
the format cannot know is checked here, before any tensor is read: which names a part needs, their
shapes, and that they hold floating-point numbers. Strict means every tensor of a part is used or on
a named ignore list; a missing or unexpected name, a wrong shape or dtype is a `WeightsError` naming
it. Pickle checkpoints (`.ckpt`, `.pt`, `.bin`) are refused: unpickling runs arbitrary code.
"""
import stat
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from minitome.checks import Refusal


class WeightsError(Refusal):
    """A checkpoint that cannot be loaded; the message is one line that names the file and the problem."""


class WeightsNotice(UserWarning):
    """Something worth one line to the user about a checkpoint that loads: what was ignored or chosen."""


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")  # safetensors' names of the dtypes a weight may have


def existing_file(path) -> Path:
    """path, if it is a regular file that may be read; FIFOs, devices and sockets are refused by type
    (reading a FIFO would wait forever for a writer)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except OSError as error:
        raise WeightsError(f"{path}: cannot be read ({error.strerror})") from None
    for refused, why in ((stat.S_ISDIR(mode), "a folder, not a .safetensors file"),
                         (not stat.S_ISREG(mode), "not a regular file (a FIFO, device or socket)"),
                         (path.suffix.lower() in PICKLE_SUFFIXES, "pickle checkpoints are refused (loading one can run "
                          "arbitrary code); convert it to .safetensors first, e.g. with safetensors.torch.save_file")):
        if refused:
            raise WeightsError(f"{path}: {why}")
    return path


class Checkpoint:
    """The tensors of one .safetensors file: names, shapes, dtypes and the text metadata from its header, data
    read on demand.

    Each tensor is read on its own (the file opened, one tensor copied out of its memory map into fresh,
    aligned memory of the wanted dtype and device, the map closed), so loading needs the weights'
    size plus one tensor, not twice the file.
    """

    def __init__(self, path):
        self.path = existing_file(path)
        try:
            with safe_open(self.path, framework="pt") as f:
                slices = {name: f.get_slice(name) for name in f.keys()}
                self.shapes = {name: tuple(s.get_shape()) for name, s in slices.items()}
                self.dtypes = {name: s.get_dtype() for name, s in slices.items()}
                self.metadata = f.metadata() or {}
        except SafetensorError as error:
            raise WeightsError(f"{self.path}: not a readable safetensors file ({error})") from None
        except OSError as error:
            raise WeightsError(f"{self.path}: cannot be read ({error.strerror or error})") from None
        self.names = list(self.shapes)

    def check_floating(self, expected: str):
        """Every tensor of the file must be floating point: a WeightsError naming the first that is not."""
        not_float = sorted(n for n in self.names if self.dtypes[n] not in FLOAT_DTYPES)
        if not_float:
            raise WeightsError(f"{self.path}: tensor {not_float[0]!r} is {self.dtypes[not_float[0]]}, expected {expected}")

    def tensor(self, name: str, device="cpu", dtype=torch.float32) -> torch.Tensor:
        with safe_open(self.path, framework="pt") as f:
            stored = f.get_tensor(name)  # a view of the file's memory map
            out = torch.empty(stored.shape, dtype=dtype, device=device)
            out.copy_(stored)            # converted to dtype and copied out, before the map closes
            if out.is_floating_point() and not torch.isfinite(out).all():  # would make a black or noise image
                why = ("holds NaN or infinity" if not torch.isfinite(stored.double()).all()
                       else f"has values beyond the range of {str(dtype).replace('torch.', '')}")
                raise WeightsError(f"{self.path}: tensor {name!r} {why}")
        return out


def dims(shapes: dict, name: str, ndim: int, source) -> tuple:
    """The shape of tensor `name`, which the configuration is read from: it must exist with `ndim` dimensions."""
    if name not in shapes:
        raise WeightsError(f"{source}: no tensor {name!r}, which gives the model's shape")
    if len(shapes[name]) != ndim:
        raise WeightsError(f"{source}: tensor {name!r} has shape {list(shapes[name])}, expected {ndim} dimensions")
    return shapes[name]


def find_safetensors(folder: Path, stem: str) -> Path:
    """`stem.safetensors`, else its fp16 variant `stem.fp16.safetensors`."""
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (folder / name).exists():
            return folder / name
    if any(folder.glob(f"{stem}*.bin")):
        raise WeightsError(f"{folder}: only pickle weights ({stem}.bin) found; pickle checkpoints are refused "
                           "(loading one can run arbitrary code): save the model with safe_serialization=True")
    raise WeightsError(f"{folder}: no {stem}.safetensors")


class Part:
    """One part of the model (UNet, text encoder, VAE decoder) as found in a checkpoint, checked but not read.

    make_module: builds the part (on the meta device here: shapes only). names: our parameter name →
    the checkpoint's, for the part's tensors in the file. name_of: what the file would call a parameter
    it lacks (for the error; our own name when not given). linear: a pattern of our names for 1×1 convolutions
    (C, C, 1, 1) that a file may store as a Linear (C, C). Everything is checked on construction,
    from the header alone, so a bad file fails before any tensor is read; `load` then reads the tensors.
    """

    def __init__(self, make_module, checkpoint: Checkpoint, names: dict, what: str, linear=None, name_of=None):
        self.make_module, self.checkpoint, self.names = make_module, checkpoint, names
        source = f"{checkpoint.path} ({what})"
        try:
            with torch.device("meta"):
                module = make_module()
        except (ValueError, RuntimeError) as error:  # e.g. a width no GroupNorm can split into its groups
            raise WeightsError(f"{source}: its shapes describe no model that can be built ({error})") from None
        self.config = module.config
        expected = {name: tuple(p.shape) for name, p in module.state_dict().items()}
        missing = sorted((name_of or str)(ours) for ours in set(expected) - set(names))
        unexpected = sorted(names[ours] for ours in set(names) - set(expected))
        if missing:
            raise WeightsError(f"{source}: {len(missing)} tensor(s) missing from the checkpoint, first {missing[0]!r}")
        if unexpected:
            raise WeightsError(f"{source}: {len(unexpected)} unexpected tensor(s) in the checkpoint, first {unexpected[0]!r}")
        for ours, theirs in names.items():
            shape = checkpoint.shapes[theirs]
            as_linear = linear is not None and linear.fullmatch(ours) and len(shape) == 2
            if shape + ((1, 1) if as_linear else ()) != expected[ours]:
                raise WeightsError(f"{source}: tensor {theirs!r} has shape {list(shape)}, "
                                   f"expected {list(expected[ours])}")
            if checkpoint.dtypes[theirs] not in FLOAT_DTYPES:
                raise WeightsError(f"{source}: tensor {theirs!r} is {checkpoint.dtypes[theirs]}, "
                                   f"expected floating point ({', '.join(FLOAT_DTYPES)})")
        self.expected = expected

    def load(self, device="cpu", dtype=torch.float32) -> nn.Module:
        with torch.device("meta"):
            module = self.make_module()
        state = {ours: self.checkpoint.tensor(theirs, device, dtype).reshape(self.expected[ours])
                 for ours, theirs in self.names.items()}
        module.load_state_dict(state, strict=True, assign=True)
        return module.eval().requires_grad_(False)
