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

from minitome.vae import VAEDecoder, VAEEncoder
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


def vae_half(impl: str, half: str, device, dtype):
    """SD 1.5's VAE decoder or encoder, minitome's or diffusers' AutoencoderKL, random weights (the values do not
    change the work): a function of its input (latents, or an image)."""
    torch.manual_seed(0)
    if impl == "diffusers":
        from diffusers import AutoencoderKL
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)
        run = (lambda z: vae.decode(z).sample) if half == "decoder" else (lambda x: vae.encode(x).latent_dist.mean)
    else:
        vae = run = VAEDecoder() if half == "decoder" else VAEEncoder()
    vae.to(device, dtype).eval()
    return run


def vae_input(half: str, latent: list, device, dtype) -> torch.Tensor:
    """One image's input to that half: latents (1, 4, h, w), or an image (1, 3, 8h, 8w)."""
    shape = (1, 4, *latent) if half == "decoder" else (1, 3, 8 * latent[0], 8 * latent[1])
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)


@torch.no_grad()
def measure_decode(job) -> dict:
    """The VAE decoder (or with job.calls[0]["half"] "encoder", the encoder) on one image of job.latent's size: its
    peak memory above the loaded weights and its seconds (measure.py's "decode" job, one process each).
    job.calls[0]["impl"]: "minitome", or "diffusers" for AutoencoderKL.decode (.encode)."""
    import time
    device, dtype = job.torch_device_dtype()
    impl = job.calls[0]["impl"] if job.calls else "minitome"
    half = job.calls[0].get("half", "decoder") if job.calls else "decoder"
    run = vae_half(impl, half, device, dtype)
    x = vae_input(half, job.latent, device, dtype)
    start = time.perf_counter()
    peak = peak_above(lambda: run(x), device)
    return {"impl": impl, "half": half, "peak_mb": peak, "seconds": time.perf_counter() - start}
