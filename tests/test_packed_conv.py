"""unet/packed_conv.py: a convolution with its weight laid out once for oneDNN computes what nn.Conv2d does.

The reference is nn.Conv2d, across changes of input shape (each re-packs), with state_dict intact. Bit for
bit on every convolution of the full-size UNet: tests/test_unet_parity.py::test_full_size_unet_matches_diffusers_at_512.
"""
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from unet import UNetConfig, UNetModel
from unet.packed_conv import PackedConv2d, available, pack_convolutions, packed as pack


def test_the_operators_exist_in_this_torch():
    # CI's torch (2.13 CPU) has them; if this fails, everything below would silently test nn.Conv2d only
    assert available()


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


@settings(max_examples=25, deadline=None)
@given(c_in=st.integers(1, 24), c_out=st.integers(1, 24), kernel=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       shapes=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=4),
       last=st.booleans(), seed=st.integers(0, 2**16))
def test_packed_conv_equals_conv2d_across_shape_changes(c_in, c_out, kernel, stride, shapes, last, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2).requires_grad_(False)
    conv = conv.to(memory_format=torch.channels_last) if last else conv
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    packed = PackedConv2d(conv)
    for batch, h, w in shapes + shapes[:1]:  # shape changes re-pack, and back to the first shape again
        x = torch.randn(batch, c_in, h, w)
        x = channels_last(x) if last else x
        with torch.no_grad():
            # within rounding: on shapes this small oneDNN may pick another kernel (or nn.Conv2d PyTorch's own),
            # so the bits can differ; on the SD 1.5 UNet's convolutions they do not (test_unet_parity.py)
            torch.testing.assert_close(packed(x), conv(x), rtol=1e-5, atol=1e-6)
        assert packed.packed_for == x.shape
    state = packed.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in before)


def test_packed_tiny_unet_gives_the_same_output_and_state_dict():
    config = UNetConfig.tiny()
    torch.manual_seed(0)
    plain = UNetModel(config).eval().requires_grad_(False).channels_last()
    torch.manual_seed(0)
    packed = pack(UNetModel(config).eval().requires_grad_(False).channels_last())
    convs = sum(type(m) is nn.Conv2d for m in plain.modules())
    assert sum(type(m) is PackedConv2d for m in packed.modules()) == convs and convs > 0
    assert not any(type(m) is nn.Conv2d for m in packed.modules())
    g = torch.Generator().manual_seed(1)
    for batch, hw in [(2, (16, 16)), (1, (13, 21)), (2, (16, 16))]:
        x, context = torch.randn(batch, 4, *hw, generator=g), torch.randn(batch, 77, 32, generator=g)
        with torch.no_grad():
            # at these widths oneDNN picks other kernels for the two layouts: equal within rounding
            torch.testing.assert_close(packed(x, 500, context), plain(x, 500, context), rtol=1e-5, atol=1e-5)
    ours, theirs = packed.state_dict(), plain.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_only_float32_cpu_convolutions_are_packed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1).double())
    assert pack_convolutions(model) == 1
    assert type(model[0]) is PackedConv2d and type(model[1]) is nn.Conv2d
