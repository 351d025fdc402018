"""`python -m minitome.lab.lora_memory`: the peak memory of loading a checkpoint, with and without LoRAs.

Where this sits: a tool beside the benchmark. A LoRA is added into the weights one layer at a time
(weights/lora.py), so loading with one should peak only a layer's update above loading without: no second copy
of the UNet. Each load runs in a process of its own, started with MALLOC_MMAP_THRESHOLD_ (memory.py says why),
and reports its peak resident set (VmHWM) and what stays resident after it, in MiB. Linux only (/proc/self).

    python -m minitome.lab.lora_memory --weights models/v1-5-pruned-emaonly.safetensors --lora loras/style.safetensors:0.8
"""
import argparse
import json
import os
import subprocess
import sys

from minitome.cli.add_ons import lora_spec
from .memory import rss_mb
from .runner import ROOT


def child(weights_path: str, loras: list) -> dict:
    import torch
    import weights
    with torch.no_grad():
        sd = weights.load(weights_path, loras=[(path, weight) for path, weight in loras])
    return {"peak_mb": rss_mb("VmHWM"), "resident_mb": rss_mb("VmRSS"), "parameters": sum(
        p.numel() for m in (sd.unet, sd.text_encoder, sd.vae) for p in m.parameters())}


def measure(weights_path: str, loras: list) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(256 * 1024),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    job = json.dumps({"weights": weights_path, "loras": [[str(p), w] for p, w in loras]})
    done = subprocess.run([sys.executable, "-m", "minitome.lab.lora_memory", "--child", job], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minitome.lab.lora_memory", description=__doc__.splitlines()[0])
    p.add_argument("--weights")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(child(job["weights"], job["loras"])))
        return 0
    try:
        if not args.weights or not args.lora:
            raise ValueError("give --weights and at least one --lora")
        loras = [lora_spec(text) for text in args.lora]
        rows = {"without": measure(args.weights, []), "with": measure(args.weights, loras)}
    except (ValueError, RuntimeError) as error:
        print(f"minitome.lab.lora_memory: error: {error}", file=sys.stderr)
        return 2
    for name, row in rows.items():
        print(f"{name} LoRA: peak {row['peak_mb']:,.0f} MiB, resident after loading {row['resident_mb']:,.0f} MiB, "
              f"{row['parameters']:,} parameters")
    print(f"the LoRA adds {rows['with']['peak_mb'] - rows['without']['peak_mb']:+,.0f} MiB to the peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
