"""``msp.OBS`` against the torch transcription of SparseGPT's ``fasterprune`` (sparsegpt_reference.py).

The reference runs in float64 (the published code runs in float32; float64 is the truth both are
measured against). At every decision (a block's unstructured choice, a row's N:M group) the
reference's choice is compared with msp's: where they differ, every weight on which they disagree
must lie within 1e-5 of the group's largest score of the others (a near-tie that float32 rounding
may decide either way), and the reference then goes on with msp's choice so that both sweep the
same weights. Pruned weights must agree within 1e-4 of the largest weight.
"""

import ctypes
import ctypes.util
import threading

import numpy as np
import pytest
import torch

import msp
from msp.errors import InvalidArgumentError, InvalidStateError
from sparsegpt_reference import fasterprune, pruned_count, upper_inverse_factor


def spd_gram(cols, tokens, seed, dead=()):
    """X^T X (float64) of Gaussian tokens whose features have spread scales; `dead` features are 0."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.rand(cols, generator=g, dtype=torch.float64) * 3 + 0.1
    scales[list(dead)] = 0
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64) * scales
    return x.T @ x


def weights(rows, cols, seed, dtype=torch.float32):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)).to(dtype)


def parse(level):
    level = msp.Level.parse(level)
    return dict(n=level.n, m=level.m) if level.m else dict(sparsity=level.sparsity)


class Follow:
    """The reference's chooser: checks each decision against msp's keep mask and follows msp on
    near-ties (counted), recording real mismatches."""

    def __init__(self, keep, tolerance=1e-5):
        self.keep, self.tolerance = keep, tolerance
        self.followed, self.mismatches = 0, []

    def __call__(self, kind, column, scores, pruned):
        theirs = ~self.keep[:, column : column + scores.shape[1]]
        if torch.equal(theirs, pruned):
            return pruned
        groups = [slice(None)] if kind == "block" else range(scores.shape[0])
        for g in groups:
            s, mine, other = scores[g].reshape(-1), pruned[g].reshape(-1), theirs[g].reshape(-1)
            differ = mine != other
            if not differ.any():
                continue
            gap = s[differ].max() - s[differ].min()
            if mine.sum() != other.sum() or gap > self.tolerance * s.max():
                self.mismatches.append((kind, column, float(gap / s.max())))
        self.followed += 1
        return theirs


def check_against_reference(W, H, level, block, damp=0.01):
    """Prunes a copy of W with msp and with the reference; asserts agreement; returns msp's result."""
    obs = msp.OBS(H.float(), damp=damp)
    w = W.clone()
    keep = obs.prune_(w, level, block=block)
    follow = Follow(keep)
    ref_w, ref_keep = fasterprune(W.double(), H, blocksize=block_of(level, block), percdamp=damp, choose=follow, **parse(level))
    assert follow.mismatches == []
    assert follow.followed <= 2, f"{follow.followed} decisions differed only on near-ties"
    assert torch.equal(keep, ref_keep)
    scale = W.double().abs().max()
    assert (w.double() - ref_w).abs().max() <= 1e-4 * scale
    return w, keep


def block_of(level, block):
    """The block msp sweeps an N:M level in: rounded down to a multiple of m (at least m)."""
    m = msp.Level.parse(level).m
    return max(m, block - block % m) if m else block


SHAPES = [(16, 64), (33, 128), (50, 200), (7, 96)]
LEVELS = ["2:4", "2:8", "1:8", "4:16", "1:2", 0.4, 0.7, 0.9, "55%"]


@pytest.mark.parametrize(
    "shape,level",
    [(s, lv) for s in SHAPES for lv in LEVELS if s[1] % (msp.Level.parse(lv).m or 1) == 0],  # m divides cols
)
def test_agrees_with_the_reference(shape, level):
    rows, cols = shape
    seed = 100 * SHAPES.index(shape) + LEVELS.index(level)
    H = spd_gram(cols, 2 * cols, seed, dead=(5, 11) if seed % 2 else ())
    check_against_reference(weights(rows, cols, seed + 1), H, level, block=64 if cols > 100 else 128)


@pytest.mark.parametrize("level,block", [(0.6, 17), ("3:8", 20), ("2:6", 128), (0.5, 1), ("1:4", 3)])
def test_odd_blocks_agree_with_the_reference(level, block):
    cols = 96
    check_against_reference(weights(20, cols, 3), spd_gram(cols, 200, 4), level, block)


