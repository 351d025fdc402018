"""ToMe (by ratio, by threshold, with plans reused, on a schedule over t), ToDo and DeepCache together.

Every pair and the triples that make sense, across every sampler (Euler's fractional timesteps, DPM-Solver++'s
repeated ones, LCM's fresh noise after every step included), batch 1 and 3, guidance 1 and 7.5, an odd latent (9 × 7).
Three kinds of check (LCM with its LoRA and the tiny autoencoder beside each method: tests/test_lcm_compositions.py):

- where the reference packages compose on one diffusers pipeline, the same result in float64: tomesd with
  DeepCacheSDHelper, and ca-tome then DeepCacheSDHelper (ca-tome replaces `unet.forward` and samples through its
  own `pipe.call`; the helper then wraps that forward). The helper counts steps by `timesteps.index(t)`, so DDIM and
  LCM (diffusers' LCMScheduler), whose timesteps are distinct.
  tomesd and ca-tome turn random partitions off when the UNet's batch is odd; ours is told the same;
- where none composes (ToDo has no package; nothing composes with PLMS's repeated timestep), the property that
  makes a composition right: at every call each transformer block uses the plan it made itself at its last
  planning call, and makes plans on the planning calls only (or when it has none yet), with no error;
- the identities, to the bit, beside every other method: ToMe ratio 0, ToDo factor 1 and DeepCache interval 1
  are off, and a plan made at every call is no reuse.
"""
import copy
import dataclasses

import pytest
import torch

import unet.call as unet_call
import weights
from conftest import F64_BOUND, SD15_SCHEDULER, reference_scheduler, relative_error, scheduler_in_float64
from minitome import ToMeConfig
from minitome.deepcache import DeepCacheConfig
from minitome.pipeline import decode, sample_latents
from unet.call import Call
from minitome.todo import ToDoConfig
from unet.attention import BasicTransformerBlock

SETTINGS = dict(prompt="a red fox in the snow, watercolor", negative_prompt="blurry", steps=10, width=72, height=56)


def ours(sd, sampler="ddim", batch=1, guidance=7.5, spacing="leading", steps=SETTINGS["steps"], **methods):
    s = SETTINGS
    return sample_latents(sd, s["prompt"], s["negative_prompt"], steps, guidance, 1234, s["width"], s["height"],
                          batch, sampler, spacing=spacing, **methods)


