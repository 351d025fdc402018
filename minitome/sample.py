"""`python -m minitome.sample`: one prompt to PNG files, on CPU, CUDA or MPS, with ToMe and its successors.

Where this sits: the command line around `minitome/pipeline.py`. In order, each step failing fast:

1. every flag is checked (`check`), with no file touched: arithmetic on the flags only;
2. the weights' headers are read (`weights.load` checks every header before reading a tensor) and the flags
   that depend on the model's shape are checked, the run's memory estimated against what is free
   (`minitome/device.py`);
3. the output files are reserved (`minitome/output.py`): an unwritable path fails now, not after sampling;
4. the tensors are read, the PNG metadata (model hash included) is made, then the images are sampled and
   written whole.
Bad input is one line on stderr and exit status 2, never a traceback and never a file left behind;
Ctrl-C and SIGTERM remove the reserved files too (exit 130 and 143).
"""
import argparse
import math
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

from .checks import check_size, check_steps_flag, flags_given
from .device import check_fits, pick_device, pick_dtype
from .output import Outputs, model_hash, parameters_text
from unet.deepcache import DeepCacheConfig
from .todo import ToDoConfig
from sampler import unet_calls
from .tome import MERGE_TARGETS, ToMeConfig

SEEDS = 2 ** 64  # torch.Generator takes seeds in [0, 2⁶⁴)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minitome.sample", description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="SD 1.x .safetensors file or diffusers folder")
    p.add_argument("--tokenizer", help="tokenizer folder or bpe_simple_vocab_16e6.txt.gz (default: beside the weights)")
    p.add_argument("--vae", help="a VAE file or folder that replaces the weights' own decoder (or supplies a missing one)")
    p.add_argument("--ema", action="store_true", help="from a file holding two UNets (v1-5-pruned), load the EMA one")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=50, help="sampler steps: 10 to 999 (some counts are refused, see README)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (≤ 1: off)")
    p.add_argument("--seed", type=int, help="0 ≤ seed < 2⁶⁴; default: random, and printed")
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
    p.add_argument("--tome-threshold", type=float, help="CA-ToMe: merge the tokens at least this similar (instead of a ratio)")
    p.add_argument("--tome-reuse", type=int, default=1, help="CA-ToMe: plan every K UNet calls, reuse the plan between")
    p.add_argument("--todo-factor", type=int, help="ToDo: keys and values from a grid F times coarser (ToDo is off without it)")
    p.add_argument("--todo-max-downsample", type=int, default=1, choices=(1, 2, 4, 8))
    p.add_argument("--todo-until", type=float, default=1.0, help="ToDo on the first FRACTION of the UNet calls")
    p.add_argument("--deepcache-interval", type=int, help="DeepCache: a whole UNet call every N, the shallow branch between")
    p.add_argument("--deepcache-branch", type=int, default=0, help="DeepCache: how deep the recomputed branch reaches")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                   help="auto: float16 on cuda, float32 elsewhere")
    p.add_argument("--attention", default="sdpa", choices=("sdpa", "plain"))
    p.add_argument("--out", default="outputs/minitome.png", help="PNG path; an existing file gets a numbered sibling")
    args = p.parse_args(argv)
    args.given = flags_given(p, argv)
    return args


def needs(args, flags: tuple, switch: str, method: str):
    """The options in `flags` were given without `switch`, which turns their method on: an error naming them."""
    given = [f for f in flags if f in args.given]
    if given:
        names = ", ".join("--" + f.replace("_", "-") for f in given)
        raise ValueError(f"{names} need{'s' if len(given) == 1 else ''} {switch} ({method} is off without it)")


