"""`python -m minitome.lab.bench`: what token merging buys on this machine, measured side by side.

Where this sits: a command line over `measure.py`. For every image size and attention kind it
times all of the table's configurations (each ratio; with `--compare`, also diffusers + tomesd on the
same weights) in one fresh process, interleaved round by round, then measures each configuration's
peak memory in a process of its own. It prints one row per ToMe ratio: seconds per UNet call, speed-up
over ratio 0, peak memory above the weights, tokens in the merged blocks, the share of the call spent
merging, and the arithmetic rate against this machine's measured float32 matmul rate; with `--compare`
the headline is minitome / diffusers. Ratios of two configurations are medians over rounds of the
ratio within a round, so drift in the machine's speed cancels out.
With `--weights` and `--quality-steps N`, each ratio's image is compared with the ratio-0 image (PSNR, SSIM).
No download: by default the weights are random, at the full SD 1.5 size.
"""
import argparse
import importlib
import dataclasses
import json
import sys
from pathlib import Path

import torch

from minitome.checks import check_size
from minitome.flags import check_steps_flag, flags_given
from minitome.deepcache import DeepCacheConfig
from minitome.device import pick_device, pick_dtype
from minitome.todo import ToDoConfig
from minitome.tome import ToMeConfig
from .common import image_quality, markdown_table, stopwatch
from .decode import decode_table
from .jobs import CallKind, Job
from .methods import compare_methods
from .runner import paired, run_child


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
    m.add_argument("--check-image", action="store_true", help="also run DeepCache's whole image, to check the composition")
    args = p.parse_args(argv)
    args.given = flags_given(p, argv)
    return args


# the flags each mode reads beyond --sizes, --device, --dtype and --json; any other flag given is an error
METHODS_ONLY = ("tome_ratio", "reuse", "todo_factor", "ca_threshold", "deepcache_interval", "steps", "check_image")
MODE_FLAGS = {
    "ratios": {"ratios", "max_downsample", "attention", "batch", "repeats", "weights", "compare", "unpacked",
               "quality_steps"},
    "methods": {"attention", "batch", "repeats", "weights", "quality_steps", *METHODS_ONLY},
    "decode": {"compare"},
}


def named(flag: str, check):
    """check(), its ValueError prefixed with the flag it is about."""
    try:
        check()
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def check_args(args):
    """Every option, before anything is measured; a ValueError names the flag."""
    mode = "methods" if args.methods else "decode" if args.decode else "ratios"
    stray = sorted(args.given - MODE_FLAGS[mode] - {"sizes", "device", "dtype", "json", "methods", "decode"})
    if args.methods and args.decode:
        raise ValueError("--methods and --decode are two different measurements: give one of them")
    if stray:
        flags = ", ".join("--" + f.replace("_", "-") for f in stray)
        why = {"methods": "it times the methods' UNet calls", "decode": "it times the VAE decoder alone on random weights",
               "ratios": "they set up --methods"}[mode]
        raise ValueError(f"{flags}: not used {'with --' + mode if mode != 'ratios' else 'without --methods'} ({why})")
    if args.batch < 1 or args.repeats < 1:
        raise ValueError("--batch and --repeats must be >= 1")
    for ratio in args.ratios:
        named("--ratios", lambda: ToMeConfig(ratio=ratio, max_downsample=args.max_downsample))
    if args.weights is not None and (not args.weights or not Path(args.weights).exists()):
        raise ValueError(f"--weights {args.weights!r}: no such file or folder")
    if args.quality_steps and not args.weights:
        raise ValueError("--quality-steps needs --weights (random weights make no image worth comparing)")
    if args.quality_steps:
        check_steps_flag(args.quality_steps, "--quality-steps")
    if args.methods:
        named("--tome-ratio", lambda: ToMeConfig(ratio=args.tome_ratio))
        named("--reuse", lambda: ToMeConfig(reuse=args.reuse))
        named("--ca-threshold", lambda: ToMeConfig(threshold=args.ca_threshold))
        named("--todo-factor", lambda: ToDoConfig(factor=args.todo_factor))
        named("--deepcache-interval", lambda: DeepCacheConfig(interval=args.deepcache_interval))
        check_steps_flag(args.steps, "--steps")
        if args.compare:
            raise ValueError("--compare times diffusers + tomesd beside ToMe's ratios, not beside --methods")


def matmul_rate(device, dtype) -> float:
    """This machine's measured matmul rate, GFLOP/s (4096² × 4096², median of 3)."""
    n = 4096
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / stopwatch(lambda: a @ b, 3, device)[1] / 1e9


def ratio_call(impl: str, ratio: float, max_downsample: int) -> dict:
    """One implementation at one ToMe ratio, as measure.py's Call fields ("unpacked": minitome without its
    convolutions packed for the CPU)."""
    tome = {"ratio": ratio, "max_downsample": max_downsample} if ratio > 0 else None
    return dataclasses.asdict(CallKind(label=f"ratio {ratio:g}", impl="minitome" if impl == "unpacked" else impl,
                                   tome=tome, packed=impl != "unpacked"))


