"""Hostile inputs from Python: property-based tests (hypothesis) over the public API.

Property, for every call: it either succeeds with a result equal to a reference written here, or
raises a documented exception (``TypeError`` for wrong types; ``ValueError``, ``MemoryError`` or
``RuntimeError``, which the ``msp.MSPError`` subclasses also are, for wrong values and states), and
every caller buffer is byte-identical after an error. The tests predict *which* of the two must
happen from the documented rules (docstrings and ``include/msp.h``), so a call that should fail but
succeeds, or the reverse, fails the test too.

References (as in test_masking.py): within a comparison group order by score descending, then index
ascending (``np.argsort(-score, kind="stable")``), keep the first ones. Prune scores are |w| widened
exactly to float32 times col_scale in a float32 multiply. Fisher sums use ``math.fsum`` of exact
float64 squares.

Inputs: shapes (zero-size, 1xN, Nx1, columns not a multiple of M), dtypes (float32/float16 numpy,
float32/float16/bfloat16 torch; float64, integer, bool, complex, object, byte-swapped refused),
layouts (C-contiguous, transposed, strided, zero-stride, offset views, read-only, misaligned),
payloads (normal, ties, signed zeros, subnormals, huge, inf, NaN), scalars of every wrong type and
out of range, huge claimed sizes, memory shared between arguments, and fitness callbacks that
raise, return NaN or non-floats, or call back into msp.
"""

import gc
import math
import numbers
import threading
import warnings
import weakref

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import msp
from msp.errors import InvalidArgumentError, InvalidStateError, MSPCancelled, MSPError
from masking_reference import ref_nm_keep, ref_topk_keep

try:
    import torch
except ImportError:  # the torch cases are not drawn
    torch = None

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
BACKENDS = ["np-f32", "np-f16"] + (["torch-f32", "torch-f16", "torch-bf16"] if torch is not None else [])
PAYLOADS = ["normal", "ties", "zeros", "subnormal", "huge", "inf", "nan"]
LAYOUTS = ["contiguous", "transposed", "strided", "zero-stride", "offset", "readonly", "misaligned"]

# --- buffers ------------------------------------------------------------------------------------------


def is_torch(x):
    return torch is not None and isinstance(x, torch.Tensor)


def raw_bits(x):
    """A copy of the stored bit patterns of an array or tensor, as unsigned integers."""
    if is_torch(x):
        x = x.view(torch.int32 if x.element_size() == 4 else torch.int16).numpy()
    return np.array(x, copy=True).view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[x.itemsize])


def widen(x):
    """The exact float32 values of an array or tensor (any layout)."""
    if is_torch(x):
        if x.dtype == torch.bfloat16:
            return (raw_bits(x.contiguous()).astype(np.uint32) << 16).view(np.float32)
        return x.float().numpy().copy()
    return np.asarray(x).astype(np.float32)


def payload_values(kind, shape, rng, dtype_name):
    """float32 test values of one kind, representable (or deliberately overflowing) in the dtype."""
    size = int(np.prod(shape))
    if kind == "normal":
        v = rng.standard_normal(size).astype(np.float32)
    elif kind == "ties":
        v = rng.integers(-2, 3, size).astype(np.float32)
    elif kind == "zeros":
        v = rng.choice(np.array([0.0, -0.0, 1.0, -1.0], np.float32), size)
    elif kind == "subnormal":
        tiny = {"f16": 2.0**-24, "bf16": 2.0**-133, "f32": 2.0**-149}[dtype_name]
        v = (rng.integers(-1000, 1000, size) * tiny).astype(np.float32)
    elif kind == "huge":
        top = {"f16": 65504.0, "bf16": 3.3e38, "f32": 3.4e38}[dtype_name]
        v = (rng.choice(np.array([-1, 1], np.float32), size) * np.float32(top) * rng.uniform(0.5, 1, size)).astype(np.float32)
    elif kind == "inf":
        v = rng.integers(-3, 4, size).astype(np.float32)
        v[rng.random(size) < 0.3] = np.inf
        v[rng.random(size) < 0.2] = -np.inf
    elif kind == "nan":
        v = rng.standard_normal(size).astype(np.float32)
        if size:
            v[rng.integers(0, size)] = np.nan
    else:
        raise AssertionError(kind)
    return v.reshape(shape)


def _typed(values, backend):
    """A fresh C-contiguous buffer of ``backend`` holding float32 ``values`` (rounded)."""
    if backend == "np-f32":
        return values.copy()
    if backend == "np-f16":
        with np.errstate(over="ignore"):
            return values.astype(np.float16)
    t = torch.from_numpy(values.copy())
    return t.to({"torch-f32": torch.float32, "torch-f16": torch.float16, "torch-bf16": torch.bfloat16}[backend])


def with_layout(base, layout):
    """The same values as ``base`` (2-D, C-contiguous) in another memory layout."""
    rows, cols = base.shape
    if layout == "contiguous":
        return base
    if is_torch(base):
        if layout == "transposed":
            return base.T.contiguous().T
        if layout == "strided":
            big = torch.zeros((rows, 2 * cols), dtype=base.dtype)
            big[:, ::2] = base
            return big[:, ::2]
        if layout == "zero-stride":
            return base[:1].expand(rows, cols) if rows else base
        if layout in ("offset", "readonly"):  # torch has no read-only flag: an offset view
            big = torch.zeros(base.numel() + 3, dtype=base.dtype)
            big[3:] = base.reshape(-1)
            return big[3:].view(rows, cols)
        if layout == "misaligned":  # torch does not check alignment; the data is still valid
            if base.numel() == 0:
                return base
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # frombuffer on a bytearray warns about writability
                t = torch.frombuffer(bytearray(base.numel() * base.element_size() + 1), dtype=base.dtype, offset=1,
                                     count=base.numel())
            t = t.view(rows, cols)
            t.copy_(base)
            return t
        raise AssertionError(layout)
    if layout == "transposed":
        return np.ascontiguousarray(base.T).T
    if layout == "strided":
        big = np.zeros((rows, 2 * cols), base.dtype)
        big[:, ::2] = base
        return big[:, ::2]
    if layout == "zero-stride":
        return np.broadcast_to(base[:1], (rows, cols)) if rows else base
    if layout == "offset":
        big = np.zeros(base.size + 3, base.dtype)
        big[3:] = base.ravel()
        return big[3:].reshape(rows, cols)
    if layout == "readonly":
        x = base.copy()
        x.flags.writeable = False
        return x
    if layout == "misaligned":
        if base.size == 0:
            return base
        x = np.frombuffer(bytearray(base.nbytes + 1), base.dtype, count=base.size, offset=1).reshape(rows, cols)
        x[...] = base
        return x
    raise AssertionError(layout)