def reference_latents(pipe, call, batch, guidance):
    s = SETTINGS
    latents = call(s["prompt"], negative_prompt=s["negative_prompt"], num_inference_steps=s["steps"],
                   guidance_scale=guidance, width=s["width"], height=s["height"], num_images_per_prompt=batch,
                   output_type="latent", generator=torch.Generator("cpu").manual_seed(1234)).images
    with torch.no_grad():
        image = (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    return latents, image


def scheduler(sampler: str, dtype=torch.float64):
    """diffusers' scheduler for `sampler` from SD 1.5's scheduler config (LCMScheduler for lcm, as
    `LCMScheduler.from_config(pipe.scheduler.config)` makes it), computing in float64 for a float64 run."""
    from diffusers import LCMScheduler, PNDMScheduler
    made = (LCMScheduler.from_config(PNDMScheduler.from_config(SD15_SCHEDULER).config) if sampler == "lcm"
            else reference_scheduler(sampler))
    return scheduler_in_float64(made) if dtype == torch.float64 else made


def float64_reference(pipe, sampler: str):
    """A float64 copy of the reference pipeline with `sampler`'s scheduler computing in float64."""
    pipe = copy.deepcopy(pipe).to(torch.float64)
    pipe.scheduler = scheduler(sampler)
    return pipe


@pytest.fixture(scope="module")
def sd64(tiny_pipeline):
    return weights.load(tiny_pipeline[1], dtype=torch.float64)


@pytest.fixture(scope="module")
def sd32(tiny_pipeline):
    return weights.load(tiny_pipeline[1])


def with_deep_cache(pipe, interval, branch, run):
    from DeepCache import DeepCacheSDHelper
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        return run()
    finally:
        helper.disable()


def assert_same(sd, got, expected, alone):
    image = decode(sd, got)
    errors = relative_error(got, expected[0]), relative_error(image, expected[1])
    pixels = int(((image * 255).round() - (expected[1] * 255).round()).abs().max())  # the 8-bit PNGs' difference
    print(f"latents {errors[0]:.1e}, image {errors[1]:.1e}, {pixels}/255 per pixel; composition vs one method alone "
          f"{relative_error(expected[0], alone):.1e}")
    assert max(errors) <= F64_BOUND and pixels <= 2, (errors, pixels)
    assert relative_error(expected[0], alone) > 1e6 * F64_BOUND  # the second method really changed the result


# (images, guidance): the UNet's batch is 2 and 3, one even, one odd; batch 1 and 3, guidance 1 and 7.5 each appear
BATCHES = [(1, 7.5), (3, 1.0)]


@pytest.mark.parametrize("batch, guidance", BATCHES)
@pytest.mark.parametrize("sampler, interval, branch, max_downsample", [("ddim", 3, 0, 1), ("ddim", 2, 1, 2),
                                                                       ("ddim", 3, 3, 4), ("lcm", 3, 1, 2)])
def test_tome_with_deepcache_matches_tomesd_with_deepcache_sd_helper(tiny_pipeline, sd64, batch, guidance, sampler,
                                                                     interval, branch, max_downsample):
    import tomesd
    reference = float64_reference(tiny_pipeline[0], sampler)
    tomesd.apply_patch(reference, ratio=0.5, max_downsample=max_downsample)  # use_rand on: off by itself for odd batches
    torch.manual_seed(7)  # tomesd forks torch's global generator at its first draw: the same stream as our seed 7

    expected = with_deep_cache(reference, interval, branch, lambda: reference_latents(reference, reference, batch, guidance))
    even = batch * (2 if guidance > 1 else 1) % 2 == 0
    tome = ToMeConfig(ratio=0.5, max_downsample=max_downsample, use_rand=even, seed=7)
    got = ours(sd64, sampler, batch, guidance, tome=tome, deep_cache=DeepCacheConfig(interval, branch))
    assert_same(sd64, got, expected, ours(sd64, sampler, batch, guidance, tome=tome))


@pytest.mark.parametrize("batch, guidance", BATCHES)
@pytest.mark.parametrize("sampler, threshold, cache_conf, interval, branch", [
    ("ddim", 0.3, [0, 3, 5, 8], 3, 1), ("ddim", 0.1, [0, 2, 6], 2, 0), ("lcm", 0.3, [0, 3, 5, 8], 3, 1)])
def test_ca_tome_with_deepcache_matches_ca_tome_with_deepcache_sd_helper(tiny_pipeline, sd64, batch, guidance, sampler,
                                                                         threshold, cache_conf, interval, branch):
    """ca-tome plans at its `inference_step`s (the loop index + 1) in the cache schedule and at the first call;
    ours counts calls from 0. A block DeepCache skipped on a planning call keeps its older plan in both."""
    from ca_tome import apply_CA_ToMe
    reference = float64_reference(tiny_pipeline[0], sampler)
    apply_CA_ToMe(reference, cache_conf, threshold)
    torch.manual_seed(7)
    expected = with_deep_cache(reference, interval, branch,
                               lambda: reference_latents(reference, reference.call, batch, guidance))
    even = batch * (2 if guidance > 1 else 1) % 2 == 0
    replan = tuple(sorted({0} | {step - 1 for step in cache_conf if step >= 1}))
    tome = ToMeConfig(threshold=threshold, replan_calls=replan, use_rand=even, seed=7)
    got = ours(sd64, sampler, batch, guidance, tome=tome, deep_cache=DeepCacheConfig(interval, branch))
    assert_same(sd64, got, expected, ours(sd64, sampler, batch, guidance, tome=tome))


# ---- every combination: the property ----

def two_phase(t):  # a ToMe schedule over t, each phase with its own reused plans
    return ToMeConfig(ratio=0.6, reuse=2, max_downsample=2) if t > 500 else ToMeConfig(ratio=0.3, reuse=3, max_downsample=2)


TOMES = {"ratio": ToMeConfig(ratio=0.5, max_downsample=2), "threshold": ToMeConfig(threshold=0.3, max_downsample=2),
         "reuse": ToMeConfig(ratio=0.5, reuse=2, max_downsample=2),
         "replan": ToMeConfig(threshold=0.2, replan_calls=(0, 3, 5), max_downsample=4), "schedule": two_phase}
TODO = ToDoConfig(factor=2, max_downsample=2, until=0.6)


def beside_todo(tome):
    """ToMe merging cross-attention and the MLP, not self-attention: what runs beside ToDo."""
    off_attn = lambda c: dataclasses.replace(c, merge_attn=False, merge_crossattn=True, merge_mlp=True)  # noqa: E731
    return (lambda t: off_attn(tome(t))) if callable(tome) else off_attn(tome)


COMBINATIONS = {f"{name} + DeepCache branch {b}": dict(tome=tome, deep_cache=DeepCacheConfig(3, b))
                for name, tome in TOMES.items() for b in (0, 1)}
COMBINATIONS.update({f"{name} + ToDo": dict(tome=beside_todo(tome), todo=TODO) for name, tome in TOMES.items()})
COMBINATIONS.update({f"{name} + ToDo + DeepCache": dict(tome=beside_todo(tome), todo=TODO, deep_cache=DeepCacheConfig(2, 1))
                     for name, tome in TOMES.items()})
COMBINATIONS["ToDo + DeepCache"] = dict(todo=TODO, deep_cache=DeepCacheConfig(3, 1))


def planning_calls(tome, calls_with_config: int) -> bool:
    """Whether the n-th call (from 0) made with this ToMeConfig makes new plans, from the config's own fields."""
    if tome.replan_calls is not None:
        return calls_with_config in tome.replan_calls
    return calls_with_config % tome.reuse == 0


# every sampler, each batch setting under three or more (fractional t: Euler's; PLMS's repeated warm-up call; LCM's
# guidance 1 as it runs with its LoRA, no guided pair)
RUNS = [("plms", "leading", *BATCHES[0]), ("ddim", "leading", *BATCHES[1]), ("euler", "karras", *BATCHES[0]),
        ("euler-a", "linspace", *BATCHES[1]), ("dpm++2m", "karras", *BATCHES[1]), ("dpm++2m", "trailing", *BATCHES[0]),
        ("lcm", "leading", *BATCHES[1])]


@pytest.mark.parametrize("sampler, spacing, batch, guidance", RUNS)
@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_each_block_uses_the_plan_it_made_at_its_last_planning_call(sd32, monkeypatch, sampler, spacing, batch, guidance,
                                                                      name):
    check_plan_ownership(sd32, monkeypatch, COMBINATIONS[name], sampler, spacing, batch, guidance)


def check_plan_ownership(sd32, monkeypatch, methods, sampler, spacing, batch, guidance, steps=SETTINGS["steps"]):
    unet = sd32.unet
    now = {"call": -1, "place": None, "t": None}
    made, used, configs = [], [], []  # (call, place, plan); (call, place, plan); the ToMeConfig of each call

    def count_call(module, args):
        now["call"] += 1
        now["t"] = torch.as_tensor(args[1]).flatten()[0].item()
        tome = methods.get("tome")
        configs.append(tome(now["t"]) if callable(tome) else tome)

    hooks = [unet.register_forward_pre_hook(count_call)]
    for place, block in unet.named_modules():
        if isinstance(block, BasicTransformerBlock):
            hooks.append(block.register_forward_pre_hook(lambda m, args, place=place: now.update(place=place)))
    tome_plan, plan = unet_call.tome_plan, Call.plan
    places = {block: place for place, block in unet.named_modules()}

    def recording_tome_plan(*args):
        made.append((now["call"], now["place"], result := tome_plan(*args)))
        return result

    def recording_plan(self, block, x, hw):
        assert places[block] == now["place"], (places[block], now["place"])  # the block asks for its own plan
        used.append((now["call"], places[block], result := plan(self, block, x, hw)))
        return result

    monkeypatch.setattr(unet_call, "tome_plan", recording_tome_plan)
    monkeypatch.setattr(Call, "plan", recording_plan)
    try:
        latents = ours(sd32, sampler, batch, guidance, spacing, steps, **methods)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.isfinite(latents).all() and latents.shape == (batch, 4, 7, 9)
    if "tome" not in methods:
        return
    assert used, "no block asked for a plan"
    for call, place, plan in used:  # the latest plan this very block made, at this call or before
        own = [p for c, where, p in made if where == place and c <= call]
        assert own and plan is own[-1], (call, place)
    calls_with = {}
    for call, config in enumerate(configs):  # plans are made on planning calls, or by a block that has none yet
        n = calls_with[config] = calls_with.get(config, -1) + 1
        for c, place, _ in made:
            if c == call and not planning_calls(config, n):
                assert not [1 for c2, where, _ in made if where == place and c2 < call and configs[c2] == config], \
                    f"block {place} made a plan at call {call}, between planning calls"


# ---- the identities, to the bit, beside every other method ----

IDENTITIES = {  # (with the identity, without it)
    "ToMe ratio 0 beside ToDo + DeepCache": (dict(tome=ToMeConfig(ratio=0.0, merge_attn=False, merge_mlp=True), todo=TODO,
                                                  deep_cache=DeepCacheConfig(3, 1)),
                                             dict(todo=TODO, deep_cache=DeepCacheConfig(3, 1))),
    "ToDo factor 1 beside ToMe + DeepCache": (dict(tome=TOMES["reuse"], todo=ToDoConfig(factor=1),
                                                   deep_cache=DeepCacheConfig(3, 0)),
                                              dict(tome=TOMES["reuse"], deep_cache=DeepCacheConfig(3, 0))),
    "DeepCache interval 1 beside ToMe": (dict(tome=TOMES["threshold"], deep_cache=DeepCacheConfig(1, 1)),
                                         dict(tome=TOMES["threshold"])),
    "DeepCache interval 1 beside ToDo": (dict(todo=TODO, deep_cache=DeepCacheConfig(1, 0)), dict(todo=TODO)),
    "a plan at every call beside DeepCache": (dict(tome=dataclasses.replace(TOMES["threshold"], replan_calls=tuple(range(11))),
                                                   deep_cache=DeepCacheConfig(2, 1)),
                                              dict(tome=TOMES["threshold"], deep_cache=DeepCacheConfig(2, 1))),
    "reuse 1 beside ToDo": (dict(tome=beside_todo(dataclasses.replace(TOMES["reuse"], reuse=1)), todo=TODO),
                            dict(tome=beside_todo(TOMES["ratio"]), todo=TODO)),
}


@pytest.mark.parametrize("sampler, spacing, batch, guidance", RUNS)
@pytest.mark.parametrize("name", sorted(IDENTITIES))
def test_identities_hold_to_the_bit_beside_every_method(sd32, sampler, spacing, batch, guidance, name):
    with_identity, without = IDENTITIES[name]
    assert torch.equal(ours(sd32, sampler, batch, guidance, spacing, **with_identity),
                       ours(sd32, sampler, batch, guidance, spacing, **without))


@pytest.mark.parametrize("name", ["schedule + DeepCache branch 1", "reuse + ToDo + DeepCache", "replan + DeepCache branch 0"])
def test_repeated_timesteps_count_as_calls(sd32, monkeypatch, name):
    """DPM-Solver++ with Karras σ's at 45 steps tells the UNet t = 1 twice in a row: DeepCache's whole calls and
    ToMe's planning calls are counted in calls, so each comes when its count says, and every block still uses
    its own plan."""
    from sampler import call_timesteps
    ts = call_timesteps("dpm++2m", 45, "karras")
    assert len(set(ts)) < len(ts)
    calls, whole = [], []  # every UNet call; the calls that ran the deep blocks
    counter = sd32.unet.register_forward_pre_hook(lambda module, args: calls.append(len(calls)))
    hook = sd32.unet.middle_block[0].register_forward_pre_hook(lambda module, args: whole.append(calls[-1]))
    try:
        check_plan_ownership(sd32, monkeypatch, COMBINATIONS[name], "dpm++2m", "karras", 1, 7.5, steps=45)
    finally:
        hook.remove(), counter.remove()
    interval = COMBINATIONS[name]["deep_cache"].interval
    assert len(calls) == 45 and whole == list(range(0, 45, interval))


@pytest.mark.parametrize("tome", [ToMeConfig(ratio=0.5), lambda t: ToMeConfig(ratio=0.5) if t > 500 else None,
                                  lambda t: None if t > 500 else ToMeConfig(ratio=0.5)])  # late in the run, too
def test_tome_merging_self_attention_and_todo_are_refused_before_any_unet_call(sd32, tome):
    calls = []
    hook = sd32.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with pytest.raises(ValueError, match="^ToMe's self-attention merging .* and ToDo .* both change self-attention"):
            ours(sd32, tome=tome, todo=TODO)
    finally:
        hook.remove()
    assert calls == []


@pytest.mark.parametrize("arguments, error, message", [
    (dict(tome=0.5), TypeError, r"^tome must be a ToMeConfig or None, got 0.5: e.g. ToMeConfig\(ratio=0.5\)"),
    (dict(todo=2), TypeError, r"^todo must be a ToDoConfig or None, got 2"),
    (dict(deep_cache=3), TypeError, r"^deep_cache must be a DeepCacheConfig or None, got 3"),
    (dict(seed=-1), ValueError, r"^seed must be a whole number >= 0, got -1"),
    (dict(seed=2 ** 64), ValueError, r"^seed must be below 2\^64"),
    (dict(seed=1.5), ValueError, r"^seed must be a whole number"),
    (dict(batch=0), ValueError, r"^batch must be a whole number >= 1, got 0"),
    (dict(init_latents=torch.zeros(2, 4, 4, 4)), ValueError, r"^init_latents must be \(1 or batch = 1, 4, height, width\)"),
    (dict(init_latents=torch.full((1, 4, 4, 4), float("nan"))), ValueError, r"^init_latents holds values that are not finite"),
])
def test_what_a_library_call_cannot_run_is_refused_before_any_unet_call(sd32, arguments, error, message):
    """A researcher's call with a number for a config, a seed torch cannot take, no image, or a latent of another
    shape or not finite: one clear error naming the argument, before the first UNet call."""
    calls = []
    hook = sd32.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    s = {**SETTINGS, "seed": 1234, "batch": 1, **{k: v for k, v in arguments.items() if k in ("seed", "batch")}}
    methods = {k: v for k, v in arguments.items() if k not in ("seed", "batch")}
    try:
        with pytest.raises(error, match=message):
            sample_latents(sd32, s["prompt"], s["negative_prompt"], s["steps"], 7.5, s["seed"], 32, 32, s["batch"],
                           "ddim", **methods)
    finally:
        hook.remove()
    assert calls == []


def test_a_run_keeps_its_plans_and_deep_features_for_one_latent_shape(sd32):
    """A Run handed latents of another shape (a misuse: the pipeline makes one per run) starts its kept state
    afresh instead of applying plans made for another grid or batch: the same as a new Run."""
    from minitome.run import Run
    torch.manual_seed(0)
    context, t = torch.randn(1, 77, sd32.unet.config.context_dim), torch.tensor([500])
    a, b = torch.randn(1, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for methods in (dict(tome=ToMeConfig(ratio=0.5, reuse=3, use_rand=False)), dict(deep_cache=DeepCacheConfig(interval=3))):
        run = Run(**methods)
        run.call(sd32.unet, a, t, context)
        again = run.call(sd32.unet, b, t.expand(2), context.expand(2, -1, -1))
        fresh = Run(**methods).call(sd32.unet, b, t.expand(2), context.expand(2, -1, -1))
        assert torch.equal(again, fresh), methods
