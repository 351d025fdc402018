"""How the benchmark measures a call's peak memory: above what was in use just before it.

Where this sits: `measure.py` calls `peak_above` in a process that measures one kind of call alone.
CUDA: torch's max allocated. CPU: the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs). A resident set counts what glibc keeps after tensors are freed as well as what
is alive, so bench.py starts these processes with MALLOC_MMAP_THRESHOLD_=262144: every freed block of
256 KiB or more goes back to the system at once, and the resident set follows the tensors alive (to the
MiB, against torch's profiler). That setting slows calls, which is why timing runs in other processes.
Figures are MiB. Linux only on the CPU (it reads /proc/self).
"""
import torch

from .common import sync


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set


def memory_now(device) -> float:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else rss_mb("VmRSS")


def memory_peak(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else rss_mb("VmHWM")


def peak_above(call, device) -> float:
    """MiB: the peak memory during call() above the memory in use just before it."""
    sync(device)
    baseline = memory_now(device)
    reset_peak(device)
    call()
    sync(device)
    return memory_peak(device) - baseline
