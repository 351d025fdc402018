"""ToMe's successors against references minitome did not write: DeepCache against the `DeepCache` package's
DeepCacheSDHelper, CA-ToMe against the `ca-tome` package, both on a diffusers StableDiffusionPipeline with the
tiny random weights; ToDo against a reference written here from the paper on diffusers' attention-processor API
(no package ships it). End to end in float64 (the final latents and the decoded image before rounding), bound
F64_BOUND, and the UNet's output for ToDo.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import weights
from conftest import F64_BOUND, float64_pipeline, relative_error
from minitome import ToMeConfig
from minitome.pipeline import decode, sample_latents
from minitome.todo import ToDoConfig
from minitome.deepcache import DeepCacheConfig

SETTINGS = dict(prompt="a red fox in the snow, watercolor", negative_prompt="blurry", steps=10, guidance=7.5,
                seed=1234, width=64, height=48)


def reference_latents(pipe, run=None):
    """The pipeline's final latents and decoded float image; `run` calls the pipeline (default: pipe(...))."""
    s = SETTINGS
    call = run or pipe
    latents = call(s["prompt"], negative_prompt=s["negative_prompt"], num_inference_steps=s["steps"],
                   guidance_scale=s["guidance"], width=s["width"], height=s["height"], output_type="latent",
                   generator=torch.Generator("cpu").manual_seed(s["seed"])).images
    with torch.no_grad():
        image = (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    return latents, image


def ours(folder, sampler: str, **accelerations):
    sd = weights.load(folder, dtype=torch.float64)
    s = SETTINGS
    latents = sample_latents(sd, s["prompt"], s["negative_prompt"], s["steps"], s["guidance"], s["seed"], s["width"],
                             s["height"], sampler=sampler, **accelerations)
    return latents, decode(sd, latents)


def assert_same(got, expected, plain):
    errors = relative_error(got[0], expected[0]), relative_error(got[1], expected[1])
    print(f"latents {errors[0]:.1e}, image {errors[1]:.1e}, change from unaccelerated {relative_error(expected[0], plain[0]):.2e}")
    assert max(errors) <= F64_BOUND, errors
    assert relative_error(expected[0], plain[0]) > 1e6 * F64_BOUND  # the method really changed the result


@pytest.fixture(scope="module")
def plain(tiny_pipeline):
    """Our unaccelerated float64 run per sampler, to show each method changes the result."""
    return {sampler: ours(tiny_pipeline[1], sampler) for sampler in ("plms", "ddim")}


# ---- DeepCache ----

@pytest.mark.parametrize("sampler, interval, branch", [("ddim", 2, 0), ("ddim", 3, 1), ("ddim", 5, 3), ("ddim", 3, 5),
                                                       ("plms", 3, 0), ("plms", 4, 2)])
def test_deepcache_matches_deepcache_sd_helper(tiny_pipeline, plain, sampler, interval, branch):
    """DeepCacheSDHelper counts calls by `scheduler.timesteps.index(t)`; PNDM repeats its second timestep, so with
    PLMS its count agrees with ours (UNet calls) only when the interval is 3 or more: both skip calls 1 and 2."""
    from DeepCache import DeepCacheSDHelper
    pipe, folder = tiny_pipeline
    reference = float64_pipeline(pipe, sampler)
    helper = DeepCacheSDHelper(pipe=reference)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        expected = reference_latents(reference)
    finally:
        helper.disable()
    assert_same(ours(folder, sampler, deep_cache=DeepCacheConfig(interval, branch)), expected, plain[sampler])


# ---- CA-ToMe ----

@pytest.mark.parametrize("threshold, cache_conf", [(0.3, [0, 3, 5, 8]), (0.1, [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
                                                   (0.5, [0, 6])])
def test_ca_tome_matches_ca_tome(tiny_pipeline, plain, threshold, cache_conf):
    """ca-tome recomputes a block's plan when its `inference_step` (the loop index + 1: PNDM's timesteps list holds
    one entry per UNet call) is in the cache schedule, and at the first call; our replan_calls count calls from 0.
    Its random partitions draw from a generator forked from torch's global one at the first call: seeding the
    global generator with our ToMe seed gives both the same draws."""
    from ca_tome import apply_CA_ToMe
    pipe, folder = tiny_pipeline
    reference = float64_pipeline(pipe, "plms")
    apply_CA_ToMe(reference, cache_conf, threshold)
    torch.manual_seed(7)
    expected = reference_latents(reference, run=reference.call)
    replan = tuple(sorted({0} | {step - 1 for step in cache_conf if step >= 1}))
    got = ours(folder, "plms", tome=ToMeConfig(threshold=threshold, replan_calls=replan, seed=7))
    assert_same(got, expected, plain["plms"])


# ---- ToDo: the reference, from the paper (arXiv 2402.13573, §3), on diffusers' attention-processor API ----

class DownsampledKeysValues:
    """Self-attention whose keys and values come from the tokens downsampled on their 2-D grid.

    ImprovedTokenMerge's choices, followed here: nearest-exact interpolation; a block is downsampled when its
    level ⌈√(H·W // N)⌉ is at most max_downsample, by `factor` at every such level; the grid's new size is
    ⌊h / factor⌋ × ⌊w / factor⌋. Where it differs: ImprovedTokenMerge takes a level's grid as ⌊H / level⌋,
    which fails on odd latents below the first level (the tokens lie on ⌈H / level⌉); here the true grid. It
    turns ToDo off once t / 1000 falls to its threshold; the test gives ours the same calls as `until`.
    """

    def __init__(self, factor: int, max_downsample: int, state: dict):
        self.factor, self.max_downsample, self.state = factor, max_downsample, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        B, N, C = hidden_states.shape
        H, W = self.state["latent"]
        level = math.ceil(math.sqrt(H * W // N))
        context = hidden_states
        if self.state["on"] and level <= self.max_downsample and self.factor > 1:
            h, w = H, W
            for _ in range(int(math.log2(level))):
                h, w = (h + 1) // 2, (w + 1) // 2
            grid = hidden_states.transpose(1, 2).reshape(B, C, h, w)
            small = F.interpolate(grid, size=(max(1, h // self.factor), max(1, w // self.factor)), mode="nearest-exact")
            context = small.flatten(2).transpose(1, 2)
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return attn.to_out[1](attn.to_out[0](out))


def with_todo(unet, factor: int, max_downsample: int, threshold: float = 0.0) -> dict:
    """Install the reference on every self-attention (attn1) of a diffusers UNet; returns its state, which a
    forward pre-hook keeps current: the latent's size, and whether t / 1000 is above the threshold."""
    state = {"latent": None, "on": True}

    def hook(module, args, kwargs):
        sample, timestep = args[0], args[1]
        state["latent"] = tuple(sample.shape[-2:])
        state["on"] = float(torch.as_tensor(timestep).flatten()[0]) / 1000 > threshold

    unet.register_forward_pre_hook(hook, with_kwargs=True)
    for name, module in unet.named_modules():
        if name.endswith("attn1"):
            module.set_processor(DownsampledKeysValues(factor, max_downsample, state))
    return state


@pytest.mark.parametrize("hw", [(16, 16), (13, 21), (9, 7)])
@pytest.mark.parametrize("factor, max_downsample", [(2, 1), (3, 1), (2, 2)])
def test_todo_unet_matches_the_reference(tiny_unet_folder, hw, factor, max_downsample):
    reference, folder = tiny_unet_folder
    reference = copy.deepcopy(reference).double()
    with_todo(reference, factor, max_downsample)
    unet = weights.load_unet(folder, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x, context = torch.randn(2, 4, *hw, generator=g, dtype=torch.float64), torch.randn(2, 77, 32, generator=g, dtype=torch.float64)
    t = torch.tensor([999, 21])
    with torch.no_grad():
        expected, got = reference(x, t, context).sample, unet(x, t, context, todo=ToDoConfig(factor, max_downsample))
        unchanged = unet(x, t, context)
    assert relative_error(got, expected) <= F64_BOUND
    assert relative_error(unchanged, expected) > 1e6 * F64_BOUND


@pytest.mark.parametrize("threshold", [0.0, 0.45])
def test_todo_end_to_end_matches_the_reference(tiny_pipeline, plain, threshold):
    """ImprovedTokenMerge stops once t / 1000 <= its threshold; t falls call by call, so that is the first k calls,
    and ours gets until = k / calls (PLMS: 10 steps, 11 calls, at t = 901, 801, 801, 701, …, 1)."""
    from sampler import call_timesteps, unet_calls
    pipe, folder = tiny_pipeline
    reference = float64_pipeline(pipe, "plms")
    with_todo(reference.unet, 2, 1, threshold)
    expected = reference_latents(reference)
    calls = call_timesteps("plms", SETTINGS["steps"])
    k = sum(t / 1000 > threshold for t in calls)
    assert len(calls) == unet_calls("plms", SETTINGS["steps"]) and 0 < k <= len(calls)
    got = ours(folder, "plms", todo=ToDoConfig(2, 1, until=k / len(calls)))
    assert_same(got, expected, plain["plms"])
