"""Property tests of every ToMe invariant (minitome/tome.py), over random grids, cells, ratios, batches, seeds."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from minitome.lab.partitions import AblationToMe, paper_partition
from minitome.tome import (IDENTITY, BlockSettings, ToMeConfig, downsample_level, match, partition,
                           tome_plan)

grids = st.tuples(st.integers(1, 12), st.integers(1, 12))
cells = st.tuples(st.integers(1, 4), st.integers(1, 4))
seeds = st.integers(0, 2**31 - 1)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@settings(max_examples=200, deadline=None)
@given(grid=grids, cell=cells, use_rand=st.booleans(), seed=seeds)
def test_partition_covers_each_token_once_with_one_dst_per_full_cell(grid, cell, use_rand, seed):
    (h, w), (sx, sy) = grid, cell
    parts = partition(h, w, sx, sy, gen(seed) if use_rand else None)
    if h < sy or w < sx:
        assert parts is None
        return
    src, dst = parts
    everything = torch.cat([src, dst]).sort().values
    assert torch.equal(everything, torch.arange(h * w))  # disjoint, and together every token
    rows, cols = dst // w, dst % w
    assert (rows < (h // sy) * sy).all() and (cols < (w // sx) * sx).all()  # leftovers are never dst
    cell_ids = (rows // sy) * (w // sx) + cols // sx
    assert torch.equal(cell_ids.sort().values, torch.arange((h // sy) * (w // sx)))  # exactly one per full cell
    if not use_rand:
        assert ((rows % sy == 0) & (cols % sx == 0)).all()  # top-left of its cell


@settings(max_examples=50, deadline=None)
@given(grid=grids, cell=cells, seed=seeds)
def test_random_partitions_draw_from_their_own_generator_only(grid, cell, seed):
    """Turning ToMe on never changes an image's noise: a partition's draw leaves torch's global generator as it was."""
    before = torch.random.get_rng_state()
    for kind in ("cells", "random"):
        paper_partition(*grid, *cell, gen(seed), kind)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_every_position_in_a_cell_can_be_the_dst():
    """The random dst is drawn from all sy·sx positions of a cell (here a 3 × 2 cell: six)."""
    drawn = {partition(2, 3, 3, 2, gen(seed))[1].item() for seed in range(200)}
    assert drawn == set(range(6))


def group_means(x, slot):
    """The expected unmerge(merge(x)), computed the slow way: each position gets its group's mean."""
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        for s in slot[b].unique():
            members = slot[b] == s
            out[b, members] = x[b, members].double().mean(0).to(x.dtype)
    return out


@st.composite
def blocks(draw):
    h, w = draw(grids)
    sx, sy = draw(cells)
    top = 1 - 1 / (sx * sy)
    ratio = draw(st.floats(0, top))
    B, C = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    x = torch.randn(B, h * w, C, generator=gen(draw(seeds)))
    cfg = ToMeConfig(ratio=ratio, sx=sx, sy=sy, use_rand=draw(st.booleans()), max_downsample=1)
    return x, (h, w), cfg, draw(seeds)


