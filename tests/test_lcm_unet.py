"""An LCM-distilled UNet (diffusers' `time_cond_proj_dim`) against diffusers, from its guidance embedding to the PNG.

- the guidance embedding of w against `LatentConsistencyModelPipeline.get_guidance_scale_embedding`, to the bit
  (both in float32, in the same order of operations);
- the UNet with its `time_cond_proj` against `UNet2DConditionModel(time_cond_proj_dim=N)` in float64, every
  parameter random, loaded from a diffusers folder through `weights.load_unet` (bound F64_BOUND);
- a folder whose config and weights disagree on time_cond_proj_dim, refused in one line from the header;
- the pipeline: one latent per call at any guidance, w = g − 1 embedded, a negative prompt refused; its latents in
  float64 and its 8-bit image against both of diffusers' pipelines that run such a UNet with `LCMScheduler`
  (`LatentConsistencyModelPipeline` and `StableDiffusionPipeline`), with and without ToMe (tomesd on theirs),
  and teeth: sine and cosine swapped, w without its ×1000, or g in place of g − 1 each fail that parity.
"""
import copy
import json
import shutil

import pytest
import torch

import minitome.pipeline
import weights
from conftest import F64_BOUND, SD15_SCHEDULER, TINY_DIFFUSERS_UNET, diffusers_unet, relative_error, \
    scheduler_in_float64
from minitome import ToMeConfig
from minitome.checks import Refusal
from minitome.pipeline import decode, sample_latents
from test_unet_parity import inputs
from unet.blocks import guidance_embedding

DIM = 24  # the tiny UNet's time_cond_proj_dim (LCM_Dreamshaper_v7's is 256)
SETTINGS = dict(prompt="a red fox in the snow, watercolor", steps=4, width=72, height=56, seed=1234)


def reference_embedding(w, dim):
    from diffusers import LatentConsistencyModelPipeline
    return LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)


@pytest.mark.parametrize("dim", [1, 4, 5, DIM, 25, 256])
def test_guidance_embedding_is_diffusers_to_the_bit(dim):
    w = torch.tensor([0.0, 0.5, 1.0, 6.5, 14.0, -0.25])
    ours = guidance_embedding(w, dim)
    assert ours.dtype == torch.float32 and ours.shape == (6, dim)
    assert torch.equal(ours, reference_embedding(w, dim))
    if dim >= 4:  # the formula as the docstring says it, in float64: sin before cos, w · 1000, a zero pad when odd
        half = dim // 2
        args = 1000 * w.double()[:, None] * torch.exp(-torch.arange(half) * torch.log(torch.tensor(1e4)).double() / (half - 1))
        said = torch.cat([args.sin(), args.cos(), torch.zeros(6, dim % 2)], dim=1)
        assert relative_error(ours, said) < 1e-3  # float32 sines of arguments up to 14000


@pytest.mark.parametrize("dim", [DIM, 25])
@pytest.mark.parametrize("hw", [(8, 8), (13, 21), (9, 7)])
def test_lcm_unet_matches_diffusers(tmp_path, dim, hw):
    reference = diffusers_unet(seed=dim, **TINY_DIFFUSERS_UNET, time_cond_proj_dim=dim)
    reference.save_pretrained(tmp_path / "unet")
    ours = weights.load_unet(tmp_path, dtype=torch.float64)
    assert ours.config.time_cond_proj_dim == dim
    assert torch.equal(ours.time_cond_proj.weight, reference.time_embedding.cond_proj.weight.double())
    reference = reference.double()
    x, t, context = inputs(hw, seed=hw[1])
    w_embedding = guidance_embedding(torch.tensor([6.5, 0.0]), dim).double()
    with torch.no_grad():
        expected = reference(x, t, context, timestep_cond=w_embedding).sample
        error = relative_error(ours(x, t, context, timestep_cond=w_embedding), expected)
        print(f"time_cond_proj_dim {dim}, {hw}: {error:.1e}")
        assert error <= F64_BOUND
        alone = reference(x, t, context).sample  # without the embedding, diffusers' UNet runs on t alone; so does ours
        assert relative_error(ours(x, t, context), alone) <= F64_BOUND
        assert relative_error(alone, expected) > 1e6 * F64_BOUND  # the embedding really changes ε


@pytest.fixture(scope="module")
def lcm_folder(tmp_path_factory):
    """A tiny LCM-distilled UNet as a diffusers folder: (reference module, folder)."""
    reference = diffusers_unet(seed=21, **TINY_DIFFUSERS_UNET, time_cond_proj_dim=DIM)
    folder = tmp_path_factory.mktemp("lcm_unet")
    reference.save_pretrained(folder / "unet")
    return reference, folder


