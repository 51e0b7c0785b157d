"""msp.nm_mask, msp.prune_nm_ and msp.prune_topk_ against a stable-sort numpy reference.

Reference: within a comparison group, order by score descending then index ascending
(``np.argsort(-score, kind="stable")``) and keep the first k. The prune score is |w| widened exactly
to float32, times col_scale in a float32 multiply. Results are compared bit for bit.
"""

import itertools

import numpy as np
import pytest

import msp
from masking_reference import ref_nm_keep, ref_topk_keep

try:
    import torch
except ImportError:  # the torch cases skip
    torch = None

BACKENDS = ["np-f32", "np-f16", "torch-f32", "torch-f16", "torch-bf16"]
PATTERNS = [(1, 2), (1, 4), (2, 4), (3, 4), (1, 8), (2, 8), (4, 8), (7, 8), (4, 16), (1, 32), (31, 32)]
KINDS = ["normal", "ties", "equal", "zeros", "inf", "subnormal"]
SPARSITIES = [0.0, 0.1, 0.5, 0.75, 0.999]


# --- building buffers ----------------------------------------------------------------------------


def _bf16_bits(values):
    """bfloat16 bit patterns of float32 values (truncation: exact for bf16-representable values)."""
    return (np.ascontiguousarray(values, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def build(values, backend):
    """The buffer of ``backend`` holding float32 ``values`` (rounded to its dtype)."""
    values = np.ascontiguousarray(values, np.float32)
    if backend.startswith("torch") and torch is None:
        pytest.skip("torch is not installed")
    if backend == "np-f32":
        return values.copy()
    if backend == "np-f16":
        return values.astype(np.float16)
    if backend == "torch-f32":
        return torch.from_numpy(values.copy())
    if backend == "torch-f16":
        return torch.from_numpy(values.astype(np.float16))
    if backend == "torch-bf16":
        return torch.from_numpy(_bf16_bits(values).view(np.int16)).view(torch.bfloat16)
    raise AssertionError(backend)


def raw_bits(x):
    """A copy of the stored bit patterns of an array or tensor, as unsigned integers."""
    if torch is not None and isinstance(x, torch.Tensor):
        wide = x.element_size() == 4
        x = x.view(torch.int32 if wide else torch.int16).numpy()
    return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[x.itemsize]).copy()


def widen(x):
    """The exact float32 values of an array or tensor."""
    bits = raw_bits(x)
    if torch is not None and isinstance(x, torch.Tensor):
        if x.dtype == torch.bfloat16:
            return (bits.astype(np.uint32) << 16).view(np.float32)
        return x.float().numpy().copy()
    return x.astype(np.float32)


def subnormals(dtype_name, size, rng):
    """Values that are subnormal in ``dtype_name`` (with random signs, some zeros and tiny normals)."""
    if dtype_name == "f16":
        k = rng.integers(1, 1024, size)
        v = k.astype(np.float32) * np.float32(2.0**-24)
        tiny = np.float32(2.0**-14)
    elif dtype_name == "bf16":
        v = (rng.integers(1, 128, size).astype(np.uint32) << 16).view(np.float32)
        tiny = np.float32(2.0**-126)
    else:
        v = rng.integers(1, 1 << 23, size).astype(np.uint32).view(np.float32)
        tiny = np.float32(2.0**-126)
    v = v * rng.choice(np.array([-1, 1], np.float32), size)
    v[rng.random(size) < 0.1] = 0.0
    v[rng.random(size) < 0.05] = tiny
    v[rng.random(size) < 0.05] = -0.0
    return v.astype(np.float32)


def values(kind, shape, rng, backend):
    """float32 test data of one kind, representable in ``backend``'s dtype."""
    size = int(np.prod(shape))
    if kind == "normal":
        v = rng.standard_normal(size).astype(np.float32)
    elif kind == "ties":
        v = rng.integers(-3, 4, size).astype(np.float32)
    elif kind == "equal":
        v = np.repeat(rng.integers(-2, 3, shape[0]).astype(np.float32), shape[1])
    elif kind == "zeros":
        v = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, 2.0], np.float32), size)
    elif kind == "inf":
        v = rng.integers(-3, 4, size).astype(np.float32)
        v[rng.random(size) < 0.2] = np.inf
        v[rng.random(size) < 0.2] = -np.inf
    elif kind == "subnormal":
        v = subnormals(backend.split("-")[1], size, rng)
    else:
        raise AssertionError(kind)
    return v.reshape(shape)


