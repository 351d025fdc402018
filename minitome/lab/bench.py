"""`python -m minitome.lab.bench`: what token merging buys on this machine, measured side by side.

Where this sits: a command line over `measure.py`, with six modes: the ratio table (ratios.py, the
default), `--methods` (methods.py), `--samplers` (samplers.py), `--hires` (hires.py), `--decode` (decode.py) and
`--image` (one_image.py: one image's time from the prompt to the PNG, stage by stage). For every image
size and attention kind the ratio table times all of its configurations (each ratio; with `--compare`, also
diffusers + tomesd on the same weights) in one fresh process, interleaved round by round, then measures
each configuration's peak memory in a process of its own. It prints one row per ToMe ratio: seconds per UNet call, speed-up
over ratio 0, peak memory above the weights, tokens in the merged blocks, the share of the call spent
merging, and the arithmetic rate against this machine's measured float32 matmul rate; with `--compare`
the headline is minitome / diffusers. Ratios of two configurations are medians over rounds of the
ratio within a round, so drift in the machine's speed cancels out.
With `--weights` and `--quality-steps N`, each ratio's image is compared with the ratio-0 image (PSNR, SSIM).
No download: by default the weights are random, at the full SD 1.5 size.
"""
import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

from minitome.checks import check_size
from minitome.cli.flags import check_steps_flag, flags_given
from minitome.deepcache import DeepCacheConfig
from minitome.cli.device import pick_device, pick_dtype
from minitome.todo import ToDoConfig
from minitome.tome import ToMeConfig
from .common import stopwatch
from .decode import decode_table
from .hires import compare_hires
from .methods import compare_methods
from .one_image import VOCAB, image_table
from .ratios import ratio_tables
from .samplers import compare_samplers


