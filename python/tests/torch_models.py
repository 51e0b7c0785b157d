"""Tiny causal LMs for the msp.torch tests, built here (no downloads), and helpers that compare
model states bit for bit."""

import types

import torch
from torch import nn

MLP_VOCAB, MLP_DIM, MLP_T = 37, 12, 9
BLOCK_VOCAB, BLOCK_DIM, BLOCK_T = 41, 16, 10


class MlpLM(nn.Module):
    """Embedding, a residual MLP, one more linear with dropout, and an output head; returns an
    object with ``.logits`` like Hugging Face models."""

    def __init__(self, seed=0, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(MLP_VOCAB, MLP_DIM)
        self.fc1 = nn.Linear(MLP_DIM, 2 * MLP_DIM)
        self.fc2 = nn.Linear(2 * MLP_DIM, MLP_DIM, bias=False)
        self.block = nn.Sequential(nn.Linear(MLP_DIM, MLP_DIM), nn.Dropout(0.5))
        self.lm_head = nn.Linear(MLP_DIM, MLP_VOCAB)
        self.to(dtype)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        h = h + self.fc2(torch.tanh(self.fc1(h)))
        h = torch.tanh(self.block(h))
        return types.SimpleNamespace(logits=self.lm_head(h))


def mlp_batches(n, seed=1, rows=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, MLP_VOCAB, (rows, MLP_T), generator=g) for _ in range(n)]


class BlockLM(nn.Module):
    """Embedding, two residual blocks of three linears each, an output head; ``.logits`` like HF."""

    def __init__(self, seed=0, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(BLOCK_VOCAB, BLOCK_DIM)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "up": nn.Linear(BLOCK_DIM, 2 * BLOCK_DIM),
                    "down": nn.Linear(2 * BLOCK_DIM, BLOCK_DIM, bias=False),
                    "mix": nn.Linear(BLOCK_DIM, BLOCK_DIM),
                }
            )
            for _ in range(2)
        )
        self.lm_head = nn.Linear(BLOCK_DIM, BLOCK_VOCAB)
        self.to(dtype)

    def block_inputs(self, input_ids):
        """Every linear's input, computed by hand: {name: tensor [..., in_features]}."""
        inputs = {}
        h = self.embed(input_ids)
        for i, block in enumerate(self.layers):
            inputs[f"layers.{i}.up"] = h
            u = torch.tanh(block["up"](h))
            inputs[f"layers.{i}.down"] = u
            h = h + block["down"](u)
            inputs[f"layers.{i}.mix"] = h
            h = torch.tanh(block["mix"](h))
        return inputs, h

    def forward(self, input_ids, attention_mask=None):
        _, h = self.block_inputs(input_ids)
        return types.SimpleNamespace(logits=self.lm_head(h))


def block_batches(n, seed=1, rows=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, BLOCK_VOCAB, (rows, BLOCK_T), generator=g) for _ in range(n)]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def bits(t):
    return t.detach().contiguous().view(torch.uint8)


def assert_same(model, saved):
    """Bit-identical (so -0.0 differs from +0.0)."""
    for k, v in model.state_dict().items():
        assert v.dtype == saved[k].dtype and v.shape == saved[k].shape, k
        assert torch.equal(bits(v), bits(saved[k])), k


def random_norms(layers, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.in_features, generator=g) * 3 + 0.1 for n, m in layers.items()}


def device_under_test():
    """Where the device tests run: ``$MSP_TEST_DEVICE`` if set, else "cuda" when available, else
    the CPU (where the torch path is forced with ``kernels="torch"``)."""
    import os

    name = os.environ.get("MSP_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
