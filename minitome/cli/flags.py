"""The flags of `python -m minitome.sample`, and what the command lines (it and the lab's tools) share about flags:
a step count checked with the message a user needs, a check's message naming its flag, output folders, which
flags were given. The library never imports this file; its own value checks are in minitome/checks.py.

Each check raises a one-line `Refusal` naming the flag, before any model work.
"""
import argparse
import os
from pathlib import Path

from sampler import SAMPLERS, SPACINGS
from ..checks import (MIN_FIRST_TIMESTEP, Refusal, check_count, check_spacing, check_steps, check_strength,
                      first_timestep, starts_at_the_top)
from ..pipeline import UPSCALES


def parser(description: str) -> argparse.ArgumentParser:
    """The flags. None has a default here: what is not given is absent from the namespace, and takes the --from
    PNG's value or the settings record's default (minitome/cli/settings.py)."""
    p = argparse.ArgumentParser(prog="python -m minitome.sample", description=description,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--from", dest="from_png", metavar="PNG",
                   help="take a PNG's parameters text (one minitome or A1111 wrote) as the settings; later flags override")
    p.add_argument("--weights", required=True, help="SD 1.x .safetensors file or diffusers folder")
    p.add_argument("--tokenizer", help="tokenizer folder or bpe_simple_vocab_16e6.txt.gz (default: beside the weights)")
    p.add_argument("--vae", help="a VAE file or folder that replaces the weights' own decoder (or supplies a missing one)")
    p.add_argument("--ema", action="store_true", help="from a file holding two UNets (v1-5-pruned), load the EMA one")
    p.add_argument("--lora", dest="loras", action="append", metavar="PATH[:WEIGHT]",
                   help="a LoRA (kohya/A1111 or diffusers/PEFT .safetensors) added into the weights, WEIGHT 1 by "
                        "default; repeat for several")
    p.add_argument("--embedding", dest="embeddings", action="append", metavar="PATH[:TOKEN]",
                   help="a textual-inversion embedding (.safetensors or A1111 .pt); the prompt calls it by TOKEN, "
                        "else the token its file names, else the file's stem; repeat for several")
    p.add_argument("--prompt", help="what the image shows (required unless --from gives it)")
    p.add_argument("--negative-prompt", help="what guidance steers away from (default: none)")
    p.add_argument("--steps", type=int, help="sampler steps (default 50): 1 to 1000 with trailing spacing (from pure "
                   "noise, leading refuses counts that start far below t = 999, see README); lcm: 1 to 50")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5; ≤ 1: off)")
    p.add_argument("--seed", type=int, help="0 ≤ seed < 2⁶⁴; default: random, and printed")
    p.add_argument("--width", type=int, help="default 512")
    p.add_argument("--height", type=int, help="default 512")
    p.add_argument("--batch", type=int, help="images for the prompt (default 1)")
    p.add_argument("--init-image", help="start from this image (img2img); its size, rounded down to a multiple of 8, "
                   "unless --width or --height are given")
    p.add_argument("--strength", type=float, help="with --init-image: the share of the schedule's noise put back on "
                   "it (default 0.8; 0 < S <= 1; the last int(steps · S) steps run)")
    p.add_argument("--sampler", choices=tuple(SAMPLERS), help="default plms")
    p.add_argument("--spacing", choices=SPACINGS,
                   help="which timesteps the sampler visits (default leading); karras with euler and dpm++2m only")
    add_method_flags(p)
    p.add_argument("--device", help="auto (the default: cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"),
                   help="auto (the default): float16 on cuda, bfloat16 on a CPU that computes it natively (AVX512_BF16 "
                        "or AMX, with torch's kernels at AVX-512), float32 elsewhere; --dtype float32 keeps float32")
    p.add_argument("--attention", choices=("sdpa", "plain"), help="default sdpa")
    p.add_argument("--out", help="PNG path (default outputs/minitome.png); an existing file gets a numbered sibling")
    p.add_argument("--preview", help="a PNG rewritten after each step with the image the step's estimate shows "
                   "(the batch's first), into a folder that exists")
    p.add_argument("--preview-vae", help="a TAESD decoder (taesd_decoder.safetensors or an AutoencoderTiny folder) "
                   "to draw --preview with (default: a linear latent-to-RGB map, ComfyUI's)")
    return p