def tome_config(args) -> ToMeConfig:
    if args.tome_ratio is None and args.tome_threshold is None:
        needs(args, ("tome_max_downsample", "tome_sx", "tome_sy", "tome_no_rand", "tome_merge", "tome_seed",
                     "tome_reuse"), "--tome-ratio or --tome-threshold", "ToMe")
        return None
    if args.tome_ratio is not None and args.tome_threshold is not None:
        raise ValueError("--tome-ratio and --tome-threshold both say how much to merge: give one of them")
    targets = [t.strip() for t in args.tome_merge.split(",") if t.strip()]
    unknown = [t for t in targets if t not in MERGE_TARGETS]
    if unknown or not targets:
        raise ValueError(f"--tome-merge takes a comma list of {', '.join(MERGE_TARGETS)}, got {args.tome_merge!r}")
    if not 0 <= args.tome_seed < SEEDS:
        raise ValueError(f"--tome-seed must be in [0, 2^64), got {args.tome_seed}")
    if args.tome_threshold is not None and args.tome_sx == 1 and args.tome_sy == 1:
        raise ValueError("--tome-sx 1 --tome-sy 1: cells of one token are all dst, with no src to merge; "
                         "--tome-threshold needs cells of at least 2 tokens")
    ratio = args.tome_ratio if args.tome_ratio is not None else 0.5  # unused with a threshold
    return ToMeConfig(ratio=ratio, max_downsample=args.tome_max_downsample, sx=args.tome_sx,
                      sy=args.tome_sy, use_rand=not args.tome_no_rand, merge_attn="attn" in targets,
                      merge_crossattn="crossattn" in targets, merge_mlp="mlp" in targets, seed=args.tome_seed,
                      threshold=args.tome_threshold, reuse=args.tome_reuse)


def todo_config(args) -> ToDoConfig:
    if args.todo_factor is None:
        needs(args, ("todo_max_downsample", "todo_until"), "--todo-factor", "ToDo")
        return None
    todo = ToDoConfig(factor=args.todo_factor, max_downsample=args.todo_max_downsample, until=args.todo_until)
    calls = unet_calls(args.sampler, args.steps)
    if todo.calls_on(calls) == 0:
        raise ValueError(f"--todo-until {args.todo_until:g} turns ToDo on for none of the {calls} UNet calls of "
                         f"{args.steps} {args.sampler.upper()} steps: use at least {1 / calls:.3g}, or leave ToDo off")
    return todo


def deep_cache_config(args) -> DeepCacheConfig:
    if args.deepcache_interval is None:
        needs(args, ("deepcache_branch",), "--deepcache-interval", "DeepCache")
        return None
    return DeepCacheConfig(interval=args.deepcache_interval, branch=args.deepcache_branch)


def accelerations(args) -> tuple:
    """(ToMeConfig, ToDoConfig, DeepCacheConfig) from the flags, each None when off; ValueErrors name the flag."""
    try:
        tome, todo, deep_cache = tome_config(args), todo_config(args), deep_cache_config(args)
    except ValueError as error:
        message = str(error)
        for name, flag in (("ToMe ", "--tome-"), ("ToDo ", "--todo-"), ("DeepCache ", "--deepcache-")):
            message = message.replace(name, flag) if message.startswith(name) else message
        raise ValueError(message) from None
    if tome is not None and tome.merge_attn and todo is not None and todo.factor > 1:
        raise ValueError("--todo-factor and ToMe's self-attention merging (--tome-merge attn) both change self-attention's "
                         "tokens: use one of them")
    return tome, todo, deep_cache


def check(args):
    """Every flag, before anything is read or written; a ValueError names the flag."""
    check_steps_flag(args.steps, "--steps")
    if not math.isfinite(args.guidance):
        raise ValueError(f"--guidance must be a finite number, got {args.guidance}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    check_size(args.width, args.height, 8, ("--width", "--height"))
    if args.seed is not None and not 0 <= args.seed < SEEDS:
        raise ValueError(f"--seed must be in [0, 2^64), got {args.seed}")
    for name in ("prompt", "negative_prompt"):
        try:
            getattr(args, name).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"--{name.replace('_', '-')} is not valid UTF-8 text") from None


