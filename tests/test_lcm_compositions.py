"""LCM with the LCM-LoRA, and the tiny autoencoder, beside every method they run with, against diffusers.

LCM as the LCM-LoRA runs it (an LCM-distilled UNet's two pipelines are tests/test_lcm_unet.py's): a kohya-format LoRA
shaped as latent-consistency/lcm-lora-sdv1-5 (tests/test_lora.py's `lcm_lora_file`), fused on both sides (ours
through `loras=`, diffusers' by load_lora_weights + set_adapters + fuse_lora), sampled by `sampler="lcm"` and by
diffusers' LCMScheduler made from SD 1.5's scheduler config. The tiny autoencoder: diffusers' AutoencoderTiny with
tiny random weights, saved as its folder and given to ours as the VAE (its encoder for the runs from an image).

Three kinds of check, as tests/test_compositions.py's:
- from text (StableDiffusionPipeline) and from an image (StableDiffusionImg2ImgPipeline, which truncates LCM's
  schedule) at 1, 2, 4 and 8 steps, with and without ToMe (tomesd): the final latents and the image in float64
  within F64_BOUND, and the 8-bit images of a float32 run within 2/255 (one of them made by the command line);
- LCM beside each method, where the references compose on one diffusers pipeline: CA-ToMe's reused plans
  (ca-tome's own call), ToDo (tests/test_successors.py's reference from the paper, on diffusers' attention
  processors), DeepCache (DeepCacheSDHelper), a second LoRA, an embedding (load_textual_inversion), and the hires
  pass (tests/test_hires.py's diffusers chain); the tiny autoencoder beside plain sampling, ToMe, DeepCache, LCM,
  a run from an image and the hires pass's Lanczos path (decoded, resized, encoded again). LCM with ToMe and
  DeepCache together is test_compositions.py's, a sampler of its composed references;
- the identities, to the bit: LCM is a row of test_compositions.py's RUNS (its plan ownership and its identities
  run under LCM); here ToMe ratio 0, ToDo factor 1, DeepCache interval 1 and a LoRA at weight 0 beside LCM-LoRA
  and the tiny autoencoder give the PNG they give without it.
"""
import contextlib
import copy

import numpy as np
import pytest
import torch

import weights
from conftest import F64_BOUND, randomize_, relative_error
from minitome import ToMeConfig
from minitome.deepcache import DeepCacheConfig
from minitome.pipeline import HiresConfig, generate, image_tensor, sample_latents
from minitome.todo import ToDoConfig
from test_compositions import assert_same, scheduler
from test_img2img import picture
from test_lora import kohya_file, lcm_lora_file

PROMPT, NEGATIVE, SEED, WIDTH, HEIGHT = "a red fox in the snow, watercolor", "blurry", 1234, 72, 56
GUIDANCE = {1: 1.0, 2: 1.5, 4: 1.0, 8: 2.0}   # the LCM-LoRA's range: one latent per call at 1, the guided pair above
STRENGTH = {1: 1.0, 2: 0.5, 4: 0.6, 8: 0.75}  # from an image the last int(steps · strength) steps run: 1, 1, 2, 6
TINY_TAESD = dict(encoder_block_out_channels=(16,) * 4, decoder_block_out_channels=(16,) * 4,
                  num_encoder_blocks=(1, 1, 1, 2), num_decoder_blocks=(2, 1, 1, 1))  # SD's: 64 wide, 1 3 3 3 / 3 3 3 1


@pytest.fixture(scope="module")
def lcm_lora(tiny_pipeline, tmp_path_factory):
    path = tmp_path_factory.mktemp("lcm_lora") / "lcm-lora-sdv1-5.safetensors"
    lcm_lora_file(path, tiny_pipeline[0].unet, seed=4)
    return path


@pytest.fixture(scope="module")
def style_lora(tiny_pipeline, tmp_path_factory):
    """A style LoRA (UNet and text encoder, tests/test_lora.py's kohya file) to put beside the LCM-LoRA."""
    path = tmp_path_factory.mktemp("style") / "style.safetensors"
    kohya_file(path, tiny_pipeline[0], seed=1)
    return path


