"""``msp.GramAccumulator`` against float64 numpy: every dtype, chunks across the 128-token runs,
features of very different scales, leading dimensions, token counts, concurrent layers, and bad
chunks that leave the accumulator unchanged."""

import threading

import numpy as np
import pytest
import torch

import msp
from msp.errors import InvalidArgumentError, InvalidStateError

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def activations(tokens, cols, seed, dtype=torch.float32, low=-30, high=30):
    """Tokens with per-feature scales 2^low .. 2^high (bf16/f32) or 2^-4 .. 2^4 (f16)."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.float16:
        low, high = -4, 4
    exponents = torch.linspace(low, high, cols).round()
    return (torch.randn(tokens, cols, generator=g, dtype=torch.float64) * 2.0**exponents).to(dtype)


def reference(chunks):
    x = np.concatenate([c.double().reshape(-1, c.shape[-1]).numpy() for c in chunks])
    return x.T @ x


def assert_close(H, expected):
    """Every entry within 1e-5 of sqrt(H_ii H_jj) of the float64 reference."""
    d = np.sqrt(np.diag(expected))
    assert (np.abs(H.astype(np.float64) - expected) <= 1e-5 * np.outer(d, d)).all()
    assert np.array_equal(H, H.T)


@pytest.mark.parametrize("dtype", DTYPES)
def test_agrees_with_float64_numpy(dtype):
    cols = 40
    acc = msp.GramAccumulator([cols, 8])
    chunks = [activations(t, cols, k, dtype) for k, t in enumerate([1, 127, 128, 129, 500])]
    for c in chunks:
        acc.add(0, c)
    assert acc.tokens(0) == 885 and acc.tokens(1) == 0
    assert_close(acc.gram(0), reference(chunks))
    assert np.array_equal(acc.gram(1), np.zeros((8, 8), np.float32))


def test_leading_dimensions_numpy_and_non_contiguous_chunks():
    cols = 24
    acc = msp.GramAccumulator([cols])
    batch = activations(2 * 3 * 50, cols, 1).reshape(2, 3, 50, cols)  # [batch, heads, seq, cols]
    wide = activations(60, 2 * cols, 2)[:, ::2]  # a strided view: read from a copy
    acc.add(0, batch)
    acc.add(0, wide)
    acc.add(0, activations(10, cols, 3).numpy())
    acc.add(0, np.zeros((0, cols), np.float32))  # empty: nothing added
    assert acc.tokens(0) == 300 + 60 + 10
    assert_close(acc.gram(0), reference([batch, wide, activations(10, cols, 3)]))


def test_wanda_norms_are_the_square_roots_of_the_diagonal():
    x = activations(300, 16, 4, low=-2, high=2)
    acc = msp.GramAccumulator([16])
    acc.add(0, x)
    norms = np.sqrt(np.diag(acc.gram(0)).astype(np.float64))
    assert np.allclose(norms, x.double().norm(dim=0).numpy(), rtol=1e-6)


def test_distinct_layers_from_threads_equal_serial():
    widths = [16, 48, 8, 33]
    chunks = [[activations(40 + k, c, 10 * l + k) for k in range(6)] for l, c in enumerate(widths)]
    serial, parallel = msp.GramAccumulator(widths), msp.GramAccumulator(widths)
    for l, layer in enumerate(chunks):
        for c in layer:
            serial.add(l, c)
    threads = [threading.Thread(target=lambda l=l: [parallel.add(l, c) for c in chunks[l]]) for l in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for l in range(4):
        assert np.array_equal(parallel.gram(l).view(np.int32), serial.gram(l).view(np.int32))
        assert parallel.tokens(l) == serial.tokens(l)


def test_reset_and_close():
    acc = msp.GramAccumulator([4])
    acc.add(0, np.ones((3, 4), np.float32))
    assert np.array_equal(acc.gram(0), np.full((4, 4), 3, np.float32))
    acc.reset()
    assert acc.tokens(0) == 0 and not acc.gram(0).any()
    acc.close()
    with pytest.raises(InvalidStateError):
        acc.add(0, np.ones((1, 4), np.float32))
    assert "closed" in repr(acc)


def test_bad_chunks_raise_and_leave_the_accumulator_unchanged():
    acc = msp.GramAccumulator([4, 2])
    acc.add(0, np.arange(8, dtype=np.float32).reshape(2, 4))
    before = acc.gram(0)
    bad = np.ones((3, 4), np.float32)
    bad[2, 1] = np.inf
    with pytest.raises(InvalidArgumentError, match=r"layer 0: x\[2\]\[1\] \(inf\) is not finite"):
        acc.add(0, bad)
    with pytest.raises(InvalidArgumentError, match="float32 range"):
        acc.add(0, np.full((1, 4), 2.0**64, np.float32))
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        acc.add(0, np.ones((3, 2), np.float32))
    with pytest.raises(InvalidArgumentError, match="layer"):
        acc.add(2, np.ones((1, 2), np.float32))
    with pytest.raises(TypeError):
        acc.add(0, np.ones((1, 4), np.float64))
    with pytest.raises(TypeError):
        acc.add(True, np.ones((1, 4), np.float32))
    assert np.array_equal(acc.gram(0), before) and acc.tokens(0) == 2
    for bad_cols in ([], [4, 0], [2**40], "12"):
        with pytest.raises((InvalidArgumentError, TypeError)):
            msp.GramAccumulator(bad_cols)


def test_gram_feeds_the_solver():
    x = activations(256, 32, 5, low=-1, high=1)
    acc = msp.GramAccumulator([32])
    acc.add(0, x)
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(6))
    dense = w.clone()
    keep = msp.OBS(acc.gram(0)).prune_(w, 0.5)
    # SparseGPT's point: the output error on the calibration inputs beats plain magnitude pruning.
    magnitude = dense.clone()
    msp.prune_topk_(magnitude, 0.5, scope="layer")
    assert (~keep).sum() == 128
    assert ((x @ (w - dense).T) ** 2).sum() < ((x @ (magnitude - dense).T) ** 2).sum()
