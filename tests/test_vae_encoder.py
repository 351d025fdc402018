"""The VAE encoder against diffusers' `AutoencoderKL.encode`, and loaded from every layout the decoder loads from.

float64, bound F64_BOUND: the Gaussian's mean and log-variance, and a latent drawn from it with a generator as
diffusers' img2img draws it (`latent_dist.sample(generator)`, then × 0.18215).
"""
import warnings

import pytest
import torch
from safetensors.torch import save_file

import weights
from conftest import F64_BOUND, SD15_VAE, TINY_VAE, diffusers_vae, relative_error
from minitome.vae import SCALE, VAEConfig, VAEDecoder
from official import VAE, official_tensors, vae_tensors
from weights.vae import vae_part_diffusers


def ours_from(reference, tmp_path, dtype=torch.float64):
    """Our encoder, loaded from the reference saved as a diffusers VAE folder."""
    reference.save_pretrained(tmp_path / "vae")
    from weights.vae import encoder_part
    return encoder_part(vae_part_diffusers(tmp_path)).load("cpu", dtype)


@pytest.mark.parametrize("size, hw", [("tiny", (64, 64)), ("tiny", (40, 56)), ("full", (64, 48))])
def test_encoder_matches_diffusers_in_float64(tmp_path, size, hw):
    reference = diffusers_vae(seed=5, **(TINY_VAE if size == "tiny" else SD15_VAE)).double()
    ours = ours_from(reference, tmp_path)
    image = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        expected = reference.encode(image).latent_dist
        mean, logvar = ours(image)
        drawn = ours.sample(image, torch.Generator().manual_seed(7))
        expected_drawn = expected.sample(torch.Generator().manual_seed(7)) * reference.config.scaling_factor
    assert mean.shape == (2, 4, hw[0] // 8, hw[1] // 8)
    errors = relative_error(mean, expected.mean), relative_error(logvar, expected.logvar), relative_error(drawn, expected_drawn)
    print(f"encoder {size} {hw}: mean {errors[0]:.1e}, logvar {errors[1]:.1e}, drawn latent {errors[2]:.1e}")
    assert max(errors) <= F64_BOUND
    assert SCALE == reference.config.scaling_factor == VAEDecoder.scaling  # the pipeline decodes latents / scaling
    assert VAEConfig().peak_channels == 128 + 256  # the decoder's last two levels (the CLI's memory estimate)


def test_the_encoders_names_are_the_official_ones(tiny_pipeline):
    """diffusers' converter of official files, fed our encoder's names, gives back the reference's tensors."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    pipe, folder = tiny_pipeline
    sd = weights.load(folder, encoder=True)
    ours = {VAE + n: t for part in (sd.vae, sd.vae_encoder) for n, t in part.state_dict().items()}
    converted = convert_ldm_vae_checkpoint(ours, dict(pipe.vae.config))
    expected = pipe.vae.state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(torch.equal(converted[n].reshape(expected[n].shape), expected[n]) for n in expected)


def same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_encoder_loads_from_every_layout(tiny_pipeline, tmp_path):
    """A diffusers pipeline folder; a single file with the VAE baked in, in LDM or diffusers names, its attention
    weights 4-D or 2-D; a --vae of its own (a folder, an LDM file, a diffusers file, one extracted with its
    prefix). Every one gives the same encoder; without encoder=True none is loaded."""
    from conftest import TINY_VAE
    from weights.unet import diffusers_names, to_diffusers_name
    pipe, folder = tiny_pipeline
    reference = weights.load(folder, encoder=True).vae_encoder
    assert weights.load(folder).vae_encoder is None
    table = diffusers_names(weights.load(folder).unet.config)
    unet_names = {to_diffusers_name(ours, table): ours for ours in weights.load(folder).unet.state_dict()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for naming in ("ldm", "diffusers"):
            for attention_2d in (False, True):
                path = tmp_path / f"{naming}-{attention_2d}.safetensors"
                save_file(official_tensors(pipe, unet_names, vae=naming, attention_2d=attention_2d), str(path))
                assert same(weights.load(path, tokenizer=folder / "tokenizer", encoder=True).vae_encoder, reference)
        other = diffusers_vae(seed=78, **TINY_VAE)
        other.save_pretrained(tmp_path / "vae_folder")
        from_folder = weights.load(folder, vae=tmp_path / "vae_folder", encoder=True).vae_encoder
        assert not same(from_folder, reference)
        for name, tensors in (("ldm.safetensors", vae_tensors(other, "ldm")), ("diffusers.safetensors", vae_tensors(other, "diffusers")),
                              ("extracted.safetensors", {VAE + n: t for n, t in vae_tensors(other, "ldm").items()})):
            save_file(tensors, str(tmp_path / name))
            assert same(weights.load(folder, vae=tmp_path / name, encoder=True).vae_encoder, from_folder)


def test_a_vae_without_an_encoder_is_refused_in_one_line_when_one_is_needed(tiny_pipeline, tmp_path):
    pipe, folder = tiny_pipeline
    decoder_only = {n: t for n, t in vae_tensors(pipe.vae, "ldm").items() if not n.startswith(("encoder.", "quant_conv."))}
    save_file(decoder_only, str(tmp_path / "decoder-only.safetensors"))
    sd = weights.load(folder, vae=tmp_path / "decoder-only.safetensors")  # text to image: no encoder needed
    assert sd.vae_encoder is None
    with pytest.raises(weights.WeightsError, match=r"decoder-only.safetensors: no VAE encoder in it \(encoder\.\*, "
                                                   r"quant_conv\), and a run from an image needs one"):
        weights.load(folder, vae=tmp_path / "decoder-only.safetensors", encoder=True)
