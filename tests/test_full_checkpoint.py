"""A full-size official single file (SD 1.5 shapes, random weights): the DESIGN.md §3 interface returns ε,
and loading it peaks at most 1.3× the file's size in memory (measured in a fresh process)."""
import shutil
import subprocess
import sys

import torch

from conftest import official_single_file
from minitome.clip import CLIPTextModel
from minitome.vae import VAEDecoder
from unet import UNetModel
from weights.load import StableDiffusion

INTERFACE = """
import resource, sys, torch
import weights, minitome
sd = weights.load(sys.argv[1])
peak_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ids = sd.tokenizer(["a photo of a cat"])
with torch.no_grad():
    ctx = sd.text_encoder(ids)
    x = torch.randn(1, 4, 8, 8)
    eps = sd.unet(x, torch.tensor([999]), ctx, tome=minitome.ToMeConfig(ratio=0.5))
    img = sd.vae(x / 0.18215)
assert ids.shape == (1, 77) and ctx.shape == (1, 77, 768), (ids.shape, ctx.shape)
assert eps.shape == x.shape and torch.isfinite(eps).all() and img.shape == (1, 3, 64, 64)
print(peak_after_load)
"""


def test_full_single_file_interface_and_peak_memory(tmp_path, clip_tokenizer_folder):
    torch.manual_seed(0)
    sd = StableDiffusion(UNetModel(), CLIPTextModel(), None, VAEDecoder())
    path = official_single_file(sd, tmp_path / "v1-5-random.safetensors")
    del sd
    shutil.copytree(clip_tokenizer_folder, tmp_path / "tokenizer")
    done = subprocess.run([sys.executable, "-c", INTERFACE, str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    peak, size = int(done.stdout.split()[-1]), path.stat().st_size
    print(f"file {size / 1e9:.2f} GB, peak RSS while loading {peak / 1e9:.2f} GB = {peak / size:.2f}× the file")
    assert peak <= 1.3 * size
