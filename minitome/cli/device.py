"""Where the model runs: the device and dtype a command line asks for, and whether a run fits in memory.

Where this sits: `python -m minitome.sample` and the lab's benchmark pick their device and dtype here,
and the sampler checks here, before any model work, that an image size and batch fit in the memory
available now. The estimate is a sum of the large tensors alive at each stage's peak, per image:

- UNet call (float32, SDPA): about 23 kB per latent cell per image of the CFG batch (the skip
  connections and the widest activations); plain attention adds its (N × N) score matrix per head;
- VAE decoder (one image at a time): about two float32 tensors per pixel as wide as its last two levels
  (128 + 256 channels in SD 1.5), 3 kB per pixel: 0.75 GiB at 512², 3 GiB at 1024² (as measured).
Scaled by the dtype's size. Not exact, but a run it refuses could not have finished, and the
allocator's own failure mid-run (after minutes of sampling) is what it prevents.

The dtype "auto" picks: float16 on CUDA; bfloat16 on a CPU that computes it natively (`native_bf16`: AVX512_BF16
or AMX, Zen 4 and Sapphire Rapids on); float32 elsewhere. A CPU without those instructions emulates bfloat16
with float32 arithmetic and conversions, slower than float32 itself; so do the kernels torch runs when they are
held below AVX-512 on a CPU that has it: with ONEDNN_MAX_CPU_ISA=AVX2 a bfloat16 convolution took 300 times its
float32 time here, and with ATEN_CPU_CAPABILITY=avx2 (or default) torch 2.13 refuses a bfloat16 UNet call
outright ("pack_vnni2 is only supported when avx512 is supported"). `--dtype float32` keeps float32 anywhere.
"""
import torch

from ..checks import Refusal

DEVICE_TYPES = ("cpu", "cuda", "mps")


def pick_device(name: str) -> torch.device:
    """"auto" (cuda, then mps, then cpu) or a device torch knows that the model can run on."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise Refusal(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type not in DEVICE_TYPES:
        raise Refusal(f"--device {name!r}: minitome runs on {', '.join(DEVICE_TYPES)}, not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise Refusal("--device cuda: no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise Refusal(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise Refusal("--device mps: MPS is not available")
    return device


def native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively in the kernels torch runs here: hardware bfloat16 (AVX512_BF16,
    or AMX's tiles), as torch's own, private, CPU feature checks see it; ATen's kernels at an AVX-512 (or AMX)
    capability, as ATEN_CPU_CAPABILITY leaves it; and oneDNN, which runs the convolutions and matrix products,
    allowed a bfloat16 ISA (not held below AVX-512 by ONEDNN_MAX_CPU_ISA, where a bfloat16 convolution is emulated
    hundreds of times slower). False where this torch lacks one of the checks."""
    try:
        hardware = [torch.cpu._is_avx512_bf16_supported(), torch.cpu._is_amx_tile_supported()]  # either will do
        capability = torch.backends.cpu.get_cpu_capability()
        onednn = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # private functions: a torch build may lack them
        return False
    return bool(any(hardware) and capability.startswith(("AVX512", "AMX")) and onednn)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" is float16 on CUDA, bfloat16 on a CPU with native bfloat16 (`native_bf16`), float32 elsewhere; or
    float32, float16, bfloat16."""
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and native_bf16() else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def available_bytes(device: torch.device):
    """Memory free for new tensors now: CUDA's free memory, or MemAvailable on Linux; None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return None


def estimate_bytes(width: int, height: int, batch: int, guided: bool, attention: str, heads: int,
                   dtype: torch.dtype, decoder_channels: int = 384) -> int:
    """Peak memory of one sampling run above the loaded weights (see the module's docstring). In whole numbers
    throughout: a size or batch typed with hundreds of digits is refused, not overflowed into a float."""
    cells, images = (width // 8) * (height // 8), batch * (2 if guided else 1)
    unet = 23_000 * cells * images
    if attention == "plain":
        unet += 4 * heads * cells ** 2 * images
    decoder = 8 * width * height * decoder_channels
    return max(unet, decoder) * torch.finfo(dtype).bits // 32


def gib(n: int) -> str:
    """Bytes as GiB to read: 0.8, 12.5, 4,096 (any whole number, however large)."""
    return f"{n / 2**30:,.1f}" if n < 100 * 2**30 else f"{n // 2**30:,}"


def check_fits(width: int, height: int, batch: int, guided: bool, attention: str, heads: int, dtype: torch.dtype,
               device: torch.device, decoder_channels: int = 384, size: str = None):
    """A refusal naming the size (`size`: what set it, "--width W --height H" by default) and the batch when
    the run needs more memory than `device` has free now."""
    free = available_bytes(device)
    needed = estimate_bytes(width, height, batch, guided, attention, heads, dtype, decoder_channels)
    if free is not None and needed > free:
        raise Refusal(f"{size or f'--width {width} --height {height}'} --batch {batch}: needs about {gib(needed)} "
                         f"GiB for its activations, {gib(free)} GiB of {device.type} memory is free now; "
                         "use a smaller size or batch")