@pytest.fixture(scope="module")
def taesd(tmp_path_factory):
    """(diffusers' AutoencoderTiny with tiny random weights, the folder it is saved in)."""
    from diffusers import AutoencoderTiny
    model = randomize_(AutoencoderTiny(**TINY_TAESD), 14).eval().requires_grad_(False)
    folder = tmp_path_factory.mktemp("taesd")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def ours_with(tiny_pipeline, lcm_lora, taesd):
    """ours_with(dtype, lcm=True, tiny=False, loras=(), embeddings=()): the tiny model loaded (its encoder too), the
    LCM-LoRA fused when `lcm`, the tiny autoencoder as its VAE when `tiny`; once per setting."""
    loaded = {}

    def load(dtype, lcm=True, tiny=False, loras=(), embeddings=()):
        key = (dtype, lcm, tiny, loras, embeddings)
        if key not in loaded:
            loaded[key] = weights.load(tiny_pipeline[1], dtype=dtype, encoder=True, vae=taesd[1] if tiny else None,
                                       loras=([(lcm_lora, 1.0)] if lcm else []) + list(loras), embeddings=embeddings)
        return loaded[key]
    return load


def copy_of(ref, sampler: str = "lcm"):
    """A copy of a reference to patch for one test, with a scheduler of its own (a copied float64 scheduler's
    methods would still drive the original's state)."""
    new = copy.deepcopy(ref)
    new.scheduler = scheduler(sampler, new.unet.dtype)
    return new


def reference(pipe, loras=(), dtype=torch.float64):
    """A copy of the tiny pipeline in `dtype` with the LoRAs [(file, weight)] fused (load_lora_weights, set_adapters,
    fuse_lora)."""
    ref = copy.deepcopy(pipe).to(dtype)
    if loras:
        names = [f"lora{i}" for i in range(len(loras))]
        for name, (path, _) in zip(names, loras):
            ref.load_lora_weights(str(path), adapter_name=name)
        ref.set_adapters(names, [weight for _, weight in loras])
        ref.fuse_lora(adapter_names=names)
        ref.unload_lora_weights()
    return ref


@pytest.fixture(scope="module")
def references(tiny_pipeline, lcm_lora, taesd):
    """references(dtype, img2img=False, sampler="lcm", lcm=True, tiny=False, loras=()): diffusers' text-to-image or
    img2img pipeline, with `sampler`'s scheduler, the LCM-LoRA fused when `lcm` (and `loras` beside it), the tiny
    autoencoder as its VAE when `tiny`. The fused modules are made once per dtype and LoRAs and shared: a method
    patched onto them is removed by the test that patched it (or patched onto a `copy_of` one)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
    fused, tiny_vae = {}, {}

    def get(dtype, img2img=False, sampler="lcm", lcm=True, tiny=False, loras=()):
        exact = (torch.float64, lcm, loras)
        if exact not in fused:
            fused[exact] = reference(tiny_pipeline[0], ([(lcm_lora, 1.0)] if lcm else []) + list(loras))
        if (dtype, lcm, loras) not in fused:  # float32: the float64 fusion rounded once (load_lora_weights is slow)
            fused[dtype, lcm, loras] = copy.deepcopy(fused[exact]).to(dtype)
        parts = {k: v for k, v in fused[dtype, lcm, loras].components.items() if k != "image_encoder"}
        if tiny:
            if dtype not in tiny_vae:
                tiny_vae[dtype] = copy.deepcopy(taesd[0]).to(dtype)
            parts["vae"] = tiny_vae[dtype]
        parts["unet"].register_to_config(sample_size=64)  # the img2img pipeline's constructor compares it with 64
        ref = (StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline)(**parts)
        ref.scheduler = scheduler(sampler, dtype)
        return ref
    return get


@contextlib.contextmanager
def tomesd_on(ref, **settings):
    """`ref` with tomesd's patch of `settings` (none when there are none), removed after."""
    import tomesd
    if settings:
        tomesd.apply_patch(ref, **settings)
    try:
        yield ref
    finally:
        tomesd.remove_patch(ref)