def writable_in_place(x):
    """What the package promises to write in place: the rules of ``msp._arrays``."""
    if is_torch(x):
        return x.is_contiguous()
    return x.flags.c_contiguous and x.flags.aligned and x.flags.writeable


@st.composite
def matrices(draw, max_rows=5, max_cols=40, cols=None, friendly=False):
    """A 2-D buffer; ``friendly`` draws only non-empty, NaN-free, writable in-place layouts."""
    backend = draw(st.sampled_from(BACKENDS))
    rows = draw(st.integers(1 if friendly else 0, max_rows))
    if cols is None:
        cols = draw(st.integers(1 if friendly else 0, max_cols))
    payload = draw(st.sampled_from([p for p in PAYLOADS if p != "nan"] if friendly else PAYLOADS))
    layout = draw(st.sampled_from(["contiguous", "offset"] if friendly else LAYOUTS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = payload_values(payload, (rows, cols), rng, backend.split("-")[1])
    return with_layout(_typed(values, backend), layout)


# --- the masking reference ------------------------------------------------------------------------


def prune_scores(w32, scale):
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.abs(w32)
        if scale is not None:
            s = s * scale[None, :]
    return s


def mask_as_numpy(mask, like):
    if is_torch(like):
        assert is_torch(mask) and mask.dtype == torch.bool and tuple(mask.shape) == tuple(like.shape)
        return mask.numpy()
    assert isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == like.shape
    return mask


def expect(error, call, *buffers):
    """Run ``call``; if ``error`` is None it must succeed, else raise an instance of ``error``.

    Every buffer in ``buffers`` must be byte-identical after an error. Returns the call's result.
    """
    before = [raw_bits(b) for b in buffers]
    event("expect success" if error is None else f"expect {error.__name__}")
    try:
        result = call()
    except (TypeError, ValueError, MemoryError, RuntimeError) as raised:
        if error is None:
            raise AssertionError(f"expected success, got {type(raised).__name__}: {raised}") from raised
        assert isinstance(raised, error), f"expected {error}, got {type(raised).__name__}: {raised}"
        if isinstance(raised, MSPError):
            assert raised.message and isinstance(raised.status, int)
        for b, bits in zip(buffers, before):
            assert np.array_equal(raw_bits(b), bits), "a buffer changed although the call failed"
        return None
    assert error is None, f"expected {error}, but the call succeeded"
    return result


# --- scalar strategies -------------------------------------------------------------------------------

valid_patterns = st.integers(1, 32).flatmap(lambda m: st.tuples(st.integers(1, max(1, m - 1)), st.just(m)))
any_ints = st.one_of(st.integers(-3, 40), st.sampled_from([2**31, -(2**31) - 1, 2**63, -(2**70)]))
patterns = st.one_of(valid_patterns, valid_patterns, st.tuples(any_ints, any_ints))
sparsities = st.one_of(
    st.floats(0.0, 1.0, exclude_max=True),
    st.sampled_from([0.0, -0.0, 5e-324, 0.5, 0.9999999999999999, 1.0, -1e-300, 1.5, math.inf, -math.inf, math.nan]),
)


def any_cols(m):
    """Any column count, often a multiple of ``m`` (so that the other rules get exercised too)."""
    return st.one_of(st.integers(0, 40), st.integers(0, 3).map(lambda k: k * m if 0 < m <= 32 else k))


def pattern_ok(n, m):
    return 0 < n < m <= 32


@st.composite
def col_scales(draw, cols, friendly=False):
    kinds = ["none", "positive", "zeros"]
    kind = draw(st.sampled_from(kinds if friendly else kinds + ["negative", "inf", "nan", "wrong-length"]))
    if kind == "none":
        return None
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = cols + (1 if kind == "wrong-length" else 0)
    s = rng.choice(np.array([0.5, 1.0, 2.0], np.float32), n)
    arbitrary = rng.random(n) < 0.5
    s[arbitrary] = rng.uniform(0.01, 4, int(arbitrary.sum())).astype(np.float32)
    if kind == "zeros":
        s[rng.random(n) < 0.4] = 0.0
    elif kind in ("negative", "inf", "nan") and n:
        s[rng.integers(0, n)] = {"negative": -1.0, "inf": np.inf, "nan": np.nan}[kind]
    form = draw(st.sampled_from(["f32", "f64", "list"] + (["torch"] if torch is not None else [])))
    if form == "f64":
        return s.astype(np.float64)
    if form == "list":
        return [float(v) for v in s]
    if form == "torch":
        return torch.from_numpy(s)
    return s


def scale_error(scale, w32):
    """The documented error of a col_scale (None when it is fine) for weights ``w32``."""
    if scale is None:
        return None
    s = np.asarray(scale.numpy() if is_torch(scale) else scale, dtype=np.float32)
    if s.shape != (w32.shape[1],):
        return ValueError
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        return ValueError
    return None


def scale_array(scale):
    return None if scale is None else np.asarray(scale.numpy() if is_torch(scale) else scale, dtype=np.float32)


# --- masking and pruning ----------------------------------------------------------------------------


@settings(max_examples=300, **SETTINGS)
@given(data=st.data(), pattern=patterns)
def test_nm_mask_matches_reference_or_raises(data, pattern):
    friendly = data.draw(st.booleans())
    n, m = data.draw(valid_patterns) if friendly else pattern
    cols = data.draw(st.integers(1, 3).map(lambda k: k * m) if friendly else any_cols(m))
    s = data.draw(matrices(cols=cols, friendly=friendly))
    rows = s.shape[0]
    values = widen(s)
    error = None
    if rows == 0 or cols == 0 or not pattern_ok(n, m) or cols % m or np.isnan(values).any():
        error = ValueError
    form = data.draw(st.sampled_from(["args", "string", "tuple"]))
    if form == "args":
        call = lambda: msp.nm_mask(s, n, m)  # noqa: E731
    elif form == "string":
        call = lambda: msp.nm_mask(s, f"{n}:{m}")  # noqa: E731
        if n < 0 or m < 0:
            error = ValueError  # "-1:4" is not of the form "n:m"
    else:
        call = lambda: msp.nm_mask(s, (n, m))  # noqa: E731
    before = raw_bits(s)
    mask = expect(error, call, s)
    assert np.array_equal(raw_bits(s), before)  # scores are never written
    if mask is not None:
        assert np.array_equal(mask_as_numpy(mask, s), ref_nm_keep(values, n, m))


def _check_pruned(w, before_bits, keep, mask):
    if mask is not None:
        assert np.array_equal(mask_as_numpy(mask, w), keep)
    expected = np.where(keep, before_bits, 0).astype(before_bits.dtype)
    assert np.array_equal(raw_bits(w), expected)


@settings(max_examples=300, **SETTINGS)
@given(data=st.data(), pattern=patterns, return_mask=st.booleans())
def test_prune_nm_matches_reference_or_raises_and_leaves_weights(data, pattern, return_mask):
    friendly = data.draw(st.booleans())
    n, m = data.draw(valid_patterns) if friendly else pattern
    cols = data.draw(st.integers(1, 3).map(lambda k: k * m) if friendly else any_cols(m))
    w = data.draw(matrices(cols=cols, friendly=friendly))
    rows = w.shape[0]
    w32 = widen(w)
    scale = data.draw(col_scales(cols, friendly))
    error = None
    if rows == 0 or cols == 0 or not writable_in_place(w):
        error = ValueError
    elif not pattern_ok(n, m) or cols % m or np.isnan(w32).any() or scale_error(scale, w32):
        error = ValueError
    elif np.isnan(prune_scores(w32, scale_array(scale))).any():  # inf weight times a zero scale
        error = ValueError
    before = raw_bits(w)
    mask = expect(error, lambda: msp.prune_nm_(w, n, m, col_scale=scale, return_mask=return_mask), w)
    if error is None:
        keep = ref_nm_keep(prune_scores(w32, scale_array(scale)), n, m)
        assert (mask is None) == (not return_mask)
        _check_pruned(w, before, keep, mask)


@settings(max_examples=300, **SETTINGS)
@given(data=st.data(), sparsity=sparsities, scope=st.sampled_from(["row", "layer"]))
def test_prune_topk_matches_reference_or_raises_and_leaves_weights(data, sparsity, scope):
    friendly = data.draw(st.booleans())
    if friendly:
        sparsity = data.draw(st.floats(0.0, 1.0, exclude_max=True))
    w = data.draw(matrices(friendly=friendly))
    rows, cols = w.shape
    w32 = widen(w)
    scale = data.draw(col_scales(cols, friendly))
    error = None
    if rows == 0 or cols == 0 or not writable_in_place(w):
        error = ValueError
    elif not (0.0 <= sparsity < 1.0) or np.isnan(w32).any() or scale_error(scale, w32):
        error = ValueError
    elif np.isnan(prune_scores(w32, scale_array(scale))).any():
        error = ValueError
    before = raw_bits(w)
    mask = expect(error, lambda: msp.prune_topk_(w, sparsity, scope=scope, col_scale=scale), w)
    if error is None:
        keep = ref_topk_keep(prune_scores(w32, scale_array(scale)), sparsity, scope)
        _check_pruned(w, before, keep, mask)


# --- wrong types -------------------------------------------------------------------------------------


def _wrong_objects():
    objects = {
        "None": None,
        "list": [[1.0] * 8] * 2,
        "str": "1.0",
        "bytes": b"\x00" * 64,
        "int": 3,
        "np-scalar": np.float32(1.0),
        "float64": np.ones((2, 8)),
        "int32": np.ones((2, 8), np.int32),
        "bool": np.ones((2, 8), bool),
        "complex64": np.ones((2, 8), np.complex64),
        "object": np.ones((2, 8), object),
        "big-endian-f32": np.ones((2, 8), ">f4"),
        "masked": np.ma.ones((2, 8), np.float32),
        "memoryview": memoryview(np.ones((2, 8), np.float32)),
    }
    if torch is not None:
        objects.update({
            "torch-int64": torch.ones(2, 8, dtype=torch.int64),
            "torch-float64": torch.ones(2, 8, dtype=torch.float64),
            "torch-complex": torch.ones(2, 8, dtype=torch.complex64),
            "torch-sparse": torch.ones(2, 8).to_sparse(),
            "torch-uint8": torch.ones(2, 8, dtype=torch.uint8),
        })
    return objects


WRONG = _wrong_objects()
ARRAY_CALLS = {
    "nm_mask": lambda x: msp.nm_mask(x, 2, 4),
    "prune_nm_": lambda x: msp.prune_nm_(x, 2, 4),
    "prune_topk_": lambda x: msp.prune_topk_(x, 0.5),
    "sum_squares": lambda x: msp.sum_squares(x),
    "FisherAccumulator.add": lambda x: msp.FisherAccumulator([16]).add(0, x),
    "add_fisher_diagonal(grad)": lambda x: msp.add_fisher_diagonal(x, np.zeros(16, np.float32)),
    "add_fisher_diagonal(diag)": lambda x: msp.add_fisher_diagonal(np.ones(16, np.float32), x),
    "cost_table": lambda x: msp.cost_table(x, [0.5]),
}


@pytest.mark.parametrize("obj", list(WRONG), ids=str)
@pytest.mark.parametrize("call", list(ARRAY_CALLS), ids=str)
def test_wrong_buffer_types_raise_type_error_and_change_nothing(call, obj):
    x = WRONG[obj]
    snapshot = None
    if isinstance(x, np.ndarray):
        snapshot = np.array(x, copy=True)
    with pytest.raises(TypeError):
        ARRAY_CALLS[call](x)
    if snapshot is not None:
        assert np.array_equal(np.asarray(x), snapshot)


def test_tensors_off_the_cpu_are_refused_with_value_error():
    if torch is None:
        pytest.skip("torch is not installed")
    meta = torch.ones(2, 8, device="meta")
    for call in ARRAY_CALLS.values():
        with pytest.raises(ValueError, match="device|meta"):
            call(meta)


def test_in_place_on_a_tensor_requiring_grad_is_refused_under_grad_mode():
    if torch is None:
        pytest.skip("torch is not installed")
    w = torch.randn(4, 8, requires_grad=True)
    before = w.detach().clone()
    for call in (lambda: msp.prune_nm_(w, 2, 4), lambda: msp.prune_topk_(w, 0.5)):
        with pytest.raises(ValueError, match="requires grad"):
            call()
        assert torch.equal(w.detach(), before)
    with torch.no_grad():
        msp.prune_nm_(w, 2, 4)
    assert int((w.detach() != 0).sum()) == 16


ANY_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.sampled_from([np.int64(2), np.float32(0.5), np.bool_(True), 2 + 0j, [2, 4], (2,), b"2:4"]),
)


@settings(max_examples=200, **SETTINGS)
@given(n=ANY_SCALAR, m=ANY_SCALAR)
def test_any_pattern_argument_succeeds_correctly_or_raises_documented(n, m):
    w = np.arange(32, dtype=np.float32).reshape(2, 16) - 10
    snapshot = w.copy()
    try:
        mask = msp.prune_nm_(w, n, m)
    except (TypeError, ValueError) as error:
        assert np.array_equal(w, snapshot), error
        return
    # Success: the pattern must have been a valid one given in a documented form.
    if m is None:
        if isinstance(n, str):
            pn, pm = (int(p) for p in n.split(":"))
        else:
            pn, pm = n
    else:
        pn, pm = n, m
    assert not isinstance(pn, (bool, np.bool_)) and isinstance(pn, numbers.Integral) and isinstance(pm, numbers.Integral)
    assert pattern_ok(int(pn), int(pm)) and 16 % int(pm) == 0
    assert np.array_equal(mask, ref_nm_keep(np.abs(snapshot), int(pn), int(pm)))


@settings(max_examples=200, **SETTINGS)
@given(sparsity=ANY_SCALAR, scope=st.one_of(st.sampled_from(["row", "layer"]), ANY_SCALAR))
def test_any_sparsity_and_scope_succeed_correctly_or_raise_documented(sparsity, scope):
    w = np.arange(32, dtype=np.float32).reshape(2, 16) - 10
    snapshot = w.copy()
    try:
        mask = msp.prune_topk_(w, sparsity, scope)
    except (TypeError, ValueError) as error:
        assert np.array_equal(w, snapshot), error
        return
    assert scope in ("row", "layer")
    assert isinstance(sparsity, numbers.Real) and not isinstance(sparsity, (bool, np.bool_))
    assert 0.0 <= float(sparsity) < 1.0
    assert np.array_equal(mask, ref_topk_keep(np.abs(snapshot), float(sparsity), scope))


# --- huge claimed sizes --------------------------------------------------------------------------------


def test_huge_claimed_sizes_are_refused_without_touching_memory():
    huge = np.broadcast_to(np.float32(1.0), (2**40, 2**20))  # 4 EiB claimed, one float stored
    with pytest.raises(MemoryError):
        msp.nm_mask(huge, 2, 4)  # read-only input: the copy cannot be allocated
    with pytest.raises(MemoryError):
        msp.sum_squares(huge)
    with pytest.raises(ValueError, match="contiguous"):
        msp.prune_nm_(huge, 2, 4)  # in place never copies
    with pytest.raises(ValueError, match="contiguous"):
        msp.prune_topk_(huge, 0.5)
    with pytest.raises(MemoryError):
        msp.cost_table(huge, [0.5])
    if torch is not None:
        t = torch.ones(1, 1).expand(2**40, 2**20)
        with pytest.raises(ValueError, match="contiguous"):
            msp.prune_nm_(t, 2, 4)


def test_huge_sizes_in_handles():
    acc = msp.FisherAccumulator([2**63 - 1, 1])  # sizes are counts, nothing is allocated per weight
    acc.add(0, np.ones(5, np.float32))
    with pytest.raises(InvalidArgumentError):
        acc.add(1, np.ones(2, np.float32))  # more elements than the layer has
    acc.end_sample()
    assert acc.traces().tolist() == [5.0, 0.0]
    acc.close()
    for sizes in ([2**63], [-(2**63) - 1], [0], [-1], []):
        with pytest.raises(ValueError):
            msp.FisherAccumulator(sizes)
    with pytest.raises(ValueError, match="overflow"):
        msp.Problem([2**62, 2**62], 0.5)
    with pytest.raises(ValueError):
        msp.Problem([2**64], 0.5)
    for setting in ("offspring", "survivors"):
        with pytest.raises(ValueError):
            msp.Search([10, 20], 0.5, **{setting: 2**31 - 1})
    with pytest.raises(ValueError):
        msp.Search([10, 20], 0.5, offspring=2**31)
    with pytest.raises(ValueError):
        msp.ratio_levels([i / 1000 for i in range(257)])
    with pytest.raises(ValueError):
        msp.cost_table(np.ones((2, 8), np.float32), [i / 1000 for i in range(257)])


# --- memory shared between arguments ------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 0])
def test_col_scale_sharing_memory_with_the_weights(threads):
    """``col_scale=w[0]``: the library writes row 0 while it still reads the scale; the package
    passes a private copy, so the result equals that of a separate scale."""
    msp.set_num_threads(threads)
    rng = np.random.default_rng(0)
    for prune in (lambda w, s: msp.prune_nm_(w, 2, 4, col_scale=s), lambda w, s: msp.prune_topk_(w, 0.5, "layer", s),
                  lambda w, s: msp.prune_topk_(w, 0.5, "row", s)):
        w = np.abs(rng.standard_normal((257, 64))).astype(np.float32)
        ref = w.copy()
        expected = prune(ref, ref[0].copy())
        assert np.array_equal(prune(w, w[0]), expected)
        assert np.array_equal(w, ref)
        if torch is not None:
            t = torch.from_numpy(np.abs(rng.standard_normal((257, 64))).astype(np.float32))
            tref = t.clone()
            expected = prune(tref, tref[0].clone())
            assert torch.equal(prune(t, t[0]), expected) and torch.equal(t, tref)


@pytest.mark.parametrize("shift", [-1, 0, 1, 7])
def test_add_fisher_diagonal_with_grad_overlapping_diag(shift):
    """``diag += grad**2`` on overlapping views equals numpy's (buffered) semantics."""
    for n in (10, 50_001):
        rng = np.random.default_rng(n + shift)
        buf = rng.random(n + 8).astype(np.float32)
        lo = 8 if shift < 0 else 0
        diag = buf[lo : lo + n]
        grad = buf[lo + shift : lo + shift + n]
        expected = (diag.astype(np.float64) + grad.astype(np.float64) ** 2).astype(np.float32)
        msp.add_fisher_diagonal(grad, diag)
        assert np.array_equal(diag, expected), (n, shift)


# --- Fisher -------------------------------------------------------------------------------------------


def _vector(backend, values, layout):
    x = _typed(np.ascontiguousarray(values, np.float32).reshape(1, -1), backend)
    return with_layout(x, layout).reshape(-1) if layout in ("contiguous", "offset", "misaligned") else with_layout(x, layout)


def exact64(x):
    return widen(x).astype(np.float64).ravel()


@settings(max_examples=200, **SETTINGS)
@given(data=st.data())
def test_sum_squares_matches_reference_or_raises(data):
    backend = data.draw(st.sampled_from(BACKENDS))
    payload = data.draw(st.sampled_from(PAYLOADS))
    layout = data.draw(st.sampled_from(LAYOUTS))
    count = data.draw(st.integers(0, 5000))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = _vector(backend, payload_values(payload, (count,), rng, backend.split("-")[1]), layout)
    v = exact64(x)
    error = ValueError if not np.all(np.isfinite(v)) else None
    result = expect(error, lambda: msp.sum_squares(x), x)
    if error is None:
        reference = math.fsum((v * v).tolist())
        assert isinstance(result, float)
        assert result == reference or abs(result - reference) <= 1e-13 * reference


@settings(max_examples=200, **SETTINGS)
@given(data=st.data(), scale=st.one_of(st.sampled_from([1.0, 0.0, 0.25, 1e-300, 3]), st.sampled_from([1.0, -1.0, math.inf, math.nan]), ANY_SCALAR))
def test_add_fisher_diagonal_matches_reference_or_raises(data, scale):
    backend = data.draw(st.sampled_from(BACKENDS))
    payload = data.draw(st.sampled_from(PAYLOADS))
    count = data.draw(st.integers(0, 300))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    grad = _vector(backend, payload_values(payload, (count,), rng, backend.split("-")[1]), "contiguous")
    diag_count = count + data.draw(st.sampled_from([0, 0, 0, 1, -1]))
    diag = rng.random(max(diag_count, 0)).astype(np.float32) * 4
    if data.draw(st.booleans()):
        diag = diag.reshape(-1, 1)
    g = exact64(grad)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        error = TypeError
    elif diag.size != count:
        error = ValueError
    elif count == 0:
        error = None
    elif not (math.isfinite(scale) and scale >= 0) or not np.all(np.isfinite(g)):
        error = ValueError
    else:
        with np.errstate(over="ignore"):
            updated = (diag.astype(np.float64).ravel() + float(scale) * g * g).astype(np.float32)
        error = None if np.all(np.isfinite(updated)) else ValueError
    expect(error, lambda: msp.add_fisher_diagonal(grad, diag, scale), diag, grad)
    if error is None and count:
        assert np.array_equal(diag.ravel().view(np.uint32), updated.view(np.uint32))


LAYER_ARGS = st.one_of(st.integers(-2, 5), st.sampled_from([True, None, 1.0, "0", np.int64(1), np.int32(0), 2**64]))
SCALE_ARGS = st.one_of(st.sampled_from([1.0, 0.5, 0.0, 3, np.float32(2.0), -1.0, math.nan, math.inf, True, None, "1"]))
OPS = st.one_of(
    st.tuples(st.just("add"), LAYER_ARGS, st.sampled_from(BACKENDS), st.sampled_from(PAYLOADS),
              st.integers(0, 70), SCALE_ARGS, st.integers(0, 2**32 - 1)),
    st.tuples(st.just("end")),
    st.tuples(st.just("traces"), st.booleans()),
    st.tuples(st.just("reset")),
)


@settings(max_examples=150, **SETTINGS)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4), ops=st.lists(OPS, max_size=25))
def test_fisher_accumulator_follows_a_model_and_is_unchanged_by_errors(sizes, ops):
    """Random call sequences against a float64 model; after any error the state is as before."""
    num = len(sizes)
    closed = [[] for _ in sizes]  # per layer: the closed samples' sums
    current = [[] for _ in sizes]  # per layer: chunks of the open sample
    used = [0] * num
    samples = 0

    def state(acc):
        return acc.num_samples, (acc.traces().tobytes() if acc.num_samples else None)

    with msp.FisherAccumulator(sizes) as acc:
        for op in ops:
            before = state(acc)
            if op[0] == "add":
                _, layer, backend, payload, count, scale, seed = op
                rng = np.random.default_rng(seed)
                grad = _vector(backend, payload_values(payload, (count,), rng, backend.split("-")[1]), "contiguous")
                g = exact64(grad)
                if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
                    error = TypeError
                elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
                    error = TypeError
                elif not 0 <= int(layer) < num:
                    error = ValueError
                elif count == 0:
                    error = None  # an empty input adds nothing (its scale is not looked at)
                elif not (math.isfinite(scale) and scale >= 0) or used[int(layer)] + count > sizes[int(layer)]:
                    error = ValueError
                elif not np.all(np.isfinite(g)):
                    error = ValueError
                else:
                    error = None
                expect(error, lambda: acc.add(layer, grad, scale), grad)
                if error is None and count:
                    current[int(layer)].append(float(scale) * math.fsum((g * g).tolist()))
                    used[int(layer)] += count
            elif op[0] == "end":
                acc.end_sample()
                for l in range(num):
                    closed[l].append(math.fsum(current[l]))
                    current[l], used[l] = [], 0
                samples += 1
            elif op[0] == "traces":
                if samples == 0:
                    with pytest.raises(InvalidStateError):
                        acc.traces(op[1])
                else:
                    got = acc.traces(op[1])
                    for l in range(num):
                        want = math.fsum(closed[l]) / samples / (sizes[l] if op[1] else 1)
                        assert got[l] == want or abs(got[l] - want) <= 1e-12 * abs(want), (l, got[l], want)
            else:
                acc.reset()
                closed, current, used, samples = [[] for _ in sizes], [[] for _ in sizes], [0] * num, 0
            assert acc.num_samples == samples
            if op[0] == "add" and error is not None:
                assert state(acc) == before


