"""The official single file, whole: every one of the 1,145 tensors of `v1-5-pruned-emaonly.safetensors`
at full size (random values), its names checked with diffusers' converters (tests/official.py). In a
fresh process: the public interface returns ε, an image and the context, and loading adds at most
1.15× the file's size to the process's peak resident memory (Linux's VmHWM): one copy of the weights
plus slack, where a loader that held the file's bytes and the model's copy at once would add 2×
(measured 2026-11-29 on a 2-core CPU machine, this test: 1.05× to 1.06×, on top of 0.24 GB for Python
with torch imported).
"""
import shutil
import subprocess
import sys

import torch

from conftest import ROOT, SD15_VAE, child_env, diffusers_vae
from official import SCHEDULE, TEXT, UNET, VAE, check_vae, vae_tensors

INTERFACE = """
import sys, torch
import weights, minitome
def peak_rss():  # this process's own peak: VmHWM (ru_maxrss would carry over the parent's peak from fork)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
before_load = peak_rss()
sd = weights.load(sys.argv[1])
peak_after_load = peak_rss()
ids = sd.tokenizer(["a photo of a cat"])
with torch.no_grad():
    ctx = sd.text_encoder(ids)
    x = torch.randn(1, 4, 8, 8)
    eps = sd.unet(x, torch.tensor([999]), ctx, tome=minitome.ToMeConfig(ratio=0.5))
    img = sd.vae(x / 0.18215)
assert ids.tolist()[0][:7] == [49406, 320, 1125, 539, 320, 2368, 49407], ids  # "a photo of a cat"
assert ctx.shape == (1, 77, 768) and eps.shape == x.shape and torch.isfinite(eps).all() and img.shape == (1, 3, 64, 64)
print(before_load, peak_after_load)
"""


def official_file_tensors() -> dict:
    """Every tensor of the official file, in its names and shapes, with random values."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel as ReferenceCLIP
    from minitome.clip import CLIPTextModel
    from unet import UNetModel
    torch.manual_seed(0)
    tensors = {UNET + n: t for n, t in UNetModel().state_dict().items()}
    tensors.update({TEXT + "text_model." + n: t for n, t in CLIPTextModel().state_dict().items()})
    tensors[TEXT + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    vae = diffusers_vae(seed=1, **SD15_VAE)
    official_vae = vae_tensors(vae, "ldm")
    check_vae(official_vae, vae)
    tensors.update({VAE + n: t for n, t in official_vae.items()})
    tensors.update({name: torch.rand(1000) for name in SCHEDULE})
    tensors.update({"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(0, dtype=torch.int32)})
    # the names, as diffusers' converters read them: every parameter of its SD 1.5 UNet and CLIP text model
    with torch.device("meta"):
        unet, clip_keys = UNet2DConditionModel(cross_attention_dim=768), ReferenceCLIP(CLIPTextConfig()).state_dict().keys()
    assert sorted(convert_ldm_unet_checkpoint(tensors, dict(unet.config))) == sorted(unet.state_dict())
    converted = {n.removeprefix("text_model."): t for n, t in convert_ldm_clip_checkpoint(tensors).items()}
    assert sorted(converted) == sorted(list(clip_keys) + ["embeddings.position_ids"])
    return tensors


def test_official_file_whole_interface_and_peak_memory(tmp_path, clip_tokenizer_folder):
    from safetensors.torch import save_file
    tensors = official_file_tensors()
    counts = {prefix: sum(n.startswith(prefix) for n in tensors) for prefix in (UNET, VAE, "cond_stage_model.")}
    assert counts == {UNET: 686, VAE: 248, "cond_stage_model.": 197}
    assert sum(n in SCHEDULE for n in tensors) == 12 and len(tensors) == 1145
    path = tmp_path / "v1-5-random.safetensors"
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(path))
    del tensors
    shutil.copytree(clip_tokenizer_folder, tmp_path / "tokenizer")
    done = subprocess.run([sys.executable, "-c", INTERFACE, str(path)], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    before, peak = map(int, done.stdout.split()[-2:])
    size = path.stat().st_size
    print(f"file {size / 1e9:.2f} GB; peak RSS {before / 1e9:.2f} GB before loading, {peak / 1e9:.2f} GB after: "
          f"loading added {(peak - before) / size:.2f}× the file")
    assert peak - before <= 1.15 * size
