"""The tiny autoencoder (TAESD) against diffusers' AutoencoderTiny: its decoder and encoder in float64, the three
forms its weights come in, the pipeline with it (text to image, from an image, the hires pass's Lanczos path) against
StableDiffusionPipeline / StableDiffusionImg2ImgPipeline given `vae=AutoencoderTiny`, and its refusals.

The original files are written here from the diffusers state dict with taesd.py's module indices: diffusers'
`decoder.layers.i.*` is `taesd_decoder.safetensors`' `{i + 1}.*` (the original decoder's module 0 is its clamp, which
diffusers runs in its forward), `encoder.layers.i.*` is `taesd_encoder.safetensors`' `{i}.*`.
"""
import copy
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import weights
from conftest import F64_BOUND, float64_pipeline, official_single_file, randomize_, relative_error
from minitome.pipeline import decode, generate, image_tensor, sample_latents
from minitome.taesd import TinyConfig, TinyDecoder, TinyEncoder
from minitome.vae import SCALE
from test_bad_input import assert_one_line_error, run
from test_hires import hires_reference
from test_img2img import GUIDANCE, NEGATIVE, PROMPT, SEED, img2img_reference, picture

TINY_TAESD = dict(encoder_block_out_channels=(16,) * 4, decoder_block_out_channels=(16,) * 4,
                  num_encoder_blocks=(1, 1, 1, 2), num_decoder_blocks=(2, 1, 1, 1))
SD15_TAESD = {}  # AutoencoderTiny's defaults are SD 1.5's TAESD: width 64, 3, 3, 3, 1 and 1, 3, 3, 3 Blocks
F32_BOUND = 4e-6  # decoder 7.26e-7 under every kernel tried; encoder 4.21e-7 (native) – 7.95e-7 (scalar ATen, oneDNN
                  # SSE4.1, 1 thread), 2026-12-08


def diffusers_taesd(seed: int = 0, tame: bool = False, **config):
    """A random AutoencoderTiny; `tame`: its last convolution scaled by 0.5 around 0.5, so the decoded image lies mostly
    inside [0, 1] (the pipeline clamps there: a saturated image could hide a difference)."""
    from diffusers import AutoencoderTiny
    model = randomize_(AutoencoderTiny(**config), seed).eval().requires_grad_(False)
    if tame:
        with torch.no_grad():
            last = model.decoder.layers[-1]
            last.weight.mul_(0.5), last.bias.mul_(0.5).add_(0.5)
    return model


def original_files(reference, folder, halves=("decoder", "encoder")) -> dict:
    """taesd_decoder.safetensors / taesd_encoder.safetensors from the diffusers state dict (the docstring's map)."""
    paths = {}
    for which in halves:
        shift, prefix = (1 if which == "decoder" else 0), f"{which}.layers."
        tensors = {f"{int(n[len(prefix):].split('.')[0]) + shift}.{n[len(prefix):].split('.', 1)[1]}": t.contiguous()
                   for n, t in reference.state_dict().items() if n.startswith(prefix)}
        paths[which] = folder / f"taesd_{which}.safetensors"
        save_file(tensors, str(paths[which]))
    return paths


@pytest.fixture(scope="module")
def taesd(tmp_path_factory):
    """(a tamed tiny AutoencoderTiny, its diffusers folder)."""
    model = diffusers_taesd(seed=21, tame=True, **TINY_TAESD)
    folder = tmp_path_factory.mktemp("taesd")
    model.save_pretrained(folder)
    return model, folder


def with_taesd(pipe, taesd):
    from diffusers import StableDiffusionPipeline
    components = {k: v for k, v in pipe.components.items() if k != "image_encoder"}
    return StableDiffusionPipeline(**{**components, "vae": taesd}, requires_safety_checker=False)


def same(a, b) -> bool:
    return holds(a, b.state_dict())


def holds(module, tensors: dict) -> bool:
    state = module.state_dict()
    return state.keys() == tensors.keys() and all(torch.equal(state[k], tensors[k]) for k in state)