# --- planning -------------------------------------------------------------------------------------


def _average(sizes, level_set, levels):
    return math.fsum(s * level_set[k].sparsity for s, k in zip(sizes, levels)) / sum(sizes)


def check_feasible(result, sizes, level_set, target, tolerance, groups=None, lo=None, hi=None):
    levels = list(result.levels)
    assert len(levels) == len(sizes)
    assert all(isinstance(k, int) and 0 <= k < len(level_set) for k in levels)
    assert abs(_average(sizes, level_set, levels) - target) <= tolerance + 1e-12
    if groups is not None:
        first = {}
        for g, k in zip(groups, levels):
            assert first.setdefault(g, k) == k
    for bound, ok in ((lo, lambda k, b: k >= b), (hi, lambda k, b: k <= b)):
        if bound is not None:
            bounds = [bound] * len(sizes) if isinstance(bound, int) else bound
            assert all(ok(k, b) for k, b in zip(levels, bounds))


LEVEL_SETS = [
    None,
    "nm8",
    [0.0, 0.25, 0.5, 0.75],
    ["4:4", "2:4", "1:4"],
    [0.5, 0.25],  # unsorted: refused
    [],
    ["2:4", "2:4"],
    ["9:8"],
    "2:4",
    [0.3, "1:2", 0.9],
    [(0.0, 4, 4), None],
]


