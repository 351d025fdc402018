"""Properties of ToDo, CA-ToMe's threshold and plan reuse, and DeepCache: shapes, the identity where each one is
off (factor 1, threshold above every similarity, interval 1), and which calls plan or recompute."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import weights
from minitome.deepcache import DeepCacheConfig
from minitome.run import Run
from minitome.todo import ToDoConfig, downsample_kv
from minitome.tome import BlockSettings, ToMeConfig, match, partition


@pytest.fixture(scope="module")
def unet(tiny_unet_folder):
    return weights.load_unet(tiny_unet_folder[1], dtype=torch.float64)


def inputs(hw=(16, 16), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, *hw, generator=g, dtype=torch.float64), torch.tensor([700] * batch),
            torch.randn(batch, 77, 32, generator=g, dtype=torch.float64))


# ---- ToDo ----

@settings(max_examples=100, deadline=None)
@given(h=st.integers(1, 20), w=st.integers(1, 20), factor=st.integers(1, 5), C=st.integers(1, 4))
def test_todo_downsamples_the_grid_to_its_floor_at_least_one_token(h, w, factor, C):
    tokens = torch.randn(2, h * w, C)
    settings = BlockSettings((h, w), todo=ToDoConfig(factor))
    kv = downsample_kv(tokens, (h, w), settings)
    if factor == 1:
        assert kv is None
        return
    assert kv.shape == (2, max(1, h // factor) * max(1, w // factor), C)
    # nearest-exact picks existing tokens: every key/value input is one of the tokens, unchanged
    assert all((tokens[0] == row).all(-1).any() for row in kv[0])


def test_todo_leaves_deeper_blocks_alone():
    tokens = torch.randn(1, 32 * 32, 8)
    assert downsample_kv(tokens, (32, 32), BlockSettings((64, 64), todo=ToDoConfig(2, max_downsample=1))) is None
    assert downsample_kv(tokens, (32, 32), BlockSettings((64, 64), todo=ToDoConfig(2, max_downsample=2))).shape == (1, 256, 8)


def test_todo_factor_1_is_exactly_sd(unet):
    x, t, context = inputs()
    with torch.no_grad():
        assert torch.equal(unet(x, t, context, todo=ToDoConfig(factor=1)), unet(x, t, context))


def test_todo_and_tome_on_self_attention_together_are_refused(unet):
    x, t, context = inputs()
    with pytest.raises(ValueError, match="use one of them"):
        unet(x, t, context, tome=ToMeConfig(), todo=ToDoConfig())


@pytest.mark.parametrize("kwargs, message", [(dict(factor=0), "factor must be a whole number >= 1"),
                                             (dict(max_downsample=3), "max_downsample must be one of"),
                                             (dict(until=0), r"until must be a share of the UNet calls in \(0, 1\]"),
                                             (dict(until=1.5), "until must be")])
def test_todo_config_is_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ToDoConfig(**kwargs)


def test_todo_until_covers_the_first_calls(tiny_pipeline, monkeypatch):
    """until = 0.5 over a 10-step PLMS run (11 UNet calls): ToDo on the first round(5.5) = 6 calls."""
    from minitome.pipeline import generate
    sd = weights.load(tiny_pipeline[1])
    seen, begin = [], Run.open

    def recording_open(self, t, latent):
        call = begin(self, t, latent)
        seen.append(call.settings.todo)
        return call
    monkeypatch.setattr(Run, "open", recording_open)
    generate(sd, "a cat", steps=10, width=32, height=32, todo=ToDoConfig(until=0.5))
    assert [todo is not None for todo in seen] == [True] * 6 + [False] * 5


# ---- CA-ToMe: threshold, and plans reused between calls ----

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(-1, 1), B=st.integers(1, 3))
def test_threshold_merges_as_many_as_the_most_mergeable_image(seed, threshold, B):
    x = torch.randn(B, 64, 6, generator=torch.Generator().manual_seed(seed))
    src, dst = partition(8, 8, 2, 2)
    slot = match(x, src, dst, threshold=threshold)
    unit = x / x.norm(dim=-1, keepdim=True)
    best = (unit[:, src] @ unit[:, dst].transpose(1, 2)).max(-1).values
    r = int((best >= threshold).sum(-1).max())
    assert int(slot.max()) + 1 == 64 - r  # tokens left
    assert torch.equal(slot, match(x, src, dst, r))  # the same as merging that many by count


def test_threshold_above_every_similarity_changes_nothing(unet):
    x, t, context = inputs()
    with torch.no_grad():
        plain = unet(x, t, context)
        torch.testing.assert_close(unet(x, t, context, tome=ToMeConfig(threshold=0.999999)), plain, rtol=1e-12, atol=1e-12)
        assert torch.equal(unet(x, t, context, tome=ToMeConfig(threshold=1.0)), plain)  # no plan at all
        assert not torch.allclose(unet(x, t, context, tome=ToMeConfig(threshold=-1.0)), plain)


@pytest.mark.parametrize("config, planning", [(ToMeConfig(reuse=3), [0, 3, 6]), (ToMeConfig(reuse=1), list(range(8))),
                                              (ToMeConfig(replan_calls=(0, 2, 7)), [0, 2, 7])])
def test_plans_are_made_on_the_planning_calls_and_reused_between(config, planning):
    run, x = Run(tome=config), torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(0))
    latent, block = torch.zeros(2, 4, 8, 8), object()  # plans are kept by block
    made, states = [], []
    for i in range(8):
        call = run.open(500, latent)
        before = call.settings.generator.get_state()
        made.append(call.plan(block, x + i, (8, 8)))
        states.append(not torch.equal(before, call.settings.generator.get_state()))  # did this call draw a partition?
    assert [i for i, drew in enumerate(states) if drew] == planning
    for i in range(8):
        last = max(p for p in planning if p <= i)
        assert made[i] is made[last]  # between planning calls, the very plan made last


@pytest.mark.parametrize("kwargs, message", [(dict(threshold=1.5), r"threshold must be a cosine similarity in \[-1, 1\]"),
                                             (dict(reuse=0), "reuse must be a whole number >= 1"),
                                             (dict(replan_calls=(2, 3)), "must be a tuple of UNet calls that includes 0")])
def test_ca_tome_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ToMeConfig(**kwargs)


# ---- DeepCache ----

def count_runs(unet, blocks):
    """How often each of the given blocks ran (its first layer: forward runs a block layer by layer), kept
    current by forward hooks."""
    counts = {id(b[0]): 0 for b in blocks}
    for b in blocks:
        b[0].register_forward_hook(lambda m, a, o: counts.__setitem__(id(m), counts[id(m)] + 1))
    return counts


def test_deepcache_interval_1_is_exactly_sd(unet):
    x, t, context = inputs()
    run = Run(deep_cache=DeepCacheConfig(interval=1))
    with torch.no_grad():
        assert torch.equal(run.call(unet, x, t, context), unet(x, t, context))
        assert torch.equal(run.call(unet, x, t, context), unet(x, t, context))


@pytest.mark.parametrize("interval, branch", [(3, 0), (2, 4), (4, 10)])
def test_deepcache_recomputes_the_deep_part_every_interval_calls_and_the_shallow_branch_always(tiny_unet_folder, interval, branch):
    unet = weights.load_unet(tiny_unet_folder[1], dtype=torch.float64)
    runs = count_runs(unet, list(unet.input_blocks) + [unet.middle_block] + list(unet.output_blocks))
    run, (x, t, context) = Run(deep_cache=DeepCacheConfig(interval, branch)), inputs()
    whole = []
    with torch.no_grad():
        for call in range(7):
            before = dict(runs)
            run.call(unet, x + 0.01 * call, t, context)
            ran = [runs[k] - before[k] for k in runs]
            whole.append(ran[len(unet.input_blocks)] == 1)  # the middle block ran
            shallow_in, shallow_out = ran[:branch + 1], ran[-(branch + 1):]
            assert shallow_in == [1] * (branch + 1) and shallow_out == [1] * (branch + 1)
            if not whole[-1]:
                assert sum(ran) == 2 * (branch + 1)  # nothing else ran
    assert [i for i, w in enumerate(whole) if w] == list(range(0, 7, interval))


def test_deepcache_starts_whole_when_the_batch_changes(unet):
    run = Run(deep_cache=DeepCacheConfig(interval=5))
    with torch.no_grad():
        run.call(unet, *inputs(batch=2))
        x, t, context = inputs(batch=1)
        assert torch.equal(run.call(unet, x, t, context), unet(x, t, context))


@pytest.mark.parametrize("kwargs, message", [(dict(interval=0), "interval must be a whole number >= 1"),
                                             (dict(branch=-1), "branch must be a whole number >= 0")])
def test_deepcache_config_is_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepCacheConfig(**kwargs)


# ---- the command line ----

@pytest.mark.parametrize("flags, expected", [
    (["--todo-factor", "2", "--todo-until", "0.5"], 'ToDo: "factor 2, max_downsample 1, until 0.5"'),
    (["--tome-threshold", "0.7", "--tome-reuse", "3"], 'ToMe: "threshold 0.7, max_downsample 1, sx 2, sy 2, use_rand True, '
                                                      'merge attn, seed 0, reuse 3"'),
    (["--deepcache-interval", "3", "--deepcache-branch", "2"], 'DeepCache: "interval 3, branch 2"'),
    (["--deepcache-interval", "3", "--todo-factor", "2"], 'ToDo: "factor 2, max_downsample 1, until 1", DeepCache: "interval 3'),
    (["--tome-ratio", "0.5", "--tome-reuse", "2", "--tome-max-downsample", "2", "--deepcache-interval", "3",
      "--deepcache-branch", "1"], 'reuse 2", DeepCache: "interval 3, branch 1"'),  # kept plans beside the shallow branch
])
def test_flags_run_and_are_written_into_the_png(single_file, tmp_path, flags, expected):
    from PIL import Image
    from conftest import sample_main as main
    out = tmp_path / "x.png"
    assert main(["--weights", str(single_file), "--prompt", "a cat", "--steps", "10", "--width", "16", "--height", "16",
                 "--seed", "1", "--out", str(out), *flags]) == 0
    assert expected in Image.open(out).text["parameters"]


@pytest.mark.parametrize("flags, message", [
    (["--todo-until", "0.5"], "--todo-until needs --todo-factor"),
    (["--todo-factor", "0"], "--todo-factor must be a whole number >= 1"),
    (["--todo-factor", "2", "--todo-until", "0"], "--todo-until must be a share of the UNet calls"),
    (["--tome-reuse", "3"], "--tome-reuse needs --tome-ratio or --tome-threshold"),
    (["--tome-ratio", "0.5", "--tome-threshold", "0.7"], "give one of them"),
    (["--tome-threshold", "2"], "--tome-threshold must be a cosine similarity"),
    (["--tome-ratio", "0.5", "--tome-reuse", "0"], "--tome-reuse must be a whole number >= 1"),
    (["--tome-ratio", "0.5", "--todo-factor", "2"], "use one of them"),
    (["--deepcache-branch", "2"], "--deepcache-branch needs --deepcache-interval"),
    (["--deepcache-interval", "0"], "--deepcache-interval must be a whole number >= 1"),
    (["--deepcache-interval", "3", "--deepcache-branch", "11"], "--deepcache-branch must be at most 10 for this UNet"),
])
def test_bad_flags_are_one_line(single_file, tmp_path, capsys, flags, message):
    import re
    from conftest import sample_main as main
    assert main(["--weights", str(single_file), "--prompt", "a cat", "--steps", "10", "--width", "16", "--height", "16",
                 "--out", str(tmp_path / "o" / "x.png"), *flags]) == 2
    last = capsys.readouterr().err.strip().split("\n")[-1]
    assert last.startswith("minitome.sample: error: ") and re.search(message, last), last
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
