"""Running measure.py's jobs in fresh processes, and comparing the times they bring back.

Where this sits: the modes (bench.py's table, methods.py, samplers.py, hires.py, decode.py) hand their jobs to
`run_child`; `paired` turns two configurations' times, taken in the same rounds, into one ratio; `each_table` runs a
mode's measurement once per image size and attention kind.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .jobs import Job

ROOT = Path(__file__).resolve().parents[2]  # the repository


def run_child(job: Job, label: str) -> dict:
    """`python -m minitome.lab.measure` in a fresh process; its progress lines are shown as they come, and
    a failure becomes one line (the child's last line on stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if job.part in ("memory", "decode") and job.device == "cpu":
        env["MALLOC_MMAP_THRESHOLD_"] = str(256 * 1024)  # freed tensors go back to the system (see memory.py)
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen([sys.executable, "-m", "minitome.lab.measure", job.to_json()], cwd=ROOT, env=env,
                                 stdout=out, stderr=subprocess.PIPE, text=True)
        last = "no output"
        try:
            for line in child.stderr:
                if line.startswith("progress: "):
                    print(f"{label} {line[len('progress: '):].rstrip()}", file=sys.stderr, flush=True)
                elif line.strip():
                    last = line.strip()
        except BaseException:  # Ctrl-C, or the parent's own failure: no measuring child is left running
            child.kill()
            child.wait()
            raise
        if child.wait() != 0:
            raise RuntimeError(f"{label} failed: {last}")
        out.seek(0)
        return json.loads(out.read().strip().splitlines()[-1])


def paired(a: list, b: list) -> float:
    """a / b for two configurations timed in the same rounds: the median over rounds of a[k] / b[k], so that
    the machine's drift from round to round cancels out."""
    return statistics.median(x / y for x, y in zip(a, b))


def each_table(args, device, dtype, results: dict, measure, heading, tables, batch: int = 2) -> int:
    """For each --sizes × --attention: a "time" Job of `batch` images per call, measure(job, label, size) → a table,
    added to results["tables"] and printed as heading(size, attention) and tables(result); with --json, all of
    results at the end instead."""
    for size in args.sizes:
        for attention in args.attention:
            job = Job(part="time", latent=[size[1] // 8, size[0] // 8], batch=batch, attention=attention,
                      repeats=args.repeats, device=str(device), dtype=str(dtype).replace("torch.", ""), weights=args.weights)
            result = measure(job, f"[{size[0]}x{size[1]} {attention}]", size)
            results["tables"].append({"size": list(size), "attention": attention, **result})
            if not args.json:
                print(f"\n{heading(size, attention)}\n")
                print(tables(result), flush=True)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0