def col_scale_for(mode, w32, rng):
    """None, positive, or with zeros (never zero where a column holds an infinite weight)."""
    if mode == "none":
        return None
    cols = w32.shape[1]
    # Some exactly repeated factors (ties survive scaling), the rest arbitrary.
    scale = rng.choice(np.array([0.5, 1.0, 1.5, 3.0], np.float32), cols)
    arbitrary = rng.random(cols) < 0.7
    scale[arbitrary] = rng.uniform(0.01, 4.0, int(arbitrary.sum())).astype(np.float32)
    if mode == "zeros":
        scale[rng.random(cols) < 0.3] = 0.0
        scale[np.isinf(w32).any(axis=0) & (scale == 0)] = 2.0
    return scale


# --- the reference -------------------------------------------------------------------------------


def ref_scores(w32, col_scale):
    """|w| (float32) times col_scale (float32 multiply)."""
    s = np.abs(w32)
    if col_scale is not None:
        s = s * np.asarray(col_scale, np.float32)[None, :]
    assert s.dtype == np.float32
    return s


def as_numpy_mask(mask, like):
    """Check the mask's type matches the input's and return it as a numpy bool array."""
    if torch is not None and isinstance(like, torch.Tensor):
        assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
        return mask.numpy()
    assert isinstance(mask, np.ndarray) and mask.dtype == np.bool_
    return mask


def check_pruned(w, before_bits, keep_ref, mask):
    """Weights equal the original where kept and +0 where pruned, bit for bit; mask matches."""
    np.testing.assert_array_equal(as_numpy_mask(mask, w), keep_ref)
    expected = np.where(keep_ref, before_bits, 0).astype(before_bits.dtype)
    np.testing.assert_array_equal(raw_bits(w), expected)


def shapes_for(m):
    return [(1, m), (7, m), (1, 4 * m), (7, 3 * m), (33, 2 * m)]


# --- N:M ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "positive", "zeros"])
@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: f"{p[0]}:{p[1]}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_prune_nm_matches_reference(backend, pattern, mode):
    n, m = pattern
    rng = np.random.default_rng(n * 1000 + m)
    for kind in KINDS:
        for shape in shapes_for(m):
            w = build(values(kind, shape, rng, backend), backend)
            w32, before = widen(w), raw_bits(w)
            scale = col_scale_for(mode, w32, rng)
            mask = msp.prune_nm_(w, n, m, col_scale=scale)
            keep = ref_nm_keep(ref_scores(w32, scale), n, m)
            check_pruned(w, before, keep, mask)


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: f"{p[0]}:{p[1]}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_nm_mask_matches_reference(backend, pattern):
    n, m = pattern
    rng = np.random.default_rng(7 * n + m)
    for kind in KINDS:
        for shape in shapes_for(m):
            s = build(values(kind, shape, rng, backend), backend)
            before = raw_bits(s)
            mask = msp.nm_mask(s, n, m)
            np.testing.assert_array_equal(as_numpy_mask(mask, s), ref_nm_keep(widen(s), n, m))
            np.testing.assert_array_equal(raw_bits(s), before)


def test_nm_mask_keeps_n_per_group_and_signed_scores_order():
    s = np.array([[-1.0, -0.0, 0.0, -np.inf, np.inf, -5.0, 3.0, 3.0]], np.float32)
    keep = msp.nm_mask(s, "2:4")
    np.testing.assert_array_equal(keep, [[False, True, True, False, True, False, True, False]])


# --- top-k ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "positive", "zeros"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("scope", ["row", "layer"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_prune_topk_matches_reference(backend, scope, sparsity, mode):
    rng = np.random.default_rng(int(sparsity * 1000) + (scope == "layer"))
    for kind in KINDS:
        for shape in [(1, 1), (1, 5), (7, 64), (33, 100), (5, 1000)]:
            w = build(values(kind, shape, rng, backend), backend)
            w32, before = widen(w), raw_bits(w)
            scale = col_scale_for(mode, w32, rng)
            mask = msp.prune_topk_(w, sparsity, scope=scope, col_scale=scale)
            keep = ref_topk_keep(ref_scores(w32, scale), sparsity, scope)
            check_pruned(w, before, keep, mask)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("backend", BACKENDS)
