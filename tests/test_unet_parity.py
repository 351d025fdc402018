"""The UNet against diffusers' UNet2DConditionModel, and ToMe against tomesd 0.1.3, on random weights.

The reference is built and randomized here, saved as a diffusers folder, and loaded through
`weights.load_unet` (so the name table is tested too). Bound: max |Δ| / max |ref| ≤ 1e-4 in float32.
"""
import pytest
import tomesd
import torch
import torch.nn.functional as F

import minitome
import weights
from conftest import randomize_, relative_error
from minitome.tome import merge, partition, unmerge, match
from unet import UNetConfig, UNetModel
from unet.packed_conv import PackedConv2d

BOUND = 1e-4


def inputs(hw, seed, batch=2, context_dim=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, *hw, generator=g)
    t = torch.tensor([999, 21][:batch] + [500] * max(0, batch - 2))
    context = torch.randn(batch, 77, context_dim, generator=g)
    return x, t, context


@pytest.fixture(scope="module")
def tiny(tiny_unet_folder):
    reference, folder = tiny_unet_folder
    return reference, weights.load_unet(folder), weights.load_unet(folder, attention="plain")


@pytest.mark.parametrize("hw", [(8, 8), (16, 16), (13, 21), (9, 7), (1, 1)])
def test_tiny_unet_matches_diffusers(tiny, hw):
    reference, ours, ours_plain = tiny
    x, t, context = inputs(hw, seed=hw[0])
    with torch.no_grad():
        ref = reference(x, t, context).sample
        assert relative_error(ours(x, t, context), ref) <= BOUND
        assert relative_error(ours_plain(x, t, context), ref) <= BOUND
        # ratio 0 is exactly plain SD 1.5
        assert torch.equal(ours(x, t, context, tome=minitome.ToMeConfig(ratio=0.0)), ours(x, t, context))


def test_scalar_timestep_is_broadcast(tiny):
    _, ours, _ = tiny
    x, _, context = inputs((8, 8), seed=0)
    with torch.no_grad():
        assert torch.equal(ours(x, 500, context), ours(x, torch.tensor([500, 500]), context))


@pytest.mark.parametrize("hw", [(16, 16), (13, 21)])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.6])
@pytest.mark.parametrize("max_downsample", [1, 2])
def test_tome_matches_tomesd(tiny, hw, ratio, max_downsample):
    reference, ours, _ = tiny
    x, t, context = inputs(hw, seed=7)
    cfg = minitome.ToMeConfig(ratio=ratio, max_downsample=max_downsample, use_rand=False)
    tomesd.apply_patch(reference, ratio=ratio, max_downsample=max_downsample, use_rand=False)
    try:
        with torch.no_grad():
            ref = reference(x, t, context).sample
            out = ours(x, t, context, tome=cfg)
            unmerged = ours(x, t, context)
    finally:
        tomesd.remove_patch(reference)
    assert relative_error(out, ref) <= BOUND
    assert relative_error(unmerged, ref) > 100 * BOUND  # merging really changed the result


def test_tome_with_crossattn_and_mlp_matches_tomesd(tiny):
    reference, ours, ours_plain = tiny
    x, t, context = inputs((13, 21), seed=8)
    kwargs = dict(ratio=0.5, max_downsample=2, use_rand=False, merge_crossattn=True, merge_mlp=True)
    tomesd.apply_patch(reference, **kwargs)
    try:
        with torch.no_grad():
            ref = reference(x, t, context).sample
            out, out_plain = ours(x, t, context, tome=minitome.ToMeConfig(**kwargs)), \
                ours_plain(x, t, context, tome=minitome.ToMeConfig(**kwargs))
            attn_only = ours(x, t, context, tome=minitome.ToMeConfig(ratio=0.5, max_downsample=2, use_rand=False))
    finally:
        tomesd.remove_patch(reference)
    assert relative_error(out, ref) <= BOUND
    assert relative_error(out_plain, ref) <= BOUND
    assert relative_error(attn_only, ref) > 100 * BOUND


@pytest.mark.parametrize("hw, cell", [((16, 16), (2, 2)), ((13, 21), (2, 2)), ((9, 14), (3, 2))])
def test_random_partition_and_matching_match_tomesd(hw, cell):
    """With use_rand on, the same generator seed gives tomesd's partition: compare unmerge(merge(x)) position-wise."""
    (h, w), (sx, sy) = hw, cell
    x = torch.randn(2, h * w, 16, generator=torch.Generator().manual_seed(3))
    r = int(h * w * 0.5)
    m, u = tomesd.merge.bipartite_soft_matching_random2d(x, w, h, sx, sy, r, generator=torch.Generator().manual_seed(5))
    src, dst = partition(h, w, sx, sy, torch.Generator().manual_seed(5))
    r = min(r, src.numel())
    slot = match(x, src, dst, r)
    assert relative_error(unmerge(merge(x, slot, h * w - r), slot), u(m(x))) <= 1e-6


def test_full_size_unet_matches_diffusers_at_512(tmp_path_factory):
    """SD 1.5 at full size, a 64×64 latent (512² image), batch 2: parity and the parameter count."""
    from diffusers import UNet2DConditionModel
    assert sum(p.numel() for p in UNetModel().parameters()) == 859_520_964
    with torch.device("meta"):
        assert len(UNetModel().state_dict()) == 686  # the official file's model.diffusion_model.* count
    reference = randomize_(UNet2DConditionModel(cross_attention_dim=768), seed=2).eval().requires_grad_(False)
    folder = tmp_path_factory.mktemp("full")
    reference.save_pretrained(folder / "unet")
    ours = weights.load_unet(folder)
    assert ours.config == UNetConfig()
    x, t, context = inputs((64, 64), seed=4, context_dim=768)
    # loading packed every convolution's weight for oneDNN (unet/packed_conv.py); each packed convolution
    # must give exactly what nn.Conv2d's own call gives on the same input
    packed = [m for m in ours.modules() if isinstance(m, PackedConv2d)]
    assert len(packed) == 98
    unequal = []

    def same_as_conv2d(module, args, out):  # F.conv2d is nn.Conv2d's forward
        conv = F.conv2d(args[0], module.state_dict()["weight"], module.bias, module.stride, module.padding,
                        module.dilation, module.groups)
        unequal.extend([] if torch.equal(conv, out) else [module])

    hooks = [m.register_forward_hook(same_as_conv2d) for m in packed]
    with torch.no_grad():
        ref = reference(x, t, context).sample
        del reference
        err = relative_error(ours(x, t, context), ref)
    for hook in hooks:
        hook.remove()
    print(f"full-size UNet parity at 64×64: {err:.2e}")
    assert err <= BOUND
    assert not unequal, f"{len(unequal)} of {len(packed)} packed convolutions differ from nn.Conv2d"
