"""`python -m minitome.lab.bench` (its default mode): one row per ToMe ratio, minitome's call beside diffusers + tomesd.

Where this sits: bench.py's default mode. For every image size and attention kind, all the table's configurations
(each ratio; with `--compare`, also diffusers + tomesd on the same weights; with `--unpacked`, minitome without its
packed convolutions) are timed in one fresh process, interleaved round by round (measure.py), then each one's peak
memory in a process of its own.
"""
import dataclasses
import sys

from minitome.tome import ToMeConfig
from .common import image_quality, markdown_table
from .jobs import CallKind, Job
from .runner import paired, run_child


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


def ratio_tables(args, device, dtype, name: str, results: dict, rate: float):
    """Every size and attention kind's table, printed (or kept in `results` for --json)."""
    impls = ("minitome",) + (("diffusers",) if args.compare else ()) + (("unpacked",) if args.unpacked else ())
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
