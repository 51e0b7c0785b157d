"""A tiny Llama-like causal LM built here (no downloads) for the compressed-model tests: RMSNorm,
grouped-query causal attention (q/k/v with biases as in Qwen2, o without), a SiLU-gated MLP and an
output head tied to the embedding; 7 linear layers per block with ``in_features`` 64 or 128."""

import types

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM, HIDDEN, HEADS, KV_HEADS, BLOCKS = 97, 64, 128, 4, 2, 2
HEAD_DIM = DIM // HEADS
LAYERS_PER_BLOCK = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim) + 0.1 * torch.randn(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_norm = RMSNorm(DIM)
        self.q_proj = nn.Linear(DIM, HEADS * HEAD_DIM)
        self.k_proj = nn.Linear(DIM, KV_HEADS * HEAD_DIM)
        self.v_proj = nn.Linear(DIM, KV_HEADS * HEAD_DIM)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, DIM, bias=False)
        self.post_norm = RMSNorm(DIM)
        self.gate_proj = nn.Linear(DIM, HIDDEN, bias=False)
        self.up_proj = nn.Linear(DIM, HIDDEN, bias=False)
        self.down_proj = nn.Linear(HIDDEN, DIM, bias=False)

    def forward(self, h):
        b, t, _ = h.shape
        x = self.input_norm(h)
        q = self.q_proj(x).view(b, t, HEADS, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(x).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2).repeat_interleave(HEADS // KV_HEADS, 1)
        v = self.v_proj(x).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2).repeat_interleave(HEADS // KV_HEADS, 1)
        attention = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.o_proj(attention.transpose(1, 2).reshape(b, t, DIM))
        x = self.post_norm(h)
        return h + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLike(nn.Module):
    """``model(ids).logits`` of shape ``[B, T, VOCAB]``; ``lm_head.weight`` is ``embed.weight``."""

    def __init__(self, seed=0, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
        self.norm = RMSNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight
        self.to(dtype)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)
        return types.SimpleNamespace(logits=self.lm_head(self.norm(h)))


def layer_names():
    """The names ``msp.torch.linear_layers`` gives, in its order."""
    return [f"blocks.{b}.{name}" for b in range(BLOCKS) for name in LAYERS_PER_BLOCK]


def token_ids(tokens, rows=2, seed=5):
    return torch.randint(0, VOCAB, (rows, tokens), generator=torch.Generator().manual_seed(seed))