def test_prune_topk_rows_whose_thresholds_jump(backend, sparsity):
    # A row's threshold search starts from the last row's threshold: here it moves up and down by
    # up to 2^8 between rows, stays put (a repeated row), or sits at zero or among ties; in f32 one
    # row's keys all share their high 16 bits.
    rng = np.random.default_rng(int(sparsity * 100))
    rows, cols = 40, 300
    scales = np.float32(2.0) ** ((np.arange(rows) * 5) % 17 - 8).astype(np.float32)
    v = rng.standard_normal((rows, cols)).astype(np.float32) * scales[:, None]
    v[7] = v[6]
    v[12] = 0.0
    v[13] = rng.integers(-2, 3, cols).astype(np.float32)
    v[14] = 1.0
    v[15] = 1.0 + rng.permutation(cols).astype(np.float32) * np.float32(2.0**-23)  # f32: one high half
    v[20:24] = rng.integers(-3, 4, (4, cols)).astype(np.float32) * scales[20:24, None]
    w = build(v, backend)
    w32, before = widen(w), raw_bits(w)
    mask = msp.prune_topk_(w, sparsity, "row")
    check_pruned(w, before, ref_topk_keep(ref_scores(w32, None), sparsity, "row"), mask)


# --- thread counts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["np-f32", "np-f16", "torch-bf16"])
def test_results_do_not_depend_on_thread_count(backend):
    rng = np.random.default_rng(42)
    shape = (301, 1024)  # large enough for every kernel to split rows across 3 threads
    cases = {
        "ties": values("ties", shape, rng, backend),
        "normal": values("normal", shape, rng, backend),
    }
    for kind, data in cases.items():
        w32 = widen(build(data, backend))
        scale = col_scale_for("zeros", w32, rng)
        jobs = [
            ("nm 2:4", lambda w: msp.prune_nm_(w, 2, 4), ref_nm_keep(ref_scores(w32, None), 2, 4)),
            ("nm 3:8 scaled", lambda w: msp.prune_nm_(w, "3:8", col_scale=scale), ref_nm_keep(ref_scores(w32, scale), 3, 8)),
            ("row 0.5", lambda w: msp.prune_topk_(w, 0.5), ref_topk_keep(ref_scores(w32, None), 0.5, "row")),
            ("layer 0.75", lambda w: msp.prune_topk_(w, 0.75, "layer"), ref_topk_keep(ref_scores(w32, None), 0.75, "layer")),
            ("layer 0.1 scaled", lambda w: msp.prune_topk_(w, 0.1, "layer", scale), ref_topk_keep(ref_scores(w32, scale), 0.1, "layer")),
        ]
        for count in (1, 2, 3):
            msp.set_num_threads(count)
            assert msp.get_num_threads() == count
            for name, run, keep in jobs:
                w = build(data, backend)
                before = raw_bits(w)
                check_pruned(w, before, keep, run(w))
            s = build(data, backend)
            np.testing.assert_array_equal(as_numpy_mask(msp.nm_mask(s, 4, 8), s), ref_nm_keep(widen(s), 4, 8))


# --- API forms ------------------------------------------------------------------------------------


def test_pattern_forms_agree():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((4, 16)).astype(np.float32)
    masks = []
    for args in [(2, 4), ("2:4",), ((2, 4),), ([2, 4],), (" 2 : 4 ",), (np.int64(2), np.int32(4))]:
        w = data.copy()
        masks.append(msp.prune_nm_(w, *args))
    for mask in masks[1:]:
        np.testing.assert_array_equal(mask, masks[0])
    np.testing.assert_array_equal(msp.nm_mask(np.abs(data), "2:4"), masks[0])


@pytest.mark.parametrize("args, error", [
    (("2-4",), ValueError), (("2:4:8",), ValueError), (("a:4",), ValueError), ((2,), TypeError),
    (("2:4", 4), TypeError), (((2, 4), 4), TypeError), ((2.0, 4), TypeError), ((True, 4), TypeError),
    ((2, 2**40), ValueError),
])
def test_bad_pattern_forms(args, error):
    w = np.ones((2, 8), np.float32)
    with pytest.raises(error):
        msp.prune_nm_(w, *args)
    np.testing.assert_array_equal(w, 1.0)


