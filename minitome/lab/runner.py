"""Running measure.py's jobs in fresh processes, and comparing the times they bring back.

Where this sits: the modes (bench.py's table, methods.py, decode.py) hand their jobs to `run_child`; `paired` turns two
configurations' times, taken in the same rounds, into one ratio.
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
        for line in child.stderr:
            if line.startswith("progress: "):
                print(f"{label} {line[len('progress: '):].rstrip()}", file=sys.stderr, flush=True)
            elif line.strip():
                last = line.strip()
        if child.wait() != 0:
            raise RuntimeError(f"{label} failed: {last}")
        out.seek(0)
        return json.loads(out.read().strip().splitlines()[-1])


def paired(a: list, b: list) -> float:
    """a / b for two configurations timed in the same rounds: the median over rounds of a[k] / b[k], so that
    the machine's drift from round to round cancels out."""
    return statistics.median(x / y for x, y in zip(a, b))