def read(path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


@pytest.mark.parametrize("size, hw", [("tiny", (5, 7)), ("sd15", (8, 6))])
def test_decoder_and_encoder_match_diffusers_in_float64(tmp_path, size, hw):
    reference = diffusers_taesd(seed=4, **(TINY_TAESD if size == "tiny" else SD15_TAESD)).double()
    reference.save_pretrained(tmp_path)
    from weights.taesd import tiny_encoder_part, tiny_part
    decoder = tiny_part(tmp_path)
    ours, encoder = decoder.load("cpu", torch.float64), tiny_encoder_part(decoder).load("cpu", torch.float64)
    if size == "sd15":  # about a million parameters per half
        count = lambda *modules: [sum(p.numel() for p in m.parameters()) for m in modules]  # noqa: E731
        assert count(TinyDecoder(), TinyEncoder()) == count(reference.decoder, reference.encoder) == \
            [1_222_531, 1_222_532]
    g = torch.Generator().manual_seed(1)
    z = 4 * torch.randn(2, 4, *hw, generator=g, dtype=torch.float64)  # |z| up to ~12: the clamp tanh(z/3)·3 matters
    image = torch.rand(2, 3, 8 * hw[0], 8 * hw[1], generator=g, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        expected_image, expected_latents = reference.decode(z).sample, reference.encode(image).latents
        errors = relative_error(ours(z), expected_image), relative_error(encoder.sample(image), expected_latents)
        teeth = {"no clamp": relative_error(torch.nn.Sequential(*list(ours)[1:])(z) * 2 - 1, expected_image),
                 "no 2x − 1": relative_error(torch.nn.Sequential(*ours)(z), expected_image),
                 "no (x + 1) / 2": relative_error(torch.nn.Sequential(*encoder)(image), expected_latents)}
    print(f"TAESD {size} {hw}: decoder {errors[0]:.1e}, encoder {errors[1]:.1e}; without "
          + ", ".join(f"{k}: {v:.1e}" for k, v in teeth.items()))
    assert max(errors) <= F64_BOUND and min(teeth.values()) > 1e-2
    assert ours(z).shape == (2, 3, 8 * hw[0], 8 * hw[1]) and expected_latents.shape == z.shape
    assert TinyDecoder.scaling == TinyEncoder.scaling == reference.config.scaling_factor == 1.0 and SCALE == 0.18215
    assert ours.config.scale_factor == 8 and ours.config.z_channels == 4


def test_float32_smoke(taesd, float32_bound):
    reference, folder = taesd
    sd_vae = weights.load_preview_decoder(folder)
    from weights.taesd import tiny_encoder_part, tiny_part
    encoder = tiny_encoder_part(tiny_part(folder)).load()
    g = torch.Generator().manual_seed(2)
    z, image = torch.randn(1, 4, 5, 7, generator=g), torch.rand(1, 3, 40, 56, generator=g) * 2 - 1
    with torch.no_grad():
        float32_bound(relative_error(sd_vae(z), reference.decode(z).sample), F32_BOUND)
        float32_bound(relative_error(encoder.sample(image), reference.encode(image).latents), F32_BOUND)


def test_the_memory_estimate_counts_what_the_decoder_holds():
    """TinyConfig.peak_channels: the command line's estimate, 2 · 4 bytes · peak_channels per pixel, is the decoder's
    measured peak (lab/memory.py's method in a fresh process): three 64-channel float32 tensors at full resolution."""
    from conftest import child_env
    code = ("import torch; from minitome.lab.memory import peak_above; from minitome.taesd import TinyDecoder; "
            "d, z = TinyDecoder().eval(), torch.randn(1, 4, 32, 32); torch.set_grad_enabled(False); d(z); "
            "print(peak_above(lambda: d(z), torch.device('cpu')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**child_env(), "MALLOC_MMAP_THRESHOLD_": "262144", "OMP_NUM_THREADS": "1"})
    estimate = 8 * 256 * 256 * TinyConfig().peak_channels / 2**20
    print(f"TAESD decoder at 256²: {float(out.stdout):.1f} MiB, estimated {estimate:.1f} MiB")
    assert TinyConfig().peak_channels == 96 and abs(float(out.stdout) / estimate - 1) < 0.1


def test_the_three_forms_load_the_same_weights(tiny_pipeline, taesd, tmp_path):
    """The AutoencoderTiny folder, its safetensors file alone, the original pair of files; a pipeline folder whose vae/
    is an AutoencoderTiny. Each gives the reference's tensors under taesd.py's indices, as --vae and as --preview-vae;
    a bare decoder without its encoder loads for text to image."""
    pipe, folder = tiny_pipeline
    reference, taesd_folder = taesd
    shutil.copy(taesd_folder / "diffusion_pytorch_model.safetensors", tmp_path / "taesd.safetensors")
    originals = original_files(reference, tmp_path)
    with_taesd(pipe, reference).save_pretrained(tmp_path / "pipeline")
    expected = {which: read(path) for which, path in originals.items()}
    forms = [(folder, taesd_folder), (folder, tmp_path / "taesd.safetensors"), (folder, originals["decoder"]),
             (tmp_path / "pipeline", None)]
    for weights_path, vae in forms:
        sd = weights.load(weights_path, vae=vae, encoder=True)
        assert isinstance(sd.vae, TinyDecoder) and isinstance(sd.vae_encoder, TinyEncoder), vae
        assert holds(sd.vae, expected["decoder"]) and holds(sd.vae_encoder, expected["encoder"]), vae
        assert sd.vae_encoder.config == TinyConfig.tiny() and sd.vae.config.decoder_blocks == (2, 1, 1, 1)
        assert holds(weights.load_preview_decoder(vae or weights_path), expected["decoder"])
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(originals["decoder"], alone / "taesd_decoder.safetensors")
    assert weights.load(folder, vae=alone / "taesd_decoder.safetensors").vae_encoder is None


def test_a_pth_is_refused_with_the_command_that_converts_it(taesd, tiny_pipeline, tmp_path):
    reference, _ = taesd
    pth = tmp_path / "taesd_decoder.pth"
    torch.save(read(original_files(reference, tmp_path, ("decoder",))["decoder"]), pth)
    for load in (lambda: weights.load(tiny_pipeline[1], vae=pth), lambda: weights.load_preview_decoder(pth)):
        with pytest.raises(weights.WeightsError, match=r"taesd_decoder.pth: a pickle, refused .* convert it to "
                                                       r"safetensors with: python -c \"") as refused:
            load()
    command = str(refused.value).split("with: python ", 1)[1]
    converted = tmp_path / "taesd_decoder.safetensors"
    converted.unlink()
    subprocess.run(f"{sys.executable} {command}", shell=True, check=True)
    assert same(weights.load_preview_decoder(converted), weights.load(tiny_pipeline[1], vae=converted).vae)


def test_the_refusals_are_one_line(tiny_pipeline, taesd, tmp_path):
    pipe, folder = tiny_pipeline
    reference, taesd_folder = taesd
    originals = original_files(reference, tmp_path)
    shutil.copy(taesd_folder / "diffusion_pytorch_model.safetensors", tmp_path / "taesd.safetensors")
    for given in (originals["decoder"], tmp_path / "taesd.safetensors", taesd_folder):  # a TAESD as the weights
        with pytest.raises(weights.WeightsError, match=f"^{re.escape(str(given))}: a TAESD \\(the tiny autoencoder\\), "
                                                       f"not a checkpoint: give it with --vae {re.escape(str(given))} "
                                                       "beside --weights$"):
            weights.load(given)
    status, lines = run(["--weights", str(originals["decoder"]), "--prompt", "a cat", "--out", str(tmp_path / "x.png")])
    assert_one_line_error(status, lines, "taesd_decoder.safetensors: a TAESD .*give it with --vae")
    for full in (folder / "vae", folder):  # a full VAE as the preview's
        with pytest.raises(weights.WeightsError, match=f"^{re.escape(str(full))} is a full VAE; --preview-vae takes "
                                                       r"a TAESD \(taesd_decoder.safetensors or an AutoencoderTiny "
                                                       r"folder\)$"):
            weights.load_preview_decoder(full)
    with pytest.raises(weights.WeightsError, match=r"tiny-sd.safetensors: not a TAESD; --preview-vae takes one"):
        weights.load_preview_decoder(official_single_file(weights.load(folder), tmp_path / "tiny-sd.safetensors"))
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(originals["decoder"], alone / "taesd_decoder.safetensors")
    with pytest.raises(weights.WeightsError, match=r"alone/taesd_encoder.safetensors: no such file, and a run from an "
                                                   r"image needs TAESD's encoder: put taesd_encoder.safetensors there"):
        weights.load(folder, vae=alone / "taesd_decoder.safetensors", encoder=True)
    decoder_only = {n: t for n, t in reference.state_dict().items() if n.startswith("decoder.")}
    save_file({n: t.contiguous() for n, t in decoder_only.items()}, str(tmp_path / "decoder-only.safetensors"))
    with pytest.raises(weights.WeightsError, match=r"decoder-only.safetensors: no TAESD encoder in it"):
        weights.load(folder, vae=tmp_path / "decoder-only.safetensors", encoder=True)
    with pytest.raises(weights.WeightsError, match=r"taesd_encoder.safetensors: TAESD's encoder alone; --vae takes its "
                                                   r"decoder"):
        weights.load(folder, vae=originals["encoder"])
    for field, value in (("scaling_factor", 0.18215), ("act_fn", "silu")):
        other = diffusers_taesd(seed=1, **{**TINY_TAESD, field: value})
        other.save_pretrained(tmp_path / field)
        with pytest.raises(weights.WeightsError, match=f"config.json: {field} {value!r}, SD 1.x's TAESD has"):
            weights.load(folder, vae=tmp_path / field)
    diffusers_taesd(seed=1, **TINY_TAESD, latent_channels=16).save_pretrained(tmp_path / "sd3")
    with pytest.raises(weights.WeightsError, match=r"the VAE decodes 16-channel latents, the UNet makes 4"):
        weights.load(folder, vae=tmp_path / "sd3")
    with pytest.raises(weights.WeightsError, match=r"this TAESD decodes 16-channel latents, the UNet makes 4"):
        weights.load_preview_decoder(tmp_path / "sd3")


# ---- the pipeline with the tiny autoencoder ----

def test_text_to_image_matches_diffusers(tiny_pipeline, taesd, monkeypatch):
    """StableDiffusionPipeline(vae=AutoencoderTiny): its PNG within 2/255, its image in float64 (latents decoded as
    they are, scaling 1.0). Decoding latents / 0.18215 instead is far off."""
    pipe, folder = tiny_pipeline
    reference, taesd_folder = taesd
    settings = dict(num_inference_steps=10, guidance_scale=GUIDANCE, width=64, height=48)
    expected = with_taesd(pipe, reference)(PROMPT, negative_prompt=NEGATIVE, **settings,
                                           generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    sd = weights.load(folder, vae=taesd_folder)
    ours = np.asarray(generate(sd, PROMPT, NEGATIVE, 10, GUIDANCE, SEED, 64, 48)[0], np.int16)
    difference = int(np.abs(ours - np.asarray(expected, np.int16)).max())
    inside = float(((ours > 0) & (ours < 255)).mean())
    monkeypatch.setattr(TinyDecoder, "scaling", SCALE)
    wrong = np.asarray(generate(sd, PROMPT, NEGATIVE, 10, GUIDANCE, SEED, 64, 48)[0], np.int16)
    wrong = int(np.abs(wrong - ours).max())
    monkeypatch.undo()
    reference64 = with_taesd(float64_pipeline(pipe), copy.deepcopy(reference).double())
    expected64 = reference64(PROMPT, negative_prompt=NEGATIVE, **settings, output_type="pt",
                             generator=torch.Generator("cpu").manual_seed(SEED)).images
    sd64 = weights.load(folder, vae=taesd_folder, dtype=torch.float64)
    error = relative_error(decode(sd64, sample_latents(sd64, PROMPT, NEGATIVE, 10, GUIDANCE, SEED, 64, 48)), expected64)
    print(f"TAESD text to image: {difference}/255 ({inside:.0%} of the values unclamped), float64 {error:.1e}; "
          f"scaling 0.18215: {wrong}/255")
    assert difference <= 2 and error <= F64_BOUND and inside > 0.75 and wrong > 50


def test_img2img_matches_diffusers(tiny_pipeline, taesd, tmp_path):
    """StableDiffusionImg2ImgPipeline(vae=AutoencoderTiny), through the command line: its PNG within 2/255; its
    latents in float64. The encoder draws nothing, so the generator's first draw is the noise."""
    pipe, folder = tiny_pipeline
    reference, taesd_folder = taesd
    expected = img2img_reference(with_taesd(pipe, reference), "ddim", "leading", 10, 0.6)[0]
    picture().save(tmp_path / "init.png")
    out = tmp_path / "out.png"
    assert run(["--weights", str(folder), "--vae", str(taesd_folder), "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                "--seed", str(SEED), "--steps", "10", "--sampler", "ddim", "--init-image", str(tmp_path / "init.png"),
                "--strength", "0.6", "--out", str(out)])[0] == 0
    difference = int(np.abs(np.asarray(Image.open(out), np.int16) - np.asarray(expected, np.int16)).max())
    reference64 = with_taesd(float64_pipeline(pipe, "euler-a", "trailing"), copy.deepcopy(reference).double())
    expected64 = img2img_reference(reference64, "euler-a", "trailing", 10, 0.6, output_type="latent")
    sd64 = weights.load(folder, vae=taesd_folder, dtype=torch.float64, encoder=True)
    latents = sample_latents(sd64, PROMPT, NEGATIVE, 10, GUIDANCE, SEED, sampler="euler-a", spacing="trailing",
                             init_image=image_tensor(picture(), 72, 56).double(), strength=0.6)
    error = relative_error(latents, expected64)

    def drawing(self, image, generator=None):  # teeth: an encoder that drew as the VAE's does moves the noise
        return self(image) + 0 * torch.randn(image.shape[0], generator=generator, dtype=image.dtype)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TinyEncoder, "sample", drawing)
        drawn = sample_latents(sd64, PROMPT, NEGATIVE, 10, GUIDANCE, SEED, sampler="euler-a", spacing="trailing",
                               init_image=image_tensor(picture(), 72, 56).double(), strength=0.6)
    moved = relative_error(drawn, expected64)
    print(f"TAESD img2img: {difference}/255, float64 latents {error:.1e}; with a draw: {moved:.1e}")
    assert difference <= 2 and error <= F64_BOUND and moved > 1e-2


def test_the_hires_lanczos_path_matches_the_diffusers_chain(tiny_pipeline, taesd, tmp_path):
    """The first pass decoded by TAESD, resized with Lanczos, encoded by TAESD for the second pass."""
    pipe, folder = tiny_pipeline
    reference, taesd_folder = taesd
    expected = hires_reference(with_taesd(pipe, reference), "ddim", "leading", "lanczos", 10, 0.6)
    out = tmp_path / "hires.png"
    assert run(["--weights", str(folder), "--vae", str(taesd_folder), "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                "--seed", str(SEED), "--steps", "10", "--width", "40", "--height", "32", "--sampler", "ddim",
                "--hires-scale", "1.5", "--hires-steps", "10", "--hires-strength", "0.6", "--hires-upscale", "lanczos",
                "--out", str(out)])[0] == 0
    difference = int(np.abs(np.asarray(Image.open(out), np.int16) - np.asarray(expected, np.int16)).max())
    print(f"TAESD hires (Lanczos): {difference}/255")
    assert difference <= 2