@pytest.fixture
def openblas():
    """The OpenBLAS libmsp links (a process has one copy of it), its thread count restored afterwards."""
    blas = ctypes.CDLL(ctypes.util.find_library("openblas") or "libopenblas.so.0")
    before = blas.openblas_get_num_threads()
    yield blas
    blas.openblas_set_num_threads(before)


@pytest.mark.parametrize("level", ["2:8", 0.7])
def test_results_do_not_depend_on_the_thread_count(level, openblas):
    # With a single-threaded OpenBLAS msp's threads take panels of rows; otherwise the sweep stays
    # on the calling thread. Both, with 1 to 3 threads, give the same bits.
    W = weights(530, 64, 5)
    obs = msp.OBS(spd_gram(64, 128, 6).float())
    results = []
    for blas, threads in [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]:
        openblas.openblas_set_num_threads(blas)
        msp.set_num_threads(threads)
        w = W.clone()
        keep = obs.prune_(w, level, block=16)
        results.append((w.view(torch.int32).clone(), keep.clone()))
    for w, keep in results[1:]:
        assert torch.equal(w, results[0][0]) and torch.equal(keep, results[0][1])


def test_exact_ties_keep_the_lower_index_on_a_diagonal_gram():
    # H = 2 I: U is diagonal, nothing is updated, and every score is w^2 / const: exact ties.
    rows, cols = 6, 32
    obs = msp.OBS(np.eye(cols, dtype=np.float32) * 2, damp=0)
    W = torch.randint(-2, 3, (rows, cols), generator=torch.Generator().manual_seed(7)).float()
    for level, block in [(0.5, 12), (0.3, 32), ("2:4", 8), ("1:8", 128)]:
        w = W.clone()
        keep = obs.prune_(w, level, block=block)
        _, ref_keep = fasterprune(W, torch.eye(cols) * 2, blocksize=block_of(level, block), percdamp=0, **parse(level))
        assert torch.equal(keep, ref_keep), level
        assert torch.equal(w, W * ref_keep), level
        spec = msp.Level.parse(level)
        if not spec.m:
            for i1 in range(0, cols, block):
                width = min(block, cols - i1)
                assert int((~keep[:, i1 : i1 + width]).sum()) == pruned_count(spec.sparsity, rows * width)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_weights_are_computed_in_float32_and_rounded_once(dtype):
    cols = 64
    H = spd_gram(cols, 128, 8)
    W = weights(24, cols, 9, dtype)
    for level in ["2:8", 0.6]:
        w16, w32 = W.clone(), W.float()
        obs = msp.OBS(H.float())
        keep16 = obs.prune_(w16, level)
        keep32 = obs.prune_(w32, level)
        assert torch.equal(keep16, keep32)
        assert torch.equal(w16, w32.to(dtype))


def test_numpy_weights_and_one_solver_for_many_levels():
    cols = 48
    H = spd_gram(cols, 96, 10)
    obs = msp.OBS(H.numpy())  # float64 numpy is converted
    W = weights(12, cols, 11).numpy()
    for level in msp.nm_levels(8)[1:] + msp.ratio_levels([0.3, 0.8]):
        w = W.copy()
        keep = obs.prune_(w, level)
        assert isinstance(keep, np.ndarray) and keep.dtype == np.bool_
        assert (w[~keep] == 0).all() and (~keep).sum() > 0
    dense = W.copy()
    assert obs.prune_(dense, "8:8").all() and np.array_equal(dense, W)


def test_dead_inputs_are_zeroed_and_pruned_first():
    cols = 32
    H = spd_gram(cols, 64, 12, dead=(0, 9))
    W = weights(5, cols, 13) + 3  # no weight near zero
    w = W.clone()
    keep = msp.OBS(H.float()).prune_(w, "6:8")
    assert not keep[:, [0, 9]].any() and (w[:, [0, 9]] == 0).all()
    dense = W.clone()
    assert msp.OBS(H.float()).prune_(dense, 0.0).all()
    assert (dense[:, [0, 9]] == 0).all() and torch.equal(dense[:, 1:9], W[:, 1:9])


def test_concurrent_prunes_on_one_solver_equal_serial():
    cols = 64
    obs = msp.OBS(spd_gram(cols, 128, 14).float())
    levels = ["2:8", 0.5, "1:4", 0.75]
    inputs = [weights(300, cols, 15 + k) for k in range(len(levels))]
    serial = []
    for W, level in zip(inputs, levels):
        w = W.clone()
        obs.prune_(w, level)
        serial.append(w)
    results = [None] * 8

    def run(i):
        w = inputs[i % 4].clone()
        obs.prune_(w, levels[i % 4])
        results[i] = w

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        assert torch.equal(results[i], serial[i % 4])