def add_method_flags(p: argparse.ArgumentParser):
    """The hires pass's flags and the methods' (--tome-*, --todo-*, --deepcache-*); each method is off without its
    first flag, and the others need it (minitome/cli/methods.py makes them the methods' configs)."""
    p.add_argument("--hires-scale", type=float, help="the hires pass: upscale the image this many times and denoise "
                   "it again (off without it)")
    p.add_argument("--hires-steps", type=int, help="the hires pass's steps, as img2img's (default: --steps)")
    p.add_argument("--hires-strength", type=float, help="the hires pass's denoising strength (default 0.7)")
    p.add_argument("--hires-upscale", choices=UPSCALES,
                   help="latent (the default: bilinear, A1111's Latent), latent-nearest, or lanczos (the decoded image)")
    p.add_argument("--hires-tome-ratio", type=float, help="ToMe's ratio on the hires pass (0: off there; default: "
                   "the first pass's; alone: ToMe on the hires pass only)")
    p.add_argument("--tome-ratio", type=float, help="merge this share of tokens (ToMe is off without it)")
    p.add_argument("--tome-max-downsample", type=int, choices=(1, 2, 4, 8), help="default 1")
    p.add_argument("--tome-sx", type=int, help="default 2")
    p.add_argument("--tome-sy", type=int, help="default 2")
    p.add_argument("--tome-no-rand", action="store_true", help="dst at the top-left of each cell")
    p.add_argument("--tome-merge", help="comma list of attn, crossattn, mlp (default attn)")
    p.add_argument("--tome-seed", type=int, help="default 0")
    p.add_argument("--tome-threshold", type=float, help="CA-ToMe: merge the tokens at least this similar (instead of a ratio)")
    p.add_argument("--tome-reuse", type=int, help="CA-ToMe: plan every K UNet calls, reuse the plan between (default 1)")
    p.add_argument("--todo-factor", type=int, help="ToDo: keys and values from a grid F times coarser (ToDo is off without it)")
    p.add_argument("--todo-max-downsample", type=int, choices=(1, 2, 4, 8), help="default 1")
    p.add_argument("--todo-until", type=float, help="ToDo on the first FRACTION of the UNet calls (default 1)")
    p.add_argument("--deepcache-interval", type=int, help="DeepCache: a whole UNet call every N, the shallow branch between")
    p.add_argument("--deepcache-branch", type=int, help="DeepCache: how deep the recomputed branch reaches (default 0)")


def check_steps_flag(steps: int, flag: str, sampler: str = "plms", spacing: str = "leading", strength: float = None,
                     strength_flag: str = "--strength") -> int:
    """The sampler, spacing, step count and, for a run from an image, its strength (`sampler/`), each message
    naming the flag at fault. Returns the step a run from an image starts at (None from pure noise)."""
    try:
        check_spacing(sampler, spacing)
    except ValueError as error:
        flag_of = "--sampler" if str(error).startswith("sampler") else "--spacing"  # a spacing the sampler refuses
        raise Refusal(f"{flag_of}: {error}") from None
    named(flag, check_count, steps, sampler)
    if strength is None:
        named(flag, check_first_step, steps, sampler, spacing)
        return None
    start = named(strength_flag, check_strength, steps, strength)
    named(flag, check_steps, steps, sampler, spacing, start)
    return start


def check_first_step(steps: int, sampler: str, spacing: str):
    """From pure noise, a count whose schedule starts near the top (900 <= t <= 999), or a refusal naming the
    nearest counts that do (a leading schedule starts at 751 for 4 steps, 799 for 400, past the table for 1000)."""
    if starts_at_the_top(sampler, steps, spacing):
        return
    first = first_timestep(sampler, steps, spacing)
    works = [s for s in range(1, 1001) if starts_at_the_top(sampler, s, spacing)]
    below = max((s for s in works if s < steps), default=None)
    above = min((s for s in works if s > steps), default=None)
    nearest = " or ".join(str(s) for s in (below, above) if s is not None)
    where = ("past the schedule's last timestep 999" if first >= 1000 else
             f"far from t = 999 where sampling from pure noise must start (t >= {MIN_FIRST_TIMESTEP} here)")
    raise Refusal(f"{steps} step{'s' if steps != 1 else ''} with {spacing} spacing would start at t = {first:g}, "
                  f"{where}: use --spacing trailing, which starts every count at 999, or the nearest {spacing} "
                  f"counts that work: {nearest}")


def named(flag: str, check, *values):
    """check(*values), a refusal from it (a library door's ValueError) said after the flag's name."""
    try:
        return check(*values)
    except ValueError as error:
        raise Refusal(f"{flag}: {error}") from None


def writable_folder(folder: Path, flag: str) -> Path:
    """folder, created if missing, and writable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Refusal(f"{flag} {folder}: cannot create it ({error.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise Refusal(f"{flag} {folder}: not writable")
    return folder


def flags_given(parser: argparse.ArgumentParser, argv) -> set:
    """The destinations of the options `argv` names, in any spelling argparse accepts (`--flag=value`, a prefix):
    a flag given with its default value counts as given. argparse fills in defaults only for what a namespace
    lacks, so parsing into one whose every field holds a marker leaves the marker where nothing was given."""
    class Unset(list):  # a marker an append action can copy and extend (its copy is another object)
        pass
    unset = {a.dest: Unset() for a in parser._actions if a.dest != argparse.SUPPRESS}
    probe = argparse.Namespace(**unset)
    parser.parse_args(argv, probe)
    return {dest for dest, value in vars(probe).items() if value is not unset[dest]}