def edited(folder, tmp_path, config=None, tensors=None):
    """A copy of `folder` with its unet/config.json updated by `config` and its tensors edited by `tensors(dict)`."""
    from safetensors.torch import load_file, save_file
    copy_ = tmp_path / "copy"
    shutil.copytree(folder, copy_)
    path = copy_ / "unet" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **(config or {})}))
    file = copy_ / "unet" / "diffusion_pytorch_model.safetensors"
    held = load_file(str(file))
    (tensors or (lambda t: None))(held)
    save_file(held, str(file))
    return copy_


COND_PROJ = "time_embedding.cond_proj.weight"


@pytest.mark.parametrize("config, tensors, message", [
    ({}, lambda t: t.pop(COND_PROJ),
     rf"config.json says time_cond_proj_dim={DIM} but the weights hold no such tensor, expected {COND_PROJ} of shape \[32, {DIM}\]"),
    ({}, lambda t: t.update({COND_PROJ: torch.zeros(32, 16)}),
     rf"time_cond_proj_dim={DIM} but the weights hold {COND_PROJ} of shape \[32, 16\], expected .* \[32, {DIM}\]"),
    ({"time_cond_proj_dim": 16}, None, rf"says time_cond_proj_dim=16 but .* of shape \[32, {DIM}\], expected .*\[32, 16\]"),
    ({"time_cond_proj_dim": None}, None,
     rf"the weights hold {COND_PROJ} \[32, {DIM}\] \(an LCM-distilled UNet\) but config.json sets no time_cond_proj_dim"),
    ({"time_cond_proj_dim": 3}, None, "time_cond_proj_dim=3 .*needs at least 2 frequencies"),
    ({"time_cond_proj_dim": "256"}, None, "field 'time_cond_proj_dim' must be a positive int"),
    ({"class_embed_type": "timestep"}, None, "class_embed_type='timestep' is set"),
    ({"encoder_hid_dim_type": "text_proj"}, None, "encoder_hid_dim_type='text_proj' is set"),
])
def test_config_and_weights_must_agree(lcm_folder, tmp_path, config, tensors, message):
    with pytest.raises(weights.WeightsError, match=message) as error:
        weights.load_unet(edited(lcm_folder[1], tmp_path, config, tensors))
    assert "\n" not in str(error.value)


def test_the_door_takes_the_embedding_only_as_the_unet_does(lcm_folder, tiny_unet_folder):
    lcm, plain = weights.load_unet(lcm_folder[1]), weights.load_unet(tiny_unet_folder[1])
    x, t, context = inputs((8, 8), seed=0, dtype=torch.float32)
    with pytest.raises(Refusal, match="timestep_cond is for an LCM-distilled UNet"):
        plain(x, t, context, timestep_cond=torch.zeros(2, DIM))
    for bad in (torch.zeros(2, DIM + 1), torch.zeros(3, DIM), torch.zeros(DIM)):
        with pytest.raises(Refusal, match=rf"timestep_cond must be \(B or 1, {DIM}\)"):
            lcm(x, t, context, timestep_cond=bad)
    lcm, x, context = lcm.double(), x.double(), context.double()
    with torch.no_grad():  # one row is every row's (a Linear of one row and of two may round apart: float64)
        one = guidance_embedding(torch.tensor([3.0]), DIM).double()
        assert relative_error(lcm(x, t, context, timestep_cond=one),
                              lcm(x, t, context, timestep_cond=one.expand(2, -1))) <= F64_BOUND


# the pipeline, against diffusers' two pipelines that run an LCM-distilled UNet


@pytest.fixture(scope="module")
def lcm_pipeline(tiny_pipeline, tmp_path_factory):
    """The tiny pipeline's text encoder, tokenizer and VAE with a tiny LCM-distilled UNet, as diffusers'
    LatentConsistencyModelPipeline saved with save_pretrained: (pipe, folder)."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler
    base = tiny_pipeline[0]
    unet = diffusers_unet(seed=22, **{**TINY_DIFFUSERS_UNET, "cross_attention_dim": 64}, time_cond_proj_dim=DIM)
    pipe = LatentConsistencyModelPipeline(
        vae=copy.deepcopy(base.vae), text_encoder=copy.deepcopy(base.text_encoder), tokenizer=base.tokenizer, unet=unet,
        scheduler=LCMScheduler.from_config(base.scheduler.config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("lcm_pipeline")
    pipe.save_pretrained(folder)
    return pipe, folder


@pytest.fixture(scope="module")
def sd64(lcm_pipeline):
    return weights.load(lcm_pipeline[1], dtype=torch.float64)


def reference(pipe, kind: str):
    """A float64 copy of diffusers' `kind` pipeline ("lcm": LatentConsistencyModelPipeline, "sd":
    StableDiffusionPipeline) on the same parts, with LCMScheduler made from SD 1.5's config, computing in float64."""
    from diffusers import LCMScheduler, PNDMScheduler, StableDiffusionPipeline
    pipe = copy.deepcopy(pipe).to(torch.float64)
    if kind == "sd":
        pipe = StableDiffusionPipeline(**pipe.components, requires_safety_checker=False)
    pipe.scheduler = scheduler_in_float64(LCMScheduler.from_config(PNDMScheduler.from_config(SD15_SCHEDULER).config))
    return pipe


