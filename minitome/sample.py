"""`python -m minitome.sample`: one prompt to PNG files, on CPU, CUDA or MPS, with ToMe knobs.

Where this sits: the command line around `minitome/pipeline.py`. It checks every input before any
work (a bad one is a one-line error and exit status 2, never a traceback and never an output file),
loads the weights (`weights.load`), generates, and writes each image atomically, under a new name if
the file exists. The PNG carries an A1111-style `parameters` text chunk so the settings travel with it.
"""
import argparse
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from PIL.PngImagePlugin import PngInfo

from weights.download import sha256_of
from .tome import ToMeConfig

MERGE_TARGETS = ("attn", "crossattn", "mlp")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minitome.sample", description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="official .safetensors file or diffusers folder")
    p.add_argument("--tokenizer", help="tokenizer folder or bpe_simple_vocab_16e6.txt.gz (default: beside the weights)")
    p.add_argument("--vae", help="a VAE file or folder that replaces the weights' own decoder (or supplies a missing one)")
    p.add_argument("--ema", action="store_true", help="from a file holding two UNets (v1-5-pruned), load the EMA one")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (≤ 1: off)")
    p.add_argument("--seed", type=int, help="default: random, and printed")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--batch", type=int, default=1, help="images for the prompt")
    p.add_argument("--sampler", choices=("plms", "ddim"), default="plms")
    p.add_argument("--tome-ratio", type=float, help="merge this share of tokens (ToMe is off without it)")
    p.add_argument("--tome-max-downsample", type=int, default=1, choices=(1, 2, 4, 8))
    p.add_argument("--tome-sx", type=int, default=2)
    p.add_argument("--tome-sy", type=int, default=2)
    p.add_argument("--tome-no-rand", action="store_true", help="dst at the top-left of each cell")
    p.add_argument("--tome-merge", default="attn", help="comma list of attn, crossattn, mlp")
    p.add_argument("--tome-seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                   help="auto: float16 on cuda, float32 elsewhere")
    p.add_argument("--attention", default="sdpa", choices=("sdpa", "plain"))
    p.add_argument("--out", default="outputs/minitome.png", help="PNG path; an existing file gets a numbered sibling")
    return p.parse_args(argv)


def tome_config(args) -> ToMeConfig:
    tome_flags = (args.tome_max_downsample != 1 or args.tome_sx != 2 or args.tome_sy != 2 or args.tome_no_rand
                  or args.tome_merge != "attn" or args.tome_seed != 0)
    if args.tome_ratio is None:
        if tome_flags:
            raise ValueError("--tome-* options need --tome-ratio (ToMe is off without it)")
        return None
    targets = [t.strip() for t in args.tome_merge.split(",") if t.strip()]
    unknown = [t for t in targets if t not in MERGE_TARGETS]
    if unknown or not targets:
        raise ValueError(f"--tome-merge takes a comma list of {', '.join(MERGE_TARGETS)}, got {args.tome_merge!r}")
    return ToMeConfig(ratio=args.tome_ratio, max_downsample=args.tome_max_downsample, sx=args.tome_sx,
                      sy=args.tome_sy, use_rand=not args.tome_no_rand, merge_attn="attn" in targets,
                      merge_crossattn="crossattn" in targets, merge_mlp="mlp" in targets, seed=args.tome_seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def model_hash(path: Path) -> str:
    """A1111's short hash: the first 10 hex digits of the file's sha256 (cached beside the file by `make weights`)."""
    if path.is_dir():
        return ""
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists() and sidecar.stat().st_mtime >= path.stat().st_mtime:
        return sidecar.read_text().split()[0][:10]
    return sha256_of(path)[:10]


def parameters_text(args, seed: int, tome: ToMeConfig, weights: Path) -> str:
    """The A1111 `parameters` chunk: prompt, negative prompt, then one line of settings."""
    settings = [f"Steps: {args.steps}", f"Sampler: {args.sampler.upper()}", f"CFG scale: {args.guidance:g}",
                f"Seed: {seed}", f"Size: {args.width}x{args.height}"]
    short_hash = model_hash(weights)
    if short_hash:
        settings.append(f"Model hash: {short_hash}")
    settings.append(f"Model: {weights.stem}")
    if tome is not None:
        merged = "+".join(t for t, on in zip(MERGE_TARGETS, (tome.merge_attn, tome.merge_crossattn, tome.merge_mlp)) if on)
        settings.append(f"ToMe: ratio {tome.ratio:g}, max_downsample {tome.max_downsample}, sx {tome.sx}, sy {tome.sy}, "
                        f"use_rand {tome.use_rand}, merge {merged}, seed {tome.seed}")
    lines = [args.prompt] + ([f"Negative prompt: {args.negative_prompt}"] if args.negative_prompt else [])
    return "\n".join(lines + [", ".join(settings)])


def free_path(path: Path) -> Path:
    """path itself if free, else the first free `stem-N.suffix`."""
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.stem}-{n}{path.suffix}"), n + 1
    return candidate


def check_output(out: Path):
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: the output is a PNG, name it .png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {out}: cannot create folder {out.parent} ({error.strerror})") from None
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise ValueError(f"--out {out}: folder {out.parent} is not writable")


def save_png(image, out: Path, text: str) -> Path:
    """Write atomically (a temporary file renamed into place): no half-written PNG, never over an existing file."""
    info = PngInfo()
    info.add_text("parameters", text)
    fd, tmp = tempfile.mkstemp(suffix=".png.part", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        target = free_path(out)
        os.link(tmp, target)  # fails rather than replaces if the name was taken meanwhile
    finally:
        os.unlink(tmp)
    return target


class Progress:
    """One line per step on stderr: step, iterations per second, time left."""

    def __init__(self, steps: int):
        self.steps, self.start = steps, time.perf_counter()

    def __call__(self, i: int, t: int):
        elapsed = time.perf_counter() - self.start
        rate = (i + 1) / elapsed
        left = (self.steps - i - 1) / rate
        print(f"step {i + 1}/{self.steps} (t={t}) · {rate:.2f} it/s · {left:.0f} s left", file=sys.stderr, flush=True)


def one_line_warnings(message, category, *rest):
    """Warnings as one line each on stderr: what the loader says about a file (a note), a prompt cut short."""
    from weights import WeightsNotice
    kind = "note" if issubclass(category, WeightsNotice) else "warning"
    print(f"minitome.sample: {kind}: {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = one_line_warnings
        return run(parse_args(argv))


def run(args) -> int:
    from weights import WeightsError, load
    from .pipeline import check_size, generate
    try:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        if args.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {args.batch}")
        for name in ("width", "height"):
            if getattr(args, name) <= 0 or getattr(args, name) % 8:
                raise ValueError(f"--{name} must be a positive multiple of 8, got {getattr(args, name)}")
        tome = tome_config(args)
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        out = Path(args.out)
        check_output(out)
        seed = args.seed if args.seed is not None else random.randrange(2**32)
        print(f"seed: {seed}", file=sys.stderr)
        sd = load(args.weights, tokenizer=args.tokenizer, device=device, dtype=dtype, vae=args.vae, ema=args.ema,
                  attention=args.attention)
        sd.unet.pack_convolutions()  # float32 on the CPU: convolution weights laid out once (unet/packed_conv.py)
        check_size(sd, args.width, args.height)
        images = generate(sd, args.prompt, args.negative_prompt, args.steps, args.guidance, seed, args.width,
                          args.height, args.batch, args.sampler, tome, callback=Progress(args.steps))
        text = parameters_text(args, seed, tome, Path(args.weights))
        for image in images:
            print(save_png(image, out, text))
    except (ValueError, WeightsError, OSError) as error:
        print(f"minitome.sample: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minitome.sample: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
