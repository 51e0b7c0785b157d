"""msp.fisher: sum_squares, FisherAccumulator and add_fisher_diagonal against float64 references.

Reference: ``math.fsum`` of the squares widened to float64 (squares of float32/16-bit values are
exact in float64, and fsum rounds the exact sum once), so agreement is checked to 1e-12 relative
and, for integer-valued data, exactly.
"""

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import msp
from msp import errors
from msp._lib import DTYPE_F32, lib
from msp.fisher import FisherAccumulator, add_fisher_diagonal, sum_squares

try:
    import torch
except ImportError:  # the torch cases skip
    torch = None

BACKENDS = ["np-f32", "np-f16", "torch-f32", "torch-f16", "torch-bf16"]


def build(values, backend):
    """``values`` (float64, rounded to the backend's dtype) as an array or tensor."""
    values = np.asarray(values, dtype=np.float64)
    if backend.startswith("torch") and torch is None:
        pytest.skip("torch is not installed")
    if backend == "np-f32":
        return values.astype(np.float32)
    if backend == "np-f16":
        return values.astype(np.float16)
    dtype = {"torch-f32": torch.float32, "torch-f16": torch.float16, "torch-bf16": torch.bfloat16}[backend]
    return torch.from_numpy(values).to(dtype)


def exact_values(x):
    """The stored values of an array or tensor, exactly, as float64."""
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().double().numpy().ravel()
    return np.asarray(x, dtype=np.float64).ravel()


def reference_sum_squares(x):
    """Correctly rounded sum of squares (squares are exact in float64)."""
    return math.fsum((exact_values(x) ** 2).tolist())


