"""msp.torch.evaluation: perplexity, reference_logits and kl_to_dense against full float64 softmaxes
written out here, on tiny models built here."""

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from msp.torch import Pruner, TopK, kl_to_dense, linear_layers, perplexity, reference_logits  # noqa: E402
from torch_models import BLOCK_T as T, BLOCK_VOCAB as VOCAB, BlockLM as TinyLM, block_batches as batches  # noqa: E402


def reference_perplexity(model, data):
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in data:
            logits = model(ids).logits[:, :-1].double()
            total += float(F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="sum"))
            count += ids[:, 1:].numel()
    return math.exp(total / count)


def test_perplexity_matches_reference_and_chunking():
    model = TinyLM(seed=1)
    data = batches(3)
    expected = reference_perplexity(model, data)
    assert perplexity(model, data) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, data, chunk_tokens=3) == pytest.approx(expected, rel=1e-5)
    masked = [{"input_ids": d, "attention_mask": torch.ones_like(d)} for d in data]
    masked[0]["attention_mask"][:, -4:] = 0  # padding at the end is not predicted
    trimmed = [data[0][:, :-4]] + data[1:]
    got = perplexity(model, masked)
    total = sum(math.log(reference_perplexity(model, [d])) * d[:, 1:].numel() for d in trimmed)
    assert got == pytest.approx(math.exp(total / sum(d[:, 1:].numel() for d in trimmed)), rel=1e-5)


def reference_kl(dense, pruned, data):
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in data:
            logp = dense(ids).logits.double().log_softmax(-1)
            logq = pruned(ids).logits.double().log_softmax(-1)
            total += float((logp.exp() * (logp - logq)).sum())
            count += ids.numel()
    return total / count


def test_kl_to_dense_full_and_top_k():
    dense, model = TinyLM(seed=3), TinyLM(seed=3)
    data = batches(3)
    full = reference_logits(model, data)
    top = reference_logits(model, data, top_k=5, chunk_tokens=7)
    assert isinstance(top[0], TopK) and top[0][0].shape == (2, T, 5)
    assert kl_to_dense(model, data, full) == pytest.approx(0.0, abs=1e-6)
    assert kl_to_dense(model, data, top) == pytest.approx(0.0, abs=1e-6)
    layers = linear_layers(model)
    Pruner(layers).apply(["2:8"] * 6)
    expected = reference_kl(dense, model, data)
    assert expected > 1e-3
    assert kl_to_dense(model, data, full) == pytest.approx(expected, rel=1e-4)
    assert kl_to_dense(model, data, full, chunk_tokens=3) == pytest.approx(expected, rel=1e-4)
    raw = [dense(d).logits.detach() for d in data]  # raw logits are accepted too
    assert kl_to_dense(model, data, raw) == pytest.approx(expected, rel=1e-4)
    everything = reference_logits(dense, data, top_k=VOCAB)
    assert kl_to_dense(model, data, everything) == pytest.approx(expected, rel=1e-4)
    coarse = kl_to_dense(model, data, top)
    assert 0 < coarse <= expected * (1 + 1e-5)  # coarsening never increases a KL divergence
    pairs = [(log_probs, indices) for log_probs, indices, _ in top]  # without the stored rest mass
    assert kl_to_dense(model, data, pairs) == pytest.approx(coarse, rel=1e-4)
    with pytest.raises(ValueError, match="references"):
        kl_to_dense(model, data, full[:2])