def parse_size(text: str) -> tuple:
    """'512' or '768x512' (width x height) → (width, height), multiples of 8."""
    try:
        w, h = (int(v) for v in text.lower().split("x")) if "x" in text else (int(text), int(text))
        check_size(w, h, 8, ("width", "height"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"size {text!r}: {error if 'multiple' in str(error) else 'use 512 or WIDTHxHEIGHT'}") from None
    return w, h


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m minitome.lab.bench", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(512, 512)], help="512 or WIDTHxHEIGHT, several allowed")
    p.add_argument("--batch", type=int, default=2, help="images per UNet call (2: one CFG pair)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    p.add_argument("--attention", nargs="+", choices=("sdpa", "plain"), default=["sdpa", "plain"])
    p.add_argument("--max-downsample", type=int, default=1, choices=(1, 2, 4, 8))
    p.add_argument("--repeats", type=int, default=3, help="rounds of timed calls (one call per row each), after one warm-up")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    p.add_argument("--weights", help="official file or diffusers folder (default: random weights, SD 1.5 size)")
    p.add_argument("--compare", action="store_true", help="also measure diffusers + tomesd, interleaved")
    p.add_argument("--unpacked", action="store_true", help="also time minitome without its convolutions packed")
    p.add_argument("--quality-steps", type=int, default=0, help="with --weights: PSNR/SSIM vs ratio 0 at N steps")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--decode", action="store_true", help="only the VAE decoder: peak memory and seconds per "
                   "image, random weights of SD 1.5's shape (with --compare, diffusers' too)")
    m = p.add_argument_group("--methods: ToMe and its successors side by side (methods.py)")
    m.add_argument("--methods", action="store_true", help="time every kind of UNet call the methods make, and compose images")
    m.add_argument("--tome-ratio", type=float, default=0.5)
    m.add_argument("--reuse", type=int, default=5, help="ToMe with its plan kept: a plan every N UNet calls")
    m.add_argument("--todo-factor", type=int, default=2)
    m.add_argument("--ca-threshold", type=float, default=0.7, help="CA-ToMe's similarity threshold")
    m.add_argument("--deepcache-interval", type=int, default=3)
    m.add_argument("--steps", type=int, default=50, help="PLMS steps of the composed image")
    m.add_argument("--check-image", action="store_true", help="also run one whole image, to check the composition")
    p.add_argument("--samplers", action="store_true", help="DPM++ 2M Karras 20, Euler a 20, DDIM 50, PLMS 50, alone and "
                   "with ToMe, ToDo, DeepCache, per image, beside diffusers (samplers.py; --tome-ratio, --todo-factor, "
                   "--deepcache-interval, --check-image apply)")
    p.add_argument("--hires", action="store_true", help="a hires image (DPM++ 2M Karras 20 at --sizes, latent ×2, 20 steps "
                   "at strength 0.5), without merging, ToMe on its hires pass, ToDo, DeepCache, beside diffusers + tomesd "
                   "(hires.py; --tome-ratio, --todo-factor, --deepcache-interval, --check-image apply)")
    i = p.add_argument_group("--image: one image's time, prompt to PNG, stage by stage (one_image.py; --tome-ratio, "
                             "--deepcache-interval, --weights, --compare apply)")
    i.add_argument("--image", action="store_true", help="PLMS 50, DPM++ 2M Karras 20, LCM 4 with the VAE and with TAESD, "
                   "each alone, with ToMe and with DeepCache; float32 and bfloat16 where native")
    i.add_argument("--calls", type=int, help="time the first N UNet calls of each run and count the rest at their "
                   "kind's mean (default: time every call)")
    i.add_argument("--tiny", action="store_true", help="random weights of the tests' tiny shapes (its figures mean nothing)")
    args = p.parse_args(argv)
    args.given = flags_given(p, argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


# the flags each mode reads beyond --sizes, --device, --dtype and --json; any other flag given is an error
METHODS_ONLY = ("tome_ratio", "reuse", "todo_factor", "ca_threshold", "deepcache_interval", "steps", "check_image")
MODE_FLAGS = {
    "ratios": {"ratios", "max_downsample", "attention", "batch", "repeats", "weights", "compare", "unpacked",
               "quality_steps"},
    "methods": {"attention", "batch", "repeats", "weights", "quality_steps", *METHODS_ONLY},
    "decode": {"compare"},
    # these two always measure diffusers beside minitome: --compare (as `make bench-compare` gives it) changes nothing
    "samplers": {"attention", "repeats", "weights", "tome_ratio", "todo_factor", "deepcache_interval", "check_image",
                 "compare"},
}
MODE_FLAGS["hires"] = MODE_FLAGS["samplers"]
MODE_FLAGS["image"] = {"weights", "compare", "tome_ratio", "deepcache_interval", "calls", "tiny"}
MODES = ("methods", "decode", "samplers", "hires", "image")


def named(flag: str, check):
    """check(), its ValueError prefixed with the flag it is about."""
    try:
        check()
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def check_args(args):
    """Every option, before anything is measured; a ValueError names the flag."""
    modes = [m for m in MODES if getattr(args, m)]
    if len(modes) > 1:
        raise ValueError(f"{' and '.join('--' + m for m in modes)} are different measurements: give one of them")
    mode = modes[0] if modes else "ratios"
    stray = sorted(args.given - MODE_FLAGS[mode] - {"sizes", "device", "dtype", "json", *MODES})
    if stray:
        flags = ", ".join("--" + f.replace("_", "-") for f in stray)
        why = {"methods": "it times the methods' UNet calls", "decode": "it times the VAE decoder alone on random weights",
               "samplers": "it times the samplers' images", "hires": "it times a hires image's chain",
               "image": "it times one image's stages", "ratios": "they set up another mode"}[mode]
        without = "without --methods, --samplers, --hires or --image"
        raise ValueError(f"{flags}: not used {'with --' + mode if mode != 'ratios' else without} ({why})")
    if args.batch < 1 or args.repeats < 1:
        raise ValueError("--batch and --repeats must be >= 1")
    for ratio in args.ratios:
        named("--ratios", lambda: ToMeConfig(ratio=ratio, max_downsample=args.max_downsample))
    labels = [f"{ratio:g}" for ratio in args.ratios]  # a table's rows, one per ratio as it prints
    if len(set(labels)) < len(labels):
        raise ValueError(f"--ratios {' '.join(map(repr, args.ratios))}: two print as the same row ({', '.join(labels)})")
    if args.weights is not None and (not args.weights or not Path(args.weights).exists()):
        raise ValueError(f"--weights {args.weights!r}: no such file or folder")
    if args.quality_steps and not args.weights:
        raise ValueError("--quality-steps needs --weights (random weights make no image worth comparing)")
    if args.quality_steps:
        check_steps_flag(args.quality_steps, "--quality-steps")
    if args.image:
        check_image_args(args)
    if args.methods or args.samplers or args.hires or args.image:
        named("--tome-ratio", lambda: ToMeConfig(ratio=args.tome_ratio))
        named("--reuse", lambda: ToMeConfig(reuse=args.reuse))
        named("--ca-threshold", lambda: ToMeConfig(threshold=args.ca_threshold))
        named("--todo-factor", lambda: ToDoConfig(factor=args.todo_factor))
        named("--deepcache-interval", lambda: DeepCacheConfig(interval=args.deepcache_interval))
        check_steps_flag(args.steps, "--steps")
        if args.compare and args.methods:
            raise ValueError("--compare times diffusers + tomesd beside ToMe's ratios, not beside --methods")


def check_image_args(args):
    """--image's own flags: one size, --calls a count, the vocabulary its prompt needs on random weights."""
    if len(args.sizes) > 1:
        raise ValueError("--sizes: --image times one image, give one size")
    if args.calls is not None and args.calls < 1:
        raise ValueError(f"--calls {args.calls}: time at least one UNet call per run")
    if args.tiny and args.weights:
        raise ValueError("--tiny and --weights: give one (--tiny is random weights of the tests' tiny shapes)")
    if not args.weights and not VOCAB.is_file():
        raise ValueError(f"--image on random weights needs CLIP's vocabulary for its prompt, {VOCAB}: `make bench "
                         "BENCH_ARGS=--image` fetches it (or set MINITOME_VOCAB, or give --weights)")


def matmul_rate(device, dtype) -> float:
    """This machine's measured matmul rate, GFLOP/s (4096² × 4096², median of 3)."""
    n = 4096
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / stopwatch(lambda: a @ b, 3, device)[1] / 1e9


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        check_args(args)
        mode = "--samplers" if args.samplers else "--hires" if args.hires else "--image --compare" if args.image else "--compare"
        if args.compare or args.samplers or args.hires:
            for module in ("diffusers", "tomesd") + (("DeepCache",) if mode != "--compare" else ()):
                importlib.import_module(module)
    except ImportError as error:
        print(f"minitome.lab.bench: error: {mode} needs diffusers, tomesd{' and DeepCache' if mode != '--compare' else ''}"
              f" installed: make bench-compare ({error})", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"minitome.lab.bench: error: {error}", file=sys.stderr)
        return 2
    if args.image and args.dtype == "auto" and device.type == "cpu":
        dtype = torch.float32  # the rate's dtype: the image mode measures float32 and bfloat16 itself
    rate = matmul_rate(device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    results = {"device": name, "dtype": str(dtype).replace("torch.", ""), "matmul_gflops": rate, "tables": []}
    batch = 1 if args.decode or args.image else args.batch
    print(f"# {name}, {results['dtype']}, batch {batch}; matmul rate {rate:.0f} GFLOP/s", file=sys.stderr)
    try:
        if args.methods:
            return compare_methods(args, device, dtype, name, results)
        if args.samplers:
            return compare_samplers(args, device, dtype, name, results)
        if args.hires:
            return compare_hires(args, device, dtype, name, results)
        if args.decode:
            return decode_table(args, device, dtype, results)
        if args.image:
            return image_table(args, device, results)
        ratio_tables(args, device, dtype, name, results, rate)
    except (RuntimeError, ValueError) as error:  # a failed measurement, or weights that do not load (a ValueError)
        print(f"minitome.lab.bench: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the measuring child is stopped too (runner.run_child)
        print("minitome.lab.bench: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