def random_values(n, seed, spread=8):
    """Gaussian values times 2**k for k in [-spread, spread]: squares over many magnitudes."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n) * np.exp2(rng.integers(-spread, spread + 1, n))


def rel(a, b):
    return 0.0 if a == b else abs(a - b) / abs(b)


# --- sum_squares ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (4096,), (2, 3, 4097), (300, 1001)])
def test_sum_squares_matches_float64_reference(backend, shape):
    x = build(random_values(int(np.prod(shape)), seed=sum(shape)).reshape(shape), backend)
    got = sum_squares(x)
    assert isinstance(got, float)
    assert rel(got, reference_sum_squares(x)) <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_sum_squares_integer_values_are_exact(backend):
    values = (np.arange(100_003) * 7919 % 61 - 30).astype(np.float64)
    assert sum_squares(build(values, backend)) == float(np.sum(values.astype(np.int64) ** 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sum_squares_is_bit_identical_for_any_thread_count(backend):
    x = build(random_values(3 * 128 * 4096 + 77, seed=1), backend)
    sums = []
    for threads in (1, 2, 3):
        msp.set_num_threads(threads)
        sums.append(sum_squares(x))
    assert sums[0] == sums[1] == sums[2]
    assert rel(sums[0], reference_sum_squares(x)) <= 1e-12


def test_sum_squares_reads_non_contiguous_and_empty_input():
    x = random_values(600, seed=2).astype(np.float32).reshape(20, 30)
    assert rel(sum_squares(x.T), reference_sum_squares(x)) <= 1e-12
    assert rel(sum_squares(x[:, ::3]), reference_sum_squares(x[:, ::3])) <= 1e-12
    assert sum_squares(np.zeros((0, 4), np.float32)) == 0.0
    if torch is not None:
        t = torch.from_numpy(x)
        assert rel(sum_squares(t.t()), reference_sum_squares(x)) <= 1e-12
        assert sum_squares(torch.ones(3, requires_grad=True)) == 3.0


@pytest.mark.parametrize("bad, index", [([1, 2, np.inf], 2), ([np.nan, 1, 1], 0), ([1, -np.inf, np.nan], 1)])
def test_sum_squares_rejects_non_finite_with_its_index(bad, index):
    with pytest.raises(msp.InvalidArgumentError, match=rf"data\[{index}\] \(.*\) is not finite"):
        sum_squares(np.array(bad, np.float32))


def test_sum_squares_rejects_unsupported_input():
    with pytest.raises(TypeError, match="float64"):
        sum_squares(np.ones(3))
    with pytest.raises(TypeError, match="int32"):
        sum_squares(np.ones(3, np.int32))
    with pytest.raises(TypeError, match="list"):
        sum_squares([1.0, 2.0])
    if torch is not None:
        with pytest.raises(TypeError, match="float64"):
            sum_squares(torch.ones(3, dtype=torch.float64))


# --- FisherAccumulator ------------------------------------------------------------------------


SIZES = [7, 1000, 70_000]


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulator_matches_per_sample_reference(backend):
    rng = np.random.default_rng(3)
    samples = 3
    squares = [[] for _ in SIZES]
    with FisherAccumulator(SIZES) as acc:
        for s in range(samples):
            for layer in rng.permutation(len(SIZES)):
                if s == 1 and layer == 0:
                    continue  # no gradient for layer 0 in sample 1: a zero gradient
                size = SIZES[layer]
                grad = build(random_values(size, seed=10 * s + int(layer)), backend)
                squares[layer].extend((exact_values(grad) ** 2).tolist())
                cuts = sorted(rng.integers(0, size, 2).tolist())
                flat = grad.reshape(-1)
                for lo, hi in zip([0] + cuts, cuts + [size]):
                    acc.add(int(layer), flat[lo:hi])  # an empty chunk adds nothing
            acc.end_sample()
        assert acc.num_samples == samples
        traces = acc.traces()
        per_parameter = acc.traces(per_parameter=True)
    assert traces.dtype == np.float64 and traces.shape == (len(SIZES),)
    for layer, size in enumerate(SIZES):
        expected = math.fsum(squares[layer]) / samples
        assert rel(traces[layer], expected) <= 1e-12
        assert rel(per_parameter[layer], expected / size) <= 1e-12


def test_accumulator_integer_gradients_are_exact_and_scale_applies():
    with FisherAccumulator([4, 6]) as acc:
        acc.add(0, np.array([[1, -2], [3, 0]], np.float32))  # 14
        acc.add(1, np.arange(6, dtype=np.float16), scale=0.5)  # 55 / 2
        acc.end_sample()
        acc.add(0, np.array([4], np.float32), scale=2)  # 32
        acc.end_sample()
        assert acc.traces().tolist() == [23.0, 13.75]
        assert acc.traces(per_parameter=True).tolist() == [23.0 / 4, 13.75 / 6]
        assert acc.sizes == (4, 6) and acc.num_layers == 2
        acc.reset()
        assert acc.num_samples == 0
        with pytest.raises(msp.InvalidStateError, match="no calibration sample"):
            acc.traces()


def test_traces_before_any_sample_raise_and_open_sample_is_excluded():
    with FisherAccumulator([2]) as acc:
        acc.add(0, np.ones(2, np.float32))
        with pytest.raises(msp.InvalidStateError):
            acc.traces()
        acc.end_sample()
        acc.add(0, np.ones(1, np.float32))
        assert acc.traces().tolist() == [2.0]


def state(acc):
    return acc.traces().tolist(), acc.num_samples


@pytest.mark.parametrize(
    "layer, grad, scale, error, message",
    [
        (-1, np.ones(1, np.float32), 1.0, msp.InvalidArgumentError, r"layer \(-1\) must be in \[0, 2\)"),
        (2, np.ones(1, np.float32), 1.0, msp.InvalidArgumentError, r"layer \(2\) must be in \[0, 2\)"),
        (2**70, np.ones(1, np.float32), 1.0, msp.InvalidArgumentError, r"layer"),
        (True, np.ones(1, np.float32), 1.0, TypeError, "bool"),
        (1.0, np.ones(1, np.float32), 1.0, TypeError, "integer"),
        (1, np.ones(4, np.float32), 1.0, msp.InvalidArgumentError, r"layer 1: count \(4\) exceeds the 3"),
        (1, np.array([1, 1, np.nan], np.float32), 1.0, msp.InvalidArgumentError, r"layer 1: grad\[2\] \(nan\)"),
        (0, np.array([np.inf], np.float16), 1.0, msp.InvalidArgumentError, r"layer 0: grad\[0\] \(inf\)"),
        (1, np.ones(1, np.float32), -1.0, msp.InvalidArgumentError, r"scale \(-1.0\)"),
        (1, np.ones(1, np.float32), float("nan"), msp.InvalidArgumentError, r"scale \(nan\)"),
        (1, np.ones(1, np.float32), "2", TypeError, "scale"),
        (1, np.ones(1, np.float64), 1.0, TypeError, "float64"),
        (1, np.array([1e30, 1], np.float32), 1e300, msp.InvalidArgumentError, "overflows"),
        (1, None, 1.0, TypeError, "NoneType"),
    ],
)
def test_bad_add_raises_typed_error_and_leaves_state_unchanged(layer, grad, scale, error, message):
    with FisherAccumulator([3, 5]) as acc:
        acc.add(0, np.array([1, 2, 2], np.float32))
        acc.end_sample()
        acc.add(1, np.ones(2, np.float32))  # the open sample holds 2 of layer 1's 5 elements
        before = state(acc)
        with pytest.raises(error, match=message):
            acc.add(layer, grad, scale)
        assert state(acc) == before
        acc.add(1, np.full(3, 3, np.float32))  # exactly the 3 elements left
        with pytest.raises(msp.InvalidArgumentError, match="exceeds"):
            acc.add(1, np.ones(1, np.float32))
        acc.end_sample()
        assert acc.traces().tolist() == [4.5, 14.5]


@pytest.mark.parametrize(
    "sizes, error, message",
    [
        ([], msp.InvalidArgumentError, r"num_layers \(0\) must be > 0"),
        ([3, 0], msp.InvalidArgumentError, r"sizes\[1\] \(0\) must be > 0"),
        ([-2], msp.InvalidArgumentError, r"sizes\[0\] \(-2\) must be > 0"),
        ([2**64], msp.InvalidArgumentError, "int64"),
        ([1.5], TypeError, "integer"),
        ([True], TypeError, "bool"),
        ("abc", TypeError, "iterable"),
        (5, TypeError, "iterable"),
    ],
)
def test_bad_sizes_raise(sizes, error, message):
    with pytest.raises(error, match=message):
        FisherAccumulator(sizes)


def test_sizes_accept_numpy_integers_and_generators():
    with FisherAccumulator(np.array([2, 3])) as acc:
        assert acc.sizes == (2, 3)
    with FisherAccumulator(n for n in (4,)) as acc:
        assert acc.num_layers == 1


def test_use_after_close_raises_and_close_is_idempotent():
    acc = FisherAccumulator([2])
    acc.add(0, np.ones(2, np.float32))
    acc.end_sample()
    acc.close()
    acc.close()
    assert acc.closed and "closed" in repr(acc)
    for call in (
        lambda: acc.add(0, np.ones(1, np.float32)),
        acc.end_sample,
        acc.traces,
        acc.reset,
        lambda: acc.num_samples,
        lambda: acc.__enter__(),
    ):
        with pytest.raises(msp.InvalidStateError, match="closed"):
            call()
    with FisherAccumulator([1]) as other:
        assert not other.closed
    assert other.closed


def test_garbage_collection_and_failed_init_do_not_crash():
    for _ in range(100):
        acc = FisherAccumulator([10, 20])
        acc.add(1, np.ones(20, np.float32))
        del acc
    with pytest.raises(msp.InvalidArgumentError):
        FisherAccumulator([0])  # __del__ of the half-built object must be harmless


def test_null_handle_through_the_raw_entry_point():
    with pytest.raises(msp.InvalidArgumentError, match="fisher is NULL") as info:
        lib.msp_fisher_add(None, 0, np.ones(1, np.float32).ctypes.data, DTYPE_F32, 1, 1.0)
    assert info.value.status == errors.ERR_INVALID_ARGUMENT


def test_distinct_layers_from_python_threads_match_serial():
    layers, size = 8, 50_000
    grads = [random_values(size, seed=l).astype(np.float32) for l in range(layers)]
    with FisherAccumulator([size] * layers) as serial, FisherAccumulator([size] * layers) as concurrent:
        for l in range(layers):  # the same chunks: chunking changes the last bits, threads do not
            serial.add(l, grads[l][: size // 2])
            serial.add(l, grads[l][size // 2 :])
        serial.end_sample()
        barrier = threading.Barrier(4)

        def work(l):
            if l < 4:
                barrier.wait()
            concurrent.add(l, grads[l][: size // 2])
            concurrent.add(l, grads[l][size // 2 :])

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(layers)))
        concurrent.end_sample()
        assert concurrent.traces().tolist() == serial.traces().tolist()


# --- add_fisher_diagonal ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_fisher_diagonal_matches_reference(backend):
    grad = build(random_values(5 * 40_001, seed=4, spread=4).reshape(-1, 5), backend)
    diag = np.random.default_rng(5).integers(0, 100, grad.shape).astype(np.float32) / 8
    g = exact_values(grad).reshape(grad.shape)
    expected = (diag.astype(np.float64) + 0.375 * g * g).astype(np.float32)
    add_fisher_diagonal(grad, diag, scale=0.375)
    assert np.array_equal(diag.view(np.uint32), expected.view(np.uint32))


def test_add_fisher_diagonal_on_a_torch_buffer_bumps_its_version():
    if torch is None:
        pytest.skip("torch is not installed")
    diag = torch.zeros(2, 3)
    version = diag._version
    add_fisher_diagonal(torch.full((6,), 2.0, dtype=torch.bfloat16), diag)
    assert diag.tolist() == [[4.0] * 3] * 2 and diag._version > version


def test_add_fisher_diagonal_rejects_bad_input_without_writing():
    diag = np.ones(4, np.float32)
    cases = [
        (np.array([1, 2, np.nan, 4], np.float32), diag, 1.0, msp.InvalidArgumentError, r"grad\[2\] \(nan\)"),
        (np.array([1, 1e30, 1, 1], np.float32), diag, 1.0, msp.InvalidArgumentError, r"diag_inout\[1\]"),
        (np.ones(4, np.float32), diag, -2.0, msp.InvalidArgumentError, r"scale \(-2.0\)"),
        (np.ones(3, np.float32), diag, 1.0, ValueError, "4 elements but grad has 3"),
        (np.ones(4, np.float32), np.ones(4), 1.0, TypeError, "float32 buffer"),
        (np.ones(2, np.float32), np.ones(4, np.float32)[::2], 1.0, ValueError, "contiguous"),
        (np.ones(4, np.float32), [1.0] * 4, 1.0, TypeError, "list"),
    ]
    for grad, target, scale, error, message in cases:
        before = np.array(target, copy=True)
        with pytest.raises(error, match=message):
            add_fisher_diagonal(grad, target, scale)
        assert np.array_equal(np.asarray(target), before)
    frozen = np.ones(4, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        add_fisher_diagonal(np.ones(4, np.float32), frozen)
    if torch is not None:
        with pytest.raises(ValueError, match="requires grad"):
            add_fisher_diagonal(torch.ones(2), torch.zeros(2, requires_grad=True))
        with pytest.raises(TypeError, match="float32"):
            add_fisher_diagonal(torch.ones(2), torch.zeros(2, dtype=torch.float16))