class Progress:
    """One line per step on stderr: step, iterations per second, time left."""

    def __init__(self, steps: int):
        self.steps, self.start = steps, time.perf_counter()

    def __call__(self, i: int, t: int):
        elapsed = time.perf_counter() - self.start
        rate = (i + 1) / elapsed
        left = (self.steps - i - 1) / rate
        print(f"step {i + 1}/{self.steps} (t={t}) · {rate:.2f} it/s · {left:.0f} s left", file=sys.stderr, flush=True)


class Terminated(Exception):
    """SIGTERM, raised where the program is, so that cleaning up runs as for Ctrl-C."""


def terminate(signum, frame):
    raise Terminated()


def one_line_warnings(message, category, *rest):
    """Warnings as one line each on stderr: what the loader says about a file (a note), a prompt cut short."""
    from weights import WeightsNotice
    kind = "note" if issubclass(category, WeightsNotice) else "warning"
    print(f"minitome.sample: {kind}: {message}", file=sys.stderr, flush=True)


def out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def main(argv=None) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = one_line_warnings
            return run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args) -> int:
    from weights import WeightsError, load
    from .pipeline import generate
    outputs, finished = None, False
    try:
        check(args)
        tome, todo, deep_cache = accelerations(args)
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        seed = args.seed if args.seed is not None else random.randrange(2**32)

        def check_model(unet, vae):  # the flags that depend on the model's shape, from the headers alone
            nonlocal outputs
            check_size(args.width, args.height, vae.scale_factor, ("--width", "--height"))
            latent = min(args.width, args.height) // vae.scale_factor
            if todo is not None and todo.factor > latent:
                raise ValueError(f"--todo-factor {todo.factor} is coarser than the latent grid itself ({latent} cells on "
                                 f"its shorter side at this size): at most {latent}")
            check_fits(args.width, args.height, args.batch, args.guidance > 1, args.attention, unet.num_heads,
                       dtype, device, vae.ch * (vae.ch_mult[0] + vae.ch_mult[1]))
            deepest = len(unet.layout()["input_blocks"]) - 2  # the branch must end above the deepest input block
            if deep_cache is not None and deep_cache.branch > deepest:
                raise ValueError(f"--deepcache-branch must be at most {deepest} for this UNet, got {deep_cache.branch}")
            # every check passed: the output names are reserved now, before the first tensor is read, so that
            # an unwritable --out fails in milliseconds and a run refused for its size touches no file
            outputs = Outputs(Path(args.out), args.batch)
            print(f"seed: {seed}", file=sys.stderr)

        sd = load(args.weights, tokenizer=args.tokenizer, device=device, dtype=dtype, vae=args.vae, ema=args.ema,
                  attention=args.attention, check=check_model)
        sd.unet.pack_convolutions()  # float32 on the CPU: convolution weights laid out once (unet/packed_conv.py)
        text = parameters_text(args, seed, model_hash(Path(args.weights)), tome, todo, deep_cache)
        images = generate(sd, args.prompt, args.negative_prompt, args.steps, args.guidance, seed, args.width,
                          args.height, args.batch, args.sampler, tome, Progress(args.steps), todo, deep_cache)
        for i, image in enumerate(images):
            print(outputs.write(i, image, text))
        finished = True
        return 0
    except (ValueError, WeightsError, OSError) as error:
        return fail(f"error: {error}", 2)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Terminated:
        return fail("terminated", 143)
    except (RuntimeError, MemoryError) as error:
        if not out_of_memory(error):
            raise
        first_line = str(error).strip().split("\n")[0]
        return fail(f"error: out of memory at --width {args.width} --height {args.height} --batch {args.batch} "
                    f"({first_line})", 1)
    finally:
        if outputs is not None and not finished:
            outputs.abandon()  # reservations not written and temporary files: nothing half-done is left


def fail(message: str, status: int) -> int:
    print(f"minitome.sample: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
