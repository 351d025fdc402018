"""Convolutions on the CPU with their weights laid out once for oneDNN, instead of at every call.

Where this sits: an optional last step after loading (`packed(unet)`, which
`python -m minitome.sample` and the benchmark call for float32 on the CPU; `weights.load` never does,
so the modules it returns keep every nn.Module promise). Nothing else in the UNet changes.

Why: PyTorch runs a float32 convolution on the CPU through oneDNN, which computes with the weight in a
blocked layout of its own (channels grouped in sixteens, say), chosen for the shape of the input.
nn.Conv2d keeps its weight in PyTorch's layout, so every call first copies the weight into oneDNN's.
For the big 1280-channel convolutions at the bottom of the UNet that copy is most of the work (more
than half the time of a 3×3, 1280 → 1280 convolution at 8×8); over a whole SD 1.5 UNet call at 512² it
is a few percent (docs/benchmark.md), with the same numbers out up to float32 rounding.

The layout oneDNN picks depends on the input's shape, and a weight laid out for the wrong shape can be
slow (three times slower for 1280 channels at 32×32 with the layout chosen for 64×64), so a
PackedConv2d lays its weight out again whenever the input shape changes: once per image size and
batch size in a sampling run. It keeps one copy of the weight only (the oneDNN one), so packing
costs no memory; `state_dict()` still returns the weight in PyTorch's layout.

The two operators are the ones torch.compile's CPU backend uses when it freezes a model's weights
(torch/_inductor/fx_passes/mkldnn_fusion.py); they are internal to PyTorch, so `available()` checks
for them (and that oneDNN is enabled) and nothing is packed otherwise. A layout change is an exact
copy, and the convolution is oneDNN's either way: on the 98 convolutions of the full-size UNet the
output equals nn.Conv2d's to float32 rounding (tests/test_unet_parity.py; with two threads here to the
bit, with one thread oneDNN picks another kernel for some of them); on small odd shapes likewise
(tests/test_packed_conv.py). Inference only: no gradients.
"""
import torch
import torch.nn as nn


def available() -> bool:
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight") and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


class PackedConv2d(nn.Module):
    """An nn.Conv2d (zero padding) whose weight is kept in oneDNN's layout for the last input shape seen."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        assert conv.padding_mode == "zeros" and isinstance(conv.padding, tuple), "zero padding given as numbers"
        self.padding, self.stride, self.dilation = list(conv.padding), list(conv.stride), list(conv.dilation)
        self.groups, self.bias = conv.groups, conv.bias
        self.weight = conv.weight.detach()  # PyTorch's layout until the first call
        self.packed_for = None              # the input shape the weight is laid out for

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        geometry = self.padding, self.stride, self.dilation, self.groups
        if x.shape != self.packed_for:  # lay the weight out for this shape (from whichever copy we hold)
            plain = self.weight if self.packed_for is None else self.weight.to_dense()
            self.weight = torch._C._nn.mkldnn_reorder_conv2d_weight(plain.to_mkldnn(), *geometry, list(x.shape))
            self.packed_for = x.shape
        # the convolution itself, bias added inside ("none": no activation fused after it)
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *geometry, "none", [], "")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        weight = self.weight if self.packed_for is None else self.weight.to_dense()
        destination[prefix + "weight"] = weight.contiguous(memory_format=torch.channels_last)
        super()._save_to_state_dict(destination, prefix, keep_vars)  # the bias, after the weight as in nn.Conv2d


def pack_convolutions(module: nn.Module) -> int:
    """Replace every float32 CPU nn.Conv2d under module with a PackedConv2d; returns how many.

    Only float32 on the CPU is packed, the case measured above; other devices and dtypes keep nn.Conv2d.
    """
    if not available():
        return 0
    convs = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
             if type(child) is nn.Conv2d and child.weight.device.type == "cpu" and child.weight.dtype == torch.float32]
    for parent, name, conv in convs:
        setattr(parent, name, PackedConv2d(conv))
    return len(convs)


def packed(unet: nn.Module) -> nn.Module:
    """The model, for inference on the CPU in float32, opt-in: each convolution's weight laid out once for oneDNN;
    elsewhere nothing changes. A packed model is for sampling only: its convolution weights leave `parameters()`
    and no longer follow `.to`, `.half()` or autograd (`state_dict()` still reads them back). Call it last,
    after `.to(...)` and `channels_last()`."""
    pack_convolutions(unet)
    return unet
