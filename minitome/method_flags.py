"""The command line's method flags (--tome-*, --todo-*, --deepcache-*, --hires-*): defined, and made the methods' configs.

Where this sits: `python -m minitome.sample` (minitome/sample.py) calls `accelerations(args)` among its first
checks. Each config checks its own ranges (minitome/tome.py, todo.py, deepcache.py) and which methods run
together is `check_methods`' (minitome/run.py); here are only what the flags add: a method's flag given
without the flag that turns it on, and the configs' messages named by their flags.
"""
import argparse
import math

from sampler import A1111_NAMES, start_step, unet_calls
from .flags import check_steps_flag
from .pipeline import UPSCALES, HiresConfig
from .deepcache import DeepCacheConfig
from .run import check_methods
from .todo import ToDoConfig
from .tome import MERGE_TARGETS, ToMeConfig

SEEDS = 2 ** 64  # torch.Generator takes seeds in [0, 2⁶⁴)


def add_method_flags(p: argparse.ArgumentParser):
    """The hires pass's flags and the methods' (--tome-*, --todo-*, --deepcache-*), as the command line offers them."""
    p.add_argument("--hires-scale", type=float, help="the hires pass: upscale the image this many times and denoise "
                   "it again (off without it)")
    p.add_argument("--hires-steps", type=int, help="the hires pass's steps, as img2img's (default: --steps)")
    p.add_argument("--hires-strength", type=float, default=0.7, help="the hires pass's denoising strength")
    p.add_argument("--hires-upscale", default="latent", choices=UPSCALES,
                   help="latent (bilinear, A1111's Latent), latent-nearest, or lanczos (the decoded image)")
    p.add_argument("--hires-tome-ratio", type=float, help="ToMe's ratio on the hires pass (0: off there; default: "
                   "the first pass's; alone: ToMe on the hires pass only)")
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


def needs(args, flags: tuple, switch: str, method: str):
    """The options in `flags` were given without `switch`, which turns their method on: an error naming them."""
    given = [f for f in flags if f in args.given]
    if given:
        names = ", ".join("--" + f.replace("_", "-") for f in given)
        raise ValueError(f"{names} need{'s' if len(given) == 1 else ''} {switch} ({method} is off without it)")


TOME_SETTINGS = ("tome_max_downsample", "tome_sx", "tome_sy", "tome_no_rand", "tome_merge", "tome_seed", "tome_reuse")


def tome_config(args, ratio: float = None) -> ToMeConfig:
    """The first pass's ToMe; with `ratio`, the hires pass's, from the same --tome-* settings."""
    if ratio is None and args.tome_ratio is None and args.tome_threshold is None:
        if getattr(args, "hires_tome_ratio", None) is None:  # --hires-tome-ratio alone: ToMe on the second pass only
            needs(args, TOME_SETTINGS, "--tome-ratio or --tome-threshold", "ToMe")
        return None
    if ratio is not None:
        args = argparse.Namespace(**{**vars(args), "tome_ratio": ratio, "tome_threshold": None})
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
    from_image = getattr(args, "init_image", None) is not None
    check_todo_calls(todo, args.sampler, args.steps, start_step(args.steps, args.strength) if from_image else 0)
    return todo


def check_todo_calls(todo: ToDoConfig, sampler: str, steps: int, start: int = 0, which: str = ""):
    """ToDo on for at least one UNet call of a pass (`which`: which one, when there are two), counting the calls
    the pass makes: from an image, only the last steps − start run."""
    calls = unet_calls(sampler, steps, start)
    if todo.calls_on(calls) == 0:
        run = f"{steps} {A1111_NAMES[sampler]} steps" if start == 0 else (
            f"the last {steps - start} of {steps} {A1111_NAMES[sampler]} steps")
        raise ValueError(f"--todo-until {todo.until:g} turns ToDo on for none of the {calls} UNet calls of {which}{run}: "
                         f"use at least {ToDoConfig.least_until(calls)!r}, or leave ToDo off")


def deep_cache_config(args) -> DeepCacheConfig:
    if args.deepcache_interval is None:
        needs(args, ("deepcache_branch",), "--deepcache-interval", "DeepCache")
        return None
    return DeepCacheConfig(interval=args.deepcache_interval, branch=args.deepcache_branch)


def flag_named(check, *args):
    """check(*args), a ValueError from a method's config ("ToDo factor must …") naming the flag ("--todo-factor")."""
    try:
        return check(*args)
    except ValueError as error:
        message = str(error)
        for name, flag in (("ToMe ", "--tome-"), ("ToDo ", "--todo-"), ("DeepCache ", "--deepcache-"),
                           ("hires ", "--hires-")):
            message = message.replace(name, flag) if message.startswith(name) else message
        raise ValueError(message) from None


def hires_config(args, tome, todo, deep_cache):
    """The hires pass (pipeline.HiresConfig) from the --hires-* flags, or None without --hires-scale."""
    if args.hires_scale is None:
        needs(args, ("hires_steps", "hires_strength", "hires_upscale", "hires_tome_ratio"), "--hires-scale", "the hires pass")
        return None
    if not math.isfinite(args.hires_scale) or args.hires_scale <= 1:
        raise ValueError(f"--hires-scale must be a number > 1 (the second pass's size over the first's), got {args.hires_scale}")
    steps = args.hires_steps if args.hires_steps is not None else args.steps
    start = check_steps_flag(steps, "--hires-steps", args.sampler, args.spacing, args.hires_strength, "--hires-strength")
    if args.hires_tome_ratio is None:
        second = tome
    elif args.hires_tome_ratio == 0:
        second = None
    else:
        try:
            second = tome_config(args, args.hires_tome_ratio)
        except ValueError as error:
            raise ValueError(f"--hires-tome-ratio {args.hires_tome_ratio!r}: {error}") from None
    check_methods(second, todo, deep_cache)
    if todo is not None:
        check_todo_calls(todo, args.sampler, steps, start, "the hires pass, ")
    return HiresConfig(args.hires_scale, steps, args.hires_strength, args.hires_upscale, second)


def accelerations(args) -> tuple:
    """(ToMeConfig, ToDoConfig, DeepCacheConfig) from the flags, each None when off; ValueErrors name the flag."""
    tome, todo, deep_cache = (flag_named(config, args) for config in (tome_config, todo_config, deep_cache_config))
    check_methods(tome, todo, deep_cache)  # which methods run together: one rule, one message (minitome/run.py)
    return tome, todo, deep_cache