def reference_run(pipe, batch, guidance):
    s = SETTINGS
    latents = pipe(s["prompt"], num_inference_steps=s["steps"], guidance_scale=guidance, width=s["width"],
                   height=s["height"], num_images_per_prompt=batch, output_type="latent",
                   generator=torch.Generator("cpu").manual_seed(s["seed"])).images
    with torch.no_grad():
        image = (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    return latents, image


def ours(sd, batch, guidance, **extra):
    s = SETTINGS
    return sample_latents(sd, s["prompt"], "", s["steps"], guidance, s["seed"], s["width"], s["height"], batch, "lcm",
                          **extra)


def errors(sd, latents, expected) -> tuple:
    """(latents' relative error, image's, the 8-bit PNGs' largest difference per pixel)."""
    image = decode(sd, latents)
    pixels = int(((image * 255).round() - (expected[1] * 255).round()).abs().max())
    return relative_error(latents, expected[0]), relative_error(image, expected[1]), pixels


@pytest.mark.parametrize("kind", ["lcm", "sd"])
@pytest.mark.parametrize("batch, guidance", [(1, 8.5), (2, 1.0)])
@pytest.mark.parametrize("tome", [False, True])
def test_pipeline_matches_both_diffusers_pipelines(lcm_pipeline, sd64, kind, batch, guidance, tome):
    import tomesd
    pipe = reference(lcm_pipeline[0], kind)
    config = None
    if tome:  # one latent per call: tomesd's random partition is off for an odd UNet batch; ours is told the same
        tomesd.apply_patch(pipe, ratio=0.5, max_downsample=2)
        torch.manual_seed(7)  # tomesd forks torch's global generator at its first draw: the same stream as our seed 7
        config = ToMeConfig(ratio=0.5, max_downsample=2, use_rand=batch % 2 == 0, seed=7)
    expected = reference_run(pipe, batch, guidance)
    got = ours(sd64, batch, guidance, tome=config)
    latents, image, pixels = errors(sd64, got, expected)
    print(f"{kind} tome={tome} batch {batch} guidance {guidance}: latents {latents:.1e}, image {image:.1e}, {pixels}/255")
    assert max(latents, image) <= F64_BOUND and pixels <= 2
    if tome:  # merging really changed the result
        assert relative_error(got, ours(sd64, batch, guidance)) > 1e6 * F64_BOUND


WRONG = {"cosine first": lambda w, dim: guidance_embedding(w, dim).roll(dim // 2, dims=1),
         "w without ×1000": lambda w, dim: guidance_embedding(w / 1000, dim),
         "g in place of g − 1": lambda w, dim: guidance_embedding(w + 1, dim)}


@pytest.mark.parametrize("mistake", WRONG)
def test_the_parity_has_teeth(lcm_pipeline, sd64, monkeypatch, mistake):
    expected = reference_run(reference(lcm_pipeline[0], "lcm"), 1, 8.5)
    monkeypatch.setattr(minitome.pipeline, "guidance_embedding", WRONG[mistake])
    latents, _, _ = errors(sd64, ours(sd64, 1, 8.5), expected)
    print(f"{mistake}: latents {latents:.1e}")
    assert latents > 1e6 * F64_BOUND, latents


def test_one_latent_per_call_at_any_guidance_and_no_negative_prompt(lcm_pipeline, sd64):
    seen = []
    hook = sd64.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        (args[0].shape[0], args[2].shape[0], kwargs["timestep_cond"])), with_kwargs=True)
    try:
        ours(sd64, 3, 7.5)
    finally:
        hook.remove()
    assert len(seen) == SETTINGS["steps"] and all(x == context == 3 for x, context, _ in seen)
    assert all(torch.equal(w, guidance_embedding(torch.full((3,), 6.5), DIM).double()) for _, _, w in seen)
    with pytest.raises(Refusal, match=rf"^negative_prompt given: an LCM-distilled UNet \(time_cond_proj_dim {DIM}\) "
                                      "runs without classifier-free guidance: it has no negative prompt$"):
        sample_latents(sd64, "a cat", "blurry", steps=4, sampler="lcm", width=72, height=56)
    with pytest.raises(Refusal, match="^16x16 is too small for this UNet at 1 latent per call"):  # not the guided pair
        sample_latents(sd64, "a cat", steps=4, guidance=7.5, sampler="lcm", width=16, height=16)