def test_return_mask_false_prunes_without_mask():
    data = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    for prune in (lambda w, **kw: msp.prune_nm_(w, 2, 4, **kw), lambda w, **kw: msp.prune_topk_(w, 0.6, **kw)):
        with_mask, without = data.copy(), data.copy()
        prune(with_mask)
        assert prune(without, return_mask=False) is None
        np.testing.assert_array_equal(raw_bits(without), raw_bits(with_mask))


def test_mask_is_a_view_of_one_buffer():
    w = np.ones((3, 8), np.float32)
    mask = msp.prune_nm_(w, 1, 4)
    assert mask.base is not None and mask.base.dtype == np.uint8 and mask.base.flags.c_contiguous


def test_non_contiguous_scores_are_copied_not_rejected():
    rng = np.random.default_rng(3)
    s = rng.standard_normal((8, 16)).astype(np.float32)
    t = s.T  # (16, 8), F-contiguous
    np.testing.assert_array_equal(msp.nm_mask(t, 2, 4), msp.nm_mask(np.ascontiguousarray(t), 2, 4))
    ro = s.copy()
    ro.flags.writeable = False  # read-only scores are fine: nm_mask only reads
    np.testing.assert_array_equal(msp.nm_mask(ro, 2, 4), msp.nm_mask(s, 2, 4))


def test_col_scale_forms():
    rng = np.random.default_rng(5)
    data = rng.standard_normal((3, 8)).astype(np.float32)
    scale32 = rng.uniform(0, 2, 8).astype(np.float32)
    ref = msp.prune_nm_(data.copy(), 2, 4, col_scale=scale32)
    for form in [scale32.astype(np.float64), list(map(float, scale32)), scale32[::-1].copy()[::-1]]:
        np.testing.assert_array_equal(msp.prune_nm_(data.copy(), 2, 4, col_scale=form), ref)
    if torch is not None:
        np.testing.assert_array_equal(msp.prune_nm_(data.copy(), 2, 4, col_scale=torch.from_numpy(scale32)), ref)


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_torch_autograd_rules():
    lin = torch.nn.Linear(8, 4)
    with pytest.raises(ValueError, match="requires grad"):
        msp.prune_nm_(lin.weight, 2, 4)
    version = lin.weight._version
    with torch.no_grad():
        mask = msp.prune_nm_(lin.weight, "2:4")
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
    assert lin.weight._version > version  # autograd sees the in-place write
    assert int((lin.weight != 0).sum()) <= 16 and bool(mask.sum(dim=1).eq(4).all())
    msp.prune_topk_(lin.weight.data, 0.5)  # .data does not require grad


# --- bad input ------------------------------------------------------------------------------------


