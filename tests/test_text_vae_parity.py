"""The CLIP text encoder against transformers' CLIPTextModel, the VAE decoder against diffusers'
AutoencoderKL.decode, and the whole `weights.load` in both layouts. Both sides run in float64, bound
F64_BOUND (conftest.py); one float32 smoke test per part, bound at its measured level."""
import pytest
import torch

import weights
from weights.clip import text_encoder_part_diffusers
from weights.vae import vae_part_diffusers
from conftest import (F64_BOUND, SD15_VAE, TINY_TEXT, TINY_VAE, diffusers_text_encoder, diffusers_vae,
                      official_single_file, relative_error)
from minitome.clip import CLIPTextModel

# float32: the largest error measured across CPU kernels (tests/float32_spread.py, 2026-12-06) times a margin of ~4
F32_TEXT_BOUND = 1e-6  # 0 under every kernel and thread count: the same float32 operations in the same order
F32_VAE_BOUND = 1e-5   # 1.62e-6 (oneDNN AVX) – 2.39e-6 (1 thread)


def save_pipeline_parts(tmp_path, text_encoder=None, vae=None):
    """A diffusers folder holding only the given parts, for their loaders."""
    if text_encoder is not None:
        text_encoder.save_pretrained(tmp_path / "text_encoder")
    if vae is not None:
        vae.save_pretrained(tmp_path / "vae")
    return tmp_path


def text_ids():
    ids = torch.randint(0, 49408, (2, 77), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -5:] = 49406, 49407
    return ids


def text_error(reference, ours) -> float:
    with torch.no_grad():
        return relative_error(ours(text_ids()), reference(text_ids()).last_hidden_state)


def vae_error(reference, ours, hw=(8, 8), dtype=torch.float64) -> float:
    z = torch.randn(1, 4, *hw, generator=torch.Generator().manual_seed(1), dtype=dtype)
    with torch.no_grad():
        ref, out = reference.decode(z).sample, ours(z)
    assert out.shape == ref.shape == (1, 3, 8 * hw[0], 8 * hw[1])
    return relative_error(out, ref)


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_text_encoder_matches_transformers(tmp_path, size):
    config = TINY_TEXT if size == "tiny" else dict(vocab_size=49408, max_position_embeddings=77)
    reference = diffusers_text_encoder(seed=3, **config)
    if size == "full":
        assert sum(p.numel() for p in CLIPTextModel().parameters()) == 123_060_480
    folder = save_pipeline_parts(tmp_path, text_encoder=reference)
    ours = text_encoder_part_diffusers(folder).load("cpu", torch.float64)
    assert text_error(reference.double(), ours) <= F64_BOUND


def test_text_encoder_float32_smoke(tmp_path, float32_bound):
    reference = diffusers_text_encoder(seed=3, **TINY_TEXT)
    ours = text_encoder_part_diffusers(save_pipeline_parts(tmp_path, text_encoder=reference)).load("cpu", torch.float32)
    float32_bound(text_error(reference, ours), F32_TEXT_BOUND)


@pytest.mark.parametrize("size, hw", [("tiny", (8, 8)), ("tiny", (5, 7)), ("full", (16, 16))])
def test_vae_decoder_matches_diffusers(tmp_path, size, hw):
    reference = diffusers_vae(seed=4, **(TINY_VAE if size == "tiny" else SD15_VAE))
    if size == "full":
        from minitome.vae import VAEDecoder
        assert sum(p.numel() for p in VAEDecoder().parameters()) == \
            sum(p.numel() for n, p in reference.named_parameters() if n.startswith(("decoder.", "post_quant_conv.")))
    ours = vae_part_diffusers(save_pipeline_parts(tmp_path, vae=reference)).load("cpu", torch.float64)
    assert vae_error(reference.double(), ours, hw) <= F64_BOUND


def test_vae_decoder_float32_smoke(tmp_path, float32_bound):
    reference = diffusers_vae(seed=4, **TINY_VAE)
    ours = vae_part_diffusers(save_pipeline_parts(tmp_path, vae=reference)).load("cpu", torch.float32)
    float32_bound(vae_error(reference, ours, (5, 7), torch.float32), F32_VAE_BOUND)


def test_our_names_are_the_official_names_for_clip_and_vae(tiny_pipeline):
    """diffusers' converters for official (LDM) checkpoints, fed our names, give back the reference tensors."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_vae_checkpoint
    pipe, folder = tiny_pipeline
    sd = weights.load(folder)
    vae_checkpoint = {"first_stage_model." + n: t for n, t in sd.vae.state_dict().items()}
    converted = convert_ldm_vae_checkpoint(vae_checkpoint, dict(pipe.vae.config))
    expected = {n: t for n, t in pipe.vae.state_dict().items() if n.startswith(("decoder.", "post_quant_conv."))}
    assert sorted(converted) == sorted(expected)
    assert all(torch.equal(converted[n].reshape(expected[n].shape), expected[n]) for n in expected)
    text_checkpoint = {"cond_stage_model.transformer.text_model." + n: t for n, t in sd.text_encoder.state_dict().items()}
    converted = convert_ldm_clip_checkpoint(text_checkpoint)
    expected = pipe.text_encoder.state_dict()
    converted = {n[len("text_model."):] if n.startswith("text_model.") else n: t for n, t in converted.items()}
    assert sorted(converted) == sorted(expected)
    assert all(torch.equal(converted[n], expected[n]) for n in expected)


def test_both_layouts_load_the_same_model(tiny_pipeline, tmp_path):
    _, folder = tiny_pipeline
    from_folder = weights.load(folder)
    path = official_single_file(from_folder, tmp_path / "tiny.safetensors", {"model_ema.decay": torch.tensor(0.9999)})
    from_file = weights.load(path, tokenizer=folder / "tokenizer")
    for part in ("unet", "text_encoder", "vae"):
        a, b = getattr(from_folder, part), getattr(from_file, part)
        assert a.config == b.config, part
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), part
    assert from_file.tokenizer.vocab == from_folder.tokenizer.vocab


def test_interface_returns_eps_for_a_tiny_checkpoint(tiny_pipeline):
    """The public interface (README, "Using the UNet"), end to end on a tiny checkpoint."""
    import minitome
    _, folder = tiny_pipeline
    sd = weights.load(folder)
    ids = sd.tokenizer(["a photo of a cat"])
    assert ids.shape == (1, 77)
    ctx = sd.text_encoder(ids)
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        eps = sd.unet(x, torch.tensor([500]), ctx, tome=minitome.ToMeConfig(ratio=0.5))
        img = sd.vae(x / 0.18215)
    assert eps.shape == x.shape and img.shape == (1, 3, 128, 128)


def test_text_encoder_ignores_a_corrupted_position_ids(tiny_pipeline, tmp_path):
    pipe, folder = tiny_pipeline
    sd = weights.load(folder)
    path = official_single_file(sd, tmp_path / "merged.safetensors")
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(path))
    tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.full((1, 77), 3)  # corrupted
    save_file(tensors, str(path))
    loaded = weights.load(path, tokenizer=folder / "tokenizer")
    ids = torch.tensor([[49406, 320, 2368] + [49407] * 74])  # "a cat"
    with torch.no_grad():
        assert relative_error(loaded.text_encoder(ids), pipe.text_encoder(ids).last_hidden_state) <= F32_TEXT_BOUND
