"""msp.costs.cost_table against a float64 numpy reference with its own masks."""

import math

import numpy as np
import pytest

import msp
from msp.costs import cost_table
from msp._arrays import level_array

NM_LEVELS = [(0.0, 4, 4), (0.125, 7, 8), (0.25, 3, 4), (0.5, 2, 4), (0.625, 3, 8), (0.75, 1, 4), (0.875, 1, 8)]
UNSTRUCTURED_LEVELS = [(0.0, 0, 0), (0.1, 0, 0), (0.3, 0, 0), (0.5, 0, 0), (0.75, 0, 0), (0.9, 0, 0)]
MIXED_LEVELS = [(0.2, 0, 0), (0.5, 2, 4), (0.6, 0, 0), (0.75, 1, 4), (0.875, 1, 8), (0.95, 0, 0)]
LEVEL_SETS = [NM_LEVELS, UNSTRUCTURED_LEVELS, MIXED_LEVELS]


def _order(scores):
    """Indices of a 1-D score vector in the kernels' keep order: score descending, index ascending."""
    return np.argsort(-scores.astype(np.float64), kind="stable")


def reference_keep(w, level, scope, col_scale):
    """Keep mask of one level, computed independently of the library."""
    sparsity, n, m = level
    w32 = w.astype(np.float32)
    scale = np.ones(w.shape[1], np.float32) if col_scale is None else col_scale.astype(np.float32)
    scores = np.abs(w32) * scale  # float32, as the kernels score
    rows, cols = w.shape
    keep = np.ones(w.shape, dtype=bool)
    if n and n == m:
        return keep
    if n:
        for r in range(rows):
            for g in range(0, cols, m):
                order = _order(scores[r, g : g + m])
                keep[r, g + order[n:]] = False
        return keep
    if scope == "row":
        pruned = math.floor(sparsity * cols)
        for r in range(rows):
            order = _order(scores[r])
            if pruned:
                keep[r, order[cols - pruned :]] = False
        return keep
    pruned = math.floor(sparsity * rows * cols)
    order = _order(scores.ravel())
    flat = keep.ravel()
    if pruned:
        flat[order[rows * cols - pruned :]] = False
    return flat.reshape(w.shape)


def reference_energy(w, levels, scope, col_scale, diag, scale):
    w64 = w.astype(np.float64)
    d = np.ones(w.shape) if diag is None else diag.astype(np.float64)
    return np.array([scale * np.sum((w64**2 * d)[~reference_keep(w, lv, scope, col_scale)]) for lv in levels])


def reference_reconstruction(w, levels, scope, col_scale, gram):
    w64 = w.astype(np.float64)
    h = gram.astype(np.float64)
    out = []
    for lv in levels:
        dw = np.where(reference_keep(w, lv, scope, col_scale), 0.0, w64)
        out.append(np.einsum("ri,ij,rj->", dw, h, dw))
    return np.array(out)


def random_weights(rng, rows, cols, dtype):
    # Small integers give many ties; the rest are continuous.
    w = rng.standard_normal((rows, cols))
    ties = rng.random((rows, cols)) < 0.3
    w[ties] = rng.integers(-2, 3, size=ties.sum())
    return w.astype(dtype)


def random_gram(rng, cols):
    x = rng.standard_normal((2 * cols, cols))
    return (x.T @ x / (2 * cols) + np.eye(cols)).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("scope", ["row", "layer"])
@pytest.mark.parametrize("levels", LEVEL_SETS, ids=["nm", "unstructured", "mixed"])
def test_energy_matches_reference(dtype, scope, levels):
    rng = np.random.default_rng(7)
    for rows, cols in [(1, 8), (7, 16), (13, 40)]:
        w = random_weights(rng, rows, cols, dtype)
        for col_scale in [None, rng.integers(0, 3, cols).astype(np.float32)]:
            for diag in [None, rng.random((rows, cols)).astype(np.float32)]:
                got = cost_table(w, levels, "energy", scope, col_scale=col_scale, diag=diag, scale=0.3)
                expected = reference_energy(w, levels, scope, col_scale, diag, 0.3)
                assert got.dtype == np.float64 and got.shape == (len(levels),)
                np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("scope", ["row", "layer"])
@pytest.mark.parametrize("levels", LEVEL_SETS, ids=["nm", "unstructured", "mixed"])
def test_reconstruction_matches_reference(dtype, scope, levels):
    rng = np.random.default_rng(11)
    for rows, cols in [(1, 8), (7, 16), (13, 40)]:
        w = random_weights(rng, rows, cols, dtype)
        gram = random_gram(rng, cols)
        for col_scale in [None, rng.integers(0, 3, cols).astype(np.float32)]:
            got = cost_table(w, levels, "reconstruction", scope, col_scale=col_scale, gram=gram)
            expected = reference_reconstruction(w, levels, scope, col_scale, gram)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0)