def reference_run(ref, steps, guidance, strength=None, output_type="latent", call=None, prompt=PROMPT):
    """The reference's latents and float image (output_type "latent"), or its 8-bit PIL image ("pil")."""
    size = dict(image=picture(), strength=strength) if strength else dict(width=WIDTH, height=HEIGHT)
    images = (call or ref)(prompt, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=guidance,
                           output_type=output_type, generator=torch.Generator("cpu").manual_seed(SEED), **size).images
    if output_type != "latent":
        return images[0]
    with torch.no_grad():
        image = (ref.vae.decode(images / ref.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    return images, image


def ours(sd, steps, guidance, strength=None, sampler="lcm", prompt=PROMPT, **methods):
    init = dict(init_image=image_tensor(picture(), WIDTH, HEIGHT).to(next(sd.unet.parameters()).dtype),
                strength=strength) if strength else {}
    return sample_latents(sd, prompt, NEGATIVE, steps, guidance, SEED, WIDTH, HEIGHT, 1, sampler, **init, **methods)


def png(sd, steps, guidance, strength=None, sampler="lcm", **methods):
    init = dict(init_image=image_tensor(picture(), WIDTH, HEIGHT), strength=strength) if strength else {}
    return generate(sd, PROMPT, NEGATIVE, steps, guidance, SEED, WIDTH, HEIGHT, 1, sampler, **init, **methods)[0]


def pixels(a, b) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def tome_pair(guidance):
    """(tomesd's settings, ours) at ratio 0.5 over two levels: tomesd turns random partitions off when the UNet's
    batch is odd (one latent per call at guidance ≤ 1), ours is told the same, and tomesd's generator is forked from
    torch's global one, seeded here with ours."""
    even = guidance > 1
    torch.manual_seed(7)
    return dict(ratio=0.5, max_downsample=2), ToMeConfig(ratio=0.5, max_downsample=2, use_rand=even, seed=7)


# ---- LCM with its LoRA, from text and from an image ----

@pytest.mark.parametrize("tome", [False, True])
@pytest.mark.parametrize("from_image", [False, True], ids=["text", "image"])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_with_its_lora_matches_diffusers(references, ours_with, steps, from_image, tome):
    guidance, strength = GUIDANCE[steps], STRENGTH[steps] if from_image else None
    sd64, sd32 = ours_with(torch.float64), ours_with(torch.float32)
    settings, config = tome_pair(guidance) if tome else ({}, None)
    with tomesd_on(references(torch.float64, from_image), **settings) as ref:
        expected = reference_run(ref, steps, guidance, strength)
    got = ours(sd64, steps, guidance, strength, tome=config)
    # what the second method changed: ToMe, or else the LoRA
    alone = ours(sd64, steps, guidance, strength) if tome else ours(ours_with(torch.float64, lcm=False), steps,
                                                                      guidance, strength)
    assert_same(sd64, got, expected, alone)
    # the 8-bit image of a float32 run, ToMe's partitions fixed
    settings, config = (dict(ratio=0.5, max_downsample=2, use_rand=False),
                        ToMeConfig(ratio=0.5, max_downsample=2, use_rand=False)) if tome else ({}, None)
    with tomesd_on(references(torch.float32, from_image), **settings) as ref:
        expected = reference_run(ref, steps, guidance, strength, "pil")
    difference = pixels(png(sd32, steps, guidance, strength, tome=config), expected)
    print(f"float32: largest pixel difference {difference}/255")
    assert difference <= 2


def test_the_command_line_takes_the_lcm_lora_as_it_is(tiny_pipeline, references, lcm_lora, tmp_path):
    """`--sampler lcm --lora FILE` with ToMe, 4 steps at guidance 1: the PNG within 2/255 of diffusers' with the LoRA
    fused and tomesd."""
    from PIL import Image
    from conftest import sample_main as main
    out = tmp_path / "lcm.png"
    assert main(["--weights", str(tiny_pipeline[1]), "--prompt", PROMPT, "--sampler", "lcm", "--steps", "4",
                 "--guidance", "1", "--seed", str(SEED), "--width", str(WIDTH), "--height", str(HEIGHT), "--lora",
                 str(lcm_lora), "--tome-ratio", "0.5", "--tome-no-rand", "--dtype", "float32", "--out", str(out)]) == 0
    image = Image.open(out)
    with tomesd_on(references(torch.float32), ratio=0.5, use_rand=False) as ref:
        difference = pixels(image, reference_run(ref, 4, 1.0, output_type="pil"))
    print(f"--sampler lcm --lora, ToMe 0.5: largest pixel difference {difference}/255")
    assert difference <= 2 and "Sampler: LCM" in image.text["parameters"]


# ---- LCM beside each method, against the references composed on one diffusers pipeline ----

@contextlib.contextmanager
def ca_tome(ref, steps):
    """ca-tome plans at its inference_steps (the loop index + 1) in the cache schedule and at the first call."""
    from ca_tome import apply_CA_ToMe
    apply_CA_ToMe(ref, [0, 3, 5], 0.3)
    torch.manual_seed(7)  # ca-tome forks torch's global generator at its first draw
    yield ref.call, dict(tome=ToMeConfig(threshold=0.3, replan_calls=(0, 2, 4), seed=7))  # its own call


@contextlib.contextmanager
def todo(ref, steps):
    """The reference stops once t / 1000 <= its threshold: the first k calls, ours told until = k / calls."""
    from sampler import call_timesteps
    from test_successors import with_todo
    with_todo(ref.unet, 2, 1, threshold=0.45)
    calls = call_timesteps("lcm", steps)
    k = sum(t / 1000 > 0.45 for t in calls)
    assert 0 < k < len(calls)
    yield ref, dict(todo=ToDoConfig(2, 1, until=k / len(calls)))


@contextlib.contextmanager
def deep_cache(ref, steps):
    """DeepCacheSDHelper counts calls by the timestep's index in the schedule: LCM's are distinct."""
    from DeepCache import DeepCacheSDHelper
    helper = DeepCacheSDHelper(pipe=ref)
    helper.set_params(cache_interval=3, cache_branch_id=1)
    helper.enable()
    try:
        yield ref, dict(deep_cache=DeepCacheConfig(3, 1))
    finally:
        helper.disable()


BESIDE = {"CA-ToMe reuse": (ca_tome, 2.0), "ToDo": (todo, 1.0), "DeepCache": (deep_cache, 1.0)}  # (method, guidance)


@pytest.mark.parametrize("name", sorted(BESIDE))
def test_lcm_beside_each_method_matches_the_composed_reference(references, ours_with, name):
    method, guidance = BESIDE[name]
    sd64 = ours_with(torch.float64)
    ref = copy_of(references(torch.float64))
    with method(ref, 8) as (call, methods):
        expected = reference_run(ref, 8, guidance, call=call)
    assert_same(sd64, ours(sd64, 8, guidance, **methods), expected, ours(sd64, 8, guidance))


def test_lcm_beside_a_second_lora_and_an_embedding(tiny_pipeline, references, ours_with, style_lora, tmp_path_factory):
    """A style LoRA at 0.7 beside the LCM-LoRA (diffusers: both adapters, set_adapters, fused), then three embeddings
    in the prompt (load_textual_inversion), at guidance 1.5: each changes the result, and ours changes it as diffusers'."""
    from test_embedding import embedding_files
    folder = tmp_path_factory.mktemp("add_ons")
    style = ((style_lora, 0.7),)
    sd64 = ours_with(torch.float64, loras=style)
    expected = reference_run(references(torch.float64, loras=style), 4, 1.5)
    assert_same(sd64, ours(sd64, 4, 1.5), expected, ours(ours_with(torch.float64), 4, 1.5))
    files = embedding_files(folder, tiny_pipeline[0].text_encoder.config.hidden_size)
    ref = copy_of(references(torch.float64))
    for path, (token, _) in files.items():
        ref.load_textual_inversion(str(path), token=token)
    prompt = "a <cat-toy> in the style of watercolour, oil-style"
    sd64 = ours_with(torch.float64, embeddings=tuple((path, None) for path in files))
    expected = reference_run(ref, 4, 1.5, prompt=prompt)
    without = ours(ours_with(torch.float64), 4, 1.5, prompt=prompt)  # the tokens read as words
    assert_same(sd64, ours(sd64, 4, 1.5, prompt=prompt), expected, without)


def hires_reference(references, sampler, upscale, tiny):
    """The diffusers chain of the hires pass (tests/test_hires.py's): the first pass at 40 × 32, its latents resized
    (bilinear) or its image (Lanczos, then encoded by the second pipeline), an img2img pass with a fresh generator."""
    from PIL import Image
    steps, guidance, lcm = (4, 1.0, True) if sampler == "lcm" else (10, 7.5, False)
    run = dict(negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=guidance)
    first = references(torch.float32, False, sampler, lcm, tiny)(
        PROMPT, width=40, height=32, output_type="pil" if upscale == "lanczos" else "latent",
        generator=torch.Generator("cpu").manual_seed(SEED), **run).images
    image = (first[0].resize((56, 48), resample=Image.Resampling.LANCZOS) if upscale == "lanczos"
             else torch.nn.functional.interpolate(first, size=(6, 7), mode="bilinear"))
    return references(torch.float32, True, sampler, lcm, tiny)(
        PROMPT, image=image, strength=0.5, generator=torch.Generator("cpu").manual_seed(SEED), **run).images[0]


@pytest.mark.parametrize("sampler, upscale, tiny", [("lcm", "latent", False), ("lcm", "lanczos", False),
                                                    ("ddim", "lanczos", True), ("lcm", "lanczos", True)])
def test_the_hires_pass_with_lcm_and_the_tiny_autoencoder_matches_the_diffusers_chain(references, ours_with, sampler,
                                                                                      upscale, tiny):
    """LCM on both passes (its second truncated as from an image), and the tiny autoencoder on the Lanczos path:
    it decodes the first pass and encodes the resized image, drawing nothing. Every pixel within 2/255."""
    steps, guidance, lcm = (4, 1.0, True) if sampler == "lcm" else (10, 7.5, False)
    image = generate(ours_with(torch.float32, lcm, tiny), PROMPT, NEGATIVE, steps, guidance, SEED, 40, 32, 1, sampler,
                     hires=HiresConfig(scale=1.5, steps=steps, strength=0.5, upscale=upscale))[0]
    expected = hires_reference(references, sampler, upscale, tiny)
    assert image.size == expected.size == (56, 48)
    difference = pixels(image, expected)
    print(f"hires {sampler} {upscale}, tiny autoencoder {tiny}: largest pixel difference {difference}/255")
    assert difference <= 2


# ---- the tiny autoencoder beside each method ----

@contextlib.contextmanager
def alone(ref, steps):
    yield ref, {}


@contextlib.contextmanager
def tome(ref, steps):
    """tomesd at ratio 0.5 over two levels; guidance 7.5 makes the UNet's batch even, so random partitions on."""
    with tomesd_on(ref, ratio=0.5, max_downsample=2):
        torch.manual_seed(7)
        yield ref, dict(tome=ToMeConfig(ratio=0.5, max_downsample=2, seed=7))


TINY = {  # name → (sampler, steps, guidance, strength from an image or None, method)
    "DDIM": ("ddim", 10, 7.5, None, alone), "ToMe": ("ddim", 10, 7.5, None, tome),
    "DeepCache": ("ddim", 10, 7.5, None, deep_cache), "LCM": ("lcm", 4, 1.0, None, alone),
    "from an image": ("ddim", 10, 7.5, 0.6, alone), "LCM from an image": ("lcm", 4, 1.0, 0.6, alone)}


@pytest.mark.parametrize("name", list(TINY))
def test_the_tiny_autoencoder_beside_each_method_matches_autoencoder_tiny(references, ours_with, name):
    """diffusers with AutoencoderTiny as its VAE: latents and image in float64, 8-bit within 2/255; the image is not
    the full VAE's, and the method beside it changed the latents."""
    from minitome.pipeline import decode
    sampler, steps, guidance, strength, method = TINY[name]
    lcm = sampler == "lcm"
    sd64 = ours_with(torch.float64, lcm, tiny=True)
    ref = copy_of(references(torch.float64, strength is not None, sampler, lcm, tiny=True), sampler)
    with method(ref, steps) as (call, methods):
        expected = reference_run(ref, steps, guidance, strength, call=call)
    got = ours(sd64, steps, guidance, strength, sampler, **methods)
    image = decode(sd64, got)
    errors = relative_error(got, expected[0]), relative_error(image, expected[1])
    difference = int(((image * 255).round() - (expected[1] * 255).round()).abs().max())
    full_vae = relative_error(decode(ours_with(torch.float64, lcm), got), expected[1])
    print(f"tiny autoencoder, {name}: latents {errors[0]:.1e}, image {errors[1]:.1e}, {difference}/255 per pixel; "
          f"the full VAE's image {full_vae:.1e} away")
    assert max(errors) <= F64_BOUND and difference <= 2 and full_vae > 1e6 * F64_BOUND
    if methods:
        assert relative_error(got, ours(sd64, steps, guidance, strength, sampler)) > 1e6 * F64_BOUND


# ---- the identities, to the bit ----

IDENTITIES = {"ToMe ratio 0": dict(tome=ToMeConfig(ratio=0.0)), "ToDo factor 1": dict(todo=ToDoConfig(factor=1)),
              "DeepCache interval 1": dict(deep_cache=DeepCacheConfig(1, 1))}


@pytest.mark.parametrize("strength", [None, 0.6], ids=["text", "image"])
def test_identities_hold_to_the_bit_beside_lcm_and_the_tiny_autoencoder(ours_with, style_lora, strength):
    """LCM with its LoRA and the tiny autoencoder (its encoder from an image): each method at its identity, and a
    second LoRA at weight 0, give the latents (so the PNG) given without them."""
    sd = ours_with(torch.float32, tiny=True)
    plain = ours(sd, 4, 1.0, strength)
    for name, methods in IDENTITIES.items():
        assert torch.equal(ours(sd, 4, 1.0, strength, **methods), plain), name
    with_style = {weight: ours(ours_with(torch.float32, tiny=True, loras=((style_lora, weight),)), 4, 1.0, strength)
                  for weight in (0.0, 0.5)}
    assert torch.equal(with_style[0.0], plain) and not torch.equal(with_style[0.5], plain)
