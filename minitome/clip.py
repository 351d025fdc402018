"""The CLIP text encoder (ViT-L/14's text tower): 77 token ids become the context, 77 vectors of 768.

Where this sits: between the tokenizer (`minitome/tokenizer.py`) and the UNet's cross-attention
(`unet/attention.py`, `attn2`). Mirrors transformers' `CLIPTextModel`; the attribute names are the
official checkpoint's `cond_stage_model.transformer.text_model.*` keys.

A GPT-style pre-norm transformer: token + position embeddings, 12 layers of
x = x + Attention(LayerNorm(x)) with a causal mask (token i sees tokens ≤ i), then
x = x + MLP(LayerNorm(x)) with quick-GELU, x · σ(1.702 · x); a final LayerNorm. SD uses the last
hidden state, all 77 vectors, not CLIP's pooled output.
"""
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    positions: int = 77       # the context length
    width: int = 768          # hidden size, = the UNet's context_dim
    layers: int = 12
    heads: int = 12           # head dim 64
    mlp: int = 3072           # 4 × width
    eps: float = 1e-5         # LayerNorm eps

    @classmethod
    def tiny(cls, **overrides) -> "CLIPTextConfig":
        return cls(**{"width": 64, "layers": 2, "heads": 1, "mlp": 128, **overrides})


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.heads = c.heads
        self.q_proj, self.k_proj = nn.Linear(c.width, c.width), nn.Linear(c.width, c.width)
        self.v_proj, self.out_proj = nn.Linear(c.width, c.width), nn.Linear(c.width, c.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (proj(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, T, D)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # softmax(QKᵀ/√D + causal mask)V
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, T, width)


class MLP(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c.width, c.mlp), nn.Linear(c.mlp, c.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.self_attn, self.mlp = Attention(c), MLP(c)
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(c.width, eps=c.eps), nn.LayerNorm(c.width, eps=c.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.position_embedding = nn.Embedding(c.positions, c.width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # positions are always 0 … T−1: a checkpoint's `position_ids` buffer is never used (merged
        # community checkpoints are known to carry corrupted ones)
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.token_embedding(ids) + self.position_embedding(positions)


class Encoder(nn.Module):
    """Holds the layers under the checkpoint's name (`encoder.layers.<i>`). No forward of its own:
    CLIPTextModel.forward runs the layers in plain sight, one line each."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.layers))


class CLIPTextModel(nn.Module):
    def __init__(self, config: CLIPTextConfig = CLIPTextConfig()):
        super().__init__()
        self.config = config
        self.embeddings, self.encoder = Embeddings(config), Encoder(config)
        self.final_layer_norm = nn.LayerNorm(config.width, eps=config.eps)

    @torch.no_grad()
    def add_token_rows(self, vectors: torch.Tensor) -> int:
        """Textual inversion (weights/embedding.py): the token table grows by `vectors` (n, width), in the table's
        dtype and device; returns the first new row's id."""
        table = self.embeddings.token_embedding.weight
        first = table.shape[0]
        grown = nn.Embedding(first + vectors.shape[0], table.shape[1], device=table.device, dtype=table.dtype)
        grown.weight.copy_(torch.cat([table, vectors.to(table.device, table.dtype)]))
        self.embeddings.token_embedding = grown.requires_grad_(table.requires_grad)
        self.config = dataclasses.replace(self.config, vocab_size=first + vectors.shape[0])
        return first

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) → last hidden state (B, T, width), after final_layer_norm."""
        x = self.embeddings(ids)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.final_layer_norm(x)