@settings(max_examples=200, deadline=None)
@given(block=blocks())
def test_merge_unmerge_invariants(block):
    x, (h, w), cfg, seed = block
    B, N, C = x.shape
    plan = tome_plan(x, (h, w), BlockSettings((h, w), cfg, gen(seed)))
    parts = partition(h, w, cfg.sx, cfg.sy, gen(seed) if cfg.use_rand else None)
    r = int(N * cfg.ratio)
    if r <= 0 or parts is None:
        assert plan is IDENTITY
        assert plan.merge_attn(x) is x and plan.unmerge_attn(x) is x
        return
    src, dst = parts
    r = min(r, src.numel())
    merged = plan.merge_attn(x)
    assert merged.shape == (B, N - r, C)
    # the partition is the one drawn from this seed, and the same for every element of the batch
    assert torch.equal(plan.slot[:, dst], (torch.arange(dst.numel()) + src.numel() - r).expand(B, -1))
    restored = plan.unmerge_attn(merged)
    torch.testing.assert_close(restored, group_means(x, plan.slot), rtol=1e-5, atol=1e-6)
    kept = plan.slot < src.numel() - r  # kept src are alone in their slot: they come back exactly
    assert torch.equal(restored[kept], x[kept])
    assert (kept.sum(1) == src.numel() - r).all()
    y = torch.randn(B, N - r, C, generator=gen(seed + 1))
    torch.testing.assert_close(plan.merge_attn(plan.unmerge_attn(y)), y, rtol=1e-6, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(block=blocks())
def test_matching_merges_the_r_most_similar_src_into_their_best_dst(block):
    x, (h, w), cfg, seed = block
    parts = partition(h, w, cfg.sx, cfg.sy, None)
    if parts is None:
        return
    src, dst = parts
    r = min(int(x.shape[1] * cfg.ratio), src.numel())
    slot = match(x, src, dst, r)
    unit = x / x.norm(dim=-1, keepdim=True)
    scores = unit[:, src] @ unit[:, dst].transpose(1, 2)
    best = scores.max(-1).values  # (B, num_src)
    kept_slots = src.numel() - r
    for b in range(x.shape[0]):
        is_merged = slot[b, src] >= kept_slots
        assert int(is_merged.sum()) == r
        if 0 < r < src.numel():  # every merged src is at least as similar as every kept one
            assert best[b][is_merged].min() >= best[b][~is_merged].max()
        dst_of = slot[b, src][is_merged] - kept_slots  # which dst each merged src went to
        chosen = scores[b][is_merged].gather(1, dst_of[:, None]).squeeze(1)
        assert torch.equal(chosen, best[b][is_merged])  # its most similar dst


@settings(max_examples=50, deadline=None)
@given(block=blocks())
def test_merging_equal_tokens_returns_them_unchanged(block):
    x, hw, cfg, seed = block
    same = x[:, :1].expand_as(x).contiguous()
    plan = tome_plan(same, hw, BlockSettings(hw, cfg, gen(seed)))
    torch.testing.assert_close(plan.unmerge_attn(plan.merge_attn(same)), same, rtol=1e-6, atol=1e-6)


def test_merge_is_the_mean_of_dst_and_its_src_by_hand():
    """A 2×2 grid, one cell, dst top-left (token 0); ratio 0.5 → r = 2 of the 3 src merge."""
    x = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.2]]])  # tokens 1 and 3 point near token 0
    plan = tome_plan(x, (2, 2), BlockSettings((2, 2), ToMeConfig(ratio=0.5, use_rand=False)))
    merged = plan.merge_attn(x)
    expected_dst = (x[0, 0] + x[0, 1] + x[0, 3]) / 3
    torch.testing.assert_close(merged, torch.stack([x[0, 2], expected_dst])[None])
    torch.testing.assert_close(plan.unmerge_attn(merged)[0], torch.stack([expected_dst, expected_dst, x[0, 2], expected_dst]))


@settings(max_examples=100, deadline=None)
@given(block=blocks(), B=st.integers(1, 3))
def test_rand_per_image_gives_image_b_the_b_th_partition_drawn(block, B):
    x, hw, cfg, seed = block
    x = torch.randn(B, x.shape[1], x.shape[2], generator=gen(seed))
    cfg = AblationToMe(ratio=cfg.ratio, sx=cfg.sx, sy=cfg.sy, use_rand=True, rand_per_image=True)
    plan = tome_plan(x, hw, BlockSettings(hw, cfg, gen(seed)))
    if plan is IDENTITY:
        return
    draws = gen(seed)
    for b in range(B):  # each image alone, with the next partition from the same generator
        src, dst = partition(*hw, cfg.sx, cfg.sy, draws)
        alone = match(x[b:b + 1], src, dst, x.shape[1] - plan.tokens_left)
        assert torch.equal(plan.slot[b:b + 1], alone)


def test_rand_per_image_draws_differ_within_the_batch_and_are_shared_without_it():
    x = torch.randn(1, 64 * 64, 8, generator=gen(0)).expand(2, -1, -1)  # two identical images
    for per_image, same in ((False, True), (True, False)):
        cfg = AblationToMe(ratio=0.5, rand_per_image=per_image)
        slot = tome_plan(x, (64, 64), BlockSettings((64, 64), cfg, gen(0))).slot
        assert torch.equal(slot[0], slot[1]) == same
    cfg = AblationToMe(ratio=0.5, use_rand=False, rand_per_image=True)  # no randomness: nothing to draw per image
    slot = tome_plan(x, (64, 64), BlockSettings((64, 64), cfg, None)).slot
    assert torch.equal(slot[0], slot[1])


