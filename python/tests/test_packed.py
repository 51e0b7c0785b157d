"""msp.nm_pack, msp.PackedNM and msp.nm_linear against numpy references written here.

Pack reference: the stable-sort N:M keep mask of |w| (times col_scale, in a float32 multiply), the
kept weights of each row in column order, and the index as the keep mask's bits (``np.packbits``
little-endian per row, padded to 4 bytes per 32 columns). Compared bit for bit.

Product reference: float64 ``x @ W_masked.T``. Bound used: |y - y64| <= (ceil(cols / 64) + 6) *
2**-24 * sum_c |W[r, c] * x[c]|, recursive summation's bound for the kernels' chains of
ceil(cols / 64) fused multiply-adds per partial sum plus the 6 additions that fold them. A bfloat16
or float16 result must equal the float32 result (x widened exactly) rounded by torch / numpy.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import msp
from conftest import PYTHON_DIR
from masking_reference import ref_nm_keep

try:
    import torch
except ImportError:  # the torch cases skip
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
BACKENDS = ["np-f32", "np-f16", "torch-f32", "torch-f16", "torch-bf16"]
LEVELS = [(1, 2), (1, 4), (2, 4), (3, 4), (1, 8), (2, 8), (4, 8), (7, 8), (3, 16), (8, 32), (31, 32), (2, 3), (5, 12)]


def build(values, backend):
    """``values`` (float32) in the buffer of ``backend``, rounded to its dtype."""
    values = np.ascontiguousarray(values, np.float32)
    if backend.startswith("torch"):
        if torch is None:
            pytest.skip("torch is not installed")
        dtype = {"torch-f32": torch.float32, "torch-f16": torch.float16, "torch-bf16": torch.bfloat16}[backend]
        return torch.from_numpy(values.copy()).to(dtype)
    return values.astype(np.float32 if backend == "np-f32" else np.float16)


def as_float(x):
    """The exact float32 values of an array or tensor."""
    if torch is not None and isinstance(x, torch.Tensor):
        return x.float().numpy()
    return np.asarray(x, np.float32)


def bits(x):
    """The stored bit patterns of an array or tensor, as unsigned integers."""
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.contiguous().view(torch.int32 if x.element_size() == 4 else torch.int16).numpy()
    return np.ascontiguousarray(x).view(np.uint32 if x.itemsize == 4 else np.uint16)


def reference_pack(w, n, m, scale=None):
    """(values bits [rows, cols/m*n], index bytes [rows, 4*ceil(cols/32)], masked-matrix bits)."""
    rows, cols = w.shape
    scores = np.abs(as_float(w))
    if scale is not None:
        scores = scores * np.asarray(scale, np.float32)
    keep = ref_nm_keep(scores, n, m)
    b = bits(w)
    values = b[keep].reshape(rows, cols // m * n)
    padded = np.zeros((rows, 32 * -(-cols // 32)), bool)
    padded[:, :cols] = keep
    index = np.packbits(padded, axis=1, bitorder="little")
    return values, index, np.where(keep, b, 0).astype(b.dtype)


def rng_matrix(rows, cols, seed, integers=False):
    rng = np.random.default_rng(seed)
    if integers:  # many ties
        return rng.integers(-3, 4, (rows, cols)).astype(np.float32)
    return rng.standard_normal((rows, cols)).astype(np.float32)


# --- packing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level", LEVELS)
def test_pack_equals_reference_and_unpacks_to_the_masked_matrix(backend, level):
    n, m = level
    for rows, groups, integers in [(1, 1, False), (5, 7, True), (9, 40, False)]:
        cols = groups * m
        w = build(rng_matrix(rows, cols, rows * groups + m, integers), backend)
        before = bits(w).copy()
        scale = np.random.default_rng(cols).integers(0, 4, cols) * 0.5
        for col_scale in [None, scale]:
            packed = msp.nm_pack(w, level, col_scale=col_scale)
            values, index, dense = reference_pack(w, n, m, col_scale)
            assert type(packed.values) is type(w) and packed.dtype == w.dtype
            assert np.array_equal(bits(packed.values), values)
            assert np.array_equal(np.asarray(packed.index), index)
            assert np.array_equal(bits(packed.unpack()), dense)
            assert packed.shape == (rows, cols) and packed.level == msp.Level.nm(n, m)
            assert packed.nbytes == values.nbytes + index.nbytes
        assert np.array_equal(bits(w), before), "nm_pack changed the weight"


@pytest.mark.parametrize("backend", BACKENDS)
def test_pruned_weight_packs_its_nonzeros_and_round_trips(backend):
    w = build(rng_matrix(17, 96, 3, integers=True), backend)
    msp.prune_nm_(w, 2, 8)
    packed = msp.nm_pack(w, "2:8")
    assert np.array_equal(bits(packed.unpack()), bits(w))
    nonzero = bits(w)[as_float(w) != 0]
    stored = bits(packed.values)
    assert np.array_equal(stored[as_float(packed.values) != 0], nonzero)


def test_level_forms_and_bad_levels():
    w = rng_matrix(4, 16, 1)
    for level in ["2:8", (2, 8), msp.Level.nm(2, 8)]:
        assert np.array_equal(msp.nm_pack(w, level).values, msp.nm_pack(w, "2:8").values)
    for level in ["8:8", "70%", 0.5]:
        with pytest.raises(ValueError, match="N:M level with n < m"):
            msp.nm_pack(w, level)
    with pytest.raises(ValueError):
        msp.nm_pack(w, (9, 8))
    with pytest.raises(msp.InvalidArgumentError, match=r"cols \(16\) must be a multiple of m \(3\)"):
        msp.nm_pack(w, "1:3")


def test_nan_weight_is_an_error_and_leaves_the_weight():
    w = rng_matrix(3, 16, 2)
    w[1, 5] = np.nan
    before = w.copy()
    with pytest.raises(msp.InvalidArgumentError, match=r"weights\[1\]\[5\] is NaN"):
        msp.nm_pack(w, "2:8")
    assert np.array_equal(before, w, equal_nan=True)
    with pytest.raises(TypeError):
        msp.nm_pack(w.astype(np.float64), "2:8")


@needs_torch
def test_constructor_from_arrays():
    w = torch.randn(6, 64).to(torch.bfloat16)
    packed = msp.nm_pack(w, "2:8")
    loaded = msp.PackedNM(packed.values.clone(), packed.index.clone(), (6, 64), "2:8")
    assert torch.equal(loaded.unpack().view(torch.int16), packed.unpack().view(torch.int16))
    # A non-contiguous index is copied.
    wide = torch.zeros(6, 16, dtype=torch.uint8)
    wide[:, ::2] = packed.index
    assert torch.equal(msp.PackedNM(packed.values, wide[:, ::2], (6, 64), (2, 8)).index, packed.index)
    with pytest.raises(ValueError, match=r"values must have shape \(6, 16\)"):
        msp.PackedNM(packed.values[:, :8], packed.index, (6, 64), "2:8")
    with pytest.raises(ValueError, match=r"index must have shape \(6, 8\)"):
        msp.PackedNM(packed.values, packed.index[:, :4], (6, 64), "2:8")
    with pytest.raises(TypeError, match="uint8"):
        msp.PackedNM(packed.values, packed.index.to(torch.int16), (6, 64), "2:8")
    with pytest.raises(TypeError, match="must both be numpy arrays or both torch tensors"):
        msp.PackedNM(packed.values, packed.index.numpy(), (6, 64), "2:8")
    with pytest.raises(ValueError, match="multiple of m"):
        msp.PackedNM(packed.values, packed.index, (6, 60), "2:8")
    for name in ("values", "index", "shape", "level"):
        with pytest.raises(AttributeError):
            setattr(loaded, name, getattr(packed, name))
    # A corrupt index: caught by the library when it is read, naming the row and group.
    bad = msp.PackedNM(packed.values, packed.index.clone(), (6, 64), "2:8")
    bad.index[4, 1] = 0xFF
    with pytest.raises(msp.InvalidArgumentError, match=r"index row 4: group 1 \(columns 8..<16\) marks 8 kept"):
        bad.unpack()
    with pytest.raises(msp.InvalidArgumentError, match="index row 4"):
        msp.nm_linear(torch.ones(2, 64), bad)


# --- the product ---------------------------------------------------------------------------------


def product_bound(x, dense):
    """The error bound of the module docstring, per output element."""
    cols = dense.shape[1]
    return (np.ceil(cols / 64) + 6) * 2.0**-24 * (np.abs(x.astype(np.float64)) @ np.abs(dense.astype(np.float64)).T)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level", LEVELS)
def test_product_is_within_float32_rounding_of_the_masked_dense_product(backend, level):
    n, m = level
    for rows, groups, batch in [(1, 1, 1), (7, 13, 3), (33, 70, 1), (5, 9, 16)]:
        cols = groups * m
        w = build(rng_matrix(rows, cols, rows + cols), backend)
        packed = msp.nm_pack(w, level)
        dense = as_float(packed.unpack())
        x = np.random.default_rng(batch).standard_normal((batch, cols)).astype(np.float32)
        y = msp.nm_linear(x, packed)
        assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (batch, rows)
        exact = x.astype(np.float64) @ dense.astype(np.float64).T
        assert np.all(np.abs(y - exact) <= product_bound(x, dense))


@needs_torch
@pytest.mark.parametrize("x_dtype", ["bfloat16", "float16"])
def test_rounded_results_equal_the_float32_result_rounded(x_dtype):
    dtype = getattr(torch, x_dtype)
    packed = msp.nm_pack(torch.randn(45, 256).to(torch.bfloat16), "2:8")
    x = torch.randn(2, 7, 256).to(dtype)
    y = msp.nm_linear(x, packed)
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == (2, 7, 45)
    wide = msp.nm_linear(x.float(), packed)  # the same float32 sums: x widens exactly
    assert torch.equal(y.view(torch.int16), wide.to(dtype).view(torch.int16))
    dense = packed.unpack().float().numpy()
    exact = x.float().numpy().reshape(14, 256).astype(np.float64) @ dense.astype(np.float64).T
    assert np.all(np.abs(wide.numpy().reshape(14, 45) - exact) <= product_bound(x.float().numpy().reshape(14, 256), dense))


@needs_torch
def test_same_bits_for_any_thread_count_and_any_batch():
    packed = msp.nm_pack(torch.randn(301, 1024).to(torch.bfloat16), "2:8")
    x = torch.randn(37, 1024).to(torch.bfloat16)
    results = []
    for threads in [1, 2, 3]:
        msp.set_num_threads(threads)
        results.append(msp.nm_linear(x, packed).view(torch.int16))
    assert all(torch.equal(results[0], r) for r in results[1:])
    for t in [0, 15, 36]:
        assert torch.equal(msp.nm_linear(x[t], packed).view(torch.int16), results[0][t])


@needs_torch
def test_shapes_kinds_and_bad_tokens():
    packed = msp.nm_pack(torch.randn(8, 32), "1:4")
    assert msp.nm_linear(torch.zeros(0, 3, 32), packed).shape == (0, 3, 8)
    assert msp.nm_linear(np.zeros((2, 32), np.float32), packed).shape == (2, 8)
    strided = torch.randn(32, 4).T  # not contiguous: copied
    assert torch.equal(msp.nm_linear(strided, packed), msp.nm_linear(strided.contiguous(), packed))
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 32\]"):
        msp.nm_linear(torch.zeros(2, 31), packed)
    with pytest.raises(TypeError, match="float64"):
        msp.nm_linear(torch.zeros(2, 32, dtype=torch.float64), packed)
    with pytest.raises(TypeError, match="msp.PackedNM"):
        msp.nm_linear(torch.zeros(2, 32), packed.values)
    with pytest.raises(ValueError, match="no backward"):
        msp.nm_linear(torch.zeros(2, 32, requires_grad=True), packed)
    with torch.no_grad():
        assert msp.nm_linear(torch.zeros(2, 32, requires_grad=True), packed).shape == (2, 8)


# --- the instruction sets ------------------------------------------------------------------------

_PROBE = """
import hashlib, json, numpy as np, msp
rng = np.random.default_rng(0)
out = {"isa": msp._lib.lib.msp_nm_linear_isa().decode()}
for dtype, level in [(np.float32, "2:8"), (np.float16, "3:16"), (np.float32, "5:12")]:
    w = rng.standard_normal((67, 1536)).astype(dtype)
    packed = msp.nm_pack(w, level)
    for batch in (1, 5, 16, 20):
        x = rng.standard_normal((batch, 1536)).astype(np.float32)
        out[f"{dtype.__name__} {level} {batch}"] = hashlib.sha256(msp.nm_linear(x, packed).tobytes()).hexdigest()
print(json.dumps(out))
"""


def _probe(isa):
    env = dict(os.environ)
    env.pop("MSP_ISA", None)
    if isa:
        env["MSP_ISA"] = isa
    result = subprocess.run([sys.executable, "-c", _PROBE], cwd=PYTHON_DIR, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_instruction_set_gives_the_same_bits():
    """MSP_ISA caps the kernels (read once per process); every path the CPU runs gives the same bits."""
    default = _probe(None)
    order = ["portable", "avx2", "avx512"]
    assert default["isa"] in order
    for isa in order[: order.index(default["isa"])]:
        capped = _probe(isa)
        assert capped.pop("isa") == isa
        assert capped == {k: v for k, v in default.items() if k != "isa"}, f"{isa} differs from {default['isa']}"
