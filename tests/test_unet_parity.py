"""The UNet against diffusers' UNet2DConditionModel, and ToMe against tomesd 0.1.3, on random weights.

The reference is built and randomized here, saved as a diffusers folder, and loaded through
`weights.load_unet` (so the name table is tested too). Both sides run in float64, bound F64_BOUND
(conftest.py); one float32 smoke test, and the full SD 1.5 size in float32 at 512², whose bound is
its measured level.
"""
import copy

import pytest
import tomesd
import torch
import torch.nn.functional as F

import minitome
import weights
from conftest import F64_BOUND, relative_error
from minitome.tome import merge, partition, unmerge, match
from unet import UNetConfig, UNetModel
from unet.packed_conv import PackedConv2d, packed as pack

# float32: the largest error measured across CPU kernels (tests/float32_spread.py, 2026-12-06) times a margin of ~4.5
F32_BOUND = 8e-6       # the tiny UNet: 1.23e-6 (oneDNN AVX) – 1.79e-6 (scalar ATen kernels)
F32_FULL_BOUND = 2e-5  # full size at 64×64: 3.07e-6 (oneDNN SSE4.1) – 4.24e-6 (1 thread)
F32_CONV_BOUND = 1e-5  # a packed convolution against nn.Conv2d: 0 with 2 threads here, 2.03e-6 with 1 (2026-12-06)


def inputs(hw, seed, batch=2, context_dim=32, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, *hw, generator=g, dtype=dtype)
    t = torch.tensor([999, 21][:batch] + [500] * max(0, batch - 2))
    context = torch.randn(batch, 77, context_dim, generator=g, dtype=dtype)
    return x, t, context


@pytest.fixture(scope="module")
def tiny(tiny_unet_folder):
    """(reference in float64, ours with SDPA in float64, ours with plain attention in float64)."""
    reference, folder = tiny_unet_folder
    f64 = torch.float64
    return (copy.deepcopy(reference).double(), weights.load_unet(folder, dtype=f64),
            weights.load_unet(folder, dtype=f64, attention="plain"))


@pytest.mark.parametrize("hw", [(8, 8), (16, 16), (13, 21), (9, 7), (1, 1)])
def test_tiny_unet_matches_diffusers(tiny, hw):
    reference, ours, ours_plain = tiny
    x, t, context = inputs(hw, seed=hw[0])
    with torch.no_grad():
        ref = reference(x, t, context).sample
        assert relative_error(ours(x, t, context), ref) <= F64_BOUND
        assert relative_error(ours_plain(x, t, context), ref) <= F64_BOUND
        # ratio 0 is exactly plain SD 1.5
        assert torch.equal(ours(x, t, context, tome=minitome.ToMeConfig(ratio=0.0)), ours(x, t, context))


def test_tiny_unet_float32_smoke(tiny_unet_folder, float32_bound):
    reference, folder = tiny_unet_folder
    x, t, context = inputs((13, 21), seed=5, dtype=torch.float32)
    with torch.no_grad():
        float32_bound(relative_error(weights.load_unet(folder)(x, t, context), reference(x, t, context).sample), F32_BOUND)


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
    assert relative_error(out, ref) <= F64_BOUND
    assert relative_error(unmerged, ref) > 1e6 * F64_BOUND  # merging really changed the result


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
    assert relative_error(out, ref) <= F64_BOUND
    assert relative_error(out_plain, ref) <= F64_BOUND
    assert relative_error(attn_only, ref) > 1e6 * F64_BOUND


@pytest.mark.parametrize("hw, cell", [((16, 16), (2, 2)), ((13, 21), (2, 2)), ((9, 14), (3, 2))])
def test_random_partition_and_matching_match_tomesd(hw, cell):
    """With use_rand on, the same generator seed gives tomesd's partition: compare unmerge(merge(x)) position-wise."""
    (h, w), (sx, sy) = hw, cell
    x = torch.randn(2, h * w, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    r = int(h * w * 0.5)
    m, u = tomesd.merge.bipartite_soft_matching_random2d(x, w, h, sx, sy, r, generator=torch.Generator().manual_seed(5))
    src, dst = partition(h, w, sx, sy, torch.Generator().manual_seed(5))
    r = min(r, src.numel())
    slot = match(x, src, dst, r)
    assert relative_error(unmerge(merge(x, slot, h * w - r), slot), u(m(x))) <= F64_BOUND


def test_full_size_unet_matches_diffusers_at_512(tmp_path_factory, float32_bound):
    """SD 1.5 at full size in float32, a 64×64 latent (512² image), batch 2: parity, the parameter count, and
    every packed convolution (unet/packed_conv.py) against nn.Conv2d on the same input, within float32 rounding:
    not bit for bit, since oneDNN picks another kernel for a prepacked weight at some thread counts (with one
    thread 46 of the 98 differ in their last bits)."""
    from diffusers import UNet2DConditionModel
    from conftest import randomize_
    with torch.device("meta"):  # shapes only: the counts need no memory and no initialisation
        assert sum(p.numel() for p in UNetModel().parameters()) == 859_520_964
        assert len(UNetModel().state_dict()) == 686  # the official file's model.diffusion_model.* count
    reference = randomize_(UNet2DConditionModel(cross_attention_dim=768), seed=2).eval().requires_grad_(False)
    folder = tmp_path_factory.mktemp("full")
    reference.save_pretrained(folder / "unet")
    ours = pack(weights.load_unet(folder))
    assert ours.config == UNetConfig()
    x, t, context = inputs((64, 64), seed=4, context_dim=768, dtype=torch.float32)
    # each packed convolution must give what nn.Conv2d's own call gives on the same input, up to float32 rounding
    packed = [m for m in ours.modules() if isinstance(m, PackedConv2d)]
    assert len(packed) == 98
    conv_errors = []

    def same_as_conv2d(module, args, out):  # F.conv2d is nn.Conv2d's forward
        conv = F.conv2d(args[0], module.state_dict()["weight"], module.bias, module.stride, module.padding,
                        module.dilation, module.groups)
        conv_errors.append(relative_error(out, conv))

    hooks = [m.register_forward_hook(same_as_conv2d) for m in packed]
    with torch.no_grad():
        ref = reference(x, t, context).sample
        del reference
        err = relative_error(ours(x, t, context), ref)
    for hook in hooks:
        hook.remove()
    float32_bound(err, F32_FULL_BOUND)
    assert len(conv_errors) == len(packed)
    print(f"packed vs nn.Conv2d, largest relative difference: {max(conv_errors):.2e}")
    assert max(conv_errors) <= F32_CONV_BOUND, max(conv_errors)
