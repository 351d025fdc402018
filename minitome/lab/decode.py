"""`python -m minitome.lab.bench --decode`: the VAE alone, its decoder and its encoder, minitome's and (with
--compare) diffusers'.

Where this sits: one of bench.py's modes. Each size and implementation is measured in a process of its own
(measure.py's "decode" job, memory.py's peak), since a peak needs the process to itself, as the UNet's does.
"""
import json

from .common import markdown_table
from .jobs import Job
from .runner import run_child


def decode_table(args, device, dtype, results: dict) -> int:
    """--decode: the VAE's decoder and encoder alone, one process per size, half and implementation (its memory
    needs the process to itself, as the UNet's does)."""
    rows = []
    for size in args.sizes:
        for half in ("decoder", "encoder"):
            for impl in ("minitome", "diffusers") if args.compare else ("minitome",):
                job = Job(part="decode", latent=[size[1] // 8, size[0] // 8], batch=1, attention="sdpa", repeats=1,
                          device=str(device), dtype=str(dtype).replace("torch.", ""), calls=[{"impl": impl, "half": half}])
                row = run_child(job, f"[{size[0]}x{size[1]} {half} {impl}]")
                rows.append([f"{size[0]}×{size[1]}", half, impl, f"{row['peak_mb'] / 1024:.2f}", f"{row['seconds']:.1f}"])
                results["tables"].append({"size": list(size), **row})
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(markdown_table(["image", "part", "implementation", "peak GiB above weights", "s"], rows))
    return 0