def test_identity_gram_gives_the_pruned_energy():
    rng = np.random.default_rng(3)
    w = random_weights(rng, 5, 24, np.float32)
    energy = cost_table(w, MIXED_LEVELS)
    error = cost_table(w, MIXED_LEVELS, "reconstruction", gram=np.eye(24))
    np.testing.assert_allclose(error, energy, rtol=1e-6)
    assert np.all(np.diff(energy) >= 0)  # nested masks: sparser levels prune more


def test_levels_in_several_forms():
    w = np.arange(1, 17, dtype=np.float32).reshape(2, 8)

    class Level:
        def __init__(self, sparsity, n=None, m=None):
            self.sparsity, self.n, self.m = sparsity, n, m

    as_tuples = cost_table(w, [(0.25, 0, 0), (0.5, 2, 4)])
    assert as_tuples.tolist() == [1 + 4 + 81 + 100, 1 + 4 + 25 + 36 + 81 + 100 + 169 + 196]
    assert cost_table(w, [0.25, Level(0.5, 2, 4)]).tolist() == as_tuples.tolist()
    assert cost_table(w, level_array([Level(0.25), (0.5, 2, 4)])).tolist() == as_tuples.tolist()


def test_non_contiguous_weights_are_read_through_a_copy():
    rng = np.random.default_rng(5)
    w = random_weights(rng, 8, 16, np.float32)
    np.testing.assert_array_equal(cost_table(w.T, NM_LEVELS[:4]), cost_table(np.ascontiguousarray(w.T), NM_LEVELS[:4]))


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    w = random_weights(rng, 6, 16, np.float32)
    gram = random_gram(rng, 16)
    for dtype in [torch.float32, torch.float16, torch.bfloat16]:
        t = torch.from_numpy(w).to(dtype)
        wf = t.float().numpy()  # the exact values the library reads
        np.testing.assert_allclose(
            cost_table(t, MIXED_LEVELS, scope="layer"), reference_energy(wf, MIXED_LEVELS, "layer", None, None, 1.0),
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            cost_table(t, MIXED_LEVELS, "reconstruction", gram=torch.from_numpy(gram)),
            reference_reconstruction(wf, MIXED_LEVELS, "row", None, gram),
            rtol=1e-5,
        )


def test_bad_input():
    w = np.ones((2, 12), np.float32)
    with pytest.raises(ValueError, match="kind"):
        cost_table(w, NM_LEVELS, kind="fisher")
    with pytest.raises(ValueError, match="scope"):
        cost_table(w, UNSTRUCTURED_LEVELS, scope="column")
    with pytest.raises(ValueError, match="needs gram"):
        cost_table(w, UNSTRUCTURED_LEVELS, "reconstruction")
    with pytest.raises(ValueError, match="energy"):
        cost_table(w, UNSTRUCTURED_LEVELS, "reconstruction", gram=np.eye(12), scale=2.0)
    with pytest.raises(ValueError, match="reconstruction"):
        cost_table(w, UNSTRUCTURED_LEVELS, gram=np.eye(12))
    with pytest.raises(ValueError, match="shape"):
        cost_table(w, UNSTRUCTURED_LEVELS, diag=np.ones((12, 2)))
    with pytest.raises(ValueError, match="shape"):
        cost_table(w, UNSTRUCTURED_LEVELS, "reconstruction", gram=np.eye(11))
    with pytest.raises(ValueError, match="empty"):
        cost_table(w, [])
    with pytest.raises(TypeError):
        cost_table(w, [None])
    with pytest.raises(TypeError):
        cost_table(w, None)
    with pytest.raises(TypeError):
        cost_table(w.astype(np.float64), UNSTRUCTURED_LEVELS)
    with pytest.raises(msp.InvalidArgumentError, match=r"level 1 \(1:8\): cols \(12\) is not a multiple of m"):
        cost_table(w, [(0.5, 2, 4), (0.875, 1, 8)])
    with pytest.raises(msp.InvalidArgumentError, match="strictly increasing"):
        cost_table(w, [(0.5, 0, 0), (0.25, 0, 0)])
    with pytest.raises(msp.InvalidArgumentError, match="sparsity"):
        cost_table(w, [(0.4, 2, 4)])
    with pytest.raises(msp.InvalidArgumentError, match="scale"):
        cost_table(w, UNSTRUCTURED_LEVELS, scale=-1.0)
    bad = w.copy()
    bad[1, 3] = np.nan
    with pytest.raises(msp.InvalidArgumentError, match=r"weights\[1\]\[3\] is NaN"):
        cost_table(bad, UNSTRUCTURED_LEVELS)
    bad[1, 3] = np.inf
    with pytest.raises(msp.InvalidArgumentError, match=r"weights\[1\]\[3\] \(inf\) is not finite"):
        cost_table(bad, UNSTRUCTURED_LEVELS, "reconstruction", gram=np.eye(12))
    gram = np.eye(12)
    gram[2, 5] = np.nan
    with pytest.raises(msp.InvalidArgumentError, match=r"gram\[2\]\[5\] \(nan\) is not finite"):
        cost_table(w, UNSTRUCTURED_LEVELS, "reconstruction", gram=gram)