def _bad_cases():
    """(id, builder) pairs; a builder returns (call, expected exception, message regex, buffers)."""
    cases = []

    def case(name, error, match=None):
        def deco(fn):
            cases.append(pytest.param(fn, error, match, id=name))
            return fn
        return deco

    w = lambda: np.arange(1, 33, dtype=np.float32).reshape(4, 8)  # noqa: E731

    @case("none-weight", TypeError, "numpy array or a torch tensor")
    def _():
        return lambda: msp.prune_nm_(None, 2, 4), []

    @case("none-scores", TypeError, "numpy array or a torch tensor")
    def _():
        return lambda: msp.nm_mask(None, 2, 4), []

    @case("list-weight", TypeError, "numpy array or a torch tensor")
    def _():
        return lambda: msp.prune_topk_([[1.0, 2.0]], 0.5), []

    @case("float64", TypeError, "float64")
    def _():
        x = w().astype(np.float64)
        return lambda: msp.prune_nm_(x, 2, 4), [x]

    @case("int32", TypeError, "int32")
    def _():
        x = np.arange(8, dtype=np.int32).reshape(1, 8)
        return lambda: msp.prune_topk_(x, 0.5), [x]

    @case("big-endian", TypeError, "dtype")
    def _():
        x = w().astype(">f4")
        return lambda: msp.prune_nm_(x, 2, 4), [x]

    @case("scores-float64", TypeError, "float64")
    def _():
        x = w().astype(np.float64)
        return lambda: msp.nm_mask(x, 2, 4), [x]

    @case("1-D", ValueError, "2-D")
    def _():
        x = np.ones(8, np.float32)
        return lambda: msp.prune_nm_(x, 2, 4), [x]

    @case("3-D", ValueError, "2-D")
    def _():
        x = np.ones((2, 2, 8), np.float32)
        return lambda: msp.prune_topk_(x, 0.5), [x]

    @case("scores-3-D", ValueError, "2-D")
    def _():
        x = np.ones((2, 2, 8), np.float32)
        return lambda: msp.nm_mask(x, 2, 4), [x]

    @case("empty", ValueError, "empty")
    def _():
        x = np.ones((0, 8), np.float32)
        return lambda: msp.prune_nm_(x, 2, 4), [x]

    @case("non-contiguous", ValueError, "contiguous")
    def _():
        base = np.arange(64, dtype=np.float32).reshape(4, 16)
        return lambda: msp.prune_nm_(base[:, ::2], 2, 4), [base]

    @case("transposed", ValueError, "contiguous")
    def _():
        base = np.arange(32, dtype=np.float32).reshape(8, 4)
        return lambda: msp.prune_topk_(base.T, 0.5), [base]

    @case("read-only", ValueError, "read-only")
    def _():
        x = w()
        x.flags.writeable = False
        return lambda: msp.prune_nm_(x, 2, 4), [x]

    @case("unaligned", ValueError, "aligned")
    def _():
        raw = np.zeros(4 * 8 * 4 + 1, np.uint8)
        x = raw[1:].view(np.float32).reshape(4, 8)
        x[...] = 1.0
        return lambda: msp.prune_nm_(x, 2, 4), [raw]

    for name, n, m, match in [("n-eq-m", 4, 4, "less than m"), ("n-gt-m", 5, 4, "less than m"),
                              ("n-zero", 0, 4, "n \\(0\\)"), ("n-negative", -1, 4, "n \\(-1\\)"),
                              ("m-33", 2, 33, "m \\(33\\)"), ("m-64", 2, 64, "m \\(64\\)"),
                              ("cols-not-multiple", 2, 16, "multiple of m")]:
        @case(f"nm-{name}", msp.InvalidArgumentError, match)
        def _(n=n, m=m):
            x = w()
            return lambda: msp.prune_nm_(x, n, m), [x]

        @case(f"mask-{name}", msp.InvalidArgumentError, match)
        def _(n=n, m=m):
            x = w()
            return lambda: msp.nm_mask(x, n, m), [x]

    for name, sparsity in [("negative", -0.1), ("one", 1.0), ("nan", float("nan")), ("inf", float("inf"))]:
        for scope in ("row", "layer"):
            @case(f"sparsity-{name}-{scope}", msp.InvalidArgumentError, "sparsity")
            def _(sparsity=sparsity, scope=scope):
                x = w()
                return lambda: msp.prune_topk_(x, sparsity, scope), [x]

    @case("sparsity-string", TypeError, "sparsity")
    def _():
        x = w()
        return lambda: msp.prune_topk_(x, "0.5"), [x]

    @case("scope-unknown", ValueError, "scope")
    def _():
        x = w()
        return lambda: msp.prune_topk_(x, 0.5, "rows"), [x]

    for op in ("nm", "row", "layer"):
        call = {
            "nm": lambda x, s=None: msp.prune_nm_(x, 2, 4, col_scale=s),
            "row": lambda x, s=None: msp.prune_topk_(x, 0.5, "row", s),
            "layer": lambda x, s=None: msp.prune_topk_(x, 0.5, "layer", s),
        }[op]

        @case(f"{op}-nan-weight", msp.InvalidArgumentError, r"weights\[2\]\[5\] is NaN")
        def _(call=call):
            x = w()
            x[2, 5] = np.nan
            x[3, 1] = np.nan
            return lambda: call(x), [x]

        @case(f"{op}-nan-col-scale", msp.InvalidArgumentError, r"col_scale\[3\]")
        def _(call=call):
            x, s = w(), np.ones(8, np.float32)
            s[3] = np.nan
            return lambda: call(x, s), [x, s]

        @case(f"{op}-negative-col-scale", msp.InvalidArgumentError, r"col_scale\[6\]")
        def _(call=call):
            x, s = w(), np.ones(8, np.float32)
            s[6] = -0.5
            return lambda: call(x, s), [x, s]

        @case(f"{op}-inf-col-scale", msp.InvalidArgumentError, r"col_scale\[0\]")
        def _(call=call):
            x, s = w(), np.ones(8, np.float32)
            s[0] = np.inf
            return lambda: call(x, s), [x, s]

        @case(f"{op}-inf-times-zero", msp.InvalidArgumentError, r"weights\[3\]\[7\]")
        def _(call=call):
            x, s = w(), np.ones(8, np.float32)
            x[3, 7] = -np.inf
            s[7] = 0.0
            return lambda: call(x, s), [x, s]

        @case(f"{op}-col-scale-length", ValueError, "col_scale")
        def _(call=call):
            x, s = w(), np.ones(7, np.float32)
            return lambda: call(x, s), [x, s]

        @case(f"{op}-col-scale-strings", (TypeError, ValueError), None)
        def _(call=call):
            x = w()
            return lambda: call(x, ["a"] * 8), [x]

    @case("scores-nan", msp.InvalidArgumentError, r"scores\[1\]\[0\] is NaN")
    def _():
        x = w()
        x[1, 0] = np.nan
        return lambda: msp.nm_mask(x, 2, 4), [x]

    # The smallest f16 NaN pattern lies below bf16's and f32's infinity bits, as the default one does.
    for scope, nan_bits in itertools.product(("row", "layer"), (0x7E00, 0x7C01, 0xFC01)):
        @case(f"f16-nan-{nan_bits:#x}-{scope}", msp.InvalidArgumentError, r"weights\[0\]\[3\] is NaN")
        def _(scope=scope, nan_bits=nan_bits):
            x = w().astype(np.float16)
            x[1, 6] = np.inf
            x.view(np.uint16)[0, 3] = nan_bits
            return lambda: msp.prune_topk_(x, 0.5, scope), [x]

    if torch is not None:
        @case("torch-float64", TypeError, "float64")
        def _():
            x = torch.ones(4, 8, dtype=torch.float64)
            return lambda: msp.prune_nm_(x, 2, 4), [x]

        @case("torch-int", TypeError, "int64")
        def _():
            x = torch.ones(4, 8, dtype=torch.int64)
            return lambda: msp.prune_topk_(x, 0.5), [x]

        @case("torch-transposed", ValueError, "contiguous")
        def _():
            x = torch.arange(32, dtype=torch.float32).reshape(8, 4)
            return lambda: msp.prune_nm_(x.t(), 2, 4), [x]

        @case("torch-meta", ValueError, "device meta")
        def _():
            x = torch.empty(4, 8, device="meta")
            return lambda: msp.prune_nm_(x, 2, 4), []

        @case("torch-requires-grad", ValueError, "requires grad")
        def _():
            x = torch.ones(4, 8, requires_grad=True)
            return lambda: msp.prune_topk_(x, 0.5), [x.detach()]

        @case("torch-sparse", TypeError, "layout")
        def _():
            x = torch.ones(4, 8).to_sparse()
            return lambda: msp.prune_nm_(x, 2, 4), []

        @case("torch-bf16-nan", msp.InvalidArgumentError, r"weights\[1\]\[2\] is NaN")
        def _():
            x = torch.ones(4, 8, dtype=torch.bfloat16)
            x[1, 2] = float("nan")
            return lambda: msp.prune_nm_(x, 2, 4), [x]

        @case("torch-1-D", ValueError, "2-D")
        def _():
            x = torch.ones(8)
            return lambda: msp.prune_nm_(x, 2, 4), [x]

    return cases


@pytest.mark.parametrize("build_case, error, match", _bad_cases())
def test_bad_input_raises_and_changes_nothing(build_case, error, match):
    call, buffers = build_case()
    before = [raw_bits(b) for b in buffers]
    with pytest.raises(error, match=match) as info:
        call()
    assert str(info.value)  # every error says what is wrong
    for b, bits in zip(buffers, before):
        np.testing.assert_array_equal(raw_bits(b), bits)


def test_library_errors_are_value_errors_with_status():
    with pytest.raises(ValueError) as info:
        msp.prune_nm_(np.ones((1, 4), np.float32), 4, 4)
    assert isinstance(info.value, msp.InvalidArgumentError)
    assert info.value.status == 1
    assert info.value.message == "n (4) must be less than m (4)"


# --- threads --------------------------------------------------------------------------------------


def test_thread_settings():
    msp.set_num_threads(3)
    assert msp.get_num_threads() == 3
    msp.set_num_threads(0)  # one per core
    assert msp.get_num_threads() >= 1
    with pytest.raises(msp.InvalidArgumentError, match="num_threads"):
        msp.set_num_threads(-1)
    assert msp.get_num_threads() >= 1
    with pytest.raises(TypeError):
        msp.set_num_threads(1.5)
