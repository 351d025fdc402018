"""The spread of the float32 smoke tests' errors across CPU kernels: `python tests/float32_spread.py`.

A float32 bound must hold on any CPU, so it is set from the largest error seen across the kernels PyTorch
can pick, never from one machine's run. This runs the float32 smoke tests once per setting in a child
process, with the test suite's recorder on (MINITOME_FLOAT32_LOG, tests/conftest.py), and prints each
test's error under each setting, its largest, and the bound's margin over it. The settings, one change at
a time from the machine's own: PyTorch's vector kernels (ATEN_CPU_CAPABILITY: default is scalar code, then
avx2, avx512 where the CPU has it), oneDNN's instruction set (ONEDNN_MAX_CPU_ISA, for the convolutions
and matrix products it runs), and 1 or 2 threads; then all the lowest together.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_sampler.py::test_float32_smoke", "tests/test_unet_parity.py::test_tiny_unet_float32_smoke",
         "tests/test_text_vae_parity.py::test_text_encoder_float32_smoke",
         "tests/test_text_vae_parity.py::test_vae_decoder_float32_smoke",
         "tests/test_unet_parity.py::test_full_size_unet_matches_diffusers_at_512",
         "tests/test_lcm_sampler.py::test_float32_smoke", "tests/test_taesd.py::test_float32_smoke"]


def settings() -> dict:
    has_avx512 = "avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    rows = {"native, 2 threads": {}, "capability default": {"ATEN_CPU_CAPABILITY": "default"},
            "capability avx2": {"ATEN_CPU_CAPABILITY": "avx2"}}
    if has_avx512:
        rows["capability avx512"] = {"ATEN_CPU_CAPABILITY": "avx512"}
    for isa in ("SSE41", "AVX", "AVX2"):
        rows[f"oneDNN {isa}"] = {"ONEDNN_MAX_CPU_ISA": isa}
    rows["1 thread"] = {"OMP_NUM_THREADS": "1"}
    rows["default + SSE41 + 1 thread"] = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                                          "OMP_NUM_THREADS": "1"}
    return rows


def main(argv) -> int:
    tests = argv or TESTS
    table = {}
    for name, extra in settings().items():
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as log:
            env = {**os.environ, "OMP_NUM_THREADS": "2", **extra, "MINITOME_FLOAT32_LOG": log.name}
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                                  env=env, capture_output=True, text=True)
            records = [json.loads(line) for line in log.read().splitlines()]
        status = "passed" if done.returncode == 0 else "FAILED"
        print(f"{name}: {status}", file=sys.stderr, flush=True)
        for r in records:
            table.setdefault(r["test"], {"bound": r["bound"], "errors": {}})["errors"][name] = r["error"]
    for test, row in table.items():
        worst = max(row["errors"].values())
        print(f"\n{test}\n  bound {row['bound']:.1e}, largest {worst:.3e}, margin {row['bound'] / max(worst, 1e-30):.1f}x")
        for name, error in row["errors"].items():
            print(f"  {name:28s} {error:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