@settings(max_examples=150, **SETTINGS)
@given(
    sizes=st.one_of(
        st.lists(st.integers(1, 10**6), min_size=1, max_size=7),
        st.lists(st.one_of(st.integers(-3, 10), st.sampled_from([2**62, 2**63, 1.5, None, True, "3"])), max_size=4),
        st.sampled_from([5, "abc", None, np.arange(1, 5), [np.int64(7), np.int32(9)]]),
    ),
    target=st.one_of(st.floats(0, 1, exclude_max=True), st.sampled_from([-0.1, 1.0, math.nan, math.inf, None, "0.5", True])),
    tolerance=st.one_of(st.sampled_from([0.001, 0.05, 0.0, 0.5]), st.sampled_from([-0.01, 0.6, math.nan, None])),
    levels=st.sampled_from(range(len(LEVEL_SETS))),
    method=st.sampled_from(["uniform", "prior", "exact", "search", "bogus"]),
    data=st.data(),
)
def test_plan_is_feasible_or_raises_documented(sizes, target, tolerance, levels, method, data):
    level_arg = LEVEL_SETS[levels]
    if level_arg == "nm8":
        level_arg = msp.nm_levels(8)
    num = len(sizes) if isinstance(sizes, (list, np.ndarray)) else 3
    sensitivity = data.draw(st.one_of(
        st.just(None),
        st.lists(st.floats(0, 1e6), min_size=num, max_size=num),
        st.lists(st.sampled_from([1.0, 0.0, -1.0, math.nan, math.inf, 1e-300]), min_size=num, max_size=num),
        st.just([1.0] * (num + 1)),
    ))
    cost_table = data.draw(st.one_of(st.just(None), st.just("random"), st.just("nan")))
    n_levels = len(level_arg) if isinstance(level_arg, list) else 8
    if cost_table is not None:
        table = np.random.default_rng(0).random((num, max(n_levels, 1)))
        if cost_table == "nan" and table.size:
            table[0, 0] = math.nan
        cost_table = table
    calls = []

    def value(p):
        return float(sum(p.levels)) + 0.5

    def fitness(p):
        calls.append(p)
        return value(p)

    try:
        result = msp.plan(sizes, target, levels=level_arg, sensitivity=sensitivity, method=method,
                          cost_table=cost_table, tolerance=tolerance, fitness=fitness if method == "search" else None,
                          generations=2, progress=False)
    except (TypeError, ValueError) as error:  # InfeasibleError and InvalidArgumentError are ValueErrors
        assert not isinstance(error, MSPError) or error.message
        return
    level_set = msp.levels.as_level_set(level_arg)
    check_feasible(result, [int(s) for s in sizes], level_set, float(target), float(tolerance))
    assert method in ("uniform", "prior", "exact", "search")
    if method == "search":
        assert calls and result.fitness == min(value(c) for c in calls)


