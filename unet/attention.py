"""The UNet's transformer parts: CrossAttention, GEGLU, BasicTransformerBlock (with ToMe inline),
SpatialTransformer.

Where this sits: `unet/model.py` puts a SpatialTransformer after each ResBlock of the first three
levels and in the middle. It turns the feature map (B, C, h, w) into N = h·w tokens, runs one
BasicTransformerBlock on them (self-attention, cross-attention to the text, feed-forward), and
turns them back. Mirrors CompVis `ldm/modules/attention.py`; names equal the checkpoint's keys
(`attn1.to_q`, `ff.net.0.proj`, `proj_in`, …).

Token Merging (`minitome/tome.py`) happens in BasicTransformerBlock.forward, in plain sight: one
plan from the block's input, then merge before and unmerge after each sub-layer it applies to. Token
Downsampling (`minitome/todo.py`) happens there too: self-attention's keys and values from a coarser grid.
Both read the call's settings from `call` (unet/call.py), which the UNet's forward hands every block; a
plan kept between calls is kept under the block itself, so it is always the block's own.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from minitome.todo import downsample_kv
from .call import PLAIN, Call


class CrossAttention(nn.Module):
    """Multi-head attention of x (B, N, C) to context (B, T, context_dim); self-attention when context is None."""

    def __init__(self, dim: int, context_dim: int, heads: int, attention: str):
        super().__init__()
        self.heads, self.attention = heads, attention
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))  # `to_out.0`; the original's dropout (1) has no weights

    def forward(self, x: torch.Tensor, context: torch.Tensor = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, heads, N, D)
        if self.attention == "plain":
            # QKᵀ/√D, with the 1/√D applied to Q (N × D) rather than to QKᵀ (N × T): one pass over the
            # (N, T) matrix less, which is 1 GiB at 64×64 tokens, batch 2, 8 heads; in place, since
            # to_q's output is ours (q · s is the same float either way)
            weights = q.mul_(q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, heads, N, T)
            # softmax(w) = exp(w − max w) / Σ exp(w − max w), written over its own input with documented in-place
            # operations: no second (N, T) matrix to allocate and fault in, and half the peak memory
            weights = weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()
            out = weights.div_(weights.sum(dim=-1, keepdim=True)) @ v    # (B, heads, N, D)
        else:  # the same formula, fused: never materialises the (N, T) weights
            out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))  # (B, N, C)


class GEGLU(nn.Module):
    """proj(x) split in two halves (a, g); returns a · GELU(g) with the exact (erf) GELU."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return F.gelu(gate).mul_(a)  # a · GELU(g), multiplied in place: one (N, inner) temporary fewer


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # `net.0.proj` and `net.2` as in the checkpoint; index 1 is the original's dropout
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, attention: str):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, attention)          # self-attention
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, attention)  # cross-attention to the text
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, hw: tuple, call: Call = PLAIN) -> torch.Tensor:
        """x (B, N, C) with N = h·w; context (B, T, context_dim). call=PLAIN: plain SD 1.5."""
        plan = call.plan(self, x, hw)  # ToMe: identity when off, or when the block is too small
        h = plan.merge_attn(self.norm1(x))
        x = x + plan.unmerge_attn(self.attn1(h, downsample_kv(h, hw, call.settings)))      # self-attention; ToDo: its keys, values
        x = x + plan.unmerge_cross(self.attn2(plan.merge_cross(self.norm2(x)), context))  # cross-attention
        x = x + plan.unmerge_mlp(self.ff(plan.merge_mlp(self.norm3(x))))                  # feed-forward
        return x


class SpatialTransformer(nn.Module):
    """(B, C, h, w) → tokens (B, h·w, C) → transformer block(s) → (B, C, h, w), plus the input."""

    def __init__(self, channels: int, context_dim: int, heads: int, groups: int, attention: str, depth: int = 1):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, context_dim, heads, attention) for _ in range(depth))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, call: Call = PLAIN) -> torch.Tensor:
        B, C, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, N, C), raster order
        for block in self.transformer_blocks:
            tokens = block(tokens, context, (h, w), call)
        return x + self.proj_out(tokens.transpose(1, 2).unflatten(2, (h, w)))  # (B, C, h, w)