def test_torch_in_place_bumps_the_autograd_version_and_refuses_copies():
    cols = 32
    obs = msp.OBS(spd_gram(cols, 64, 16).float())
    W = weights(8, cols, 17)
    version = W._version
    obs.prune_(W, "2:4")
    assert W._version > version
    with pytest.raises(ValueError):
        obs.prune_(weights(cols, 8, 18).T, "2:4")  # not contiguous: never copied
    leaf = weights(8, cols, 19).requires_grad_()
    with pytest.raises(ValueError):
        obs.prune_(leaf, "2:4")


def test_bad_input_raises_and_leaves_the_weights_unchanged():
    cols = 16
    H = spd_gram(cols, 32, 20).float()
    obs = msp.OBS(H)
    W = weights(4, cols, 21)
    bad = W.clone()
    bad[1, 3] = float("nan")
    cases = [
        (bad, 0.5, 128, r"weights\[1\]\[3\]"),
        (W.clone(), "2:3", 128, "multiple of m"),
        (W.clone(), 0.5, 0, "block"),
        (W.clone(), 1.5, 128, "sparsity"),
        (weights(4, 8, 22), 0.5, 128, "differs"),
    ]
    for w, level, block, words in cases:
        before = w.clone()
        with pytest.raises((InvalidArgumentError, ValueError), match=words):
            obs.prune_(w, level, block=block)
        assert torch.equal(w.view(torch.int32), before.view(torch.int32))
    with pytest.raises(TypeError):
        obs.prune_(W.double(), 0.5)
    with pytest.raises(TypeError):
        obs.prune_(W.clone(), 0.5, block=2.0)


def test_bad_gram_matrices_raise_clear_errors():
    cols = 8
    H = spd_gram(cols, 16, 23).float()
    with pytest.raises(InvalidArgumentError, match="positive definite.*larger damp"):
        msp.OBS(-H)
    broken = H.clone()
    broken[5, 2] = float("inf")
    with pytest.raises(InvalidArgumentError, match=r"gram\[5\]\[2\]"):
        msp.OBS(broken)
    broken = H.clone()
    broken[2, 5] = float("nan")  # above the diagonal: not read
    msp.OBS(broken).close()
    for damp in (-0.01, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError, match="damp"):
            msp.OBS(H, damp=damp)
    with pytest.raises(ValueError, match="square"):
        msp.OBS(H[:, :4])
    with pytest.raises(TypeError):
        msp.OBS(H, damp="0.01")


def test_overflowing_results_raise_and_leave_the_weights_unchanged():
    cols = 16
    x = torch.randn(6, cols, generator=torch.Generator().manual_seed(24), dtype=torch.float64)
    obs = msp.OBS((x.T @ x).float(), damp=1e-6)  # rank 6: huge error spreading
    w = (weights(3, cols, 25).clamp(-2, 2) * 30000).half()  # finite: |w| <= 60000 < 65504
    before = w.clone()
    with pytest.raises(InvalidArgumentError, match="overflow float16"):
        obs.prune_(w, 0.9)
    assert torch.equal(w.view(torch.int16), before.view(torch.int16))


def test_closed_solver_raises_and_close_waits_for_prunes():
    obs = msp.OBS(np.eye(4, dtype=np.float32))
    obs.close()
    obs.close()
    with pytest.raises(InvalidStateError):
        obs.prune_(np.ones((2, 4), np.float32), 0.5)
    with msp.OBS(np.eye(4, dtype=np.float32)) as obs:
        assert "cols=4" in repr(obs)
    assert "closed" in repr(obs)


def test_reference_factor_is_the_upper_cholesky_factor_of_the_inverse():
    # The reference's own preparation, checked against its definition.
    H = spd_gram(12, 30, 26, dead=(3,))
    U, dead = upper_inverse_factor(H, 0.01)
    assert dead.tolist() == [i == 3 for i in range(12)]
    prepared = H.clone()
    prepared[3, 3] = 1
    prepared += 0.01 * torch.diag(prepared).mean() * torch.eye(12, dtype=H.dtype)
    assert torch.allclose(U.T @ U, torch.linalg.inv(prepared), rtol=1e-9, atol=1e-12)
    assert torch.equal(U, torch.triu(U))