TOLD = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([None, "1", True, np.float32(1.0), 1, 10**400]),
)


def _told_ok(v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    try:
        v = float(v)
    except OverflowError:  # an int beyond float: numpy makes it an object array, refused
        return False
    return not math.isnan(v) and v != -math.inf


@settings(max_examples=60, **SETTINGS)
@given(batches=st.lists(st.tuples(st.lists(TOLD, max_size=12), st.integers(-2, 2)), min_size=1, max_size=8))
def test_search_tell_with_hostile_values_is_all_or_nothing(batches):
    sizes = [100, 300, 500, 700, 900]
    with msp.Search(sizes, 0.5, seed=1, generations=3) as search:
        told = 0
        for values, length_change in batches:
            candidates = search.ask()
            if not candidates:
                break
            progress = search.progress
            values = (values * len(candidates))[: max(0, len(candidates) + length_change)] if values else values
            ok = len(values) == len(candidates) and all(_told_ok(v) for v in values)
            try:
                search.tell(values)
            except (TypeError, ValueError, RuntimeError) as error:
                assert not ok, error
                assert search.progress == progress and search.ask() == candidates  # unchanged
                continue
            assert ok, values
            told += len(values)
            assert search.progress["evaluations"] + search.progress["cheap_evaluations"] == told
            best = search.best
            assert best is not None
            check_feasible(best, sizes, search.level_set, 0.5, 0.001)


@settings(max_examples=120, **SETTINGS)
@given(data=st.data())
def test_cost_table_energy_matches_reference_or_raises(data):
    m_choices = [2, 4, 8]
    friendly = data.draw(st.booleans())
    cols = data.draw(st.sampled_from([8, 16, 24] if friendly else [0, 1, 4, 6, 8, 16, 24]))
    w = data.draw(matrices(max_rows=4, cols=cols, friendly=friendly))
    if friendly:
        w32 = widen(w)
        assume(np.all(np.isfinite(w32)))
    rows = w.shape[0]
    level_kind = data.draw(st.sampled_from(["nm", "ratio", "mixed"] + ([] if friendly else ["inconsistent", "unsorted"])))
    m = data.draw(st.sampled_from(m_choices))
    if level_kind == "nm":
        levels = [(1 - n / m, n, m) for n in range(m, 0, -1)]
    elif level_kind == "ratio":
        levels = sorted(set(data.draw(st.lists(st.floats(0, 0.99), min_size=1, max_size=5))))
    elif level_kind == "mixed":
        levels = [0.1, (0.5, m // 2, m), 0.9]
    elif level_kind == "inconsistent":
        levels = [(0.3, 1, 2)]
    else:
        levels = [0.5, 0.2]
    scope = data.draw(st.sampled_from(["row", "layer"]))
    scale = data.draw(st.sampled_from([1.0, 0.5, 0.0] + ([] if friendly else [-1.0, math.inf, math.nan])))
    w32 = widen(w)
    nm_in = [lv for lv in levels if isinstance(lv, tuple)]
    error = None
    if rows == 0 or cols == 0:
        error = ValueError
    elif level_kind in ("inconsistent", "unsorted") or any(cols % lv[2] for lv in nm_in):
        error = ValueError
    elif not np.all(np.isfinite(w32)) or not (math.isfinite(scale) and scale >= 0):
        error = ValueError
    costs = expect(error, lambda: msp.cost_table(w, levels, scope=scope, scale=scale), w)
    if error is None:
        w64 = w32.astype(np.float64)
        scores = np.abs(w32)
        for k, lv in enumerate(levels):
            if isinstance(lv, tuple):
                s, n, mm = lv
                keep = np.ones(w32.shape, bool) if n == mm else ref_nm_keep(scores, n, mm)
            else:
                keep = ref_topk_keep(scores, lv, scope)
            want = scale * math.fsum((w64[~keep] ** 2).tolist())
            assert costs[k] == want or abs(costs[k] - want) <= 1e-12 * abs(want), (k, costs[k], want)


# --- fitness callbacks -------------------------------------------------------------------------------


class Boom(Exception):
    pass


SIZES = [100, 200, 300, 400, 500]


def assert_freed(ref):
    """The object behind ``ref`` is gone: freed by reference counting alone (no cycle through the
    callbacks), or at the latest by one garbage collection."""
    if ref() is not None:
        gc.collect()
    assert ref() is None


def _usable_afterwards(search):
    """A search after a failed run: best is a feasible plan or None, and the run can finish."""
    best = search.best
    if best is not None:
        check_feasible(best, SIZES, search.level_set, 0.5, 0.001)
    final = search.run(lambda p: float(sum(p.levels)), progress=False)
    check_feasible(final, SIZES, search.level_set, 0.5, 0.001)
    assert search.done


BAD_RESULTS = {
    "str": ("1.0", TypeError),
    "None": (None, TypeError),
    "bool": (True, TypeError),
    "list": ([1.0], TypeError),
    "complex": (1j, TypeError),
    "ndarray-0d": (np.array(1.0), TypeError),
    "nan": (math.nan, MSPCancelled),
    "np-nan": (np.float32("nan"), MSPCancelled),
    "-inf": (-math.inf, ValueError),
}
if torch is not None:
    BAD_RESULTS["tensor"] = (torch.tensor(1.0), TypeError)


@pytest.mark.parametrize("when", [1, 12])
@pytest.mark.parametrize("name", list(BAD_RESULTS))
def test_fitness_returning_a_bad_value(name, when):
    value, error = BAD_RESULTS[name]
    search = msp.Search(SIZES, 0.5, generations=3)
    calls = [0]

    def fitness(p):
        calls[0] += 1
        return value if calls[0] == when else float(sum(p.levels))

    with pytest.raises(error):
        search.run(fitness, progress=False)
    assert calls[0] == when  # stopped at once
    _usable_afterwards(search)
    ref = weakref.ref(search)
    del search
    assert ref() is None  # no reference cycle keeps it alive


@pytest.mark.parametrize("exception", [Boom("x"), KeyboardInterrupt(), StopIteration(), SystemExit(3),
                                       GeneratorExit(), RecursionError(), MemoryError(), InvalidArgumentError("inner")])
def test_fitness_raising_propagates_the_same_exception(exception):
    search = msp.Search(SIZES, 0.5, generations=3)

    def fitness(p):
        raise exception

    with pytest.raises(type(exception)) as info:
        search.run(fitness, progress=False)
    assert info.value is exception
    del info
    exception.__traceback__ = None  # the parameter outlives the test; its traceback holds frames
    _usable_afterwards(search)
    ref = weakref.ref(search)
    del search
    assert ref() is None


def test_fitness_returning_a_huge_integer_is_a_documented_error():
    """An int too large for a float is reported like the other bad return values."""
    with pytest.raises((TypeError, ValueError)):
        msp.plan(SIZES, 0.5, fitness=lambda p: 10**400, progress=False)


def test_fitness_calling_kernels_reentrantly():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    expected = np.abs(w) * ref_nm_keep(np.abs(w), 2, 4)

    def fitness(p):
        pruned = w.copy()
        msp.prune_nm_(pruned, 2, 4)
        assert np.array_equal(np.abs(pruned), expected)
        mask = msp.nm_mask(np.abs(w), 1, 4)
        acc = msp.FisherAccumulator([w.size])
        acc.add(0, pruned)
        acc.end_sample()
        return float(acc.traces()[0]) + float(mask.sum()) + sum(p.levels)

    result = msp.plan(SIZES, 0.5, fitness=fitness, generations=2, progress=False)
    reference = msp.plan(SIZES, 0.5, fitness=lambda p: fitness(p), generations=2, progress=False)
    assert result.levels == reference.levels and result.fitness == reference.fitness


def test_fitness_whose_inner_msp_error_is_caught_keeps_going():
    def fitness(p):
        try:
            msp.nm_mask(np.full((2, 8), np.nan, np.float32), 2, 4)
        except InvalidArgumentError as error:
            assert "NaN" in error.message or "nan" in error.message
        return float(sum(p.levels))

    result = msp.plan(SIZES, 0.5, fitness=fitness, generations=2, progress=False)
    check_feasible(result, SIZES, msp.nm_levels(8), 0.5, 0.001)
    assert result.fitness == float(sum(result.levels))


def test_fitness_running_another_search_reentrantly():
    inner_costs = np.random.default_rng(1).random((3, 8))

    def inner():
        return msp.plan([10, 20, 30], 0.5, cost_table=inner_costs, generations=2, progress=False)

    expected = inner()

    def fitness(p):
        got = inner()
        assert got.levels == expected.levels and got.fitness == expected.fitness
        return float(sum(p.levels))

    result = msp.plan(SIZES, 0.5, fitness=fitness, generations=2, progress=False)
    check_feasible(result, SIZES, msp.nm_levels(8), 0.5, 0.001)


@pytest.mark.parametrize("call", ["ask", "tell", "best", "progress", "history", "done", "run", "close", "with"])
def test_fitness_calling_its_own_search_is_refused(call):
    search = msp.Search(SIZES, 0.5, generations=2)
    actions = {
        "ask": lambda: search.ask(),
        "tell": lambda: search.tell([1.0]),
        "best": lambda: search.best,
        "progress": lambda: search.progress,
        "history": lambda: search.history,
        "done": lambda: search.done,
        "run": lambda: search.run(lambda p: 1.0, progress=False),
        "close": lambda: search.close(),
        "with": lambda: search.__enter__(),
    }

    def fitness(p):
        actions[call]()
        return 1.0

    with pytest.raises(InvalidStateError):
        search.run(fitness, progress=False)
    assert not search.closed
    _usable_afterwards(search)
    search.close()
    ref = weakref.ref(search)
    search = None  # also empties the closures' cell
    assert_freed(ref)


def test_fitness_catching_the_refusal_keeps_going():
    search = msp.Search(SIZES, 0.5, generations=2)
    refused = [0]

    def fitness(p):
        try:
            search.ask()
        except InvalidStateError:
            refused[0] += 1
        return float(sum(p.levels))

    result = search.run(fitness, progress=False)
    assert refused[0] == result.evaluations > 0
    search.close()


def test_fitness_closing_another_search_and_threads_inside_fitness():
    other = msp.Search(SIZES, 0.5)
    seen = []

    def fitness(p):
        if not other.closed:
            other.close()
        # A helper thread doing msp work while the callback waits for it.
        box = []
        worker = threading.Thread(target=lambda: box.append(msp.sum_squares(np.ones(100, np.float32))))
        worker.start()
        worker.join()
        seen.append(box[0])
        return float(sum(p.levels))

    result = msp.plan(SIZES, 0.5, fitness=fitness, generations=2, progress=False)
    check_feasible(result, SIZES, msp.nm_levels(8), 0.5, 0.001)
    assert other.closed and set(seen) == {100.0}