@settings(max_examples=60, deadline=None)
@given(block=blocks(), choice=st.sampled_from(["random", "alternating"]))
def test_plans_match_on_the_papers_other_partitions(block, choice):
    x, hw, cfg, seed = block
    cfg = AblationToMe(ratio=min(cfg.ratio, 0.5), use_rand=True, partition=choice)
    plan = tome_plan(x, hw, BlockSettings(hw, cfg, gen(seed)))
    src, dst = paper_partition(*hw, generator=gen(seed), kind=choice)
    r = min(int(x.shape[1] * cfg.ratio), src.numel())
    if r == 0:
        assert plan is IDENTITY
        return
    assert plan.tokens_left == x.shape[1] - r and torch.equal(plan.slot, match(x, src, dst, r))


def test_random_partition_needs_use_rand_and_unknown_partitions_are_errors():
    with pytest.raises(ValueError, match="needs use_rand=True"):
        AblationToMe(partition="random", use_rand=False)
    with pytest.raises(ValueError, match="partition must be one of cells, random, alternating"):
        AblationToMe(partition="checkerboard")


@pytest.mark.parametrize("kind", ["cells", "random", "alternating"])
@pytest.mark.parametrize("h, w", [(16, 16), (7, 9)])
def test_every_partition_covers_every_token_once(kind, h, w):
    for generator in ([gen(0), None] if kind == "cells" else [gen(0)]):
        src, dst = paper_partition(h, w, 2, 2, generator, kind)
        assert torch.equal(torch.cat([src, dst]).sort().values, torch.arange(h * w))
        if kind in ("cells", "random"):  # as many dst as full 2 × 2 cells
            assert dst.numel() == (h // 2) * (w // 2)
        if kind == "alternating":
            assert dst.tolist() == list(range(0, h * w, 2))


def test_the_unet_geometry_is_the_published_one():
    """SD 1.5's 16 transformer blocks at a 64×64 latent (512²): 5 at 64², 5 at 32², 5 at 16², 1 at 8², with the
    widths 320, 640, 1280, 1280; the order is the way down, the middle, the way up."""
    from unet import UNetConfig
    grids = UNetConfig().transformer_grids((64, 64))
    assert [(h, c) for h, w, c in grids] == [(64, 320)] * 2 + [(32, 640)] * 2 + [(16, 1280)] * 2 + [(8, 1280)] + \
        [(16, 1280)] * 3 + [(32, 640)] * 3 + [(64, 320)] * 3
    assert all(h == w for h, w, _ in grids)
    assert [h for h, _, _ in UNetConfig().transformer_grids((65, 105))][:7] == [65, 65, 33, 33, 17, 17, 9]


@pytest.mark.parametrize("max_downsample, applied", [(1, 5), (2, 10), (4, 15), (8, 16)])
def test_plan_applies_to_5_10_15_16_of_the_16_blocks_at_64x64(max_downsample, applied):
    # SD 1.5's 16 transformer blocks at a 64×64 latent: 5 at 64², 5 at 32², 5 at 16², 1 at 8²
    grids = [64] * 5 + [32] * 5 + [16] * 5 + [8]
    args = BlockSettings((64, 64), ToMeConfig(ratio=0.5, max_downsample=max_downsample), gen(0))
    plans = [tome_plan(torch.randn(2, s * s, 8), (s, s), args) for s in grids]
    assert sum(p is not IDENTITY for p in plans) == applied


def level_grids(H, W):
    """The (h, w) of the UNet's four levels: each stride-2 conv gives ⌈h/2⌉ × ⌈w/2⌉."""
    grids = [(H, W)]
    for _ in range(3):
        h, w = grids[-1]
        grids.append(((h + 1) // 2, (w + 1) // 2))
    return grids


@settings(max_examples=100, deadline=None)
@given(H=st.integers(1, 40).map(lambda k: 8 * k), W=st.integers(1, 40).map(lambda k: 8 * k))
def test_downsample_level_is_the_level_factor_for_latents_of_multiples_of_8(H, W):
    assert [downsample_level((H, W), h * w) for h, w in level_grids(H, W)] == [1, 2, 4, 8]


@pytest.mark.parametrize("H, W", [(65, 105), (33, 47), (13, 21), (9, 9), (8, 8)])
def test_downsample_level_classifies_odd_latents_like_the_level_factor(H, W):
    # the formula need not give the factor itself (13×21: 1, 2, 4, 7), but each level must fall on
    # the right side of every allowed max_downsample
    levels = [downsample_level((H, W), h * w) for h, w in level_grids(H, W)]
    for max_downsample in (1, 2, 4, 8):
        assert [level <= max_downsample for level in levels] == [f <= max_downsample for f in (1, 2, 4, 8)]


def test_tiny_latent_misclassified_level_has_no_full_cell():
    # tomesd's formula puts the 1×1 bottom level of a 3×5 latent at 4, not 8; that grid has no
    # single token (r = int(1 · ratio) = 0) and no full 2×2 cell, so the plan is the identity there
    # whatever max_downsample says
    (H, W), bottom = (3, 5), level_grids(3, 5)[-1]
    assert bottom == (1, 1) and downsample_level((H, W), 1) == 4
    args = BlockSettings((H, W), ToMeConfig(ratio=0.5, max_downsample=4), gen(0))
    assert tome_plan(torch.randn(2, 1, 8), bottom, args) is IDENTITY


@pytest.mark.parametrize("kwargs, message", [
    (dict(ratio=0.8), r"ratio must be in \[0, 0.75\]"),
    (dict(ratio=-0.1), r"ratio must be in \[0, 0.75\]"),
    (dict(ratio=0.6, sx=1, sy=2), r"ratio must be in \[0, 0.5\]"),
    (dict(ratio=float("nan")), "ratio must be"),
    (dict(max_downsample=3), "max_downsample must be one of 1, 2, 4, 8"),
    (dict(sx=0), "sx must be a whole number >= 1"),
    (dict(sy=-1), "sy must be a whole number >= 1"),
    (dict(ratio=True), "ToMe ratio must be a number, got True"),
    (dict(ratio="0.5"), "ToMe ratio must be a number, got '0.5'"),
    (dict(threshold=True), "ToMe threshold must be a number, got True"),
    (dict(max_downsample=True), "max_downsample must be one of 1, 2, 4, 8, got True"),
    (dict(seed=-1), "ToMe seed must be a whole number >= 0, got -1"),
    (dict(seed=2 ** 64), r"ToMe seed must be below 2\^64"),
])
def test_config_rejects_out_of_range_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ToMeConfig(**kwargs)


def test_ratio_zero_and_none_are_identity():
    x = torch.randn(2, 64, 4)
    assert tome_plan(x, (8, 8), None) is IDENTITY
    assert tome_plan(x, (8, 8), BlockSettings((8, 8), ToMeConfig(ratio=0.0), gen(0))) is IDENTITY


def test_an_empty_batch_is_left_unmerged():
    assert tome_plan(torch.randn(0, 16, 8), (4, 4), BlockSettings((4, 4), ToMeConfig(ratio=0.5), gen(0))) is IDENTITY


@pytest.mark.parametrize("kwargs, hw, message", [
    (dict(ratio=0.5, sx=9), (8, 8), r"^ToMe sx 9 and sy 2: no whole cell fits the 8x8 latent grid"),
    (dict(threshold=0.5, sx=3, sy=3), (2, 2), r"^ToMe sx 3 and sy 3: no whole cell fits the 2x2 latent grid"),
    (dict(ratio=0.01), (8, 8), r"^ToMe ratio 0.01 merges none of the 64 tokens .* use at least 0.015625, or 0 for none$"),
])
def test_settings_under_which_nothing_merges_are_named(kwargs, hw, message):
    """What the command line refuses (the library plans the identity for them, as tomesd): the plan at that
    latent is indeed the identity, and the least ratio named merges."""
    from minitome.cli.methods import tome_merges_at
    cfg = ToMeConfig(**kwargs)
    x = torch.randn(1, hw[0] * hw[1], 8)
    assert tome_plan(x, hw, BlockSettings(hw, cfg, gen(0))) is IDENTITY
    with pytest.raises(ValueError, match=message):
        tome_merges_at(cfg, hw)
    if "ratio" in kwargs and "sx" not in kwargs:
        least = ToMeConfig(ratio=0.015625)
        tome_merges_at(least, hw)
        assert tome_plan(x, hw, BlockSettings(hw, least, gen(0))).tokens_left == hw[0] * hw[1] - 1