def measure_table(job: Job, impls: tuple, ratios: list, max_downsample: int, label: str) -> list:
    """One table's rows: every configuration timed in one process, then each one's memory in its own."""
    calls = [ratio_call(impl, ratio, max_downsample) for ratio in ratios for impl in impls]
    timed = run_child(dataclasses.replace(job, part="time", calls=calls), label)["calls"]
    found = {(c["impl"] if c["packed"] else "unpacked", c["label"]): c for c in timed}
    for i, call in enumerate(c for c in calls if c["packed"]):  # packing changes no tensor's size
        print(f"{label} memory {i + 1}/{len(ratios) * (len(impls) - ('unpacked' in impls))}: {call['impl']} "
              f"{call['label']}", file=sys.stderr, flush=True)
        found[call["impl"], call["label"]].update(run_child(dataclasses.replace(job, part="memory", calls=[call]), label))
    rows, base = [], f"ratio {ratios[0]:g}"
    for ratio in ratios:
        m = found["minitome", f"ratio {ratio:g}"]
        row = dict(ratio=ratio, seconds=m["seconds"], times=m["times"], peak_mb=m["peak_mb"], tokens=m["tokens"],
                   gflop=m["gflop"], merge_share=m["merge_seconds"] / m["seconds"],
                   speedup=paired(found["minitome", base]["times"], m["times"]))
        if "diffusers" in impls:
            d = found["diffusers", f"ratio {ratio:g}"]
            row.update(diffusers_seconds=d["seconds"], diffusers_times=d["times"], diffusers_peak_mb=d["peak_mb"],
                       diffusers_speedup=paired(found["diffusers", base]["times"], d["times"]),
                       ratio_to_diffusers=paired(m["times"], d["times"]))
        if "unpacked" in impls:
            u = found["unpacked", f"ratio {ratio:g}"]
            row.update(unpacked_seconds=u["seconds"], unpacked_times=u["times"], packed_to_unpacked=paired(m["times"], u["times"]))
        rows.append(row)
    return rows


def table(rows: list, compare: bool, with_quality: bool) -> str:
    head = ["ratio", "s/call", "speed-up", "peak MB", "merged tokens", "merging", "GFLOP/s", "% matmul"]
    if compare:
        head += ["diffusers s", "diff. speed-up", "diff. peak MB", "minitome/diffusers"]
    unpacked = "unpacked_seconds" in rows[0]
    if unpacked:
        head += ["unpacked s", "packed/unpacked"]
    if with_quality:
        head += ["PSNR dB", "SSIM"]
    lines = []
    for r in rows:
        tokens = ", ".join(sorted(set(r["tokens"]), key=r["tokens"].index)) or "–"
        cells = [f"{r['ratio']:g}", f"{r['seconds']:.2f}", f"{r['speedup']:.2f}×", f"{r['peak_mb']:,.0f}", tokens,
                 f"{100 * r['merge_share']:.1f}%", f"{r['gflops']:.0f}", f"{100 * r['matmul_share']:.0f}%"]
        if compare:
            cells += [f"{r['diffusers_seconds']:.2f}", f"{r['diffusers_speedup']:.2f}×", f"{r['diffusers_peak_mb']:,.0f}",
                      f"{r['ratio_to_diffusers']:.2f}"]
        if unpacked:
            cells += [f"{r['unpacked_seconds']:.2f}", f"{r['packed_to_unpacked']:.2f}"]
        if with_quality:
            cells += [f"{r['psnr']:.1f}", f"{r['ssim']:.3f}"]
        lines.append(cells)
    return markdown_table(head, lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        check_args(args)
        if args.compare:
            for module in ("diffusers", "tomesd"):
                importlib.import_module(module)
    except ImportError as error:
        print(f"minitome.lab.bench: error: --compare needs diffusers and tomesd installed ({error})", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"minitome.lab.bench: error: {error}", file=sys.stderr)
        return 2
    rate = matmul_rate(device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    results = {"device": name, "dtype": str(dtype).replace("torch.", ""), "matmul_gflops": rate, "tables": []}
    batch = 1 if args.decode else args.batch
    print(f"# {name}, {results['dtype']}, batch {batch}; matmul rate {rate:.0f} GFLOP/s", file=sys.stderr)
    impls = ("minitome",) + (("diffusers",) if args.compare else ()) + (("unpacked",) if args.unpacked else ())
    try:
        if args.methods:
            return compare_methods(args, device, dtype, name, results)
        if args.decode:
            return decode_table(args, device, dtype, results)
        for size in args.sizes:
            runs = {ratio: {"tome": ToMeConfig(ratio=ratio, max_downsample=args.max_downsample) if ratio > 0 else None}
                    for ratio in sorted(args.ratios)}  # the lowest first: the reference
            q = image_quality(args.weights, device, dtype, size, args.quality_steps, runs) if args.quality_steps else {}
            for attention in args.attention:
                job = Job(part="time", latent=[size[1] // 8, size[0] // 8], batch=args.batch, attention=attention,
                          repeats=args.repeats, device=str(device), dtype=str(dtype).replace("torch.", ""),
                          weights=args.weights)
                label = f"[{size[0]}x{size[1]} {attention}]"
                print(f"{label} timing {len(impls) * len(args.ratios)} configuration(s), interleaved: one warm-up "
                      f"call each, then {args.repeats} round(s)", file=sys.stderr, flush=True)
                rows = measure_table(job, impls, args.ratios, args.max_downsample, label)
                for row in rows:
                    row["gflops"] = row["gflop"] / row["seconds"]
                    row["matmul_share"] = row["gflops"] / rate
                    if row["ratio"] in q:
                        row["psnr"], row["ssim"] = q[row["ratio"]]
                results["tables"].append({"size": list(size), "attention": attention, "rows": rows})
                if not args.json:
                    print(f"\n{size[0]}×{size[1]}, {attention} attention, batch {args.batch}, {results['dtype']}, {name}"
                          f" (speed-up against ratio {rows[0]['ratio']:g}; ratios are medians over rounds)\n")
                    print(table(rows, args.compare, bool(q)), flush=True)
    except RuntimeError as error:
        print(f"minitome.lab.bench: error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
